// Kernels that check the SIMT emulator itself (tests/test_bank_simt.py): two correct reductions
// whose results are known, and one kernel per mistake the emulator must report.  Without these, a
// bank-kernel test passing on the emulator would not say much.
#include <cstdio>
#include <exception>

#include "simt.h"

namespace {

// Shared-memory tree reduction of each block's slice of x (correct: a barrier after every level).
__global__ void block_sum_kernel(const float* x, float* out) {
  HR2G_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Xor-butterfly inside each warp: every lane ends with its warp's sum.
__global__ void warp_sum_kernel(const float* x, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[i];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  out[i] = v;
}

// Reads its neighbour's shared-memory slot without a barrier after the writes: a race.
__global__ void racy_kernel(float* out) {
  HR2G_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  s[t] = static_cast<float>(t);
  out[t] = s[(t + 1) % blockDim.x];
}

// Warp 0 writes, every warp shuffles, warp 1 reads warp 0's slots: no barrier between, so a race
// on a GPU (warp 1 needs only its own lanes to pass the shuffle), which the round-based orders
// hide (every warp's shuffle resolves before any warp runs on) and the warp orders show.
__global__ void shuffle_hidden_race_kernel(float* out) {
  HR2G_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  if (t < 32) s[t] = static_cast<float>(t + 1);
  const float v = __shfl_xor_sync(0xffffffffu, 0.0f, 1);
  out[t] = t >= 32 && t < 64 ? s[t - 32] : v;
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void partial_warp_shuffle_kernel(float* out) {
  float v = 1.0f;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void smem_overflow_kernel(float* out, int n_floats) {
  HR2G_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  if (threadIdx.x == 0) s[n_floats] = 0.0f;  // one past the end
  out[threadIdx.x] = 1.0f;
}

__global__ void uninitialised_smem_kernel(float* out) {
  HR2G_DYNAMIC_SMEM(smem);
  out[threadIdx.x] = reinterpret_cast<float*>(smem)[threadIdx.x];
}

__global__ void assert_kernel(float* out) {
  CUDA_KERNEL_ASSERT(threadIdx.x != 5);
  out[threadIdx.x] = 1.0f;
}

}  // namespace

// which: 0 block_sum, 1 warp_sum, 2 racy, 3 divergent barrier, 4 two barriers, 5 partial-warp
// shuffle, 6 shared-memory overflow, 7 uninitialised shared memory, 8 device assert, 9 a race
// between warps that a shuffle hides from the round-based orders.
// `x` holds blocks*threads inputs, `out` as many outputs.  Returns 0, or 1 with the message in err.
extern "C" int hr2g_simt_selftest(int which, int order, uint64_t seed, int blocks, int threads, const float* x,
                                  float* out, char* err, int err_len) {
  try {
    const auto o = static_cast<simt::Order>(order);
    const size_t smem = threads * sizeof(float);
    switch (which) {
      case 0: simt::launch(blocks, threads, smem, o, seed, block_sum_kernel, x, out); break;
      case 1: simt::launch(blocks, threads, 0, o, seed, warp_sum_kernel, x, out); break;
      case 2: simt::launch(blocks, threads, smem, o, seed, racy_kernel, out); break;
      case 3: simt::launch(blocks, threads, 0, o, seed, divergent_barrier_kernel, out); break;
      case 4: simt::launch(blocks, threads, 0, o, seed, two_barriers_kernel, out); break;
      case 5: simt::launch(blocks, threads, 0, o, seed, partial_warp_shuffle_kernel, out); break;
      case 6: simt::launch(blocks, threads, smem, o, seed, smem_overflow_kernel, out, threads); break;
      case 7: simt::launch(blocks, threads, smem, o, seed, uninitialised_smem_kernel, out); break;
      case 8: simt::launch(blocks, threads, 0, o, seed, assert_kernel, out); break;
      case 9: simt::launch(blocks, threads, smem, o, seed, shuffle_hidden_race_kernel, out); break;
      default: throw std::invalid_argument("unknown self-test kernel " + std::to_string(which));
    }
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, static_cast<size_t>(err_len), "%s", e.what());
    return 1;
  }
}
