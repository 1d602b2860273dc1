"""Compiled CPU kernels for :class:`~mempool_cli.nn.MemPooling` (``csrc/mem_pool.cpp``),
:class:`~mempool_cli.nn.FastGINConv` (``csrc/encoder.cpp``), :class:`~mempool_cli.nn.FastBatchNorm1d`
(``csrc/batch_norm.cpp``) and the dropout steps (``csrc/dropout.cpp``), bound to Python in ``csrc/bindings.cpp``.

Built with PyTorch's extension builder on first use (about 20 s) and cached in
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). Where they cannot be built (no C++ compiler or
ninja) or ``MEMPOOL_COMPILED_KERNELS=0`` is set, :func:`cpu_kernels` returns ``None`` and the layer computes the
same formulas with PyTorch operations.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mempool_cli.artifacts import waiting_lock

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).parent / "csrc" / name for name in
           ("mem_pool.cpp", "encoder.cpp", "batch_norm.cpp", "dropout.cpp", "bindings.cpp")]
SWITCH = "MEMPOOL_COMPILED_KERNELS"
# held while building or loading: PyTorch's own lock file outlives a build that is killed (every later run
# would wait for it forever); this one is released when its holder exits
BUILD_LOCK = ".mempool-build.lock"

# vector instructions to compile for, by what PyTorch found on this CPU; the build is named after them, so
# machines sharing a cache folder never load a build their CPU cannot run. CPU_CAPABILITY_AVX2 (AVX512) makes ATen's
# Vectorized types 8 (16) floats wide and their math (exp, log, sqrt) the SLEEF functions of that width inside
# libtorch; elsewhere it is plain C++. AVX-512 against AVX2 on an Intel Xeon: the memory layer's forward 470 -> 418 us
# on a 1300-node batch, a PROTEINS epoch 1.02x-1.03x.
VECTOR_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512",
               "-DCPU_CAPABILITY_AVX512"],
}


@functools.lru_cache(maxsize=None)
def cpu_kernels():
    """The compiled kernel module, or ``None`` where it is switched off or cannot be built."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    # one build per installed copy (the source's path is in the build's commands: two copies sharing a build folder
    # would rebuild each other's, 20 s each time)
    place = hashlib.sha1(str(SOURCES[0].resolve()).encode()).hexdigest()[:8]
    name = "mempool_kernels_" + re.sub(r"\W", "_", f"{torch.__version__}_{capability}_{place}")
    build_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")).expanduser() / name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        if not any(build_dir.glob("*.so")):
            log.info("building MemPooling's compiled CPU kernels in %s (first use only, about 20 s)",
                     build_dir)
        with waiting_lock(build_dir / BUILD_LOCK):
            (build_dir / "lock").unlink(missing_ok=True)  # PyTorch's own lock, left behind by a killed build
            return cpp_extension.load(name, [str(source) for source in SOURCES], build_directory=str(build_dir),
                                      extra_cflags=["-O3", "-fopenmp", *VECTOR_FLAGS.get(capability, [])],
                                      extra_ldflags=["-fopenmp"])
    except (OSError, RuntimeError, ImportError) as error:
        reason = str(error).strip().splitlines()[0].split(":")[0] if str(error).strip() else type(error).__name__
        log.warning("MemPooling's compiled CPU kernels are unavailable (%s); using PyTorch operations "
                    "(set %s=0 to skip the build)", reason, SWITCH)
        return None


