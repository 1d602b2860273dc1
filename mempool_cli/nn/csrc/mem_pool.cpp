// CPU kernels of mempool_cli.nn.MemPooling for node-list input: the soft assignment fused with the per-graph
// pooling, and the KL loss, each forward and backward in one call (the same formulas as the PyTorch code in
// mem_pool.py, which stays the reference and serves every other device). Rows are nodes; `batch` is sorted.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace mempool {

namespace {

constexpr double kEps = 1e-15;
// Work per parallel task: a batch of PROTEINS' size (about 1250 nodes in 32 graphs) stays on one thread, since
// waking a second one cost more than it saved there; DD's and REDDIT's node passes are split, and the per-graph
// passes (a small share of the work) of batches up to 64 graphs are not.
constexpr int64_t kNodeGrain = 2048;  // nodes
constexpr int64_t kGraphGrain = 64;   // graphs

// In-place f(p[0..n)) with ATen's vectorised math (SLEEF under the AVX2 build), tail included.
template <typename T, typename F>
void map_inplace(T* p, int64_t n, const F& f) {
  using V = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) f(V::loadu(p + i)).store(p + i);
  if (i < n) f(V::loadu(p + i, n - i)).store(p + i, n - i);
}

// v^(n / 2) for a whole number n >= 0: squarings and products, and one square root when n is odd. Used for the
// Student-t power (1 + tau) / 2 whenever tau is a whole number (mempool's default 30: v^15.5), where it is several
// times cheaper than exp(p log v) and as accurate (against float64: the same errors, led by the distances).
template <typename T>
at::vec::Vectorized<T> power_of_half(const at::vec::Vectorized<T>& v, int64_t n) {
  using V = at::vec::Vectorized<T>;
  V result(1), square = v;
  for (int64_t m = n / 2; m > 0; m >>= 1) {
    if (m & 1) result = result * square;
    if (m > 1) square = square * square;
  }
  return n % 2 ? result * v.sqrt() : result;
}

// Start of each graph's nodes in the sorted `batch`: ptr[b]..ptr[b+1] are graph b's rows.
std::vector<int64_t> segment_ptr(const Tensor& batch, int64_t num_graphs) {
  const int64_t* b = batch.data_ptr<int64_t>();
  const int64_t n = batch.numel();
  std::vector<int64_t> ptr(num_graphs + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(b[i] >= 0 && b[i] < num_graphs, "batch index out of range [0, ", num_graphs, ")");
    TORCH_CHECK(i == 0 || b[i - 1] <= b[i], "batch must be sorted");
    ++ptr[b[i] + 1];
  }
  for (int64_t g = 0; g < num_graphs; ++g) ptr[g + 1] += ptr[g];
  return ptr;
}

// out[j][f] = sum_{i in [begin, end)} w[j * N + i] * x[i * F + f] for j < J (J weight rows of length N over the
// rows of x [N, F]), each sum in node order: J rows' sums at a time over kChunk vectors of features, in registers
// (four vectors where they are AVX-512's, which has 32 registers; two with AVX2's 16).
template <typename T, int J>
void weighted_rows(const T* w, const T* x, int64_t N, int64_t F, int64_t begin, int64_t end, T* out) {
  using V = at::vec::Vectorized<T>;
  constexpr int kChunk = V::size() * sizeof(T) >= 64 ? 4 : 2;
  for (int64_t f = 0; f < F; f += kChunk * V::size()) {
    int64_t n[kChunk];
    for (int v = 0; v < kChunk; ++v) n[v] = std::clamp<int64_t>(F - f - v * V::size(), 0, V::size());
    V acc[J][kChunk];
    for (int j = 0; j < J; ++j)
      for (int v = 0; v < kChunk; ++v) acc[j][v] = V(0);
    for (int64_t i = begin; i < end; ++i) {
      V xs[kChunk];
      for (int v = 0; v < kChunk; ++v) xs[v] = n[v] > 0 ? V::loadu(x + i * F + f + v * V::size(), n[v]) : V(0);
      for (int j = 0; j < J; ++j) {
        const V g(w[j * N + i]);
        for (int v = 0; v < kChunk; ++v) acc[j][v] = at::vec::fmadd(g, xs[v], acc[j][v]);
      }
    }
    for (int j = 0; j < J; ++j)
      for (int v = 0; v < kChunk && n[v] > 0; ++v) acc[j][v].store(out + j * F + f + v * V::size(), n[v]);
  }
}

