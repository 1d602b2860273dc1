"""One data path: load a dataset, fit the feature statistics on the training part, featurise, make loaders.

Training, ``eval`` and every later command go through :class:`Dataset` (and :func:`from_checkpoint`, which rebuilds
the training features from a checkpoint alone), so every command sees the features that training saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from mempool_cli.config import DataSpec, default_data_root, default_data_source
from mempool_cli.data.features import GraphSet, featurize, fit_feature_stats
from mempool_cli.data.splits import check_same_data, labels_hash
from mempool_cli.data.tu import load_tudataset

__all__ = ["Dataset", "GraphSet", "from_checkpoint", "make_loader"]


@dataclass
class Dataset:
    """A loaded dataset: its spec (name, place, feature recipe), the raw graphs and the label of each graph."""

    spec: DataSpec
    raw: Any
    labels: Tensor

    @classmethod
    def load(cls, spec: DataSpec) -> "Dataset":
        """Load the dataset that ``spec`` names (cache, offline source or download)."""
        raw = load_tudataset(spec.name, spec.root, spec.source, spec.url)
        return cls(spec, raw, torch.cat([g.y.view(-1) for g in raw]))

    def fit_features(self, train_index: list[int]) -> dict[str, list]:
        """The feature statistics of the training graphs (the only ones they may come from)."""
        return fit_feature_stats(self.raw, self.spec.recipe(), train_index)

    def featurize(self, stats: Mapping[str, list]) -> GraphSet:
        """Every graph with the recipe's node features, standardised with ``stats``."""
        return featurize(self.raw, self.spec.recipe(), stats)

    def describe(self, graphs: GraphSet, stats: Mapping[str, list]) -> dict[str, Any]:
        """What a checkpoint records to featurise graphs the same way and to recognise this data again."""
        return {**self.spec.recipe(), "num_graphs": len(graphs), "num_classes": graphs.num_classes,
                "num_features": graphs.num_features, "feature_stats": dict(stats),
                "labels_hash": labels_hash(self.labels), "class_names": list(self.raw.class_names)}


def from_checkpoint(info: Mapping[str, Any], root: Optional[str] = None) -> GraphSet:
    """The graphs of a checkpoint's dataset (its ``dataset`` entry), featurised exactly as in training.

    The data is looked up in ``root`` (default: ``$MEMPOOL_DATA_ROOT`` or the usual cache) and the offline source
    of ``$MEMPOOL_DATA_SOURCE``, never in paths or addresses read from the checkpoint.
    """
    recipe = {key: info[key] for key in DataSpec.RECIPE_KEYS}
    spec = DataSpec(**recipe, root=root or default_data_root(), source=default_data_source())
    dataset = Dataset.load(spec)
    check_same_data({"dataset": info["name"], "num_graphs": info["num_graphs"], "labels_hash": info["labels_hash"]},
                    spec.name, dataset.labels, f"dataset {spec.name} in {spec.root}")
    return dataset.featurize(info["feature_stats"])


def make_loader(graphs: GraphSet, index: list[int], batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> DataLoader:
    """A PyG DataLoader over the graphs at ``index``; shuffling draws from ``generator``."""
    return DataLoader([graphs.graphs[i] for i in index], batch_size=batch_size, shuffle=shuffle, generator=generator)
