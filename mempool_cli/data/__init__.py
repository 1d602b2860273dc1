"""One data path: read a dataset of any kind, fit the feature statistics on the training part, featurise, make
loaders.

Training, ``eval`` and ``predict`` go through :class:`Dataset`, :func:`from_checkpoint` (the training data
featurised from a checkpoint alone) and :func:`read_input` (new graphs read and featurised as the checkpoint's
data was), so every command sees the features that training saw.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from mempool_cli.config import DataSpec, default_data_root, default_data_source
from mempool_cli.data.batching import GraphBatch, GraphLoader
from mempool_cli.data.features import GraphSet, featurize, fit_feature_stats, resolve_recipe, vocabulary
from mempool_cli.data.random_walk import return_probabilities
from mempool_cli.data.source import NO_LABEL, SourceGraphs
from mempool_cli.data.splits import check_same_data, labels_hash
from mempool_cli.errors import DataError

__all__ = ["Dataset", "GraphBatch", "GraphLoader", "GraphSet", "SourceGraphs", "checkpoint_data", "featurize_input",
           "from_checkpoint", "make_eval_loader", "make_loader", "read_input", "read_source"]

# nodes an evaluation batch holds at most: 4 MB a [N, 64] float tensor, and PyG's padded layer (model.memory.impl=pyg)
# stays within a few hundred MB on REDDIT-BINARY's largest graphs
EVAL_NODES = 1 << 14


def read_source(spec: DataSpec, labelled: bool = True) -> SourceGraphs:
    """The graphs that ``spec`` names: a TU dataset (by name or folder), a molecules file or graph files."""
    if spec.kind == "molecules":
        from mempool_cli.data.molecules import read_molecules

        return read_molecules(spec, labelled)
    if spec.kind == "graphs":
        from mempool_cli.data.graph_files import read_graph_files

        return read_graph_files(spec, labelled)
    from mempool_cli.data.tu import load_tu_folder, load_tudataset

    if spec.path:
        return load_tu_folder(spec.path, spec.name)
    return load_tudataset(spec.name, spec.root, spec.source, spec.url)


@dataclass
class Dataset:
    """A loaded dataset: its spec, its source graphs, the feature recipe resolved for them and the recipe's
    random-walk features (computed once: they need no statistics, so every fold shares them)."""

    spec: DataSpec
    source: SourceGraphs
    recipe: dict[str, Any]
    walks: Optional[Tensor] = None

    @classmethod
    def load(cls, spec: DataSpec) -> "Dataset":
        """Load the dataset that ``spec`` names (cache, offline source, download, or the files at its path)."""
        source = read_source(spec)
        if not source.labelled:
            raise DataError(f"{source.name}: training needs a label for every graph")
        recipe = resolve_recipe(source, spec.recipe())
        walks = return_probabilities(source.graphs, recipe["random_walk"]) if recipe["random_walk"] else None
        return cls(spec, source, recipe, walks)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def labels(self) -> Tensor:
        return self.source.labels

    def fit_features(self, train_index: list[int]) -> dict[str, list]:
        """The feature statistics of the training graphs (the only ones they may come from)."""
        return fit_feature_stats(self.source, self.recipe, train_index)

    def featurize(self, stats: Mapping[str, list]) -> GraphSet:
        """Every graph with the recipe's node features, standardised with ``stats``."""
        return featurize(self.source, self.recipe, stats, walks=self.walks)

    def describe(self, graphs: GraphSet, stats: Mapping[str, list]) -> dict[str, Any]:
        """What a checkpoint records to featurise graphs the same way and to recognise this data again."""
        path = str(Path(self.spec.path).expanduser().resolve()) if self.spec.path else None
        return {**self.recipe, "name": self.name, "path": path, "num_graphs": len(graphs),
                "num_classes": graphs.num_classes, "num_features": graphs.num_features,
                "num_edge_features": graphs.num_edge_features, "feature_stats": dict(stats),
                "labels_hash": labels_hash(self.labels), "class_names": list(self.source.class_names),
                "attr_names": self.source.attr_names, "cat_names": self.source.cat_names}


def _reading_spec(info: Mapping[str, Any], path: Optional[str], root: Optional[str]) -> DataSpec:
    """A data spec that reads like the checkpoint's data did (its recipe and columns), from ``path``."""
    defaults = DataSpec(name=info["name"])
    recipe = {key: info.get(key, getattr(defaults, key)) for key in DataSpec.RECIPE_KEYS}
    return DataSpec(**recipe, path=path, root=root or default_data_root(), source=default_data_source())


def _stats(info: Mapping[str, Any], source: SourceGraphs) -> dict[str, list]:
    """The checkpoint's feature statistics (older checkpoints lack the vocabularies: they were the data's own)."""
    stats = dict(info["feature_stats"])
    stats.setdefault("vocab", [vocabulary(v) for v in source.cat_values])
    stats.setdefault("edge_vocab", [])
    return stats