// weighted_rows for `rows` weight rows (four at a time), out [rows, F].
template <typename T>
void weighted_sums(const T* w, const T* x, int64_t N, int64_t F, int64_t begin, int64_t end, int64_t rows, T* out) {
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) weighted_rows<T, 4>(w + j * N, x, N, F, begin, end, out + j * F);
  for (; j < rows; ++j) weighted_rows<T, 1>(w + j * N, x, N, F, begin, end, out + j * F);
}

void check_inputs(const Tensor& x, const Tensor& batch) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous CPU [N, F]");
  TORCH_CHECK(batch.scalar_type() == at::kLong && batch.is_contiguous() && batch.numel() == x.size(0),
              "batch must be a contiguous int64 [N]");
}

}  // namespace

// The node-wise passes below take the nodes a vector at a time: every [H*K, N] or [K, N] buffer has the nodes
// contiguous, so each (head, key) row loads and stores whole vectors of nodes, and the sums over the K keys and
// the H heads are sums of vectors, one node per lane (the same order of sums at any vector width).

// Soft assignments S [N, K] and per-graph pooling S_b^T X_b [B, K, F].
// Returns (pooled, S, S_t [K, N], S_heads [H*K, N], inv_d [H*K, N]); the last three are saved for the backward.
std::vector<Tensor> assign_pool_forward(const Tensor& x, const Tensor& keys, const Tensor& w, const Tensor& batch,
                                        int64_t num_graphs, int64_t K, double tau) {
  check_inputs(x, batch);
  const int64_t N = x.size(0), F = x.size(1), HK = keys.size(0), H = w.numel();
  TORCH_CHECK(HK == H * K && keys.size(1) == F, "keys must be [H*K, F]");
  const auto ptr = segment_ptr(batch, num_graphs);
  Tensor inv_d = at::mm(keys, x.t());  // k.x [H*K, N], turned in place into 1 / (tau + ||x - k||^2)
  Tensor S_heads = at::empty_like(inv_d), S_t = at::empty({K, N}, x.options());
  Tensor pooled = at::empty({num_graphs, K, F}, x.options());
  const Tensor key_sq = (keys * keys).sum(1).contiguous(), w_c = w.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "assign_pool_forward", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* kk = key_sq.data_ptr<scalar_t>();
    const scalar_t* wp = w_c.data_ptr<scalar_t>();
    scalar_t* id = inv_d.data_ptr<scalar_t>();
    scalar_t* sh = S_heads.data_ptr<scalar_t>();
    scalar_t* st = S_t.data_ptr<scalar_t>();
    // the power's exponent in halves when 1 + tau is a whole number (up to 512), else -1 (exp and log)
    const int64_t halves = tau + 1.0 == std::floor(tau + 1.0) && tau + 1.0 <= 512 ? int64_t(tau + 1.0) : -1;
    const Vec t(tau), one(1), two(2), exponent((1.0 + tau) / 2.0);
    at::parallel_for(0, N, kNodeGrain, [&](int64_t begin, int64_t end) {
      std::vector<Vec> q(K), logits(K);
      for (int64_t i = begin; i < end; i += Vec::size()) {
        const int64_t n = std::min<int64_t>(Vec::size(), end - i);
        alignas(64) scalar_t norms[Vec::size()] = {};
        for (int64_t l = 0; l < n; ++l) {
          const scalar_t* xi = xp + (i + l) * F;
          scalar_t xx = 0;
          _Pragma("omp simd reduction(+ : xx)")
          for (int64_t f = 0; f < F; ++f) xx += xi[f] * xi[f];
          norms[l] = xx;
        }
        const Vec base = t + Vec::loadu(norms);
        for (int64_t k = 0; k < K; ++k) logits[k] = Vec(0);
        for (int64_t h = 0; h < H; ++h) {
          Vec top(0), z(0);
          for (int64_t k = 0; k < K; ++k) {  // clamped at tau against rounding below zero distance
            const int64_t j = h * K + k;
            const Vec dot = Vec::loadu(id + j * N + i, n);
            q[k] = one / at::vec::maximum(base + Vec(kk[j]) - two * dot, t);
            q[k].store(id + j * N + i, n);
            top = at::vec::maximum(top, q[k]);
          }
          if (tau != 1.0) {  // (1 + d / tau)^(-(1 + tau) / 2), relative to the head's nearest key: the
            const Vec scale = one / top;  // normalisation below cancels the factor, and nothing underflows to 0/0
            for (int64_t k = 0; k < K; ++k) {
              const Vec v = q[k] * scale;
              q[k] = halves >= 0 ? power_of_half(v, halves) : (v.log() * exponent).exp();
            }
          }
          for (int64_t k = 0; k < K; ++k) z = z + q[k];
          const Vec inv_z = one / z, weight(wp[h]);
          for (int64_t k = 0; k < K; ++k) {  // normalise the head over K, then merge the heads
            const Vec s = q[k] * inv_z;
            s.store(sh + (h * K + k) * N + i, n);
            logits[k] = logits[k] + weight * s;
          }
        }
        Vec top = logits[0], total(0);  // the softmax over K
        for (int64_t k = 1; k < K; ++k) top = at::vec::maximum(top, logits[k]);
        for (int64_t k = 0; k < K; ++k) total = total + (logits[k] = (logits[k] - top).exp());
        const Vec inv_total = one / total;
        for (int64_t k = 0; k < K; ++k) (logits[k] * inv_total).store(st + k * N + i, n);
      }
    });
    scalar_t* out = pooled.data_ptr<scalar_t>();
    at::parallel_for(0, num_graphs, kGraphGrain, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) weighted_sums(st, xp, N, F, ptr[g], ptr[g + 1], K, out + g * K * F);
    });
  });
  return {pooled, S_t.t().contiguous(), S_t, S_heads, inv_d};
}

