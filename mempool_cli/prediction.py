"""Predict the classes of new graphs with a trained checkpoint, or with every fold of a k-fold run (their mean
probabilities). The input is read and featurised as the checkpoint's training data was, from the file alone."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from mempool_cli import data
from mempool_cli.artifacts import csv_text, load_checkpoint, write_atomic
from mempool_cli.device import pick_device
from mempool_cli.errors import CheckpointError
from mempool_cli.evaluation import class_names, classification_report, model_of
from mempool_cli.sweep import run_checkpoints

BatchCallback = Callable[[int, int], None]  # (graphs done, graphs in all)


@torch.inference_mode()
def _probabilities(model: torch.nn.Module, graphs: data.GraphSet, device: torch.device, batch_size: int,
                   on_batch: Optional[BatchCallback], done: int, total: int) -> torch.Tensor:
    model.eval()
    out = []
    for batch in data.make_loader(graphs, list(range(len(graphs))), batch_size):
        batch = batch.to(device)
        logits, _ = model(batch.x, batch.edge_index, batch.batch, batch.num_graphs, batch.edge_attr)
        out.append(torch.softmax(logits.double(), dim=-1).cpu())
        done += batch.num_graphs
        if on_batch is not None:
            on_batch(done, total)
    return torch.cat(out) if out else torch.zeros(0, model.classifier.out_features, dtype=torch.double)


def predict(checkpoint: str | Path, input_path: str, device: str = "auto", batch_size: int = 256,
            on_batch: Optional[BatchCallback] = None, part: Optional[str] = None) -> dict[str, Any]:
    """Class probabilities of every graph of ``input_path`` (of its ``part`` of the split column trained with,
    where given): per graph its id, predicted class and the probability
    of each class (the mean over the folds for a k-fold run); graphs that cannot be read get their reason;
    with labels, the accuracy and confusion matrix."""
    paths = run_checkpoints(checkpoint)
    torch_device = pick_device(device)
    checkpoints = [load_checkpoint(p) for p in paths]
    names = class_names(checkpoints[0]["dataset"])
    if any(class_names(c["dataset"]) != names for c in checkpoints):
        raise CheckpointError(f"{checkpoint}: its folds' checkpoints do not have the same classes")
    start = time.perf_counter()
    source = data.read_input(checkpoints[0]["dataset"], input_path, part)
    total = len(source.graphs) * len(paths)
    probabilities, unseen = torch.zeros(len(source.graphs), len(names), dtype=torch.double), {}
    for i, (path, ckpt) in enumerate(zip(paths, checkpoints)):
        graphs = data.featurize_input(ckpt["dataset"], source)
        model = model_of(ckpt, path).to(torch_device)
        probabilities += _probabilities(model, graphs, torch_device, batch_size, on_batch, i * len(graphs), total)
        unseen = graphs.unseen
    probabilities /= len(paths)
    seconds = time.perf_counter() - start
    return _result(paths, input_path, source, probabilities, names, unseen, seconds)


def _result(paths: list[Path], input_path: str, source: data.SourceGraphs, probabilities: torch.Tensor,
            names: list[str], unseen: dict, seconds: float) -> dict[str, Any]:
    pred = probabilities.argmax(dim=-1)
    labels = source.labels
    labelled = bool(source.class_names) and len(labels) > 0
    rows = [{"id": gid, "prediction": names[int(p)], **{f"p_{n}": float(q) for n, q in zip(names, probs)},
             **({"label": names[int(y)]} if labelled else {})}
            for gid, p, probs, y in zip(source.ids, pred, probabilities, labels)]
    rows += [{"id": gid, "error": reason} for gid, reason, _ in source.skipped]
    result = {
        "checkpoints": [str(p) for p in paths],
        "ensemble": f"mean probabilities of {len(paths)} fold checkpoints" if len(paths) > 1 else "one checkpoint",
        "input": str(input_path), "num_graphs": len(source.graphs), "unreadable": len(source.skipped),
        "unseen_values": unseen, "seconds": round(seconds, 3),  # reading, featurising and predicting
        "graphs_per_s": round(len(source.graphs) / seconds, 1) if seconds > 0 else None,
        "class_names": names, "rows": rows,
    }
    if labelled:
        result["accuracy"] = (pred == labels).double().mean().item()
        result.update(classification_report(pred, labels, names))
    return result


def write_predictions(result: dict[str, Any], path: str | Path) -> None:
    """The predictions as CSV: ``id``, ``prediction``, ``p_<class>`` per class, ``label`` with labels, ``error``
    where some graphs could not be read."""
    columns = ["id", "prediction", *(f"p_{n}" for n in result["class_names"])]
    columns += ["label"] if "accuracy" in result else []
    columns += ["error"] if result["unreadable"] else []
    write_atomic(Path(path), csv_text(result["rows"], columns))
