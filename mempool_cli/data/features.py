"""The node-feature recipe: standardised continuous attributes, one-hot categorical values, one-hot degrees and
random-walk return probabilities.

The statistics of the continuous attributes come from the training graphs only. The vocabulary of each
categorical column (node labels, atom types, bond types) comes from the inputs of every graph of the dataset, as
PyG's TUDataset does (integers: every value from the smallest to the largest). Graphs featurised later (``eval``,
``predict``) use the checkpoint's statistics and vocabularies: a value outside them becomes an all-zero one-hot
row, and is counted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import degree

from mempool_cli.data.random_walk import return_probabilities
from mempool_cli.data.source import SourceGraphs
from mempool_cli.errors import DataError


@dataclass
class GraphSet:
    """Featurised graphs of one dataset, with what the model, the splits and the reports need to know."""

    name: str
    graphs: list[Data]
    labels: Tensor
    num_features: int
    num_classes: int
    num_edge_features: int = 0
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> value -> nodes (or edges)

    def __len__(self) -> int:
        return len(self.graphs)


def resolve_recipe(source: SourceGraphs, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe with its automatic choices made for this data (``None``: what the data has; degree ``auto``:
    one-hot degrees where there are no other node features). Asking for features the data lacks is refused."""
    resolved = dict(recipe)
    for key, present, what in (("node_attributes", bool(source.attr_names), "continuous node attributes"),
                               ("node_labels", bool(source.cat_names), "node labels (categorical node values)")):
        if resolved[key] is None:
            resolved[key] = present
        elif resolved[key] and not present:
            raise DataError(f"dataset.{key}: {source.name} has no {what}; set dataset.{key}=false "
                            "(or use dataset=tu, whose recipe takes what the data has)")
    if resolved["degree"] == "auto":
        resolved["degree"] = "none" if resolved["node_attributes"] or resolved["node_labels"] else "onehot"
    return resolved


def vocabulary(values: list[str]) -> list[str]:
    """The one-hot columns of a categorical column: integers from the smallest to the largest, else sorted."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        return sorted(values)
    return [str(v) for v in range(min(numbers), max(numbers) + 1)] if numbers else []


def fit_feature_stats(source: SourceGraphs, recipe: Mapping[str, Any], train_index: list[int]) -> dict[str, list]:
    """Mean and standard deviation of the continuous node attributes over the training graphs only, and the
    vocabulary of every categorical node and edge column."""
    stats: dict[str, list] = {"mean": [], "std": [], "vocab": [vocabulary(v) for v in source.cat_values],
                              "edge_vocab": [vocabulary(v) for v in source.edge_values]}
    if recipe["node_attributes"]:
        attrs = torch.cat([source.graphs[i].attr for i in train_index]).double()
        std = attrs.std(dim=0, unbiased=False)
        std[std < 1e-12] = 1.0
        stats.update(mean=attrs.mean(dim=0).tolist(), std=std.tolist())
    return stats


class OneHot:
    """One-hot rows of a source's categorical columns in a fitted vocabulary; counts the values outside it."""

    def __init__(self, names: list[str], values: list[list[str]], vocab: list[list[str]], what: str):
        if len(values) != len(vocab):
            raise DataError(f"the input has {len(values)} {what} columns ({', '.join(names) or 'none'}); the model "
                            f"was trained on {len(vocab)}")
        self.names, self.values, self.widths = names, values, [len(v) for v in vocab]
        positions = [{value: i for i, value in enumerate(column)} for column in vocab]
        self.lookup = [torch.tensor([pos.get(v, -1) for v in column] + [-1], dtype=torch.long)
                       for column, pos in zip(values, positions)]
        self.unseen: dict[str, Counter] = {}

    def __call__(self, codes: Tensor) -> Tensor:
        parts = []
        for c, (lookup, width) in enumerate(zip(self.lookup, self.widths)):
            position = lookup[codes[:, c]]
            known = position >= 0
            rows = torch.zeros(len(codes), width)
            rows[known.nonzero().view(-1), position[known]] = 1.0
            if not known.all():
                found = Counter(self.values[c][i] for i in codes[~known, c].tolist())
                self.unseen.setdefault(self.names[c], Counter()).update(found)
            parts.append(rows)
        return torch.cat(parts, dim=1) if parts else torch.zeros(len(codes), 0)


def _degrees(source: SourceGraphs, counts: list[int], max_degree: int) -> Tensor:
    """One-hot degrees (capped at ``max_degree``) of every node of every graph, in one pass."""
    offsets = torch.tensor([0] + counts[:-1]).cumsum(0).tolist()
    rows = torch.cat([g.edge_index[0] + offset for g, offset in zip(source.graphs, offsets)])
    deg = degree(rows, sum(counts), dtype=torch.long).clamp(max=max_degree)
    return torch.nn.functional.one_hot(deg, max_degree + 1).float()


def featurize(source: SourceGraphs, recipe: Mapping[str, Any], stats: Mapping[str, list],
              num_classes: Optional[int] = None, walks: Optional[Tensor] = None) -> GraphSet:
    """Apply the (resolved) feature recipe with fitted ``stats`` to every graph of ``source`` (all nodes at once);
    ``walks``: the recipe's random-walk return probabilities where already computed."""
    width = len(stats["mean"])
    if recipe["node_attributes"] and len(source.attr_names) != width:
        raise DataError(f"the input has {len(source.attr_names)} continuous node attributes; the model was trained "
                        f"on {width}")
    counts = [g.num_nodes for g in source.graphs]
    nodes = OneHot(source.cat_names, source.cat_values, stats["vocab"], "categorical node") \
        if recipe["node_labels"] else None
    edges = OneHot(source.edge_names, source.edge_values, stats["edge_vocab"], "edge")
    parts = []
    if recipe["node_attributes"]:
        attrs = torch.cat([g.attr for g in source.graphs])
        parts.append((attrs - torch.tensor(stats["mean"], dtype=attrs.dtype)) / torch.tensor(stats["std"],
                                                                                          dtype=attrs.dtype))
    if nodes is not None:
        parts.append(nodes(torch.cat([g.cat for g in source.graphs])))
    if recipe["degree"] == "onehot":
        parts.append(_degrees(source, counts, recipe["max_degree"]))
    if recipe["random_walk"]:
        parts.append(walks if walks is not None else return_probabilities(source.graphs, recipe["random_walk"]))
    x = torch.cat(parts, dim=1).float() if parts else torch.ones(sum(counts), 1)
    edge_attr = edges(torch.cat([g.edge_cat for g in source.graphs])).split(
        [g.edge_cat.size(0) for g in source.graphs]) if source.edge_names else [None] * len(counts)
    graphs = []
    for g, features, bonds in zip(source.graphs, x.split(counts), edge_attr):
        data = Data(x=features, edge_index=g.edge_index, y=g.y.view(-1), num_nodes=g.num_nodes)
        if bonds is not None:
            data.edge_attr = bonds
        graphs.append(data)
    labels = source.labels
    return GraphSet(
        name=source.name, graphs=graphs, labels=labels,
        num_features=graphs[0].x.size(1) if graphs else 0,
        num_classes=num_classes or len(source.class_names),
        num_edge_features=sum(len(v) for v in stats["edge_vocab"]),
        unseen={name: dict(found) for name, found in {**(nodes.unseen if nodes else {}), **edges.unseen}.items()},
    )
