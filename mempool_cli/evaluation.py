"""Evaluate a checkpoint on its own stored split: the model and the features rebuilt from the file alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from mempool_cli import data
from mempool_cli.artifacts import load_checkpoint
from mempool_cli.config import TrainSpec
from mempool_cli.data.splits import check_split
from mempool_cli.device import pick_device
from mempool_cli.engine import evaluate, memory_stats
from mempool_cli.errors import CheckpointError
from mempool_cli.model import model_from_args


def classification_report(pred: torch.Tensor, target: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted, in the order of ``class_names``) with per-class
    precision and recall."""
    num_classes = len(class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    per_class = []
    for c in range(num_classes):
        predicted, actual, hit = confusion[:, c].sum().item(), confusion[c].sum().item(), confusion[c, c].item()
        per_class.append({
            "class": class_names[c],
            "precision": hit / predicted if predicted else 0.0,
            "recall": hit / actual if actual else 0.0,
            "support": actual,
        })
    return {"class_names": list(class_names), "confusion_matrix": confusion.tolist(), "per_class": per_class}


def class_names(info: dict[str, Any]) -> list[str]:
    """A checkpoint's class names as the data writes its labels (indices for checkpoints that predate them)."""
    return info.get("class_names") or [str(c) for c in range(info["num_classes"])]


def model_of(checkpoint: dict[str, Any], path: str | Path) -> torch.nn.Module:
    """The checkpoint's model with its weights. The shapes are compared on the meta device first, so a checkpoint
    can never make mempool allocate a model larger than the weights it holds."""
    with torch.device("meta"):
        skeleton = model_from_args(checkpoint["model_args"])
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    found = {name: tuple(torch.as_tensor(t).shape) for name, t in checkpoint["model_state"].items()}
    if expected != found:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes (wrong shapes or names)")
    model = model_from_args(checkpoint["model_args"])
    model.load_state_dict(checkpoint["model_state"])
    return model


def evaluate_checkpoint(path: str | Path, split: str = "test", root: Optional[str] = None,
                        device: str = "auto", data_path: Optional[str] = None) -> dict[str, Any]:
    """Accuracy, loss, per-class precision/recall and confusion matrix of a checkpoint on one split.

    A TU dataset by name comes from ``root`` (default: the usual cache) and ``$MEMPOOL_DATA_SOURCE``; data read
    from a file or folder from ``data_path`` or the path recorded in the checkpoint. It must be the data trained on.
    """
    checkpoint = load_checkpoint(path)
    info = checkpoint["dataset"]
    train_cfg = TrainSpec(**{k: v for k, v in checkpoint["config"]["train"].items() if k in ("batch_size", "kl_weight")})
    if split not in checkpoint["split"]:
        raise CheckpointError(f"{path} holds no {split!r} split (it has: {', '.join(checkpoint['split'])})")
    torch_device = pick_device(device)
    model = model_of(checkpoint, path).to(torch_device)
    graphs = data.from_checkpoint(info, root, data_path)
    check_split(checkpoint["split"], len(graphs), f"the split in {path}")
    loader = data.make_eval_loader(graphs, checkpoint["split"][split])
    result = evaluate(model, loader, torch_device, train_cfg.kl_weight)
    recorded = checkpoint["metrics"].get(f"{split}_acc")
    return {
        "checkpoint": str(path),
        "dataset": info["name"],
        "split": split,
        "num_graphs": len(result["target"]),
        "epoch": checkpoint["epoch"],
        "accuracy": result["acc"],
        "loss": result["loss"],
        **({"recorded_accuracy": recorded} if recorded is not None else {}),
        **classification_report(result["pred"], result["target"], class_names(info)),
        "memory": memory_stats(model, loader, torch_device),
    }
