"""Inverted dropout with a cheap mask: 16 random bits per element instead of a Bernoulli draw."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mempool_cli.nn import kernels

BITS = 16
LEVELS = 1 << BITS


def _draws(numel: int) -> Tensor:
    """``numel`` draws uniform over [-32768, 32767] (int16): whole 64-bit random words of torch's global generator,
    each cut in four."""
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    return words.view(torch.int16)[:numel]


def _keep_rule(dropped: int) -> tuple[int, float]:
    """For ``dropped`` of the 65536 levels dropped: the draw at or above which an element is kept, and the scale
    of the kept ones (the exact inverse of the keep probability)."""
    return dropped - LEVELS // 2, LEVELS / (LEVELS - dropped)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout`` in distribution, with ``p`` rounded to a multiple of 1/65536 (the kept values are scaled by
    the exact inverse of the rounded keep probability, so the expectation is ``x``). On the CPU the mask comes
    from whole 64-bit random words cut into four 16-bit draws: about 5x cheaper than torch's per-element
    Bernoulli sampling, which was a fifth of a training epoch. Other devices use ``F.dropout`` (one fused
    kernel there). Seeded by torch's global generator like ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    dropped = round(p * LEVELS)
    if dropped >= LEVELS:
        return x * 0.0
    threshold, scale = _keep_rule(dropped)
    keep = _draws(x.numel()).view(x.shape) >= threshold
    return x * (keep.to(x.dtype) * scale)


def _fusable(p: float, training: bool, x: Tensor) -> bool:
    """Whether a fused dropout step may run on ``x``: training, a mask that keeps something, the compiled kernels."""
    return training and p != 0.0 and round(p * LEVELS) < LEVELS and kernels.usable(x)


def residual_relu_dropout(x: Tensor, h: Tensor, p: float, training: bool = True) -> Tensor:
    """``x + dropout(relu(h), p, training)``. On the CPU with the compiled kernels, one pass
    (:class:`~mempool_cli.nn.kernels.ResidualReluDropout`) that draws the same mask and computes the same values
    to the bit as the three operations, instead of eight elementwise passes forward and back."""
    if not _fusable(p, training, x) or h.shape != x.shape or h.dtype != x.dtype:
        return x + dropout(F.relu(h), p, training)
    return kernels.ResidualReluDropout.apply(x, h, _draws(x.numel()), *_keep_rule(round(p * LEVELS)))


def leaky_relu_dropout(h: Tensor, p: float, training: bool = True, slope: float = 0.01) -> Tensor:
    """``dropout(leaky_relu(h, slope), p, training)``. On the CPU with the compiled kernels, one pass forward and
    one back (:class:`~mempool_cli.nn.kernels.LeakyReluDropout`) with the same mask and, to the bit, the same
    values and gradients as the two operations."""
    if not _fusable(p, training, h):
        return dropout(F.leaky_relu(h, slope), p, training)
    return kernels.LeakyReluDropout.apply(h, _draws(h.numel()), *_keep_rule(round(p * LEVELS)), slope)
