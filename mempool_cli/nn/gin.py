"""PyG's GIN convolution with its sum aggregation on a compiled CSR kernel (CPU)."""
from __future__ import annotations

import torch_geometric.nn as pyg_nn
from torch import Tensor

from mempool_cli.nn import kernels


class FastGINConv(pyg_nn.GINConv):
    """:class:`torch_geometric.nn.GINConv`, the same parameters and the same outputs to the bit (its own name:
    PyG reads a layer's source by class name to build ``propagate``, so a second ``GINConv`` would mislead it).
    On the CPU (float32 and float64, node-list ``x`` and an ``edge_index`` tensor) the neighbours' sum
    ``sum_{j -> i} x_j`` runs in one pass over a CSR adjacency (:class:`~mempool_cli.nn.kernels.NeighbourSum`)
    instead of a gather and a scatter-add of every edge's message; elsewhere it is PyG's own code. The rest is
    PyG's operations in PyG's order, so gradients meeting at ``x`` add up in the same order too."""

    def forward(self, x: Tensor, edge_index: Tensor, size=None) -> Tensor:
        if size is not None or not isinstance(x, Tensor) or not isinstance(edge_index, Tensor) \
                or not kernels.usable(x):
            return super().forward(x, edge_index, size)
        adjacency = kernels.cpu_kernels().adjacency(edge_index, x.size(0))
        out = kernels.NeighbourSum.apply(x, adjacency)
        return self.nn(out + (1 + self.eps) * x)
