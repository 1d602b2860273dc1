"""PyG's GIN convolution with its aggregation on a compiled CSR kernel (CPU), and GIN's MLP."""
from __future__ import annotations

import torch_geometric.nn as pyg_nn
from torch import Tensor, nn

from mempool_cli.nn import kernels
from mempool_cli.nn.batch_norm import FastBatchNorm1d


class FastGINConv(pyg_nn.GINConv):
    """:class:`torch_geometric.nn.GINConv`, the same parameters and the same outputs within float32 rounding (its
    own name: PyG reads a layer's source by class name to build ``propagate``, so a second ``GINConv`` would
    mislead it). On the CPU (float32 and float64, node-list ``x`` and an ``edge_index`` tensor) the aggregation
    ``sum_{j -> i} x_j + (1 + eps) x_i`` runs in one pass over a CSR adjacency
    (:class:`~mempool_cli.nn.kernels.GINAggregation`) instead of a gather and a scatter-add of every edge's
    message, a product and a sum; elsewhere it is PyG's own code."""

    def forward(self, x: Tensor, edge_index: Tensor, size=None) -> Tensor:
        if size is not None or not isinstance(x, Tensor) or not isinstance(edge_index, Tensor) \
                or not kernels.usable(x):
            return super().forward(x, edge_index, size)
        adjacency = kernels.cpu_kernels().adjacency(edge_index, x.size(0))
        return self.nn(kernels.GINAggregation.apply(x, adjacency, self.eps))


class GINMLP(nn.Sequential):
    """GIN's MLP ``Linear -> BatchNorm1d -> ReLU -> Linear`` (a :class:`~torch.nn.Sequential` of those four, so its
    parameters keep their names), the batch norm and the relu taken as one step
    (:class:`~mempool_cli.nn.FastBatchNorm1d`)."""

    def __init__(self, hidden: int):
        super().__init__(nn.Linear(hidden, hidden), FastBatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(self, x: Tensor) -> Tensor:
        first, norm, _, second = self
        return second(norm(first(x), relu=True))
