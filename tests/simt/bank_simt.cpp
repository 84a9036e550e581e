// The CUDA kernels of csrc/cuda/bank_kernels.cuh, compiled for the host and run on the SIMT
// emulator (simt.h), behind a C ABI for ctypes (tests/simt_bank.py builds and loads this file).
//
// The launch shapes (grid, block, dynamic shared memory) are those of csrc/cuda/bank.cu: one block
// of kRetrieveThreads per prototype for retrieval and its backward, one block of kUpdateThreads for
// the update.  The host-only paths of bank.cu (filled == 0, no prototypes, topk == 0) launch
// nothing, so they are not exercised here.
//
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16 (accumulation: fp64 for fp64, else fp32,
// as at::opmath_type).  Every entry point returns 0, or 1 with the error message in `err`.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdio>
#include <exception>

#include "bank.h"      // torch headers first: simt.h then defines the CUDA keywords away
#include "simt.h"
#include "cuda/bank_kernels.cuh"

namespace {

namespace bk = hr2g::bank_kernels;

template <typename S>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename F>
int guarded(F&& f, char* err, int err_len) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, static_cast<size_t>(err_len), "%s", e.what());
    return 1;
  }
}

// Calls f(S{}) with S the C++ type of dtype code `dtype`.
template <typename F>
void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(float{});
    case 1: return f(double{});
    case 2: return f(c10::Half{});
    case 3: return f(c10::BFloat16{});
    default: throw std::invalid_argument("dtype code " + std::to_string(dtype) + ": expected 0..3");
  }
}

}  // namespace

extern "C" {

int hr2g_simt_retrieve(int dtype, int order, uint64_t seed, const void* protos, const void* bank, int64_t m, int c_dim,
                       int filled, int k, double temperature, void* out, int64_t* index, void* weights, char* err,
                       int err_len) {
  return guarded([&] {
    dispatch(dtype, [&](auto tag) {
      using S = decltype(tag);
      using A = typename Acc<S>::type;
      simt::launch(static_cast<unsigned>(m), bk::kRetrieveThreads, bk::retrieve_smem<A>(c_dim, filled, k),
                   static_cast<simt::Order>(order), seed, bk::retrieve_kernel<S, A>, static_cast<const S*>(protos),
                   static_cast<const S*>(bank), c_dim, filled, k, static_cast<A>(temperature), static_cast<S*>(out), index,
                   static_cast<A*>(weights));
    });
  }, err, err_len);
}

int hr2g_simt_retrieve_backward(int dtype, int order, uint64_t seed, const void* grad_out, const void* protos,
                                const void* bank, const int64_t* index, const void* weights, int64_t m, int c_dim,
                                int g_total, int k, double temperature, void* grad_protos, char* err, int err_len) {
  return guarded([&] {
    dispatch(dtype, [&](auto tag) {
      using S = decltype(tag);
      using A = typename Acc<S>::type;
      simt::launch(static_cast<unsigned>(m), bk::kRetrieveThreads, bk::backward_smem<A>(c_dim, k),
                   static_cast<simt::Order>(order), seed, bk::retrieve_backward_kernel<S, A>,
                   static_cast<const S*>(grad_out), static_cast<const S*>(protos), static_cast<const S*>(bank), index,
                   static_cast<const A*>(weights), c_dim, g_total, k, static_cast<A>(temperature),
                   static_cast<S*>(grad_protos));
    });
  }, err, err_len);
}

int hr2g_simt_update(int dtype, int order, uint64_t seed, void* bank, const void* protos, int g_total, int c_dim,
                     int filled, int n_total, double momentum, char* err, int err_len) {
  return guarded([&] {
    dispatch(dtype, [&](auto tag) {
      using S = decltype(tag);
      using A = typename Acc<S>::type;
      simt::launch(1, bk::kUpdateThreads, bk::update_smem<A>(c_dim, g_total), static_cast<simt::Order>(order), seed,
                   bk::update_kernel<S, A>, static_cast<S*>(bank), static_cast<const S*>(protos), g_total, c_dim, filled,
                   n_total, static_cast<A>(momentum), static_cast<A>(1.0 - momentum));
    });
  }, err, err_len);
}

// Dynamic shared memory of a launch: op 0 retrieve, 1 its backward, 2 update.
int64_t hr2g_simt_smem_bytes(int op, int dtype, int64_t c_dim, int64_t g_total, int64_t k) {
  const bool f64 = dtype == 1;
  switch (op) {
    case 0: return static_cast<int64_t>(f64 ? bk::retrieve_smem<double>(c_dim, g_total, k) : bk::retrieve_smem<float>(c_dim, g_total, k));
    case 1: return static_cast<int64_t>(f64 ? bk::backward_smem<double>(c_dim, k) : bk::backward_smem<float>(c_dim, k));
    case 2: return static_cast<int64_t>(f64 ? bk::update_smem<double>(c_dim, g_total) : bk::update_smem<float>(c_dim, g_total));
    default: return -1;
  }
}

}  // extern "C"
