"""`mempool show`: what a checkpoint's memory does with graphs. One figure per chosen graph (its nodes coloured by
their first-layer cluster, the coarsened graph beside it) and, for the split as a whole, the class-by-key mass and
the usage of each key, for every memory layer with more than one cluster."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch_geometric.data import Batch

from mempool_cli import data, figures
from mempool_cli.artifacts import CHECKPOINT, FOLDS, fold_dir, load_checkpoint
from mempool_cli.device import pick_device
from mempool_cli.engine import assignment_stats, key_counts
from mempool_cli.errors import CheckpointError, DataError, MempoolError
from mempool_cli.evaluation import class_names, model_of
from mempool_cli.sweep import finished_folds, run_checkpoints

DEFAULT_GRAPHS = 2  # graphs drawn when none is named
SPLIT_BATCH = 256  # graphs per forward pass over a split


def pick_checkpoint(path: str | Path, fold: Optional[int] = None) -> Path:
    """A checkpoint file, a run directory's checkpoint, or one finished fold's of a k-fold run (``fold``; default
    the fold with the best validation accuracy)."""
    path = Path(path)
    if not (path / FOLDS).is_file():
        return run_checkpoints(path)[0]
    done = {row["fold"]: row for row in finished_folds(path)}
    if not done:
        raise CheckpointError(f"{path}: no fold has finished")
    chosen = fold if fold is not None else max(done.values(), key=lambda row: row["val_acc"])["fold"]
    if chosen not in done:
        raise CheckpointError(f"--fold: {path} has no finished fold {chosen} (finished: "
                              f"{', '.join(str(f) for f in done)})")
    return fold_dir(path, chosen) / CHECKPOINT


@dataclass
class Graphs:
    """The graphs to show from: source (ids, raw values, structures) and featurised, with the indices in play."""

    source: data.SourceGraphs
    graphs: data.GraphSet
    index: list[int]
    what: str


def _graphs(checkpoint: dict[str, Any], path: Path, split: str, input_path: Optional[str]) -> Graphs:
    info = checkpoint["dataset"]
    if input_path is not None:
        source = data.read_input(info, input_path)
        return Graphs(source, data.featurize_input(info, source), list(range(len(source))), f"input {input_path}")
    if split not in checkpoint["split"]:
        raise CheckpointError(f"--split: {path} holds no {split!r} split (it has: {', '.join(checkpoint['split'])})")
    source, graphs = data.checkpoint_data(info)
    return Graphs(source, graphs, checkpoint["split"][split], f"{split} split")


def _chosen(graphs: Graphs, wanted: list[str], by_id: bool) -> list[int]:
    """Dataset indices of the graphs named by id (``carbazole``; an input's ids) or, in a stored split, by position
    (``3``: the fourth graph of the split)."""
    if not wanted:
        return graphs.index[:DEFAULT_GRAPHS]
    ids = {graphs.source.ids[i]: i for i in graphs.index}
    chosen = []
    for name in wanted:
        if name.isdigit() and not by_id and int(name) < len(graphs.index):
            chosen.append(graphs.index[int(name)])
        elif name in ids and (by_id or not name.isdigit()):
            chosen.append(ids[name])
        else:
            raise DataError(f"--graph {name}: neither an id nor a position (0..{len(graphs.index) - 1}) in the "
                            f"{graphs.what}")
    return chosen


@torch.no_grad()
def _forward(model: torch.nn.Module, graph_list: list, device: torch.device) -> tuple[np.ndarray, list]:
    batch = Batch.from_data_list(graph_list).to(device)
    logits, _, assignments = model.forward_with_assignments(batch.x, batch.edge_index, batch.batch,
                                                           batch.num_graphs, batch.edge_attr)
    return torch.softmax(logits, -1).cpu().numpy(), [S.cpu() for S in assignments]


def _layout(source: data.SourceGraphs, i: int, edges: np.ndarray) -> tuple[dict, Optional[list[str]]]:
    """Node positions and labels: a molecule's 2D depiction and atoms, else a force-directed layout."""
    import networkx as nx

    graph = source.graphs[i]
    if "structure" in graph:
        from mempool_cli.data.molecules import depiction

        symbols, positions = depiction(graph.structure)
        return positions, symbols
    nx_graph = nx.Graph()
    nx_graph.add_nodes_from(range(graph.num_nodes))
    nx_graph.add_edges_from(edges.T.tolist())
    labels = [source.cat_values[0][c] for c in graph.cat[:, 0].tolist()] if source.cat_values else None
    return nx.spring_layout(nx_graph, seed=0), labels


def _graph_figure(graphs: Graphs, i: int, probs: np.ndarray, S: torch.Tensor, names: list[str]) -> Any:
    edges = graphs.graphs.graphs[i].edge_index.numpy()
    positions, labels = _layout(graphs.source, i, edges)
    y = int(graphs.source.graphs[i].y)
    truth = f"true {names[y]}, " if y >= 0 else ""
    guess = int(probs.argmax())
    title = f"{graphs.source.name} graph {graphs.source.ids[i]}: {truth}predicted {names[guess]} ({probs[guess]:.2f})"
    return figures.graph_figure(edges, S.double().numpy(), positions, title, assignment_stats([S]), labels)


def split_matrices(labels: torch.Tensor, S_per_graph: list[torch.Tensor], num_classes: int) -> tuple:
    """Mean assignment mass per class and key (each graph's rows averaged, then the graphs of each class), and the
    share of rows whose argmax is each key."""
    mass = torch.stack([S.double().mean(dim=0) for S in S_per_graph])
    matrix = torch.stack([mass[labels == c].mean(dim=0) if (labels == c).any() else torch.zeros(mass.size(1))
                          for c in range(num_classes)])
    rows = torch.cat(S_per_graph)
    usage = key_counts(rows).double() / len(rows)
    return matrix.numpy(), usage.numpy()


def _split_figures(model: torch.nn.Module, graphs: Graphs, names: list[str], device: torch.device,
                   title: str) -> list[tuple[str, Any]]:
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.memory]
    labels = graphs.source.labels[graphs.index]
    for start in range(0, len(graphs.index), SPLIT_BATCH):
        chunk = [graphs.graphs.graphs[i] for i in graphs.index[start:start + SPLIT_BATCH]]
        _, assignments = _forward(model, chunk, device)
        for store, S in zip(per_layer, assignments):  # the first layer's rows are nodes, a later layer's per graph
            store.extend(S.split([g.num_nodes for g in chunk]) if S.dim() == 2 else list(S))
    out = []
    for layer, S_list in enumerate(per_layer):
        if S_list[0].size(-1) < 2:
            continue
        known = labels >= 0
        matrix, usage = split_matrices(labels[known], [S for S, k in zip(S_list, known) if k], len(names))
        stats = assignment_stats(S_list)
        figure = figures.class_key_figure(matrix, names, usage, f"{title}: memory layer {layer}", stats)
        out.append((f"memory_layer{layer}", figure))
    return out


