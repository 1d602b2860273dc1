"""Batch norm of node rows with its statistics and the following relu in one compiled pass each way (CPU)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mempool_cli.nn import kernels


class FastBatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` (the same parameters, buffers and running statistics) whose ``forward`` can
    apply the relu that follows it too (``relu=True``). Training on the CPU with the compiled kernels, it is one
    pass for the batch's statistics and one for the output (:class:`~mempool_cli.nn.kernels.BatchNormRelu`), the
    same values as torch's within float32 rounding (its sums run in double); elsewhere, torch's own."""

    def _fusable(self, x: Tensor) -> bool:
        return (self.training and self.track_running_stats and self.momentum is not None
                and x.dim() == 2 and x.size(0) > 1 and self.running_mean.dtype == x.dtype and kernels.usable(x))

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if not self._fusable(x):
            out = super().forward(x)
            return F.relu(out) if relu else out
        self.num_batches_tracked.add_(1)
        return kernels.BatchNormRelu.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                           self.momentum, self.eps, relu)
