"""Memory-based pooling (Khasahmadi et al., ICLR 2020) computed on the unpadded node list."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Conv2d, Linear, Parameter
from torch_geometric.utils import to_dense_batch

from mempool_cli.nn import kernels

EPS = 1e-15


class _Assign(torch.autograd.Function):
    """Soft assignments ``S`` ``[M, K]`` of rows ``x`` ``[M, F]`` to H-major keys ``[H*K, F]``, with head
    weights ``w`` ``[H]``; one fused op with a hand-derived backward (the formulas of :meth:`MemPooling.forward`).
    Inside, the node dimension is the contiguous last one (``[H, K, M]``), so every elementwise op runs over
    long rows.

    With ``split_key_grad`` it returns two copies of ``S``: the gradient reaching the first flows to ``x`` and
    ``w`` only, the gradient reaching the second to the keys only (both in one backward pass); with ``kl_heads``
    as well, ``w`` takes the second's gradient instead of the first's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, keys: Tensor, w: Tensor, num_clusters: int, tau: float, split_key_grad: bool,
                kl_heads: bool = False):
        (M, _), K, H = x.shape, num_clusters, w.numel()
        # tau + ||k - x||^2, clamped at tau against rounding below zero distance
        q = torch.addmm((keys * keys).sum(-1, keepdim=True).add_(tau), keys, x.t(), alpha=-2.0)
        inv = q.add_((x * x).sum(-1)).clamp_min_(tau).reciprocal_().mul_(tau).view(H, K, M)  # (1 + d / tau)^-1
        q = inv
        if tau != 1.0:  # (1 + d / tau)^(-(1 + tau) / 2) relative to each head's nearest key: the normalisation
            q = (inv / inv.amax(dim=1, keepdim=True)).pow_((tau + 1.0) / 2.0)  # cancels the factor; no 0/0
        S_heads = q / q.sum(dim=1, keepdim=True)
        S_t = torch.softmax((w @ S_heads.view(H, K * M)).view(K, M), dim=0)
        ctx.save_for_backward(x, keys, w, inv, S_heads, S_t)
        ctx.tau, ctx.w_stream = tau, -1 if split_key_grad and kl_heads else 0
        S = S_t.t().contiguous()
        return (S, S.clone()) if split_key_grad else S

    @staticmethod
    def backward(ctx, *grads: Tensor):
        x, keys, w, inv, S_heads, S_t = ctx.saved_tensors
        tau = ctx.tau
        H, K, M = inv.shape
        grad_S = torch.stack([g.t() for g in grads])  # [T, K, M], T streams (2 when split)
        grad_logits = (S_t * (grad_S - (grad_S * S_t).sum(-2, keepdim=True))).unsqueeze(1)  # [T, 1, K, M]
        # through the normalisation over K: grad_q = w_h (grad_logits - c_h) / Z_h
        c = (grad_logits * S_heads).sum(-2, keepdim=True)  # [T, H, 1, M]
        grad_w = c[ctx.w_stream].sum((1, 2))
        # d q / d dist = -(1+tau)/(2 tau) q (1 + d/tau)^-1 for q up to a per-head factor, and q / Z = S_heads
        scale = (S_heads * inv).mul_(w.view(H, 1, 1) * (-(1.0 + tau) / (2.0 * tau)))
        grad_dist = ((grad_logits - c) * scale).view(-1, H * K, M)
        grad_x = grad_keys = None
        if ctx.needs_input_grad[0]:
            g = grad_dist[0]
            grad_x = torch.addmm(x * g.sum(0).unsqueeze(1), g.t(), keys, beta=2.0, alpha=-2.0)
        if ctx.needs_input_grad[1]:
            g = grad_dist[-1]
            grad_keys = torch.addmm(keys * g.sum(1, keepdim=True), g, x, beta=2.0, alpha=-2.0)
        return grad_x, grad_keys, grad_w, None, None, None, None


