"""The node-feature recipe: standardised continuous attributes, one-hot node labels, one-hot degrees."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import TUDataset
from torch_geometric.utils import degree


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