def show(checkpoint_path: str | Path, wanted: list[str], split: str = "test", out: str | Path = "figures",
         fmt: str = "png", fold: Optional[int] = None, input_path: Optional[str] = None,
         device: str = "auto") -> list[Path]:
    """Draw the chosen graphs and the split's memory figures into ``out``; returns the files written."""
    if fmt not in figures.FORMATS:
        raise MempoolError(f"--format: unknown value {fmt!r}; choose one of: {', '.join(figures.FORMATS)}")
    path = pick_checkpoint(checkpoint_path, fold)
    checkpoint = load_checkpoint(path)
    torch_device = pick_device(device)
    model = model_of(checkpoint, path).to(torch_device).eval()
    graphs = _graphs(checkpoint, path, split, input_path)
    names = class_names(checkpoint["dataset"])
    chosen = _chosen(graphs, wanted, by_id=input_path is not None)
    out = Path(out)
    written = []
    for i in chosen:
        probs, assignments = _forward(model, [graphs.graphs.graphs[i]], torch_device)
        figure = _graph_figure(graphs, i, probs[0], assignments[0], names)
        written.append(figures.save(figure, out / f"graph_{_file_part(graphs.source.ids[i])}.{fmt}"))
    title = f"{graphs.source.name}, {graphs.what} ({len(graphs.index)} graphs)"
    for stem, figure in _split_figures(model, graphs, names, torch_device, title):
        written.append(figures.save(figure, out / f"{stem}.{fmt}"))
    return written


def _file_part(graph_id: str) -> str:
    """A graph id made safe as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in graph_id).strip(".")[:60] or "graph"
