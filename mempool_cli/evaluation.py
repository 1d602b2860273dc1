"""Evaluate a checkpoint on its own stored split: rebuilds model and features from the file alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from mempool_cli.checkpoint import load_checkpoint
from mempool_cli.data import featurize, labels_hash, load_tudataset, make_loader
from mempool_cli.engine import evaluate
from mempool_cli.errors import DataError
from mempool_cli.model import build_model
from mempool_cli.run import pick_device


def classification_report(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted) with per-class precision and recall."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    per_class = []
    for c in range(num_classes):
        predicted, actual, hit = confusion[:, c].sum().item(), confusion[c].sum().item(), confusion[c, c].item()
        per_class.append({
            "class": c,
            "precision": hit / predicted if predicted else 0.0,
            "recall": hit / actual if actual else 0.0,
            "support": actual,
        })
    return {"confusion_matrix": confusion.tolist(), "per_class": per_class}


def evaluate_checkpoint(
    path: str | Path, split: str = "test", root: Optional[str] = None, source: Optional[str] = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Accuracy, loss, per-class precision/recall and confusion matrix of a checkpoint on one split."""
    ckpt = load_checkpoint(path)
    info, cfg = ckpt["dataset"], ckpt["config"]
    ds_cfg = cfg["dataset"]
    dataset = load_tudataset(info["name"], root or ds_cfg["root"], source or ds_cfg["source"], ds_cfg["url"])
    graphs = featurize(dataset, info, info["feature_stats"])
    if labels_hash(graphs.labels) != info["labels_hash"] or len(graphs) != info["num_graphs"]:
        raise DataError(f"dataset {info['name']} at {ds_cfg['root']} differs from the one this checkpoint was trained on")
    torch_device = pick_device(device)
    model = build_model(**ckpt["model_args"]).to(torch_device)
    model.load_state_dict(ckpt["model_state"])
    loader = make_loader(graphs.graphs, ckpt["split"][split], cfg["train"]["batch_size"], shuffle=False)
    result = evaluate(model, loader, torch_device, cfg["train"]["kl_weight"])
    return {
        "checkpoint": str(path),
        "dataset": info["name"],
        "split": split,
        "num_graphs": len(result["target"]),
        "epoch": ckpt["epoch"],
        "accuracy": result["acc"],
        "loss": result["loss"],
        "recorded_accuracy": ckpt["metrics"].get(f"{split}_acc"),
        **classification_report(result["pred"], result["target"], info["num_classes"]),
    }
