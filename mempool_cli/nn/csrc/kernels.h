// Kernels defined in one source file and bound to Python in mem_pool.cpp's module.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace mempool {

using torch::Tensor;

// A graph's CSR adjacency both ways, from edge_index [2, E] (sources, then targets) over num_nodes nodes:
// (ptr_in [N + 1], sources [E]: each node's incoming edges, in edge order; ptr_out [N + 1], targets [E]: its
// outgoing ones).
std::vector<Tensor> adjacency(const Tensor& edge_index, int64_t num_nodes);

// The neighbours' sum out[i] = sum_{e in ptr[i]..ptr[i+1]} x[neighbours[e]], in that order: the forward pass with
// the incoming CSR, and the gradient of x with the outgoing one.
Tensor neighbour_sum(const Tensor& x, const Tensor& ptr, const Tensor& neighbours);

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
