"""Memory-based pooling (Khasahmadi et al., ICLR 2020) computed on the unpadded node list."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Conv2d, Linear, Parameter

EPS = 1e-15


class _SegmentTransposeMatmul(torch.autograd.Function):
    """``out[b] = S_b^T X_b`` for the contiguous node segments ``b`` given by ``counts``; no padding."""

    @staticmethod
    def forward(ctx, S: Tensor, x: Tensor, counts: list[int]) -> Tensor:
        out = S.new_zeros(len(counts), S.size(1), x.size(1))
        for b, (s_b, x_b) in enumerate(zip(S.split(counts), x.split(counts))):
            if s_b.size(0):
                torch.mm(s_b.t(), x_b, out=out[b])
        ctx.save_for_backward(S, x)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        S, x = ctx.saved_tensors
        grad_S = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_S = torch.empty_like(S)
            for g, x_b, gs_b in zip(grad_out, x.split(ctx.counts), grad_S.split(ctx.counts)):
                torch.mm(x_b, g.t(), out=gs_b)
        if ctx.needs_input_grad[1]:
            grad_x = torch.empty_like(x)
            for g, s_b, gx_b in zip(grad_out, S.split(ctx.counts), grad_x.split(ctx.counts)):
                torch.mm(s_b, g, out=gx_b)
        return grad_S, grad_x, None


def _node_counts(batch: Optional[Tensor], num_nodes: int, batch_size: Optional[int]) -> Tuple[Tensor, int]:
    if batch is None:
        return torch.full((1,), num_nodes, dtype=torch.long), 1
    if batch_size is None:
        batch_size = int(batch.max()) + 1 if batch.numel() else 0
    return torch.bincount(batch, minlength=batch_size), batch_size


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

    Node-list input ``[N, F]`` with a (sorted) ``batch`` vector is computed without padding; ``S`` is then
    returned per node, ``[N, K]``, and :meth:`kl_loss` takes the same ``batch``. Dense input ``[B, N, F]``
    (with an optional ``mask``) returns ``S`` as ``[B, N, K]``, exactly like PyG's layer.

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
        """Soft cluster assignments ``S`` ``[M, K]`` of the rows of ``x`` ``[M, F]``."""
        H, K = self.heads, self.num_clusters
        keys = self.k.transpose(0, 1).reshape(K * H, -1)  # K-major: columns (k, h)
        dist = torch.addmm((keys * keys).sum(-1), x, keys.t(), alpha=-2.0)
        dist = (dist + (x * x).sum(-1, keepdim=True)).clamp_min(0.0)
        if self.tau == 1.0:
            q = (dist + 1.0).reciprocal()
        else:
            q = (dist / self.tau + 1.0).pow(-(self.tau + 1.0) / 2.0)
        q = q.view(-1, K, H)
        S_heads = q / q.sum(dim=1, keepdim=True)
        logits = S_heads @ self.conv.weight.view(H)  # the 1x1 convolution over heads
        return logits.softmax(dim=-1)

    def forward(
        self,
        x: Tensor,
        batch: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        max_num_nodes: Optional[int] = None,
        batch_size: Optional[int] = None,
    ) -> Tuple[Tensor, Tensor]:
        r"""Pool ``x`` into ``K`` clusters per graph.

        Args:
            x: node features ``[N, F]`` (with ``batch``) or ``[B, N, F]`` (with ``mask``).
            batch: graph index of each node ``[N]``, sorted; ``None`` means one graph.
            mask: valid nodes ``[B, N]`` of dense input; ``None`` means all.
            max_num_nodes: accepted for PyG compatibility; nothing is padded, so it is not needed.
            batch_size: number of graphs ``B`` (graphs without nodes included).

        Returns:
            ``(X', S)``: pooled features ``[B, K, F']`` and assignments, ``[N, K]`` for node-list input
            or ``[B, N, K]`` for dense input.
        """
        if x.dim() == 3:
            B, N, _ = x.shape
            S = self.assignments(x.reshape(B * N, -1)).view(B, N, -1)
            if mask is not None:
                S = S * mask.view(B, N, 1).to(S.dtype)
            return self.lin(S.transpose(1, 2) @ x), S
        counts, _ = _node_counts(batch, x.size(0), batch_size)
        S = self.assignments(x)
        pooled = _SegmentTransposeMatmul.apply(S, x, counts.tolist())
        return self.lin(pooled), S

    @staticmethod
    def kl_loss(S: Tensor, batch: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Tensor:
        r"""KL divergence :math:`\mathrm{KL}(\mathbf{P}\,\|\,\mathbf{S})`, averaged over graphs.

        .. math::
            P_{ij} = \frac{S_{ij}^2 / \sum_n S_{nj}}{\sum_k S_{ik}^2 / \sum_n S_{nk}}

        with the sums over ``n`` taken within each graph. ``S`` is either ``[B, N, K]`` (dense, padded rows
        zero; same value as PyG's ``kl_loss``) or ``[N, K]`` per node with its ``batch`` vector.
        A graph without nodes adds nothing but counts in the mean (PyG's layer returns NaN there).
        """
        if S.dim() == 3:
            num_graphs = S.size(0)
            column_sums = S.sum(dim=1, keepdim=True)
            P = S * S / column_sums.clamp_min(EPS)
            row_sums = P.sum(dim=-1, keepdim=True)
            P = P / torch.where(S.sum(dim=-1, keepdim=True) == 0, torch.ones_like(row_sums), row_sums)
        else:
            counts, num_graphs = _node_counts(batch, S.size(0), batch_size)
            if batch is None:
                batch = S.new_zeros(S.size(0), dtype=torch.long)
            column_sums = S.new_zeros(num_graphs, S.size(1)).index_add_(0, batch, S)
            P = S * S / column_sums.index_select(0, batch)
            P = P / P.sum(dim=-1, keepdim=True)
        P = P.clamp(EPS)
        return (P * (P.log() - S.clamp(EPS).log())).sum() / num_graphs

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads}, "
            f"num_clusters={self.num_clusters}, tau={self.tau})"
        )