namespace {

// One node's share of the pooling's backward, from its graph's pooled gradient rows gp [K, F] and its assignments
// s[k * stride]: to_x[k] = <gp_k, x_i> and grad_x_i = sum_k s_k gp_k (stored), a chunk of four vectors of features at
// a time, x_i's chunk and its gradient's in registers.
template <typename T>
void pool_backward_node(const T* gp, const T* xi, const T* s, int64_t stride, int64_t K, int64_t F, T* to_x,
                        T* grad_xi) {
  using V = at::vec::Vectorized<T>;
  std::fill(to_x, to_x + K, T(0));
  for (int64_t c = 0; c < F; c += 4 * V::size()) {
    V xs[4], gs[4];
    int64_t n[4];
    for (int v = 0; v < 4; ++v) {
      n[v] = std::clamp<int64_t>(F - c - v * V::size(), 0, V::size());
      xs[v] = n[v] > 0 ? V::loadu(xi + c + v * V::size(), n[v]) : V(0);  // a partial load fills the rest with 0
      gs[v] = V(0);
    }
    for (int64_t k = 0; k < K; ++k) {
      const T* row = gp + k * F + c;
      const V weight(s[k * stride]);
      V dot(0);
      for (int v = 0; v < 4 && n[v] > 0; ++v) {
        const V r = V::loadu(row + v * V::size(), n[v]);
        dot = at::vec::fmadd(r, xs[v], dot);
        gs[v] = at::vec::fmadd(weight, r, gs[v]);
      }
      to_x[k] += at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, dot);
    }
    for (int v = 0; v < 4 && n[v] > 0; ++v) gs[v].store(grad_xi + c + v * V::size(), n[v]);
  }
}

