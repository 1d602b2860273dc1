// The kernels of mem_pool.cpp, encoder.cpp, batch_norm.cpp and dropout.cpp, bound to Python in bindings.cpp. The
// sources include ATen's own headers, not torch/extension.h: that one header took three quarters of the build's time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace mempool {

using at::Tensor;

// mem_pool.cpp: the memory layer's assignment fused with the pooling, and its KL loss, forward and backward
// (documented at their definitions).
std::vector<Tensor> assign_pool_forward(const Tensor& x, const Tensor& keys, const Tensor& w, const Tensor& batch,
                                        int64_t num_graphs, int64_t K, double tau);
std::vector<Tensor> assign_pool_backward(const std::optional<Tensor>& grad_pooled, const std::optional<Tensor>& grad_S,
                                         const Tensor& x, const Tensor& keys, const Tensor& w, const Tensor& batch,
                                         int64_t num_graphs, const Tensor& S_t, const Tensor& S_heads,
                                         const Tensor& inv_d, double tau, bool split_key_grad, bool kl_heads);
std::vector<Tensor> kl_forward(const Tensor& S, const Tensor& batch, int64_t num_graphs);
Tensor kl_backward(const Tensor& grad_loss, const Tensor& S, const Tensor& batch, int64_t num_graphs,
                   const Tensor& P, const Tensor& col, const Tensor& log_ratio);

// A graph's CSR adjacency both ways, from edge_index [2, E] (sources, then targets) over num_nodes nodes:
// (ptr_in [N + 1], sources [E]: each node's incoming edges, in edge order; ptr_out [N + 1], targets [E]: its
// outgoing ones).
std::vector<Tensor> adjacency(const Tensor& edge_index, int64_t num_nodes);

// GIN's aggregation out[i] = self_weight * x[i] + sum_{e in ptr[i]..ptr[i+1]} x[neighbours[e]] (in that order): the
// forward pass with the incoming CSR, and the gradient of x with the outgoing one.
Tensor neighbour_sum(const Tensor& x, const Tensor& ptr, const Tensor& neighbours, double self_weight);

// batch_norm.cpp: batch norm with the batch's statistics, optionally followed by relu, forward and backward
// (documented at their definitions).
std::vector<Tensor> batch_norm_forward(const Tensor& x, const std::optional<Tensor>& weight,
                                       const std::optional<Tensor>& bias, Tensor& running_mean, Tensor& running_var,
                                       double momentum, double eps, bool relu);
std::vector<Tensor> batch_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& out,
                                        const std::optional<Tensor>& weight, const Tensor& mean, const Tensor& invstd,
                                        bool relu);

// The residual step out = x + relu(h) * mask of inverted dropout, mask = (draws >= threshold ? scale : 0) per
// element: (out, multiplier), the multiplier (mask where h > 0, else 0) being d out / d h.
std::vector<Tensor> residual_relu_dropout(const Tensor& x, const Tensor& h, const Tensor& draws, int64_t threshold,
                                          double scale);

// The memory layers' output step out = leaky_relu(h, slope) * mask, mask = (draws >= threshold ? scale : 0) per
// element: (out, mask); and its backward, the gradient of h from that of out.
std::vector<Tensor> leaky_relu_dropout(const Tensor& h, const Tensor& draws, int64_t threshold, double scale,
                                       double slope);
Tensor leaky_relu_dropout_backward(const Tensor& grad, const Tensor& h, const Tensor& mask, double slope);

}  // namespace mempool
