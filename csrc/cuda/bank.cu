// Host side of the knowledge-bank CUDA ops (schemas and CPU kernels: ../bank.cpp; device code:
// bank_kernels.cuh, which says what each of the three launches does).
//
// Shared memory is sized from C and G at launch; above the default 48 KiB per block the kernels
// opt in (H100: up to 227 KiB), which covers e.g. C=4096, G=4096 in fp64.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <tuple>

#include "../bank.h"
#include "bank_kernels.cuh"

namespace hr2g {
namespace {

using namespace bank_kernels;

// ------------------------------------------------------------------------------------- launch
// Opt in to more than the default 48 KiB of dynamic shared memory when C or G need it.  The cap is
// raised to the device's maximum, not to `bytes`: the attribute is per (kernel, device) and shared
// by all host threads, so setting it to this call's need would let a concurrent call with a smaller
// need lower it between our set and our launch (-> "invalid argument" at launch).  The cap is only
// a limit; the shared memory a launch gets (and the occupancy) follows the launch's own size.
template <typename Kernel>
void prepare_smem(Kernel kernel, size_t bytes, const char* op, int64_t c_dim, int64_t g_total) {
  if (bytes <= 48 * 1024) return;
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const size_t cap = static_cast<size_t>(optin) - std::min(static_cast<size_t>(optin), attr.sharedSizeBytes);
  TORCH_CHECK(bytes <= cap, op, ": C=", c_dim, " and G=", g_total, " need ", bytes,
              " bytes of shared memory per block, more than this GPU's ", cap);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cap)));
}

void check_int_range(const char* op, int64_t c_dim, int64_t g_total) {
  TORCH_CHECK(c_dim < (int64_t{1} << 31) && g_total < (int64_t{1} << 31), op, ": C=", c_dim, " and G=", g_total,
              " must each be < 2^31 on CUDA");
}

// One block per prototype: gridDim.x is at most 2^31 - 1 (the launch casts M to unsigned, which
// would silently wrap above 2^32 and fail the launch above 2^31).
void check_grid(const char* op, int64_t m_total) {
  TORCH_CHECK(m_total < (int64_t{1} << 31), op, ": at most 2^31-1 prototypes per call on CUDA, got M=", m_total);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bank_retrieve_cuda(const at::Tensor& protos_in, const at::Tensor& bank_in,
                                                                  int64_t filled, int64_t topk, double temperature) {
  check_retrieve_args(protos_in, bank_in, filled, topk, temperature, c10::DeviceType::CUDA);
  check_int_range("hr2g::bank_retrieve", protos_in.size(1), bank_in.size(0));
  check_grid("hr2g::bank_retrieve", protos_in.size(0));
  const c10::cuda::CUDAGuard guard(protos_in.device());
  const auto protos = protos_in.contiguous();
  const auto bank = bank_in.contiguous();
  const int64_t m_total = protos.size(0), c_dim = protos.size(1), k = filled > 0 ? topk : 0;
  const auto acc = at::toOpMathType(protos.scalar_type());
  auto index = at::empty({m_total, k}, protos.options().dtype(at::kLong));
  auto weights = at::empty({m_total, k}, protos.options().dtype(acc));
  if (filled == 0) return {at::zeros_like(protos), index, weights};
  auto out = at::empty_like(protos);
  if (m_total == 0) return {out, index, weights};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "bank_retrieve_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = retrieve_smem<acc_t>(c_dim, filled, k);
    auto kernel = retrieve_kernel<scalar_t, acc_t>;
    prepare_smem(kernel, smem, "hr2g::bank_retrieve", c_dim, bank.size(0));
    kernel<<<static_cast<unsigned>(m_total), kRetrieveThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        protos.const_data_ptr<scalar_t>(), bank.const_data_ptr<scalar_t>(), static_cast<int>(c_dim),
        static_cast<int>(filled), static_cast<int>(k), static_cast<acc_t>(temperature), out.mutable_data_ptr<scalar_t>(),
        index.mutable_data_ptr<int64_t>(), weights.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, index, weights};
}

// `index` is trusted to hold slots < G (it comes from bank_retrieve): checking it on the host would
// cost a device-to-host sync, so the kernel asserts it instead.  The CPU kernel checks with an error.
at::Tensor bank_retrieve_backward_cuda(const at::Tensor& grad_out, const at::Tensor& protos_in, const at::Tensor& bank_in,
                                       const at::Tensor& index_in, const at::Tensor& weights_in, double temperature) {
  check_retrieve_backward_args(grad_out, protos_in, bank_in, index_in, weights_in, temperature, c10::DeviceType::CUDA);
  check_int_range("hr2g::bank_retrieve_backward", protos_in.size(1), bank_in.size(0));
  check_grid("hr2g::bank_retrieve_backward", protos_in.size(0));
  const c10::cuda::CUDAGuard guard(protos_in.device());
  const auto go = grad_out.contiguous(), protos = protos_in.contiguous(), bank = bank_in.contiguous();
  const auto index = index_in.contiguous(), weights = weights_in.contiguous();
  const int64_t m_total = protos.size(0), c_dim = protos.size(1), k = index.size(1);
  if (k == 0 || m_total == 0) return at::zeros_like(protos);
  auto grad = at::empty_like(protos);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "bank_retrieve_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = backward_smem<acc_t>(c_dim, k);
    auto kernel = retrieve_backward_kernel<scalar_t, acc_t>;
    prepare_smem(kernel, smem, "hr2g::bank_retrieve_backward", c_dim, bank.size(0));
    kernel<<<static_cast<unsigned>(m_total), kRetrieveThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), protos.const_data_ptr<scalar_t>(), bank.const_data_ptr<scalar_t>(),
        index.const_data_ptr<int64_t>(), weights.const_data_ptr<acc_t>(), static_cast<int>(c_dim),
        static_cast<int>(bank.size(0)), static_cast<int>(k), static_cast<acc_t>(temperature),
        grad.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

void bank_update_cuda(at::Tensor& bank, int64_t filled, const at::Tensor& protos_in, double momentum) {
  check_update_args(bank, filled, protos_in, momentum, c10::DeviceType::CUDA);
  check_int_range("hr2g::bank_update_", bank.size(1), bank.size(0));
  TORCH_CHECK(protos_in.size(0) < (int64_t{1} << 31), "hr2g::bank_update_: at most 2^31-1 prototypes per call, got ",
              protos_in.size(0));
  const c10::cuda::CUDAGuard guard(bank.device());
  const auto protos = protos_in.to(bank.scalar_type()).contiguous();  // the reference casts first too
  const int64_t g_total = bank.size(0), c_dim = bank.size(1), n_total = protos.size(0);
  if (n_total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "bank_update_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const size_t smem = update_smem<acc_t>(c_dim, g_total);
      auto kernel = update_kernel<scalar_t, acc_t>;
      prepare_smem(kernel, smem, "hr2g::bank_update_", c_dim, g_total);
      kernel<<<1, kUpdateThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
          bank.mutable_data_ptr<scalar_t>(), protos.const_data_ptr<scalar_t>(), static_cast<int>(g_total),
          static_cast<int>(c_dim), static_cast<int>(filled), static_cast<int>(n_total),
          static_cast<acc_t>(momentum), static_cast<acc_t>(1.0 - momentum));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(hr2g, CUDA, m) {
  m.impl("bank_retrieve", &bank_retrieve_cuda);
  m.impl("bank_retrieve_backward", &bank_retrieve_backward_cuda);
  m.impl("bank_update_", &bank_update_cuda);
}

}  // namespace hr2g
