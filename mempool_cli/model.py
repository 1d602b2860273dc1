"""The graph classifier: GNN encoder -> stacked MemPooling layers -> linear classifier."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from torch import Tensor, nn

from mempool_cli.nn import MemPooling

MEMORY_LAYERS = {"fast": MemPooling, "pyg": pyg_nn.MemPooling}


def _conv(encoder: str, hidden: int) -> nn.Module:
    if encoder == "gin":
        mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        return pyg_nn.GINConv(mlp, train_eps=True)
    if encoder == "gcn":
        return pyg_nn.GCNConv(hidden, hidden)
    if encoder == "gat":
        return pyg_nn.GATConv(hidden, hidden, heads=4, concat=False)
    raise ValueError(f"unknown encoder {encoder!r}; choose one of: gat, gcn, gin")


def _norm(norm: str, hidden: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(hidden)
    if norm == "layer":
        return nn.LayerNorm(hidden)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of: batch, layer, none")


class MemGNN(nn.Module):
    """Residual GNN encoder, a stack of memory (MemPooling) layers and a linear classifier."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        encoder: str = "gin",
        hidden: int = 64,
        layers: int = 3,
        dropout: float = 0.5,
        norm: str = "batch",
        clusters: Sequence[int] = (10, 1),
        memory_hidden: int = 64,
        heads: Sequence[int] = (5, 5),
        tau: Sequence[float] = (1.0, 1.0),
        memory_impl: str = "fast",
    ):
        super().__init__()
        if not len(clusters) == len(heads) == len(tau):
            raise ValueError("clusters, heads and tau need one entry per memory layer")
        if memory_impl not in MEMORY_LAYERS:
            raise ValueError(f"unknown memory implementation {memory_impl!r}; choose one of: fast, pyg")
        self.dropout = dropout
        self.embed = nn.Linear(num_features, hidden)
        self.convs = nn.ModuleList(_conv(encoder, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(_norm(norm, hidden) for _ in range(layers))
        memory_layer = MEMORY_LAYERS[memory_impl]
        sizes = [hidden] + [memory_hidden] * len(clusters)
        self.memory = nn.ModuleList(
            memory_layer(sizes[i], sizes[i + 1], heads[i], clusters[i], tau[i]) for i in range(len(clusters))
        )
        self.classifier = nn.Linear(memory_hidden, num_classes)

    def memory_keys(self) -> list[nn.Parameter]:
        """The memory keys: in the paper's schedule, the parameters learned by the KL loss only."""
        return [layer.k for layer in self.memory]

    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node embeddings ``[N, hidden]``."""
        x = self.embed(x)
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(x, edge_index)))
            x = x + F.dropout(h, self.dropout, training=self.training)
        return x

    def route_key_gradients(self, enabled: bool) -> bool:
        """With ``enabled``, one backward pass of ``ce + kl`` trains each layer's keys on that layer's KL loss
        only and every other parameter on the cross-entropy only (the paper's schedule). Returns ``False``
        where the memory layers cannot do this (PyG's layer)."""
        if not all(isinstance(layer, MemPooling) for layer in self.memory):
            return False
        for layer in self.memory:
            layer.split_key_grad = enabled
        return True

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Class logits ``[B, classes]`` and the KL loss of each memory layer ``[layers]``."""
        x = self.encode(x, edge_index)
        kls = []
        for i, layer in enumerate(self.memory):
            if i == 0:
                x, S = layer(x, batch, batch_size=batch_size)
            else:
                x, S = layer(x)
            kls.append(MemPooling.kl_loss(S, batch, batch_size) if S.dim() == 2 else type(layer).kl_loss(S))
            x = F.dropout(F.leaky_relu(x), self.dropout, training=self.training)
        return self.classifier(x.mean(dim=1)), torch.stack(kls)


def build_model(**model_args: Any) -> MemGNN:
    """Build the classifier from plain keyword arguments (as stored in a checkpoint's ``model_args``)."""
    return MemGNN(**model_args)

