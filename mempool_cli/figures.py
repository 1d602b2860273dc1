"""Every figure mempool draws (matplotlib, headless): training curves, k-fold and sweep summaries, a graph coloured
by its memory clusters with the coarsened graph beside it, and the split's class-by-key and key-usage pictures.

Functions take plain numbers (lists, numpy arrays), return a matplotlib ``Figure``, and :func:`save` writes one
atomically. Cluster colours come from ``viridis`` (readable in greyscale and with colour blindness); soft membership
is opacity, so flat assignments look flat.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mempool_cli.artifacts import write_atomic  # noqa: E402

FORMATS = ("png", "svg")
LABELLED_NODES = 40  # graphs with more nodes are drawn without node labels


def save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` (its suffix picks PNG or SVG) atomically, then free it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())
    return path


def cluster_colours(k: int) -> np.ndarray:
    """One RGBA colour per cluster, evenly spread over viridis."""
    return plt.get_cmap("viridis")(np.linspace(0.0, 0.92, k))


def sharpness_text(stats: dict[str, float]) -> str:
    return (f"mean max assignment {stats['mean_max_assignment']:.2f} (flat: {1 / stats['clusters']:.2f}), "
            f"entropy/log K {stats['normalized_entropy']:.2f}")


# ---------------------------------------------------------------------------------------------------------------
# Curves


def history_figure(history: Sequence[dict[str, float]], best_epoch: Optional[int], title: str) -> Figure:
    """Loss, accuracy, KL loss and learning rate per epoch (train and validation), and how many keys of the first
    memory layer the training nodes picked (where the history has it), the best epoch marked."""
    epochs = [row["epoch"] for row in history]
    panels = [("loss (cross-entropy + KL)", "loss"), ("accuracy", "acc"), ("KL loss", "kl"), ("learning rate", "lr")]
    if history and "train/keys_used" in history[0]:
        panels.append(("keys used (training nodes' argmax)", "keys_used"))
    columns = (len(panels) + 1) // 2
    figure, axes = plt.subplots(2, columns, figsize=(5 * columns, 6.5))
    for ax in axes.flat[len(panels):]:
        ax.remove()
    for ax, (label, key) in zip(axes.flat, panels):
        if key == "lr":
            ax.plot(epochs, [row["lr"] for row in history], color="black")
            ax.set_yscale("log")
        elif key == "keys_used":
            ax.plot(epochs, [row["train/keys_used"] for row in history], color="#0072B2", drawstyle="steps-mid")
            ax.set_ylim(0, None)
        else:
            ax.plot(epochs, [row[f"train/{key}"] for row in history], label="train", color="#0072B2")
            ax.plot(epochs, [row[f"val/{key}"] for row in history], label="validation", color="#D55E00",
                    linestyle="--")
            ax.legend(loc="best", frameon=False)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linewidth=0.8, linestyle=":")
        ax.set(ylabel=label, xlabel="epoch")
        ax.grid(alpha=0.3)
    marked = f" (dotted: best epoch {best_epoch})" if best_epoch is not None else ""
    figure.suptitle(f"{title}{marked}")
    figure.tight_layout()
    return figure


def kfold_figure(histories: Sequence[Sequence[dict[str, float]]], test_acc: Sequence[Optional[float]],
                 title: str) -> Figure:
    """Each fold's validation accuracy per epoch with their mean, and the test accuracy of each fold."""
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        epochs = [row["epoch"] for row in history]
        values = [row["val/acc"] for row in history]
        curves.plot(epochs, values, color="#0072B2", alpha=0.3, linewidth=0.8)
        for epoch, value in zip(epochs, values):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = [e for e in sorted(by_epoch) if 2 * len(by_epoch[e]) >= len(histories)]
    curves.plot(epochs, [float(np.mean(by_epoch[e])) for e in epochs], color="black", linewidth=2,
                label="mean (while at least half the folds train)")
    curves.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per fold")
    curves.legend(loc="lower right", frameon=False)
    curves.grid(alpha=0.3)
    done = [(i, acc) for i, acc in enumerate(test_acc) if acc is not None]
    summary = ""
    if done:
        folds, accs = zip(*done)
        bars.bar(folds, accs, color="#56B4E9")
        mean, std = float(np.mean(accs)), float(np.std(accs))
        bars.axhline(mean, color="black", linewidth=1.5)
        bars.axhspan(mean - std, mean + std, color="grey", alpha=0.2)
        bars.set_ylim(max(0.0, min(accs) - 0.1), min(1.0, max(accs) + 0.05))
        summary = f": mean {mean:.3f} +- {std:.3f} (line, band)"
    bars.set(xlabel="fold", ylabel="test accuracy", title=f"test accuracy of {len(done)} finished folds{summary}")
    bars.set_xticks(range(len(test_acc)))
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def sweep_figure(parameter: str, points: Sequence[tuple[Any, float, float, Optional[float]]], title: str) -> Figure:
    """Validation and test accuracy against one swept parameter: ``(value, val, test, test std or None)``."""
    figure, ax = plt.subplots(figsize=(6.5, 4))
    labels = [str(p[0]) for p in points]
    x = np.arange(len(points))
    ax.plot(x, [p[1] for p in points], "o-", color="#D55E00", label="validation")
    errors = [p[3] or 0.0 for p in points]
    ax.errorbar(x, [np.nan if p[2] is None else p[2] for p in points], yerr=errors if any(errors) else None, fmt="s--", color="#0072B2",
                capsize=4, label="test" + (" (+- std over folds)" if any(errors) else ""))
    ax.set_xticks(x, labels)
    ax.set(xlabel=parameter, ylabel="accuracy", title=title)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def search_figure(val_acc: Sequence[float], title: str) -> Figure:
    """Validation accuracy of each job in the order they ran, with the best so far (a search's history)."""
    figure, ax = plt.subplots(figsize=(6.5, 4))
    jobs = np.arange(len(val_acc))
    ax.plot(jobs, val_acc, "o", color="#0072B2", label="job")
    ax.plot(jobs, np.maximum.accumulate(val_acc), color="black", label="best so far")
    ax.set(xlabel="job (in the order run)", ylabel="validation accuracy", title=title)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def results_figure(rows: Sequence[dict[str, Any]], title: str) -> Figure:
    """Accuracy per dataset with error bars, mempool's beside published rows: each row ``{"dataset", "label",
    "mean", "std"}`` (percent)."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    labels = list(dict.fromkeys(row["label"] for row in rows))
    width = 0.8 / len(labels)
    colours = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9"]
    figure, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(datasets)), 4.2))
    for j, label in enumerate(labels):
        found = [(i, r) for i, d in enumerate(datasets) for r in rows if r["dataset"] == d and r["label"] == label]
        ax.bar([i + j * width for i, _ in found], [r["mean"] for _, r in found], width, capsize=3,
               yerr=[r["std"] for _, r in found], color=colours[j % len(colours)], label=label)
    ax.set_xticks(np.arange(len(datasets)) + width * (len(labels) - 1) / 2, datasets)
    ax.set(ylabel="test accuracy % (10-fold, mean +- std)", title=title)
    ax.set_ylim(40, 100)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------------------------
# The memory


def _alpha(S: np.ndarray) -> np.ndarray:
    """Opacity from soft membership: 0.15 for a flat row (max 1/K), 1 for a hard one."""
    k = S.shape[1]
    sharp = (S.max(axis=1) - 1.0 / k) / (1.0 - 1.0 / k) if k > 1 else np.ones(len(S))
    return 0.15 + 0.85 * np.clip(sharp, 0.0, 1.0)


def graph_figure(edges: np.ndarray, S: np.ndarray, positions: dict[int, tuple[float, float]], title: str,
                 stats: dict[str, float], node_labels: Optional[list[str]] = None) -> Figure:
    """The graph with nodes coloured by their cluster (argmax of ``S`` ``[N, K]``, opacity = how sharply), and the
    coarsened graph of the K clusters beside it (edge weights ``S^T A S``, node size = cluster mass)."""
    import networkx as nx

    n, k = S.shape
    colours = cluster_colours(k)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [3, 2]})
    node_colours = colours[S.argmax(axis=1)].copy()
    node_colours[:, 3] = _alpha(S)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges.T.tolist())
    size = float(np.clip(3000 / max(n, 1), 12, 300))
    nx.draw_networkx_edges(graph, positions, ax=left, edge_color="#999999", width=0.8 if n < 200 else 0.4)
    nx.draw_networkx_nodes(graph, positions, ax=left, node_color=node_colours, node_size=size,
                           edgecolors="#333333", linewidths=0.4)
    if node_labels is not None and n <= LABELLED_NODES:
        nx.draw_networkx_labels(graph, positions, {i: t for i, t in enumerate(node_labels)}, ax=left, font_size=7)
    used = sorted(set(S.argmax(axis=1).tolist()))
    handles = [matplotlib.patches.Patch(color=colours[j], label=f"cluster {j}") for j in used]
    left.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=min(len(used), 5),
                frameon=False, fontsize=8)
    note = "" if n <= LABELLED_NODES or node_labels is None else f" ({n} nodes: labels left out)"
    left.set_title(f"nodes coloured by cluster (argmax S), opacity = membership{note}", fontsize=9)
    left.axis("off")
    _coarsened(right, edges, S, colours)
    figure.suptitle(f"{title}\nfirst memory layer: {sharpness_text(stats)}", fontsize=10)
    figure.tight_layout()
    return figure


def _coarsened(ax: Any, edges: np.ndarray, S: np.ndarray, colours: np.ndarray) -> None:
    import networkx as nx

    n, k = S.shape
    adjacency = np.zeros((n, n))
    adjacency[edges[0], edges[1]] = 1.0
    weights = S.T @ adjacency @ S
    mass = S.sum(axis=0)
    coarse = nx.Graph()
    coarse.add_nodes_from(range(k))
    top = weights.max() if weights.size else 1.0
    for a in range(k):
        for b in range(a + 1, k):
            if weights[a, b] > 1e-3 * top:
                coarse.add_edge(a, b, weight=weights[a, b])
    positions = nx.circular_layout(coarse)
    widths = [6.0 * coarse[a][b]["weight"] / top for a, b in coarse.edges]
    nx.draw_networkx_edges(coarse, positions, ax=ax, width=widths, edge_color="#777777")
    nx.draw_networkx_nodes(coarse, positions, ax=ax, node_color=colours, node_size=80 + 1400 * mass / mass.max(),
                           edgecolors="#333333")
    for j in range(k):  # dark text on light colours, light on dark
        light = colours[j, :3] @ np.array([0.299, 0.587, 0.114]) > 0.5
        ax.text(*positions[j], str(j), ha="center", va="center", fontsize=8, color="black" if light else "white")
    ax.set_title("coarsened graph: the K clusters (node size = mass sum_i S_ik,\nedge width = S^T A S between clusters; "
                 f"{weights.trace() / max(weights.sum(), 1e-12):.0%} of the edge weight is inside clusters)", fontsize=9)
    ax.axis("off")
    ax.margins(0.15)


def class_key_figure(matrix: np.ndarray, class_names: Sequence[str], usage: np.ndarray, title: str,
                     stats: dict[str, float]) -> Figure:
    """Mean assignment mass per class and key (which keys speak for which class), and each key's usage (the share
    of nodes whose argmax it is; dead keys show as empty bars)."""
    k = matrix.shape[1]
    figure, (heat, bars) = plt.subplots(1, 2, figsize=(11, 0.5 * len(class_names) + 3.2),
                                        gridspec_kw={"width_ratios": [3, 2]})
    image = heat.imshow(matrix, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(matrix.max()), 1e-9))
    heat.set_xticks(range(k))
    heat.set_yticks(range(len(class_names)), class_names)
    heat.set(xlabel="key (cluster)", ylabel="true class", title="mean assignment mass per graph")
    for (i, j), value in np.ndenumerate(matrix):
        heat.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if value < 0.6 * matrix.max() else "black")
    figure.colorbar(image, ax=heat, fraction=0.046, pad=0.04, label="share of a graph's nodes")
    bars.bar(range(k), usage, color=cluster_colours(k))
    bars.set_xticks(range(k))
    bars.set(xlabel="key (cluster)", ylabel="share of nodes (argmax)", title="key usage")
    bars.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{title}\n{sharpness_text(stats)}", fontsize=10)
    figure.tight_layout()
    return figure