// A gradient grad_S [N, K] reaching S through the assignment, taken back to the distances ||x - k||^2: returns
// (that gradient [H*K, N], its sums over the keys [N], the gradient of the head weights w [H]).
std::tuple<Tensor, Tensor, Tensor> distance_grad(const Tensor& grad_S, const Tensor& S_t, const Tensor& S_heads,
                                                 const Tensor& inv_d, const Tensor& w, double tau) {
  const int64_t K = S_t.size(0), N = S_t.size(1), H = w.numel();
  Tensor gd = at::empty_like(S_heads), row_sum = at::empty({N}, S_t.options());
  Tensor head = at::empty({H, N}, S_t.options()), grad_w = at::empty({H}, S_t.options());
  const Tensor g = grad_S.t().contiguous(), w_c = w.contiguous();
  AT_DISPATCH_FLOATING_TYPES(S_t.scalar_type(), "distance_grad", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    const scalar_t* gs = g.data_ptr<scalar_t>();
    const scalar_t* st = S_t.data_ptr<scalar_t>();
    const scalar_t* sh = S_heads.data_ptr<scalar_t>();
    const scalar_t* id = inv_d.data_ptr<scalar_t>();
    const scalar_t* wp = w_c.data_ptr<scalar_t>();
    scalar_t* gdp = gd.data_ptr<scalar_t>();
    scalar_t* rsp = row_sum.data_ptr<scalar_t>();
    scalar_t* hp = head.data_ptr<scalar_t>();
    scalar_t* wg = grad_w.data_ptr<scalar_t>();
    const scalar_t factor = -(1.0 + tau) / 2.0;  // d S_heads / d dist = factor * S_heads / d (before normalising)
    at::parallel_for(0, N, kNodeGrain, [&](int64_t begin, int64_t end) {
      std::vector<Vec> gl(K);
      for (int64_t i = begin; i < end; i += Vec::size()) {
        const int64_t n = std::min<int64_t>(Vec::size(), end - i);
        Vec dot(0), rs(0);
        for (int64_t k = 0; k < K; ++k) {
          gl[k] = Vec::loadu(gs + k * N + i, n);
          dot = dot + gl[k] * Vec::loadu(st + k * N + i, n);
        }
        for (int64_t k = 0; k < K; ++k) gl[k] = Vec::loadu(st + k * N + i, n) * (gl[k] - dot);  // the softmax's
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* shh = sh + h * K * N + i;
          Vec c(0);
          for (int64_t k = 0; k < K; ++k) c = c + gl[k] * Vec::loadu(shh + k * N, n);
          c.store(hp + h * N + i, n);
          const Vec scale(wp[h] * factor);
          for (int64_t k = 0; k < K; ++k) {  // through the normalisation over K and the Student-t kernel
            const int64_t o = (h * K + k) * N + i;
            const Vec d = (gl[k] - c) * scale * Vec::loadu(sh + o, n) * Vec::loadu(id + o, n);
            d.store(gdp + o, n);
            rs = rs + d;
          }
        }
        rs.store(rsp + i, n);
      }
    });
    std::fill(wg, wg + H, scalar_t(0));  // each head's sum in node order (the same bits at any thread count), the
    for (int64_t i = 0; i < N; ++i)       // heads side by side: independent sums, not one chain of dependent adds
      for (int64_t h = 0; h < H; ++h) wg[h] += hp[h * N + i];
  });
  return {gd, row_sum, grad_w};
}

// grad_keys += d||x - k||^2 / dk . gd = 2 k (sum_i gd_ji) - 2 sum_i gd_ji x_i, for gd [H*K, N]. The sums over
// nodes run in node order within fixed blocks of kNodeGrain nodes, and the blocks' sums are added in block order:
// the same bits at any thread count (a GEMM may split the nodes among its threads).
void add_key_grad(Tensor& grad_keys, const Tensor& gd, const Tensor& x, const Tensor& keys) {
  const int64_t HK = gd.size(0), N = gd.size(1), F = x.size(1);
  const int64_t blocks = std::max<int64_t>(1, (N + kNodeGrain - 1) / kNodeGrain);
  Tensor products = at::zeros({blocks, HK, F}, x.options()), sums = at::zeros({blocks, HK}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "key_grad", [&] {
    const scalar_t* g = gd.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* pp = products.data_ptr<scalar_t>();
    scalar_t* sp = sums.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t begin = b * kNodeGrain, end = std::min(N, begin + kNodeGrain);
        weighted_sums(g, xp, N, F, begin, end, HK, pp + b * HK * F);
        scalar_t* total = sp + b * HK;  // zeros: each key's sum in node order, the keys side by side
        for (int64_t i = begin; i < end; ++i)
          for (int64_t j = 0; j < HK; ++j) total[j] += g[j * N + i];
      }
    });
  });
  Tensor product = products[0], sum = sums[0];
  for (int64_t b = 1; b < blocks; ++b) {
    product = product + products[b];
    sum = sum + sums[b];
  }
  grad_keys.addcmul_(keys, sum.unsqueeze(1), 2.0).add_(product, -2.0);
}

}  // namespace

