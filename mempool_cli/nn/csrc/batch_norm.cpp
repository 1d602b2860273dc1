// CPU kernels of mempool_cli.nn.FastBatchNorm1d: batch norm of the rows of x [N, C] with the batch's statistics
// (training), optionally followed by relu, forward and backward in two passes each (one for the per-channel sums,
// one for the output) instead of torch's batch norm and relu, whose fixed costs were most of their time on a
// PROTEINS batch. The sums (of x and x^2 in one pass, of the gradient's two terms in another) run in double within
// fixed blocks of kRowGrain rows, the blocks added in order: the same bits at any thread count, and closer to float64
// than torch's float sums.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace mempool {

namespace {

constexpr int64_t kRowGrain = 2048;  // rows per task: a PROTEINS batch stays on one thread (as in encoder.cpp)

// Two per-channel sums over the N rows of [N, C] data, in double: terms(i, first, second) adds row i's terms to
// both; a block of kRowGrain rows per task, the blocks' sums added in block order. Returns [first..., second...].
template <typename Terms>
std::vector<double> channel_sums(int64_t N, int64_t C, const Terms& terms) {
  const int64_t blocks = std::max<int64_t>(1, (N + kRowGrain - 1) / kRowGrain);
  std::vector<double> partial(blocks * 2 * C, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      double* a = partial.data() + b * 2 * C;
      double* s = a + C;
      for (int64_t i = b * kRowGrain; i < std::min(N, (b + 1) * kRowGrain); ++i) terms(i, a, s);
    }
  });
  std::vector<double> total(2 * C, 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t j = 0; j < 2 * C; ++j) total[j] += partial[b * 2 * C + j];
  return total;
}

void check_rows(const Tensor& x, const std::optional<Tensor>& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.size(0) > 1,
              "x must be a contiguous CPU [N, C] with N > 1");
  TORCH_CHECK(!weight || (weight->numel() == x.size(1) && weight->scalar_type() == x.scalar_type()),
              "weight must be [C] of x's type");
}

// A per-channel parameter's values, or `fill` for each channel where there is none (affine=False).
template <typename T>
std::vector<T> per_channel(const std::optional<Tensor>& values, int64_t C, T fill) {
  if (!values) return std::vector<T>(C, fill);
  const Tensor contiguous = values->contiguous();
  const T* p = contiguous.data_ptr<T>();
  return std::vector<T>(p, p + C);
}

}  // namespace

// out = relu?((x - mean) * invstd * weight + bias) with the batch's mean and biased variance (weight 1 and bias 0
// where they are none; relu keeps NaN, as torch's does), and the running statistics updated in place as torch
// updates them (the unbiased variance, weighted by momentum). Returns (out, mean [C], invstd [C]), the last two for
// the backward.
std::vector<Tensor> batch_norm_forward(const Tensor& x, const std::optional<Tensor>& weight,
                                       const std::optional<Tensor>& bias, Tensor& running_mean, Tensor& running_var,
                                       double momentum, double eps, bool relu) {
  check_rows(x, weight);
  const int64_t N = x.size(0), C = x.size(1);
  Tensor out = at::empty_like(x), mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const auto sums = channel_sums(N, C, [&](int64_t i, double* s, double* q) {
      const scalar_t* row = xp + i * C;
      _Pragma("omp simd")
      for (int64_t c = 0; c < C; ++c) {
        const double v = row[c];
        s[c] += v;
        q[c] += v * v;
      }
    });
    const auto w = per_channel<scalar_t>(weight, C, 1), b = per_channel<scalar_t>(bias, C, 0);
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* ip = invstd.data_ptr<scalar_t>();
    scalar_t* rm = running_mean.data_ptr<scalar_t>();
    scalar_t* rv = running_var.data_ptr<scalar_t>();
    std::vector<scalar_t> alpha(C), beta(C);
    for (int64_t c = 0; c < C; ++c) {
      const double m = sums[c] / N, var = std::max(sums[C + c] / N - m * m, 0.0);
      const double inv = 1.0 / std::sqrt(var + eps);
      mp[c] = m;
      ip[c] = inv;
      alpha[c] = w[c] * inv;
      beta[c] = b[c] - m * w[c] * inv;
      rm[c] = momentum * m + (1 - momentum) * rm[c];
      rv[c] = momentum * var * N / (N - 1) + (1 - momentum) * rv[c];
    }
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t* al = alpha.data();
    const scalar_t* be = beta.data();
    at::parallel_for(0, N, kRowGrain, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = xp + i * C;
        scalar_t* o = op + i * C;
        _Pragma("omp simd")
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t v = row[c] * al[c] + be[c];
          o[c] = relu && v < 0 ? scalar_t(0) : v;
        }
      }
    });
  });
  return {out, mean, invstd};
}

