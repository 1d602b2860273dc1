"""Random-walk structural features: each node's probability of being back where it started after 1..K steps.

The random-walk encoding of Dwivedi et al. (ICLR 2022), as PyG's ``AddRandomWalkPE`` computes it: the diagonals of
P, P^2, ..., P^K for the walk matrix P = D^-1 A of each graph (an isolated node stays at 0). It describes a node's
neighbourhood (cycles, how tree-like it is) where the node labels say nothing about the structure; the MemGNN paper's
GMN variant feeds the memory layers such a topological embedding. No learned parameters, so nothing to fit.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from mempool_cli.errors import DataError

CHUNK_ENTRIES = 1 << 22  # graphs of similar size share one batched product of padded [n, n] walk matrices
SPARSE_NODES = 100  # a larger graph multiplies by its sparse walk matrix on its own (measured faster from ~100 nodes)
MAX_NODES = 20_000  # the powers of a graph's walk matrix are dense [n, n]: 1.6 GB of float32 at this size


def return_probabilities(graphs: Sequence[Data], steps: int) -> Tensor:
    """``[total nodes, steps]``, the graphs' nodes in order: column k holds each node's return probability
    after k+1 steps. A graph above ``MAX_NODES`` nodes is refused (its dense powers would not fit)."""
    for i, g in enumerate(graphs):
        if g.num_nodes > MAX_NODES:
            raise DataError(f"dataset.random_walk: graph {i} has {g.num_nodes} nodes; return probabilities need "
                            f"its dense [n, n] walk powers, so at most {MAX_NODES} nodes (set dataset.random_walk=0)")
    out = torch.zeros(sum(g.num_nodes for g in graphs), steps)
    offsets = torch.tensor([0] + [g.num_nodes for g in graphs]).cumsum(0).tolist()
    for chunk in _chunks(graphs):
        walks = _padded_walks([graphs[i] for i in chunk])
        for i, rows in zip(chunk, _diagonals(walks, steps)):
            out[offsets[i]:offsets[i + 1]] = rows[:graphs[i].num_nodes]
    return out


def _chunks(graphs: Sequence[Data]) -> Iterator[list[int]]:
    """Indices of graphs of similar size, together at most ``CHUNK_ENTRIES`` padded entries (large ones alone)."""
    order = sorted(range(len(graphs)), key=lambda i: graphs[i].num_nodes)
    chunk: list[int] = []
    for i in order:
        n = graphs[i].num_nodes
        if chunk and (n > SPARSE_NODES or (len(chunk) + 1) * n * n > CHUNK_ENTRIES):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def _padded_walks(graphs: Sequence[Data]) -> Tensor:
    """The walk matrices D^-1 A of ``graphs``, ``[B, n, n]`` zero-padded to the largest (sparse for one large graph)."""
    n = max(g.num_nodes for g in graphs)
    batch = torch.cat([torch.full((g.edge_index.size(1),), b) for b, g in enumerate(graphs)])
    row, col = torch.cat([g.edge_index for g in graphs], dim=1)
    degree = torch.zeros(len(graphs), n).index_put_((batch, row), torch.ones(row.numel()), accumulate=True)
    values = 1.0 / degree[batch, row]
    if len(graphs) == 1 and n > SPARSE_NODES:
        return torch.sparse_coo_tensor(torch.stack([batch, row, col]), values, (1, n, n),
                                       check_invariants=True).coalesce()
    return torch.zeros(len(graphs), n, n).index_put_((batch, row, col), values, accumulate=True)


def _diagonals(walks: Tensor, steps: int) -> Tensor:
    """``[B, n, steps]``: the diagonals of the first ``steps`` powers of each walk matrix."""
    power, columns = torch.eye(walks.size(1)).expand(walks.shape), []
    for _ in range(steps):
        power = torch.bmm(walks, power)
        columns.append(power.diagonal(dim1=1, dim2=2))
    return torch.stack(columns, dim=2)
