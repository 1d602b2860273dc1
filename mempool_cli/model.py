"""The graph classifier: GNN encoder -> stacked MemPooling layers -> linear classifier."""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from torch import Tensor, nn

from mempool_cli import config
from mempool_cli.config import ModelSpec, registry
from mempool_cli.nn import (FastBatchNorm1d, FastGINConv, GINMLP, MemPooling, leaky_relu_dropout,
                            residual_relu_dropout)


# each builder: (hidden, edge feature count) -> conv; only gine reads edge features
CONVS = registry(config.ENCODERS, gin=lambda hidden, _: FastGINConv(GINMLP(hidden), train_eps=True),
                 gine=lambda hidden, edges: pyg_nn.GINEConv(GINMLP(hidden), train_eps=True, edge_dim=edges),
                 gcn=lambda hidden, _: pyg_nn.GCNConv(hidden, hidden),
                 gat=lambda hidden, _: pyg_nn.GATConv(hidden, hidden, heads=4, concat=False))
NORMS = registry(config.NORMS, batch=FastBatchNorm1d, layer=nn.LayerNorm, none=lambda hidden: nn.Identity())
MEMORY_LAYERS = registry(config.MEMORY_IMPLS, fast=MemPooling, pyg=pyg_nn.MemPooling)
# the structure-agnostic path beside the memory: the input features pooled over each graph
READOUTS = registry(config.READOUTS, none=(), sum=(pyg_nn.global_add_pool,), mean=(pyg_nn.global_mean_pool,),
                    sum_mean=(pyg_nn.global_add_pool, pyg_nn.global_mean_pool))