namespace {

// The gradient that passes the relu: grad where out > 0, else 0, a vector at a time (a branch per element, whose sign
// is random, was mispredicted half the time: 10x slower).
template <typename T>
void relu_passed(const T* grad, const T* out, int64_t n, T* dy) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(0);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), n - i);
    Vec::blendv(zero, Vec::loadu(grad + i, m), Vec::loadu(out + i, m) > zero).store(dy + i, m);
  }
}

// The gradients of x [N, C] (gx), weight and bias (gw, gb) from dy [N, C], that of the normalised output (the
// relu's output gradient where it passed), with the forward's mean and invstd.
template <typename T>
void batch_norm_backward_rows(const T* gp, const T* xp, const T* w, const T* mp, const T* ip, int64_t N, int64_t C,
                              T* gx, T* gw, T* gb) {
  // the sums of dy and of dy (x - mean)
  const auto sums = channel_sums(N, C, [&](int64_t i, double* s, double* q) {
    const T *dy = gp + i * C, *xr = xp + i * C;
    _Pragma("omp simd")
    for (int64_t c = 0; c < C; ++c) {
      s[c] += dy[c];
      q[c] += double(dy[c]) * double(xr[c] - mp[c]);
    }
  });
  // grad_x = k_dy dy + k_x (x - mean) + k_0, per channel
  std::vector<T> k_dy(C), k_x(C), k_0(C);
  for (int64_t c = 0; c < C; ++c) {
    const double inv = ip[c], scale = double(w[c]) * inv;
    gb[c] = sums[c];
    gw[c] = sums[C + c] * inv;
    k_dy[c] = scale;
    k_x[c] = -scale * inv * inv * sums[C + c] / N;
    k_0[c] = -scale * sums[c] / N;
  }
  const T *a = k_dy.data(), *b = k_x.data(), *z = k_0.data();
  at::parallel_for(0, N, kRowGrain, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T *dy = gp + i * C, *xr = xp + i * C;
      T* o = gx + i * C;
      _Pragma("omp simd")
      for (int64_t c = 0; c < C; ++c) o[c] = a[c] * dy[c] + b[c] * (xr[c] - mp[c]) + z[c];
    }
  });
}

}  // namespace

// Gradients (x, weight, bias) of batch_norm_forward's out from grad [N, C] (out is the forward's output: with relu,
// where it is 0 no gradient passes).
std::vector<Tensor> batch_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& out,
                                        const std::optional<Tensor>& weight, const Tensor& mean, const Tensor& invstd,
                                        bool relu) {
  check_rows(x, weight);
  const int64_t N = x.size(0), C = x.size(1);
  const Tensor g = grad.contiguous();
  Tensor dy = relu ? at::empty_like(g) : g;
  Tensor grad_x = at::empty_like(x), grad_w = at::empty({C}, x.options()), grad_b = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_backward", [&] {
    if (relu) {
      const scalar_t *gp = g.data_ptr<scalar_t>(), *op = out.data_ptr<scalar_t>();
      scalar_t* dp = dy.data_ptr<scalar_t>();
      at::parallel_for(0, N, kRowGrain, [=](int64_t begin, int64_t end) {
        relu_passed(gp + begin * C, op + begin * C, (end - begin) * C, dp + begin * C);
      });
    }
    const auto w = per_channel<scalar_t>(weight, C, 1);
    batch_norm_backward_rows(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data(), mean.data_ptr<scalar_t>(),
                             invstd.data_ptr<scalar_t>(), N, C, grad_x.data_ptr<scalar_t>(),
                             grad_w.data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>());
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace mempool
