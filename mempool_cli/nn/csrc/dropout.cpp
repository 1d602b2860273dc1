// CPU kernels of the dropout steps (mempool_cli.nn.dropout), each one call with the same arithmetic, to the bit, as
// the operations it replaces: the encoder's residual step x + dropout(relu(h)) and the memory layers' output step
// dropout(leaky_relu(h)). The mask comes from int16 `draws`: kept where draws >= threshold, scaled by `scale`.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

namespace mempool {

namespace {

// Work per parallel task: a PROTEINS batch (80,000 elements) stays on one thread, since waking a second one cost more
// than it saved there; DD's and REDDIT's batches split.
constexpr int64_t kElementGrain = 131072;  // elements

void check_draws(const Tensor& h, const Tensor& draws) {
  TORCH_CHECK(h.device().is_cpu(), "h must be a CPU tensor");
  TORCH_CHECK(draws.scalar_type() == at::kShort && draws.numel() >= h.numel(), "draws must be int16 [>= numel]");
}

// The memory layers' output step, a vector at a time: its signs and its mask are random, so a branch per element (a
// plain loop's, since the compiler keeps a conditional product as a branch) was mispredicted half the time, 12 ns
// an element. Each value is the same product, with the same rounding, as in the operations replaced.

// mask[i] = kept where draws[i] >= threshold, else 0 (the compiler vectorises this one itself)
template <typename T>
void keep_mask(const int16_t* __restrict__ draws, int64_t n, int32_t threshold, T kept, T* __restrict__ mask) {
  for (int64_t i = 0; i < n; ++i) mask[i] = draws[i] >= threshold ? kept : T(0);
}

// out = leaky_relu(h, slope) * mask (NaN stays NaN: it is not > 0, and its product with the slope is NaN)
template <typename T>
void leaky_relu_masked(const T* h, const T* mask, int64_t n, T slope, T* out) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(0), s(slope);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), n - i);
    const Vec x = Vec::loadu(h + i, m);
    (Vec::blendv(x * s, x, x > zero) * Vec::loadu(mask + i, m)).store(out + i, m);
  }
}

// its gradient: through the mask, then the slope (the operations' two roundings)
template <typename T>
void leaky_relu_masked_backward(const T* grad, const T* h, const T* mask, int64_t n, T slope, T* out) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(0), s(slope);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), n - i);
    const Vec g = Vec::loadu(grad + i, m) * Vec::loadu(mask + i, m);
    Vec::blendv(g * s, g, Vec::loadu(h + i, m) > zero).store(out + i, m);
  }
}

}  // namespace

std::vector<Tensor> residual_relu_dropout(const Tensor& x, const Tensor& h, const Tensor& draws, int64_t threshold,
                                          double scale) {
  TORCH_CHECK(x.sizes() == h.sizes() && x.scalar_type() == h.scalar_type(), "x and h must match");
  check_draws(x, draws);
  const Tensor xc = x.contiguous(), hc = h.contiguous(), dc = draws.contiguous();
  Tensor out = at::empty_like(xc), multiplier = at::empty_like(xc);
  const int64_t n = xc.numel();
  const int16_t* d = dc.data_ptr<int16_t>();
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "residual_relu_dropout", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* mp = multiplier.data_ptr<scalar_t>();
    const scalar_t kept = static_cast<scalar_t>(scale);
    at::parallel_for(0, n, kElementGrain, [=](int64_t begin, int64_t end) {  // by value: no aliasing
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t mask = d[i] >= threshold ? kept : scalar_t(0);  // the dropout mask, scaled
        const scalar_t relu = hp[i] < 0 ? scalar_t(0) : hp[i];           // NaN stays NaN, as in clamp_min
        op[i] = relu * mask;
        mp[i] = hp[i] > 0 ? mask : scalar_t(0);                         // d out / d h
      }
      // the residual sum in a pass of its own: the product is rounded first (no FMA), as the operations round it
      for (int64_t i = begin; i < end; ++i) op[i] = xp[i] + op[i];
    });
  });
  return {out, multiplier};
}

std::vector<Tensor> leaky_relu_dropout(const Tensor& h, const Tensor& draws, int64_t threshold, double scale,
                                       double slope) {
  check_draws(h, draws);
  const Tensor hc = h.contiguous(), dc = draws.contiguous();
  Tensor out = at::empty_like(hc), mask = at::empty_like(hc);
  const int16_t* d = dc.data_ptr<int16_t>();
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "leaky_relu_dropout", [&] {
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* mp = mask.data_ptr<scalar_t>();
    const scalar_t kept = static_cast<scalar_t>(scale), negative = static_cast<scalar_t>(slope);
    at::parallel_for(0, hc.numel(), kElementGrain, [=](int64_t begin, int64_t end) {
      keep_mask(d + begin, end - begin, static_cast<int32_t>(threshold), kept, mp + begin);
      leaky_relu_masked(hp + begin, mp + begin, end - begin, negative, op + begin);
    });
  });
  return {out, mask};
}

Tensor leaky_relu_dropout_backward(const Tensor& grad, const Tensor& h, const Tensor& mask, double slope) {
  TORCH_CHECK(grad.sizes() == h.sizes() && mask.sizes() == h.sizes(), "grad, h and mask must match");
  const Tensor gc = grad.contiguous(), hc = h.contiguous(), mc = mask.contiguous();
  Tensor out = at::empty_like(hc);
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "leaky_relu_dropout_backward", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* mp = mc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t negative = static_cast<scalar_t>(slope);
    at::parallel_for(0, hc.numel(), kElementGrain, [=](int64_t begin, int64_t end) {
      leaky_relu_masked_backward(gp + begin, hp + begin, mp + begin, end - begin, negative, op + begin);
    });
  });
  return out;
}

}  // namespace mempool
