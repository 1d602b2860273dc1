// CPU kernels of the encoder. GIN's aggregation (mempool_cli.nn.FastGINConv), each node's (1 + eps) times its own
// row plus its neighbours' rows, in edge order, in one pass over a CSR adjacency instead of PyG's gather of every
// edge's message, scatter-add (two [E, F] tensors), product and sum.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <vector>

namespace mempool {

namespace {

// Work per parallel task: a PROTEINS batch (about 1250 nodes, 80,000 elements) stays on one thread, since waking a
// second one cost more than it saved there (2 threads: 0.181 -> 0.158 s an epoch); DD's and REDDIT's batches split.
constexpr int64_t kRowGrain = 2048;  // rows

// Stable counting sort of the edges by `key`: the start of each node's edges [N + 1] and, in that order, the
// other end of each edge [E].
std::vector<Tensor> group_edges(const int64_t* key, const int64_t* other, int64_t E, int64_t N) {
  Tensor ptr = at::zeros({N + 1}, at::kLong), ends = at::empty({E}, at::kLong);
  int64_t* p = ptr.data_ptr<int64_t>();
  int64_t* o = ends.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(key[e] >= 0 && key[e] < N && other[e] >= 0 && other[e] < N,
                "edge_index holds a node outside [0, ", N, ")");
    ++p[key[e] + 1];
  }
  for (int64_t i = 0; i < N; ++i) p[i + 1] += p[i];
  std::vector<int64_t> next(p, p + N);
  for (int64_t e = 0; e < E; ++e) o[next[key[e]]++] = other[e];
  return {ptr, ends};
}

}  // namespace

std::vector<Tensor> adjacency(const Tensor& edge_index, int64_t num_nodes) {
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 && edge_index.scalar_type() == at::kLong,
              "edge_index must be int64 [2, E]");
  const Tensor edges = edge_index.contiguous();
  const int64_t E = edges.size(1);
  const int64_t* src = edges.data_ptr<int64_t>();
  std::vector<Tensor> incoming = group_edges(src + E, src, E, num_nodes);  // by target: the sources
  std::vector<Tensor> outgoing = group_edges(src, src + E, E, num_nodes);  // by source: the targets
  return {incoming[0], incoming[1], outgoing[0], outgoing[1]};
}

Tensor neighbour_sum(const Tensor& x, const Tensor& ptr, const Tensor& neighbours, double self_weight) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous CPU [N, F]");
  TORCH_CHECK(ptr.numel() == x.size(0) + 1 && ptr.scalar_type() == at::kLong && ptr.is_contiguous() &&
              neighbours.scalar_type() == at::kLong && neighbours.is_contiguous(),
              "ptr and neighbours must be an adjacency's contiguous int64 [N + 1] and [E]");
  const int64_t N = x.size(0), F = x.size(1);
  Tensor out = at::empty_like(x);
  const int64_t* p = ptr.data_ptr<int64_t>();
  const int64_t* nb = neighbours.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "neighbour_sum", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t w = static_cast<scalar_t>(self_weight);
    at::parallel_for(0, N, kRowGrain, [=](int64_t begin, int64_t end) {  // by value: no aliasing
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* o = op + i * F;
        const scalar_t* own = xp + i * F;
        for (int64_t f = 0; f < F; ++f) o[f] = w * own[f];
        for (int64_t e = p[i]; e < p[i + 1]; ++e) {
          const scalar_t* row = xp + nb[e] * F;
          for (int64_t f = 0; f < F; ++f) o[f] += row[f];
        }
      }
    });
  });
  return out;
}

}  // namespace mempool