def usable(x: Tensor) -> bool:
    """Whether the compiled kernels can take ``x`` (CPU, float32 or float64) and are available."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and cpu_kernels() is not None


class AssignPool(torch.autograd.Function):
    """``(S_b^T X_b [B, K, F], S [N, K])``: the soft assignment of node-list ``x`` to the H-major ``keys``
    ``[H*K, F]`` with head weights ``w`` fused with the per-graph pooling (compiled, CPU). With
    ``split_key_grad`` the gradient reaching ``S`` through the pooling flows to ``x`` and ``w`` only, and the
    gradient of the returned ``S`` to the keys only; with ``kl_heads`` too, ``w`` learns from the returned ``S``
    like the keys."""

    @staticmethod
    def forward(ctx, x: Tensor, keys: Tensor, w: Tensor, batch: Tensor, num_graphs: int, num_clusters: int,
                tau: float, split_key_grad: bool, kl_heads: bool = False):
        x = x.contiguous()
        pooled, S, S_t, S_heads, inv_d = cpu_kernels().assign_pool_forward(x, keys, w, batch, num_graphs,
                                                                           num_clusters, tau)
        ctx.save_for_backward(x, keys, w, batch, S_t, S_heads, inv_d)
        ctx.num_graphs, ctx.tau, ctx.split_key_grad, ctx.kl_heads = num_graphs, tau, split_key_grad, kl_heads
        ctx.set_materialize_grads(False)
        return pooled, S

    @staticmethod
    def backward(ctx, grad_pooled, grad_S):
        x, keys, w, batch, S_t, S_heads, inv_d = ctx.saved_tensors
        grad_x, grad_keys, grad_w = cpu_kernels().assign_pool_backward(
            grad_pooled, grad_S, x, keys, w, batch, ctx.num_graphs, S_t, S_heads, inv_d, ctx.tau, ctx.split_key_grad,
            ctx.kl_heads)
        return grad_x, grad_keys, grad_w, None, None, None, None, None, None


class NodeKL(torch.autograd.Function):
    """``sum_i sum_j P_ij log(P_ij / S_ij)`` over node-list ``S`` ``[N, K]`` (compiled, CPU)."""

    @staticmethod
    def forward(ctx, S: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        S = S.contiguous()
        loss, P, col, log_ratio = cpu_kernels().kl_forward(S, batch, num_graphs)
        ctx.save_for_backward(S, batch, P, col, log_ratio)
        ctx.num_graphs = num_graphs
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        S, batch, P, col, log_ratio = ctx.saved_tensors
        return cpu_kernels().kl_backward(grad_loss, S, batch, ctx.num_graphs, P, col, log_ratio), None, None


class GINAggregation(torch.autograd.Function):
    """GIN's aggregation ``sum_{j -> i} x_j + (1 + eps) x_i`` over the CSR ``adjacency`` (compiled, CPU); ``eps``
    is the convolution's ``[1]`` tensor."""

    @staticmethod
    def forward(ctx, x: Tensor, adjacency: list[Tensor], eps: Tensor) -> Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, *adjacency[2:])
        ctx.self_weight = 1.0 + eps.item()
        return cpu_kernels().neighbour_sum(x, adjacency[0], adjacency[1], ctx.self_weight)

    @staticmethod
    @once_differentiable  # the kernel is not differentiable: a second derivative is refused, not wrong
    def backward(ctx, grad: Tensor):
        x, ptr_out, targets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_eps = (grad * x).sum().reshape(1) if ctx.needs_input_grad[2] else None
        return cpu_kernels().neighbour_sum(grad, ptr_out, targets, ctx.self_weight), None, grad_eps


class BatchNormRelu(torch.autograd.Function):
    """Batch norm of the rows of ``x`` ``[N, C]`` with the batch's statistics, updating ``running_mean`` and
    ``running_var`` in place, then relu where ``relu`` (compiled, CPU). ``weight`` and ``bias`` may be ``None``
    (no affine step)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Tensor,
                running_var: Tensor, momentum: float, eps: float, relu: bool) -> Tensor:
        x = x.contiguous()
        out, mean, invstd = cpu_kernels().batch_norm_forward(x, weight, bias, running_mean, running_var, momentum,
                                                             eps, relu)
        ctx.save_for_backward(x, out, weight, mean, invstd)
        ctx.relu = relu
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, out, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = cpu_kernels().batch_norm_backward(grad, x, out, weight, mean, invstd, ctx.relu)
        affine = ctx.needs_input_grad[1]
        return grad_x, grad_w if affine else None, grad_b if affine else None, None, None, None, None, None


class ResidualReluDropout(torch.autograd.Function):
    """``x + relu(h) * mask``, the mask of inverted dropout from the int16 ``draws`` (kept where ``draws >=
    threshold``, scaled by ``scale``) (compiled, CPU)."""

    @staticmethod
    def forward(ctx, x: Tensor, h: Tensor, draws: Tensor, threshold: int, scale: float) -> Tensor:
        out, multiplier = cpu_kernels().residual_relu_dropout(x, h, draws, threshold, scale)
        ctx.save_for_backward(multiplier)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (multiplier,) = ctx.saved_tensors
        return grad, grad * multiplier, None, None, None


class LeakyReluDropout(torch.autograd.Function):
    """``leaky_relu(h, slope) * mask``, the mask of inverted dropout from the int16 ``draws`` (kept where ``draws >=
    threshold``, scaled by ``scale``) (compiled, CPU)."""

    @staticmethod
    def forward(ctx, h: Tensor, draws: Tensor, threshold: int, scale: float, slope: float) -> Tensor:
        out, mask = cpu_kernels().leaky_relu_dropout(h, draws, threshold, scale, slope)
        ctx.save_for_backward(h, mask)
        ctx.slope = slope
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, mask = ctx.saved_tensors
        return cpu_kernels().leaky_relu_dropout_backward(grad, h, mask, ctx.slope), None, None, None, None
