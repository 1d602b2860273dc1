// The Python module of the compiled kernels (kernels.h); the only source that includes PyTorch's Python headers.
#include <torch/csrc/utils/pybind.h>  // the Tensor casters of torch/python.h, without its other 10 s of headers

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("assign_pool_forward", &mempool::assign_pool_forward);
  m.def("assign_pool_backward", &mempool::assign_pool_backward);
  m.def("kl_forward", &mempool::kl_forward);
  m.def("kl_backward", &mempool::kl_backward);
  m.def("adjacency", &mempool::adjacency);
  m.def("neighbour_sum", &mempool::neighbour_sum);
  m.def("batch_norm_forward", &mempool::batch_norm_forward);
  m.def("batch_norm_backward", &mempool::batch_norm_backward);
  m.def("residual_relu_dropout", &mempool::residual_relu_dropout);
  m.def("leaky_relu_dropout", &mempool::leaky_relu_dropout);
  m.def("leaky_relu_dropout_backward", &mempool::leaky_relu_dropout_backward);
}