def _checked_path(path: str) -> str:
    """A path recorded in a checkpoint, used only when it is a plain file or folder (never a device or a pipe)."""
    target = Path(path)
    if not (target.is_file() or target.is_dir()):
        raise DataError(f"the checkpoint's data {path} is not there (or not a plain file or folder); "
                        "name it with --data PATH")
    return path


def from_checkpoint(info: Mapping[str, Any], root: Optional[str] = None, data: Optional[str] = None) -> GraphSet:
    """The graphs of a checkpoint's dataset, featurised exactly as in training (see :func:`checkpoint_data`)."""
    return checkpoint_data(info, root, data)[1]


def checkpoint_data(info: Mapping[str, Any], root: Optional[str] = None,
                    data: Optional[str] = None) -> tuple[SourceGraphs, GraphSet]:
    """The graphs of a checkpoint's dataset (its ``dataset`` entry) as read and featurised exactly as in training.

    A TU dataset by name is looked up in ``root`` (default: ``$MEMPOOL_DATA_ROOT`` or the usual cache) and the
    offline source of ``$MEMPOOL_DATA_SOURCE``; data read from a path comes from ``data`` or the recorded path
    (a plain file or folder). Either way it must be the data trained on (same graphs, same labels).
    """
    path = data or (_checked_path(info["path"]) if info.get("path") else None)
    spec = _reading_spec(info, path, root)
    source = read_source(spec)
    check_same_data({"dataset": info["name"], "num_graphs": info["num_graphs"], "labels_hash": info["labels_hash"]},
                    source.name, source.labels, f"dataset {source.name} in {path or spec.root}")
    return source, featurize(source, _resolved(info), _stats(info, source))


def _resolved(info: Mapping[str, Any]) -> dict[str, Any]:
    """The feature recipe a checkpoint was trained with (its automatic choices made; older checkpoints had no
    random-walk features)."""
    return {**{key: info[key] for key in ("node_attributes", "node_labels", "degree", "max_degree")},
            "random_walk": info.get("random_walk", 0)}


def read_input(info: Mapping[str, Any], path: str, part: Optional[str] = None) -> SourceGraphs:
    """New graphs at ``path`` (a file or folder of the checkpoint's data kind, or a TU dataset's name), read as the
    checkpoint's training data was; with ``part``, only the graphs that the split column (the one trained with)
    puts in that part. Labels, where the input has them, are mapped to the checkpoint's classes by name (``-1``:
    no label)."""
    target = Path(path).expanduser()
    if not target.exists() and (info.get("kind", "tu") != "tu" or "/" in path):
        raise DataError(f"{path}: no such file or folder")
    spec = _reading_spec(info, str(target) if target.exists() else None, None)
    if spec.path is None:
        spec = replace(spec, name=path)
    if part not in (None, "train", "val", "test"):
        raise DataError(f"--part: unknown value {part!r}; choose one of: train, val, test")
    if part is not None and not info.get("split_column"):
        raise DataError("--part: the checkpoint's data had no split column (dataset.split_column) to pick a part by")
    split_column = info.get("split_column") if part is not None else None
    source = read_source(replace(spec, split_column=split_column, skip_invalid=True), labelled=False)
    if part is not None:
        source = source.part(part)
    _map_labels(source, info.get("class_names") or [str(c) for c in range(info["num_classes"])], path)
    return source


def featurize_input(info: Mapping[str, Any], source: SourceGraphs) -> GraphSet:
    """Graphs read by :func:`read_input`, featurised with the checkpoint's recipe, statistics and vocabularies."""
    return featurize(source, _resolved(info), _stats(info, source), num_classes=info["num_classes"])


def _map_labels(source: SourceGraphs, class_names: list[str], path: str) -> None:
    """Relabel the input's graphs with the checkpoint's class indices; a class the model does not know is
    refused, naming it."""
    if not source.class_names:
        return
    unknown = sorted(set(source.class_names) - set(class_names))
    if unknown:
        raise DataError(f"{path}: the label {unknown[0]!r} is not one of the model's classes "
                        f"({', '.join(class_names)})")
    mapping = torch.tensor([class_names.index(name) for name in source.class_names] + [NO_LABEL])
    for g in source.graphs:
        g.y = mapping[g.y]


def make_loader(graphs: GraphSet, index: list[int], batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> GraphLoader:
    """Batches of the graphs at ``index``; shuffling draws from ``generator``."""
    return GraphLoader([graphs.graphs[i] for i in index], batch_size, shuffle, generator)


def make_eval_loader(graphs: GraphSet, index: list[int]) -> GraphLoader:
    """The graphs at ``index`` in order, for evaluation: batches of up to ``EVAL_NODES`` nodes, so an evaluation
    pass takes few batches (each batch's results are the same as in smaller batches within float rounding:
    evaluation treats every graph on its own)."""
    return GraphLoader([graphs.graphs[i] for i in index], batch_size=max(1, len(index)), max_nodes=EVAL_NODES)