def kmeans_centres(points: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """scikit-learn's k-means centres of ``points`` (best of 3 starts), computed on one thread so that they do not
    depend on the core count or ``threads``: its threads split the points by their number and add their
    partial sums in the order they finish. (One thread is what it ran on with ``threads=1``, the published runs.)"""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return KMeans(clusters, n_init=3, random_state=seed).fit(points).cluster_centers_


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
        memory_norm: str = "none",
        memory_radius: float = 3.0,
        head_init: Optional[float] = None,
        key_init: str = "uniform",
        key_reseed: float = 0.0,
        readout: str = "none",
        num_edge_features: int = 0,
    ):
        super().__init__()
        self.dropout, self.memory_norm, self.memory_radius, self.key_init = dropout, memory_norm, memory_radius, key_init
        self.readout, self.uses_edges, self.key_reseed = readout, encoder == "gine", key_reseed
        self.embed = nn.Linear(num_features, hidden)
        self.convs = nn.ModuleList(CONVS[encoder](hidden, num_edge_features) for _ in range(layers))
        self.norms = nn.ModuleList(NORMS[norm](hidden) for _ in range(layers))
        memory_layer = MEMORY_LAYERS[memory_impl]
        sizes = [hidden] + [memory_hidden] * len(clusters)
        self.memory = nn.ModuleList(
            memory_layer(sizes[i], sizes[i + 1], heads[i], clusters[i], tau[i]) for i in range(len(clusters))
        )
        self.memory_bn = FastBatchNorm1d(hidden, affine=False) if memory_norm == "batch" else None
        if head_init is not None:
            for layer in self.memory:
                nn.init.constant_(layer.conv.weight, head_init)
        parts = READOUTS[readout]
        self.baseline = nn.Sequential(nn.Linear(num_features * len(parts), hidden), nn.ReLU()) if parts else None
        self.classifier = nn.Linear(memory_hidden + (hidden if parts else 0), num_classes)

    def memory_keys(self) -> list[nn.Parameter]:
        """The memory keys: in the paper's schedule, the parameters learned by the KL loss only."""
        return [layer.k for layer in self.memory]

    def encode(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None) -> Tensor:
        """Node embeddings ``[N, hidden]``, as the first memory layer sees them: with ``memory_norm="sphere"`` on
        a sphere of radius ``memory_radius``; with ``"batch"`` standardised per feature (batch norm without
        affine) and scaled to a typical norm of ``memory_radius``."""
        x = self.embed(x)
        edges = (edge_attr,) if self.uses_edges else ()
        for conv, norm in zip(self.convs, self.norms):
            x = residual_relu_dropout(x, norm(conv(x, edge_index, *edges)), self.dropout, self.training)
        if self.memory_norm == "sphere":
            x = F.normalize(x, dim=-1) * self.memory_radius
        elif self.memory_norm == "batch":
            x = self.memory_bn(x) * (self.memory_radius / math.sqrt(x.size(-1)))
        return x

    @torch.no_grad()
    def _training_embeddings(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor]) -> Tensor:
        """:meth:`encode` as training computes it (batch statistics) without dropout noise, leaving the batch
        norms' running statistics as they were."""
        saved, dropout, training = copy.deepcopy(self.state_dict()), self.dropout, self.training
        self.dropout = 0.0
        self.train()
        points = self.encode(x, edge_index, edge_attr)
        self.load_state_dict(saved)
        self.dropout = dropout
        self.train(training)
        return points

    @torch.no_grad()
    def init_keys(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None, seed: int = 0) -> None:
        """Set every head's keys of the first memory layer to k-means centres of these nodes' embeddings, as DEC
        initialises its centres: one k-means run per head, seeded apart, its centres matched to the first head's
        (key j of every head then stands for the same cluster, so the heads' votes add up)."""
        from scipy.optimize import linear_sum_assignment

        layer = self.memory[0]
        points = self._training_embeddings(x, edge_index, edge_attr).double().cpu().numpy()
        first = None
        for h in range(layer.heads):
            centres = kmeans_centres(points, layer.num_clusters, seed + h)
            if first is None:
                first = centres
            else:
                cost = ((first[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
                centres = centres[linear_sum_assignment(cost)[1]]
            layer.k[h] = torch.as_tensor(centres, dtype=layer.k.dtype)

    def starved_keys(self, counts: Tensor) -> list[int]:
        """The first memory layer's keys that were the argmax of fewer than ``key_reseed`` of the nodes counted
        (``counts`` ``[K]``, nodes per key); none when ``key_reseed`` is 0."""
        if not self.key_reseed or counts.numel() < 2 or counts.sum() == 0:
            return []
        return (counts < self.key_reseed * counts.sum()).nonzero().flatten().tolist()

    @torch.no_grad()
    def reseed_keys(self, keys: Sequence[int], x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                    generator: Optional[torch.Generator] = None) -> None:
        """Move keys ``keys`` of the first memory layer (in every head) onto the embeddings of distinct nodes of
        this batch drawn at random: a starved key then takes a share of the clusters the nodes crowd into."""
        points = self._training_embeddings(x, edge_index, edge_attr)
        picks = torch.randperm(points.size(0), generator=generator)[:len(keys)].to(points.device)
        layer = self.memory[0]
        layer.k[:, list(keys)[:picks.numel()]] = points[picks].to(layer.k.dtype)

    def kl_parameters(self, with_heads: bool = False) -> list[list[nn.Parameter]]:
        """Per memory layer, what its KL loss alone trains in the paper's schedule: its keys, and with
        ``with_heads`` its head weights (the 1x1 merge) too."""
        return [[layer.k, layer.conv.weight] if with_heads else [layer.k] for layer in self.memory]

    def route_key_gradients(self, enabled: bool, with_heads: bool = False) -> bool:
        """With ``enabled``, one backward pass of ``ce + kl`` trains each layer's :meth:`kl_parameters` on that
        layer's KL loss only and every other parameter on the cross-entropy only (the paper's schedule). Returns
        ``False`` where the memory layers cannot do this (PyG's layer)."""
        if not all(isinstance(layer, MemPooling) for layer in self.memory):
            return False
        for layer in self.memory:
            layer.split_key_grad = enabled
            layer.kl_heads = with_heads
        return True

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, batch_size: int,
                edge_attr: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Class logits ``[B, classes]`` and the KL loss of each memory layer ``[layers]``."""
        logits, kls, _ = self.forward_with_assignments(x, edge_index, batch, batch_size, edge_attr)
        return logits, kls

    def forward_with_assignments(self, x: Tensor, edge_index: Tensor, batch: Tensor, batch_size: int,
                                 edge_attr: Optional[Tensor] = None) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Logits, KL losses and each memory layer's assignments: ``[N, K]`` per node for the first layer,
        ``[B, K_prev, K]`` per cluster for the later ones."""
        h = self.encode(x, edge_index, edge_attr)
        kls, assignments = [], []
        for i, layer in enumerate(self.memory):
            if i > 0:
                h, S = layer(h)
            elif isinstance(layer, MemPooling):  # S per node, unpadded
                h, S = layer(h, batch, batch_size=batch_size, per_node=True)
            else:
                h, S = layer(h, batch, batch_size=batch_size)
            kls.append(MemPooling.kl_loss(S, batch, batch_size) if S.dim() == 2 else type(layer).kl_loss(S))
            assignments.append(S)
            h = leaky_relu_dropout(h, self.dropout, self.training)
        features = h.mean(dim=1)
        if self.baseline is not None:
            pooled = [pool(x, batch, size=batch_size) for pool in READOUTS[self.readout]]
            features = torch.cat([features, self.baseline(torch.cat(pooled, dim=-1))], dim=-1)
        return self.classifier(features), torch.stack(kls), assignments


def build_model(spec: ModelSpec, num_features: int, num_classes: int, num_edge_features: int = 0) -> MemGNN:
    """The classifier of ``spec`` for inputs of ``num_features`` (and ``num_edge_features``) and ``num_classes``
    classes."""
    return MemGNN(**spec.model_args(num_features, num_classes, num_edge_features))


def model_from_args(model_args: Mapping[str, Any]) -> MemGNN:
    """The classifier of a checkpoint's ``model_args``, its spec checked like any other."""
    spec = ModelSpec.from_model_args(model_args)
    return build_model(spec, model_args["num_features"], model_args["num_classes"],
                       model_args.get("num_edge_features", 0))

