"""Stratified splits (holdout and k-fold), their metadata, and split files checked against the data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mempool_cli.errors import ConfigError, DataError

PARTS = ("train", "val", "test")


def labels_hash(labels: Tensor) -> str:
    """A short fingerprint of the label vector, to tell whether a split file belongs to a dataset."""
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def _stratified(index: list[int], size: float, y: list[int], seed: int, key: str) -> tuple[list, list]:
    """``train_test_split`` with stratification; a part too small for it is refused, naming ``key``."""
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes most of a second to import

    try:
        return train_test_split(index, test_size=size, stratify=y, random_state=seed)
    except ValueError as exc:
        raise ConfigError(f"{key}: {size:g} of {len(index)} graphs is too small or too large a part "
                          f"for a stratified split ({exc})") from exc


def holdout_split(labels: Tensor, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """One stratified train/val/test split, drawn from ``seed``."""
    index = list(range(len(labels)))
    y = labels.tolist()
    rest, test = _stratified(index, test_fraction, y, seed, "protocol.test_fraction")
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = _stratified(rest, val_share, [y[i] for i in rest], seed, "protocol.val_fraction")
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def own_split(split: dict[str, list[int]], labels: Tensor, val_fraction: float, seed: int) -> dict[str, list[int]]:
    """The data's own split; where it has no validation part, one is carved (stratified) from its training part."""
    if not split["train"] or not split["test"]:
        raise DataError(f"dataset.split_column: the data's split needs train and test graphs (it has "
                        f"{len(split['train'])} train, {len(split['test'])} test)")
    if split["val"]:
        return {part: sorted(split[part]) for part in PARTS}
    y = labels.tolist()
    train, val = _stratified(split["train"], val_fraction, [y[i] for i in split["train"]], seed,
                             "protocol.val_fraction")
    return {"train": sorted(train), "val": sorted(val), "test": sorted(split["test"])}


def kfold_splits(labels: Tensor, folds: int, val_fraction: float, seed: int) -> list[dict[str, list[int]]]:
    """Stratified k-fold: each fold's test part once, a stratified validation part carved from its training part."""
    y = labels.numpy()
    smallest = int(labels.bincount().min())
    if folds > smallest:
        raise ConfigError(f"protocol.folds: {folds} stratified folds need at least {folds} graphs of every class; "
                          f"the smallest class has {smallest}")
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, test) in enumerate(splitter.split(y, y)):
        train, val = _stratified(rest.tolist(), val_fraction, y[rest].tolist(), seed + fold, "protocol.val_fraction")
        splits.append({"train": sorted(train), "val": sorted(val), "test": sorted(test.tolist())})
    return splits


def check_split(split: Any, num_graphs: int, what: str) -> None:
    """Refuse a split that is not three disjoint, non-empty lists of graph indices in range."""
    if not isinstance(split, dict) or set(split) != set(PARTS):
        raise DataError(f"{what}: a split needs exactly the parts {', '.join(PARTS)}")
    seen: set[int] = set()
    for part in PARTS:
        index = split[part]
        if not isinstance(index, list) or not index:
            raise DataError(f"{what}: the {part} part is empty or not a list")
        if any(type(i) is not int or not 0 <= i < num_graphs for i in index):
            raise DataError(f"{what}: the {part} part holds something other than graph indices 0..{num_graphs - 1}")
        if len(set(index)) != len(index) or seen & set(index):
            raise DataError(f"{what}: the {part} part repeats graphs or shares them with another part")
        seen |= set(index)


def check_folds(folds: Any, num_graphs: int, what: str) -> None:
    """Refuse fold assignments whose folds are not valid splits or whose test parts overlap."""
    if not isinstance(folds, list) or len(folds) < 2:
        raise DataError(f"{what}: k-fold assignments need a list of at least two folds")
    tested: set[int] = set()
    for i, fold in enumerate(folds):
        check_split(fold, num_graphs, f"{what} fold {i}")
        if tested & set(fold["test"]):
            raise DataError(f"{what}: the test parts of the folds overlap (fold {i})")
        tested |= set(fold["test"])


def split_metadata(name: str, labels: Tensor, seed: int, **extra: Any) -> dict[str, Any]:
    """What a split file records about the data it was drawn from."""
    return {"dataset": name, "num_graphs": len(labels), "labels_hash": labels_hash(labels), "seed": seed, **extra}


def check_same_data(meta: dict[str, Any], name: str, labels: Tensor, what: str) -> None:
    """Refuse ``meta`` (of a split file or a checkpoint) when it was drawn from other data."""
    expected = {"dataset": name, "num_graphs": len(labels), "labels_hash": labels_hash(labels)}
    for key, value in expected.items():
        if meta.get(key) != value:
            raise DataError(f"{what} does not match the dataset: {key} is {meta.get(key)!r}, expected {value!r}")


def read_split_file(path: Path, name: str, labels: Tensor, kind: str) -> dict[str, Any]:
    """Read a split file of ``kind`` (``split``: holdout, ``folds``: k-fold) and refuse it when it is of the other
    kind, was drawn from other data, or its indices are not a valid split."""
    try:
        payload = json.loads(Path(path).read_text())
        meta = payload["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    if not isinstance(payload, dict) or kind not in payload:
        other = "a k-fold folds file" if "folds" in payload else "a holdout split file"
        raise DataError(f"split file {path} is {other}, not the {'holdout split' if kind == 'split' else 'k-fold folds'}"
                        " this protocol needs")
    check_same_data(meta, name, labels, f"split file {path}")
    check = check_split if kind == "split" else check_folds
    check(payload[kind], len(labels), f"split file {path}")
    return payload