// Gradients (x, keys, w) of assign_pool_forward's outputs. With split_key_grad, the gradient reaching S through
// the pooling flows to x and w only and grad_S (that of the returned S) to the keys only (with kl_heads, to the
// keys and w, and the pooling's to x only); otherwise their sum flows to all three.
std::vector<Tensor> assign_pool_backward(const std::optional<Tensor>& grad_pooled, const std::optional<Tensor>& grad_S,
                                         const Tensor& x, const Tensor& keys, const Tensor& w, const Tensor& batch,
                                         int64_t num_graphs, const Tensor& S_t, const Tensor& S_heads,
                                         const Tensor& inv_d, double tau, bool split_key_grad, bool kl_heads) {
  const int64_t N = x.size(0), F = x.size(1), K = S_t.size(0);
  Tensor grad_x = at::zeros_like(x), grad_keys = at::zeros_like(keys), grad_w = at::zeros_like(w);
  Tensor to_x;  // the gradient reaching S through the pooling, then the one flowing on to x and w
  if (grad_pooled) {
    const auto ptr = segment_ptr(batch, num_graphs);
    const Tensor gp = grad_pooled->contiguous();
    to_x = at::empty({N, K}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pool_backward", [&] {
      const scalar_t* gpp = gp.data_ptr<scalar_t>();
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* st = S_t.data_ptr<scalar_t>();
      scalar_t* gsp = to_x.data_ptr<scalar_t>();
      scalar_t* gxp = grad_x.data_ptr<scalar_t>();
      at::parallel_for(0, num_graphs, kGraphGrain, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g)
          for (int64_t i = ptr[g]; i < ptr[g + 1]; ++i)
            pool_backward_node(gpp + g * K * F, xp + i * F, st + i, N, K, F, gsp + i * K, gxp + i * F);
      });
    });
  }
  if (!split_key_grad && grad_S) to_x = to_x.defined() ? to_x.add_(*grad_S) : *grad_S;
  const bool heads_from_s = split_key_grad && kl_heads;
  if (to_x.defined()) {  // d||x - k||^2 / dx = 2 (x - k)
    const auto [gd, row_sum, w_grad] = distance_grad(to_x, S_t, S_heads, inv_d, w, tau);
    if (!heads_from_s) grad_w = w_grad;
    grad_x.addcmul_(x, row_sum.unsqueeze(1), 2.0).addmm_(gd.t(), keys, 1.0, -2.0);
    if (!split_key_grad) add_key_grad(grad_keys, gd, x, keys);
  }
  if (split_key_grad && grad_S) {
    const auto [gd, row_sum, w_grad] = distance_grad(*grad_S, S_t, S_heads, inv_d, w, tau);
    add_key_grad(grad_keys, gd, x, keys);
    if (heads_from_s) grad_w = w_grad;
  }
  return {grad_x, grad_keys, grad_w};
}

