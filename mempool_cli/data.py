"""TUDataset loading (download or offline copy), the per-dataset node-feature recipe and stratified splits."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import TUDataset
from torch_geometric.loader import DataLoader
from torch_geometric.utils import degree

from mempool_cli.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_RAW_FILES = ("A", "graph_indicator", "graph_labels")


@dataclass
class GraphSet:
    """Featurised graphs of one dataset, with what the model and the splits need to know."""

    name: str
    graphs: list[Data]
    labels: Tensor
    num_features: int
    num_classes: int

    def __len__(self) -> int:
        return len(self.graphs)


class _TUDataset(TUDataset):
    """PyG's TUDataset with the download address taken from the config."""

    def __init__(self, root: str, name: str, url: str) -> None:
        self.url = url.rstrip("/")
        super().__init__(root, name, use_node_attr=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock, so parallel jobs do not download or process one dataset at the same time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")
    except OSError as exc:
        raise DataError(f"cannot use {path.parent} as the dataset cache (dataset.root): {exc.strerror}") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _raw_complete(raw_dir: Path, name: str) -> bool:
    return all((raw_dir / f"{name}_{part}.txt").is_file() for part in REQUIRED_RAW_FILES)


def _seed_from_source(source: Path, raw_dir: Path, name: str) -> None:
    """Copy ``<source>/<name>/raw/`` into the writable cache; the source itself is never written to."""
    src = source / name / "raw"
    if not _raw_complete(src, name):
        return
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".raw-"))
    try:
        for file in src.iterdir():
            if file.is_file():
                shutil.copyfile(file, staging / file.name)
        if raw_dir.exists():
            shutil.rmtree(raw_dir)
        staging.rename(raw_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("copied %s raw files from %s", name, src)


def load_tudataset(name: str, root: str, source: str | None, url: str) -> TUDataset:
    """Load a TU benchmark into ``root``: from an offline ``source`` copy when it has it, else by download."""
    root_dir = Path(os.path.expanduser(root)).resolve()
    raw_dir = root_dir / name / "raw"
    with _locked(root_dir / f".{name}.lock"):
        if source and not _raw_complete(raw_dir, name):
            _seed_from_source(Path(os.path.expanduser(source)), raw_dir, name)
        downloading = not _raw_complete(raw_dir, name)
        try:
            return _TUDataset(str(root_dir), name, url)
        except OSError as exc:
            if not downloading:
                raise DataError(f"cannot read dataset {name} in {root_dir / name}: {exc}") from exc
            shutil.rmtree(raw_dir, ignore_errors=True)
            files = ", ".join(f"{name}_{part}.txt" for part in REQUIRED_RAW_FILES)
            raise DataError(
                f"could not download {name} from {url.rstrip('/')}/{name}.zip ({exc}); "
                f"put its raw files ({files}, ...) in {raw_dir}/ "
                f"or set MEMPOOL_DATA_SOURCE to a folder that holds {name}/raw/"
            ) from exc
        except Exception as exc:  # PyG raises many kinds on malformed files
            raise DataError(f"cannot read dataset {name} in {root_dir / name}: {type(exc).__name__}: {exc}") from exc


def fit_feature_stats(dataset: TUDataset, recipe: Mapping[str, Any], train_index: list[int]) -> dict[str, list]:
    """Mean and standard deviation of the continuous node attributes over the training graphs only."""
    num_attr = dataset.num_node_attributes if recipe["node_attributes"] else 0
    if num_attr == 0:
        return {"mean": [], "std": []}
    attrs = torch.cat([dataset[i].x[:, :num_attr] for i in train_index]).double()
    std = attrs.std(dim=0, unbiased=False)
    std[std < 1e-12] = 1.0
    return {"mean": attrs.mean(dim=0).tolist(), "std": std.tolist()}


def _node_features(graph: Data, recipe: Mapping[str, Any], num_attr: int, num_labels: int, stats: Mapping) -> Tensor:
    parts = []
    x = graph.x
    if num_attr:
        mean = torch.tensor(stats["mean"], dtype=x.dtype)
        std = torch.tensor(stats["std"], dtype=x.dtype)
        parts.append((x[:, :num_attr] - mean) / std)
    if num_labels:
        parts.append(x[:, num_attr : num_attr + num_labels])
    if recipe["degree"] == "onehot":
        deg = degree(graph.edge_index[0], graph.num_nodes, dtype=torch.long).clamp(max=recipe["max_degree"])
        parts.append(torch.nn.functional.one_hot(deg, recipe["max_degree"] + 1).float())
    if not parts:
        parts.append(torch.ones(graph.num_nodes, 1))
    return torch.cat(parts, dim=1).float()


def featurize(dataset: TUDataset, recipe: Mapping[str, Any], stats: Mapping[str, list]) -> GraphSet:
    """Apply the dataset's feature recipe (see ``configs/dataset/*.yaml``) to every graph."""
    has_x = dataset._data.x is not None
    num_attr = dataset.num_node_attributes if has_x and recipe["node_attributes"] else 0
    num_labels = dataset.num_node_labels if has_x and recipe["node_labels"] else 0
    graphs = []
    for graph in dataset:
        if not has_x:
            graph.x = torch.empty(graph.num_nodes, 0)
        x = _node_features(graph, recipe, num_attr, num_labels, stats)
        graphs.append(Data(x=x, edge_index=graph.edge_index, y=graph.y.view(-1), num_nodes=graph.num_nodes))
    labels = torch.cat([g.y for g in graphs])
    return GraphSet(
        name=dataset.name,
        graphs=graphs,
        labels=labels,
        num_features=graphs[0].x.size(1),
        num_classes=int(labels.max()) + 1,
    )


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


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_split_file(path: Path, name: str, labels: Tensor) -> dict[str, Any]:
    """Read a split file and refuse it when it was drawn from other data."""
    try:
        payload = json.loads(Path(path).read_text())
        meta = payload["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    expected = {"dataset": name, "num_graphs": len(labels), "labels_hash": labels_hash(labels)}
    for key, value in expected.items():
        if meta.get(key) != value:
            raise DataError(f"split file {path} does not match the dataset: {key} is {meta.get(key)!r}, expected {value!r}")
    return payload


def make_loader(graphs: list[Data], index: list[int], batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A PyG DataLoader over ``index``; shuffling is driven by its own seeded generator."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader([graphs[i] for i in index], batch_size=batch_size, shuffle=shuffle, generator=generator)
