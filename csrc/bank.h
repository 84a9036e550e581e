// Shared between the CPU (bank.cpp) and CUDA (cuda/bank.cu) implementations of the knowledge-bank
// ops: argument checks (one message per contract, whatever the device) and the scalar rules that
// both must apply identically to stay tie-for-tie compatible with hr2g.reference.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace hr2g {

// hr2g.reference.BANK_NORM_EPS: cosine norms are floored at this value (F.normalize-style).
constexpr double kBankNormEps = 1e-8;

// Argument contracts.  `device_type` is the device the implementation runs on (CPU or CUDA); each
// check raises with the op's name, the argument's name and the expectation.
void check_retrieve_args(const at::Tensor& protos, const at::Tensor& bank, int64_t filled, int64_t topk,
                         double temperature, c10::DeviceType device_type);
void check_retrieve_backward_args(const at::Tensor& grad_out, const at::Tensor& protos, const at::Tensor& bank,
                                  const at::Tensor& index, const at::Tensor& weights, double temperature,
                                  c10::DeviceType device_type);
void check_update_args(const at::Tensor& bank, int64_t filled, const at::Tensor& protos, double momentum,
                       c10::DeviceType device_type);

// The order torch.sort(descending=True, stable=True) and torch.argmax put similarities in: NaN
// counts as larger than every number (torch propagates it), equal values keep slot order.  `a`
// (at slot ia) comes before `b` (at slot ib).  A strict total order, so a rank is unique.
template <typename T>
C10_HOST_DEVICE inline bool sim_before(T a, int64_t ia, T b, int64_t ib) {
  const bool na = a != a, nb = b != b;  // isnan without <cmath> overload trouble on device
  if (na || nb) {
    return na && (!nb || ia < ib);
  }
  return a > b || (a == b && ia < ib);
}

}  // namespace hr2g