class _NodeKL(torch.autograd.Function):
    """``sum_i sum_j P_ij log(P_ij / S_ij)`` over node-list ``S`` ``[N, K]`` with per-graph column sums;
    one fused op with a hand-derived backward (P is a function of S, as in PyG's ``kl_loss``)."""

    @staticmethod
    def forward(ctx, S: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        graph_col = S.new_zeros(num_graphs, S.size(1)).index_add_(0, batch, S).clamp_min_(EPS)
        Q = S * S / graph_col.index_select(0, batch)
        r = Q.sum(-1, keepdim=True)
        P = Q.div_(r)
        S_c = S.clamp(EPS)
        log_ratio = (P / S_c).clamp_min_(EPS).log_()  # log P - log S, P clamped like PyG's
        ctx.save_for_backward(batch, graph_col, P, S_c, log_ratio)
        ctx.num_graphs = num_graphs
        return (P * log_ratio).sum()

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        # L = sum P log(P/S), P = Q / r, Q = S^2 / col:  with u = P (log_ratio - <log_ratio, P>),
        # dL/dS = (2u - P) / S - (per-graph sum of u / col)[batch]
        batch, graph_col, P, S_c, log_ratio = ctx.saved_tensors
        u = (log_ratio - (log_ratio * P).sum(-1, keepdim=True)).mul_(P)
        graph_term = P.new_zeros(ctx.num_graphs, P.size(1)).index_add_(0, batch, u).div_(graph_col)
        grad_S = torch.add(-P, u, alpha=2.0).div_(S_c).sub_(graph_term.index_select(0, batch))
        return grad_S.mul_(grad_loss), None, None


def segment_pool(S: Tensor, x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """``out[b] = S_b^T X_b`` ``[B, K, F]`` for node-list ``S`` ``[N, K]`` and ``x`` ``[N, F]``: one scatter-add of
    the nodes' outer products. No padding, no loop over graphs, no copy to the host: the operations do not grow in
    number with the batch (what a GPU wants)."""
    products = S.unsqueeze(2) * x.unsqueeze(1)  # [N, K, F]
    return products.new_zeros(num_graphs, S.size(1), x.size(1)).index_add(0, batch, products)


def _resolve_batch(batch: Optional[Tensor], num_nodes: int, batch_size: Optional[int],
                   device: torch.device) -> Tuple[Tensor, int]:
    """The batch vector (all zeros when ``None``: one graph) and the number of graphs."""
    if batch is None:
        return torch.zeros(num_nodes, dtype=torch.long, device=device), 1
    if batch_size is None:
        batch_size = int(batch.max()) + 1 if batch.numel() else 0
    return batch, batch_size


class MemPooling(torch.nn.Module):
    r"""Memory-based pooling layer, a drop-in for :class:`torch_geometric.nn.MemPooling`.

    For head :math:`h`, node :math:`i` and key :math:`\mathbf{k}^{(h)}_j`:

    .. math::
        S^{(h)}_{ij} = \frac{(1 + \|\mathbf{x}_i - \mathbf{k}^{(h)}_j\|^2/\tau)^{-\frac{1+\tau}{2}}}
                            {\sum_{k=1}^K (1 + \|\mathbf{x}_i - \mathbf{k}^{(h)}_k\|^2/\tau)^{-\frac{1+\tau}{2}}},
        \qquad \mathbf{S} = \mathrm{softmax}_K\big(\textstyle\sum_h w_h \mathbf{S}^{(h)}\big),
        \qquad \mathbf{X}' = \mathbf{S}^\top \mathbf{X} \mathbf{W}.

    The weights :math:`w_h` are those of PyG's 1x1 ``Conv2d`` over heads, so parameter names and shapes
    (``k``, ``conv.weight``, ``lin.weight``) are the same and state dicts move between the two layers.

    Node-list input ``[N, F]`` with a (sorted) ``batch`` vector is computed without padding. Called as PyG's
    layer is, ``S`` comes back padded, ``[B, N_max, K]``, and ``kl_loss(S)`` gives PyG's value; with
    ``per_node=True`` (what mempool's trainer asks for) ``S`` stays per node, ``[N, K]``, and :meth:`kl_loss` takes
    the same ``batch``. On the CPU (float32 and float64)
    that input runs on compiled kernels (:mod:`mempool_cli.nn.kernels`) where they can be built, and on the
    PyTorch operations below everywhere else: the same formulas. Dense input ``[B, N, F]``
    (with an optional ``mask``) returns ``S`` as ``[B, N, K]``, exactly like PyG's layer.

    ``split_key_grad`` (attribute, default ``False``): when set, the keys ``k`` learn only from the returned
    ``S`` (that is, from the KL loss) and ``x``, ``conv`` and ``lin`` only from ``X'``: the paper's training
    schedule in a single backward pass. ``kl_heads`` (attribute, default ``False``): with ``split_key_grad``, the
    head weights ``conv`` learn from the returned ``S`` too, like the keys.

    Args:
        in_channels: input size :math:`F`.
        out_channels: output size :math:`F'`.
        heads: number of heads :math:`H`.
        num_clusters: number of clusters (keys) :math:`K` per head.
        tau: temperature :math:`\tau` of the Student-t kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int, num_clusters: int, tau: float = 1.0):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.num_clusters = num_clusters
        self.tau = float(tau)
        self.split_key_grad = False
        self.kl_heads = False
        self.k = Parameter(torch.empty(heads, num_clusters, in_channels))
        self.conv = Conv2d(heads, 1, kernel_size=1, padding=0, bias=False)
        self.lin = Linear(in_channels, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keys uniform in [-1, 1]; ``conv`` and ``lin`` as PyTorch initialises them."""
        torch.nn.init.uniform_(self.k.data, -1.0, 1.0)
        self.conv.reset_parameters()
        self.lin.reset_parameters()

    def assignments(self, x: Tensor) -> Tensor:
        """Soft cluster assignments ``S`` ``[M, K]`` of the rows of ``x`` ``[M, F]`` (exactly 1 with one cluster)."""
        if self.num_clusters == 1:
            return x.new_ones(x.size(0), 1)
        return self._assign(x, split_key_grad=False)[0]

    def _flat_keys(self) -> Tuple[Tensor, Tensor]:
        """The keys as H-major rows ``[H*K, F]`` (row ``h*K + k``) and the head weights ``[H]`` of ``conv``."""
        return self.k.reshape(self.heads * self.num_clusters, -1), self.conv.weight.view(self.heads)

    def _assign(self, x: Tensor, split_key_grad: bool) -> Tuple[Tensor, Tensor]:
        """``(S for pooling, S to return)``: the same values; with ``split_key_grad``, the keys learn only from
        the second."""
        S = _Assign.apply(x, *self._flat_keys(), self.num_clusters, self.tau, split_key_grad, self.kl_heads)
        return S if split_key_grad else (S, S)

    def forward(
        self,
        x: Tensor,
        batch: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        max_num_nodes: Optional[int] = None,
        batch_size: Optional[int] = None,
        per_node: bool = False,
    ) -> Tuple[Tensor, Tensor]:
        r"""Pool ``x`` into ``K`` clusters per graph.

        Args:
            x: node features ``[N, F]`` (with ``batch``) or ``[B, N, F]`` (with ``mask``).
            batch: graph index of each node ``[N]``, sorted; ``None`` means one graph.
            mask: valid nodes ``[B, N]`` of dense input; ``None`` means all.
            max_num_nodes: the padded size of the returned dense ``S`` (as in PyG; default: the largest graph).
            batch_size: number of graphs ``B`` (graphs without nodes included).
            per_node: for node-list input, return ``S`` per node ``[N, K]`` without padding (then pass the same
                ``batch`` to :meth:`kl_loss`); the default returns it padded, ``[B, N_max, K]``, as PyG does.

        Returns:
            ``(X', S)``: pooled features ``[B, K, F']`` and assignments ``[B, N, K]`` (padded rows zero), or
            ``[N, K]`` with ``per_node``.
        """
        if self.num_clusters == 1:
            return self._pool_one_cluster(x, batch, mask, max_num_nodes, batch_size, per_node)
        if x.dim() == 3:
            B, N, _ = x.shape
            S_pool, S = (s.view(B, N, -1) for s in self._assign(x.reshape(B * N, -1), self.split_key_grad))
            if mask is not None:
                S = S * mask.view(B, N, 1).to(S.dtype)
                S_pool = S_pool * mask.view(B, N, 1).to(S.dtype) if self.split_key_grad else S
            return self.lin(S_pool.transpose(1, 2) @ x), S
        batch, num_graphs = _resolve_batch(batch, x.size(0), batch_size, x.device)
        if kernels.usable(x):
            pooled, S = kernels.AssignPool.apply(x, *self._flat_keys(), batch, num_graphs, self.num_clusters,
                                                 self.tau, self.split_key_grad, self.kl_heads)
        else:
            S_pool, S = self._assign(x, self.split_key_grad)
            pooled = segment_pool(S_pool, x, batch, num_graphs)
        if not per_node:
            S = to_dense_batch(S, batch, batch_size=num_graphs, max_num_nodes=max_num_nodes)[0]
        return self.lin(pooled), S

    def _pool_one_cluster(self, x: Tensor, batch: Optional[Tensor], mask: Optional[Tensor],
                          max_num_nodes: Optional[int], batch_size: Optional[int], per_node: bool) -> Tuple[Tensor, Tensor]:
        """:meth:`forward` with one cluster: ``S`` is exactly 1 (a softmax over one entry), so ``X'`` is each
        graph's sum of rows times ``W``, and the gradients of ``k`` and ``conv`` are exactly zero (left unset)."""
        if x.dim() == 3:
            if mask is None:
                return self.lin(x.sum(1, keepdim=True)), x.new_ones(*x.shape[:2], 1)
            S = mask.unsqueeze(-1).to(x.dtype)
            return self.lin((x * S).sum(1, keepdim=True)), S
        batch, num_graphs = _resolve_batch(batch, x.size(0), batch_size, x.device)
        pooled = x.new_zeros(num_graphs, x.size(1)).index_add(0, batch, x).unsqueeze(1)
        S = x.new_ones(x.size(0), 1)
        if not per_node:
            S = to_dense_batch(S, batch, batch_size=num_graphs, max_num_nodes=max_num_nodes)[0]
        return self.lin(pooled), S

    @staticmethod
    def kl_loss(S: Tensor, batch: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Tensor:
        r"""KL divergence :math:`\mathrm{KL}(\mathbf{P}\,\|\,\mathbf{S})`, averaged over graphs.

        .. math::
            P_{ij} = \frac{S_{ij}^2 / \sum_n S_{nj}}{\sum_k S_{ik}^2 / \sum_n S_{nk}}

        with the sums over ``n`` taken within each graph. ``S`` is either ``[B, N, K]`` (dense, padded rows
        zero; same value as PyG's ``kl_loss``) or ``[N, K]`` per node with its ``batch`` vector (required: without
        it the graphs could not be told apart). A graph without nodes adds nothing but counts in the mean (PyG's
        layer returns NaN there).
        """
        if S.dim() == 2 and batch is None:
            raise ValueError("kl_loss: S per node [N, K] needs its batch vector (or pass S as [B, N, K])")
        if S.size(-1) == 1:  # one cluster: P = S, so the divergence is exactly zero
            return S.new_zeros(())
        if S.dim() == 2:
            batch, num_graphs = _resolve_batch(batch, S.size(0), batch_size, S.device)
            node_kl = kernels.NodeKL if kernels.usable(S) else _NodeKL
            return node_kl.apply(S, batch, num_graphs) / num_graphs
        column_sums = S.sum(dim=1, keepdim=True)
        P = S * S / column_sums.clamp_min(EPS)
        row_sums = P.sum(dim=-1, keepdim=True)
        P = P / torch.where(S.sum(dim=-1, keepdim=True) == 0, torch.ones_like(row_sums), row_sums)
        P = P.clamp(EPS)
        return (P * (P.log() - S.clamp(EPS).log())).sum() / S.size(0)

    def __repr__(self) -> str:
        tau = f", tau={self.tau}" if self.tau != 1.0 else ""  # PyG's repr at the default
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads}, "
                f"num_clusters={self.num_clusters}{tau})")