// sum_i sum_j P_ij log(P_ij / S_ij) with P_ij = (S_ij^2 / col_bj) / sum_k (S_ik^2 / col_bk), col_bj the column
// sums of graph b; returns (loss, P, col [B, K], log_ratio [N, K]).
std::vector<Tensor> kl_forward(const Tensor& S, const Tensor& batch, int64_t num_graphs) {
  check_inputs(S, batch);
  const int64_t N = S.size(0), K = S.size(1);
  const auto ptr = segment_ptr(batch, num_graphs);
  Tensor col = at::zeros({num_graphs, K}, S.options());
  Tensor P = at::empty_like(S), log_ratio = at::empty_like(S), node_loss = at::empty({N}, S.options());
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "kl_forward", [&] {
    const scalar_t* sp = S.data_ptr<scalar_t>();
    scalar_t* cp = col.data_ptr<scalar_t>();
    scalar_t* pp = P.data_ptr<scalar_t>();
    scalar_t* lp = log_ratio.data_ptr<scalar_t>();
    scalar_t* nl = node_loss.data_ptr<scalar_t>();
    const scalar_t eps = kEps;
    at::parallel_for(0, num_graphs, kGraphGrain, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        scalar_t* cg = cp + g * K;
        for (int64_t i = ptr[g]; i < ptr[g + 1]; ++i)
          for (int64_t k = 0; k < K; ++k) cg[k] += sp[i * K + k];
        for (int64_t k = 0; k < K; ++k) cg[k] = std::max(cg[k], eps);
        for (int64_t i = ptr[g]; i < ptr[g + 1]; ++i) {
          const scalar_t* si = sp + i * K;
          scalar_t* pi = pp + i * K;
          scalar_t r = 0;
          for (int64_t k = 0; k < K; ++k) r += (pi[k] = si[k] * si[k] / cg[k]);
          scalar_t* li = lp + i * K;
          for (int64_t k = 0; k < K; ++k) {
            pi[k] /= r;
            li[k] = std::max(pi[k] / std::max(si[k], eps), eps);  // P / S, with P clamped like PyG's
          }
        }
        // the graph's logs at once (full vectors), then each node's loss
        map_inplace(lp + ptr[g] * K, (ptr[g + 1] - ptr[g]) * K,
                    [](const at::vec::Vectorized<scalar_t>& v) { return v.log(); });
        for (int64_t i = ptr[g]; i < ptr[g + 1]; ++i) {
          scalar_t loss = 0;
          for (int64_t k = 0; k < K; ++k) loss += pp[i * K + k] * lp[i * K + k];
          nl[i] = loss;
        }
      }
    });
  });
  return {node_loss.sum(), P, col, log_ratio};
}

// dL/dS of kl_forward: with u = P (log_ratio - <log_ratio, P>), (2u - P) / S - (graph sum of u / col)[batch].
Tensor kl_backward(const Tensor& grad_loss, const Tensor& S, const Tensor& batch, int64_t num_graphs,
                   const Tensor& P, const Tensor& col, const Tensor& log_ratio) {
  const int64_t K = S.size(1);
  const auto ptr = segment_ptr(batch, num_graphs);
  Tensor grad_S = at::empty_like(S);
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "kl_backward", [&] {
    const scalar_t* sp = S.data_ptr<scalar_t>();
    const scalar_t* pp = P.data_ptr<scalar_t>();
    const scalar_t* cp = col.data_ptr<scalar_t>();
    const scalar_t* lp = log_ratio.data_ptr<scalar_t>();
    scalar_t* gp = grad_S.data_ptr<scalar_t>();
    const scalar_t scale = grad_loss.item<double>(), eps = kEps;
    at::parallel_for(0, num_graphs, kGraphGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> graph_term(K);
      for (int64_t g = begin; g < end; ++g) {
        std::fill(graph_term.begin(), graph_term.end(), scalar_t(0));
        for (int64_t i = ptr[g]; i < ptr[g + 1]; ++i) {
          const scalar_t* pi = pp + i * K;
          const scalar_t* li = lp + i * K;
          scalar_t mean = 0;
          for (int64_t k = 0; k < K; ++k) mean += li[k] * pi[k];
          for (int64_t k = 0; k < K; ++k) {
            const scalar_t u = pi[k] * (li[k] - mean);
            gp[i * K + k] = (2 * u - pi[k]) / std::max(sp[i * K + k], eps);
            graph_term[k] += u;
          }
        }
        for (int64_t k = 0; k < K; ++k) graph_term[k] /= cp[g * K + k];
        for (int64_t i = ptr[g]; i < ptr[g + 1]; ++i)
          for (int64_t k = 0; k < K; ++k) gp[i * K + k] = (gp[i * K + k] - graph_term[k]) * scale;
      }
    });
  });
  return grad_S;
}

}  // namespace mempool
