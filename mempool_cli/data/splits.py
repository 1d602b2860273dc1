"""Stratified splits (holdout and k-fold), their metadata, and split files checked against the data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import Tensor

from mempool_cli.errors import DataError


def labels_hash(labels: Tensor) -> str:
    """A short fingerprint of the label vector, to tell whether a split file belongs to a dataset."""
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def holdout_split(labels: Tensor, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """One stratified train/val/test split, drawn from ``seed``."""
    index = list(range(len(labels)))
    y = labels.tolist()
    rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=[y[i] for i in rest], random_state=seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def kfold_splits(labels: Tensor, folds: int, val_fraction: float, seed: int) -> list[dict[str, list[int]]]:
    """Stratified k-fold: each fold's test part once, a stratified validation part carved from its training part."""
    y = labels.numpy()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, test) in enumerate(splitter.split(y, y)):
        train, val = train_test_split(
            rest.tolist(), test_size=val_fraction, stratify=y[rest].tolist(), random_state=seed + fold
        )
        splits.append({"train": sorted(train), "val": sorted(val), "test": sorted(test.tolist())})
    return splits


def split_metadata(name: str, labels: Tensor, seed: int, **extra: Any) -> dict[str, Any]:
    """What a split file records about the data it was drawn from."""
    return {"dataset": name, "num_graphs": len(labels), "labels_hash": labels_hash(labels), "seed": seed, **extra}


def check_same_data(meta: dict[str, Any], name: str, labels: Tensor, what: str) -> None:
    """Refuse ``meta`` (of a split file or a checkpoint) when it was drawn from other data."""
    expected = {"dataset": name, "num_graphs": len(labels), "labels_hash": labels_hash(labels)}
    for key, value in expected.items():
        if meta.get(key) != value:
            raise DataError(f"{what} does not match the dataset: {key} is {meta.get(key)!r}, expected {value!r}")


def read_split_file(path: Path, name: str, labels: Tensor) -> dict[str, Any]:
    """Read a split file and refuse it when it was drawn from other data."""
    try:
        payload = json.loads(Path(path).read_text())
        meta = payload["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    check_same_data(meta, name, labels, f"split file {path}")
    return payload
