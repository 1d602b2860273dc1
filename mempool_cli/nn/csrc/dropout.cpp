// CPU kernels of the dropout steps (mempool_cli.nn.dropout), each one pass with the same arithmetic, to the bit, as
// the operations it replaces: the encoder's residual step x + dropout(relu(h)) and the memory layers' output step
// dropout(leaky_relu(h)). The mask comes from int16 `draws`: kept where draws >= threshold, scaled by `scale`.
#include "kernels.h"

#include <ATen/Parallel.h>

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

}  // namespace

std::vector<Tensor> residual_relu_dropout(const Tensor& x, const Tensor& h, const Tensor& draws, int64_t threshold,
                                          double scale) {
  TORCH_CHECK(x.sizes() == h.sizes() && x.scalar_type() == h.scalar_type(), "x and h must match");
  check_draws(x, draws);
  const Tensor xc = x.contiguous(), hc = h.contiguous(), dc = draws.contiguous();
  Tensor out = torch::empty_like(xc), multiplier = torch::empty_like(xc);
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
  Tensor out = torch::empty_like(hc), mask = torch::empty_like(hc);
  const int16_t* d = dc.data_ptr<int16_t>();
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "leaky_relu_dropout", [&] {
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* mp = mask.data_ptr<scalar_t>();
    const scalar_t kept = static_cast<scalar_t>(scale), negative = static_cast<scalar_t>(slope);
    at::parallel_for(0, hc.numel(), kElementGrain, [=](int64_t begin, int64_t end) {  // by value: no aliasing
      for (int64_t i = begin; i < end; ++i) {
        mp[i] = d[i] >= threshold ? kept : scalar_t(0);
        op[i] = (hp[i] > 0 ? hp[i] : hp[i] * negative) * mp[i];
      }
    });
  });
  return {out, mask};
}

Tensor leaky_relu_dropout_backward(const Tensor& grad, const Tensor& h, const Tensor& mask, double slope) {
  TORCH_CHECK(grad.sizes() == h.sizes() && mask.sizes() == h.sizes(), "grad, h and mask must match");
  const Tensor gc = grad.contiguous(), hc = h.contiguous(), mc = mask.contiguous();
  Tensor out = torch::empty_like(hc);
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "leaky_relu_dropout_backward", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* mp = mc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t negative = static_cast<scalar_t>(slope);
    at::parallel_for(0, hc.numel(), kElementGrain, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t g = gp[i] * mp[i];  // through the mask, then the slope: the operations' two roundings
        op[i] = hp[i] > 0 ? g : g * negative;
      }
    });
  });
  return out;
}

}  // namespace mempool
