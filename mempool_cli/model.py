"""The graph classifier: GNN encoder -> stacked MemPooling layers -> linear classifier."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from torch import Tensor, nn

from mempool_cli import config
from mempool_cli.config import ModelSpec, registry
from mempool_cli.nn import MemPooling


def _gin(hidden: int) -> nn.Module:
    mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden))
    return pyg_nn.GINConv(mlp, train_eps=True)


CONVS = registry(config.ENCODERS, gin=_gin, gcn=lambda hidden: pyg_nn.GCNConv(hidden, hidden),
                 gat=lambda hidden: pyg_nn.GATConv(hidden, hidden, heads=4, concat=False))
NORMS = registry(config.NORMS, batch=nn.BatchNorm1d, layer=nn.LayerNorm, none=lambda hidden: nn.Identity())
MEMORY_LAYERS = registry(config.MEMORY_IMPLS, fast=MemPooling, pyg=pyg_nn.MemPooling)


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
        self.dropout = dropout
        self.embed = nn.Linear(num_features, hidden)
        self.convs = nn.ModuleList(CONVS[encoder](hidden) for _ in range(layers))
        self.norms = nn.ModuleList(NORMS[norm](hidden) for _ in range(layers))
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


def build_model(spec: ModelSpec, num_features: int, num_classes: int) -> MemGNN:
    """The classifier of ``spec`` for inputs of ``num_features`` and ``num_classes`` classes."""
    return MemGNN(**spec.model_args(num_features, num_classes))


def model_from_args(model_args: Mapping[str, Any]) -> MemGNN:
    """The classifier of a checkpoint's ``model_args``, its spec checked like any other."""
    spec = ModelSpec.from_model_args(model_args)
    return build_model(spec, model_args["num_features"], model_args["num_classes"])

