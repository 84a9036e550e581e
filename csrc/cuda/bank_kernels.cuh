// Device code of the knowledge-bank CUDA ops: the three kernels, their helpers and their dynamic
// shared-memory sizes.  Host code (argument checks, launches) is in bank.cu.
//
// Kept free of host-runtime headers so that tests/simt/ can compile these exact kernels with a host
// C++ compiler and run them on a CPU SIMT emulator (every thread of a block as a coroutine, warp
// shuffles and __syncthreads emulated, several thread schedules compared bit for bit): CI checks
// the kernels' logic, shared-memory sizing and barrier placement without a GPU.
//
// retrieve:  ONE launch, one block per prototype: cosine to the filled slots (a warp per slot),
//            top-k by rank counting (deterministic, ties -> lower slot), softmax, weighted sum.
// backward:  ONE launch, one block per prototype, gradient w.r.t. protos only.
// update:    ONE launch of ONE block that walks the prototypes in the given order, so step i sees
//            the bank left by step i-1 exactly as the reference's python loop does (the model
//            feeds M*R prototypes gathered from R DDP ranks; every rank must end bit-identical).
//            The reference spends about a dozen kernel launches and a device-to-host sync
//            (int(argmax)) per prototype; here the whole sequence is one launch, no sync.
//
// Determinism: every reduction has a fixed shape (xor-butterfly inside a warp, then warp partials
// added in warp order), nothing uses atomics, so results are run-to-run bit-identical.
// Accumulation in acc_t = at::opmath_type (fp32 for fp16/bf16/fp32, fp64 for fp64).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../bank.h"

// The dynamic shared memory of a kernel.  The emulator defines this before including the file.
#ifndef HR2G_DYNAMIC_SMEM
#define HR2G_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace hr2g {
namespace bank_kernels {

constexpr int kWarp = 32;
constexpr int kRetrieveThreads = 256;  // 8 warps: G=50 slots -> 6-7 dot products per warp
constexpr int kUpdateThreads = 1024;   // one block does all the work: use a whole SM's worth

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;  // identical on every lane (butterfly)
}

// Sum over the block, returned to every thread.  `scratch` holds >= 32 values.  The leading
// barrier lets a caller reuse scratch (or shared data it just wrote) right before the call.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < n_warps; ++w) total += scratch[w];  // same order on every thread
  return total;
}

template <typename T>
__device__ __forceinline__ T floor_norm(T n) {
  const T eps = static_cast<T>(kBankNormEps);
  return n < eps ? eps : n;  // NaN stays NaN, like torch.clamp_min
}

// Products and sums rounded separately (no FMA contraction), as torch's separate mul/add kernels do.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

// Floored norm of one bank row, computed by one whole warp: lane l sums channels l, l+32, ...
// (explicit FMAs, so the rounding does not hang on the compiler's contraction choices), then the
// butterfly.  The result depends on the row's bits only, never on where or when it is computed:
// the update kernel uses this for every row norm it keeps, so bit-equal slots keep bit-equal
// norms and similarities, and "ties -> lower slot" holds after moves too (as on the CPU, where
// normalize_row is used for both the initial and the refreshed norms).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_row_norm(const scalar_t* row, int c_dim, int lane) {
  acc_t ss = 0;
  for (int c = lane; c < c_dim; c += kWarp) {
    const acc_t v = static_cast<acc_t>(row[c]);
    ss = fma_rn(v, v, ss);
  }
  return floor_norm(sqrt(warp_sum(ss)));
}

// pn = p / max(|p|, eps) with the whole block (p a prototype of c_dim entries, pn in shared
// memory); each thread divides only the entries it loaded, so the caller's barrier after this is
// what makes pn visible to the other threads.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void block_normalize(const scalar_t* p, acc_t* pn, int c_dim, acc_t* scratch) {
  acc_t ss = 0;
  for (int c = threadIdx.x; c < c_dim; c += blockDim.x) {
    const acc_t v = static_cast<acc_t>(p[c]);
    pn[c] = v;
    ss += v * v;
  }
  const acc_t p_norm = floor_norm(sqrt(block_sum(ss, scratch)));
  for (int c = threadIdx.x; c < c_dim; c += blockDim.x) pn[c] = pn[c] / p_norm;
}

// ------------------------------------------------------------------------------------ retrieve
template <typename acc_t>
size_t retrieve_smem(int64_t c_dim, int64_t filled, int64_t k) {
  return (kWarp + c_dim + filled + k) * sizeof(acc_t) + k * sizeof(int);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRetrieveThreads)
    retrieve_kernel(const scalar_t* __restrict__ protos, const scalar_t* __restrict__ bank, int c_dim, int filled,
                    int k, acc_t temperature, scalar_t* __restrict__ out, int64_t* __restrict__ index,
                    acc_t* __restrict__ weights) {
  HR2G_DYNAMIC_SMEM(smem);
  acc_t* scratch = reinterpret_cast<acc_t*>(smem);  // [32]
  acc_t* pn = scratch + kWarp;                      // [C]   normalised prototype
  acc_t* sim = pn + c_dim;                          // [filled]
  acc_t* w = sim + filled;                          // [k]   softmax weights, rank order
  int* sel = reinterpret_cast<int*>(w + k);         // [k]   slot of rank j
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, n_warps = blockDim.x / kWarp;
  const int64_t m = blockIdx.x;
  const scalar_t* p = protos + m * c_dim;

  // 1. p / max(|p|, eps)
  block_normalize(p, pn, c_dim, scratch);
  __syncthreads();

  // 2. cosine to every filled slot, a warp per slot, in one pass: (pn . b) / max(|b|, eps).  (The
  //    reference divides b first; equal up to rounding.)  Lane l always takes channels l, l+32, ...,
  //    so equal slots give bit-equal similarities and tie exactly.
  for (int g = warp; g < filled; g += n_warps) {
    const scalar_t* b = bank + static_cast<int64_t>(g) * c_dim;
    acc_t d = 0, bss = 0;
    for (int c = lane; c < c_dim; c += kWarp) {
      const acc_t v = static_cast<acc_t>(b[c]);
      d += pn[c] * v;
      bss += v * v;
    }
    d = warp_sum(d);
    bss = warp_sum(bss);
    if (lane == 0) sim[g] = d / floor_norm(sqrt(bss));
  }
  __syncthreads();

  // 3. top-k: a slot's rank is the number of slots ordered before it (sim_before is a strict total
  //    order, so ranks are a permutation).  O(filled^2) compares on shared memory, all threads
  //    reading the same sim[h] (broadcast): 2,500 for G=50, ~4k per thread for G=1024.
  for (int g = tid; g < filled; g += blockDim.x) {
    const acc_t s = sim[g];
    int rank = 0;
    for (int h = 0; h < filled && rank < k; ++h) rank += sim_before(sim[h], h, s, g) ? 1 : 0;
    if (rank < k) sel[rank] = g;
  }
  __syncthreads();

  // 4. softmax(sim / T) in rank order; rank 0 is the maximum, hence the shift
  const acc_t x0 = sim[sel[0]] / temperature;
  acc_t part = 0;
  for (int j = tid; j < k; j += blockDim.x) {
    const acc_t e = exp(sim[sel[j]] / temperature - x0);
    w[j] = e;
    part += e;
  }
  const acc_t total = block_sum(part, scratch);
  for (int j = tid; j < k; j += blockDim.x) {
    w[j] = w[j] / total;
    weights[m * k + j] = w[j];
    index[m * k + j] = sel[j];
  }
  __syncthreads();

  // 5. weighted sum of the raw slots; threads along C, so each slot row is read coalesced
  for (int c = tid; c < c_dim; c += blockDim.x) {
    acc_t o = 0;
    for (int j = 0; j < k; ++j) o += w[j] * static_cast<acc_t>(bank[static_cast<int64_t>(sel[j]) * c_dim + c]);
    out[m * c_dim + c] = static_cast<scalar_t>(o);
  }
}

// ----------------------------------------------------------------------------------- backward
template <typename acc_t>
size_t backward_smem(int64_t c_dim, int64_t k) {
  return (kWarp + c_dim + 2 * k) * sizeof(acc_t) + k * sizeof(int);
}

// See retrieve_backward_cpu_impl in ../bank.cpp for the formula.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRetrieveThreads)
    retrieve_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ protos,
                             const scalar_t* __restrict__ bank, const int64_t* __restrict__ index,
                             const acc_t* __restrict__ weights, int c_dim, int g_total, int k, acc_t temperature,
                             scalar_t* __restrict__ grad_protos) {
  HR2G_DYNAMIC_SMEM(smem);
  acc_t* scratch = reinterpret_cast<acc_t*>(smem);  // [32]
  acc_t* u = scratch + kWarp;                       // [C]  d loss / d normalised p
  acc_t* ds = u + c_dim;                            // [k]  g.b_j, then d loss / d sim_j
  acc_t* row_n = ds + k;                            // [k]  floored |b_j|
  int* sel = reinterpret_cast<int*>(row_n + k);     // [k]
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, n_warps = blockDim.x / kWarp;
  const int64_t m = blockIdx.x;
  const scalar_t* g = grad_out + m * c_dim;
  const scalar_t* p = protos + m * c_dim;
  const acc_t* w = weights + m * k;

  for (int j = tid; j < k; j += blockDim.x) {
    const int64_t slot = index[m * k + j];
    // The host does not check `index` (that would cost a device-to-host sync); a slot outside the
    // bank would read out of bounds (or wrap in the int cast).  CUDA_KERNEL_ASSERT stays on under
    // NDEBUG: a bad index is a device-side assert, not silently wrong gradients.
    CUDA_KERNEL_ASSERT(0 <= slot && slot < g_total);
    sel[j] = static_cast<int>(slot);
  }
  __syncthreads();
  for (int j = warp; j < k; j += n_warps) {
    const scalar_t* b = bank + static_cast<int64_t>(sel[j]) * c_dim;
    acc_t a = 0, bss = 0;
    for (int c = lane; c < c_dim; c += kWarp) {
      const acc_t v = static_cast<acc_t>(b[c]);
      a += static_cast<acc_t>(g[c]) * v;
      bss += v * v;
    }
    a = warp_sum(a);
    bss = warp_sum(bss);
    if (lane == 0) {
      ds[j] = a;
      row_n[j] = floor_norm(sqrt(bss));
    }
  }
  acc_t part = 0;
  __syncthreads();
  for (int j = tid; j < k; j += blockDim.x) part += w[j] * ds[j];
  const acc_t abar = block_sum(part, scratch);
  for (int j = tid; j < k; j += blockDim.x) ds[j] = w[j] * (ds[j] - abar) / temperature;
  __syncthreads();

  acc_t pss = 0, up = 0;
  for (int c = tid; c < c_dim; c += blockDim.x) {
    // slot j into lane j % 8, the lanes added pairwise (bank.cpp's order): the ds_j nearly cancel
    // (they sum to 0).  At T = 0.1 over k = 216 of G = 300 slots (C = 2), one chain gave 1.7-2.2x
    // the reference's mean gradient error on the emulator (five seeds of 24 draws), 8 lanes
    // 1.0-1.2x.  Unrolled, the lanes stay in registers
    auto term = [&](int j) { return ds[j] * (static_cast<acc_t>(bank[static_cast<int64_t>(sel[j]) * c_dim + c]) / row_n[j]); };
    acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int j = 0;
    for (; j + 8 <= k; j += 8) {
#pragma unroll
      for (int l = 0; l < 8; ++l) lanes[l] += term(j + l);
    }
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      if (j + l < k) lanes[l] += term(j + l);
    }
    const acc_t uc = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    u[c] = uc;
    const acc_t v = static_cast<acc_t>(p[c]);
    pss += v * v;
    up += uc * v;
  }
  pss = block_sum(pss, scratch);
  up = block_sum(up, scratch);
  const acc_t p_norm = sqrt(pss), n = floor_norm(p_norm);
  // divided in turn: n * n * p_norm overflows fp32 from prototype norms of ~7e12 on
  const acc_t coef = p_norm >= static_cast<acc_t>(kBankNormEps) ? up / n / n / p_norm : acc_t(0);
  for (int c = tid; c < c_dim; c += blockDim.x) {
    grad_protos[m * c_dim + c] = static_cast<scalar_t>(u[c] / n - coef * static_cast<acc_t>(p[c]));
  }
}

// ------------------------------------------------------------------------------------- update
template <typename acc_t>
size_t update_smem(int64_t c_dim, int64_t g_total) {
  return (kWarp + c_dim + g_total + kWarp) * sizeof(acc_t) + kWarp * sizeof(int);
}

// A single block.  Phase 1 appends while there is room (plain copies, all threads).  Phase 2 walks
// the remaining prototypes strictly in order; per step: normalise p, every warp scans its slots
// (increasing slot order) for the best cosine, the warp winners are combined in warp order on
// every thread (same answer everywhere, no extra barrier), then the block moves that slot and
// refreshes its norm.  The bank stays in global memory (100 KiB at G=50, C=512 fp32: L2-resident);
// its floored row norms live in shared memory and only the moved row's is recomputed (by one
// warp, in the same order as the initial ones: see warp_row_norm).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kUpdateThreads)
    update_kernel(scalar_t* bank, const scalar_t* __restrict__ protos, int g_total, int c_dim, int filled, int n_total,
                  acc_t mu, acc_t one_minus_mu) {
  HR2G_DYNAMIC_SMEM(smem);
  acc_t* scratch = reinterpret_cast<acc_t*>(smem);  // [32]
  acc_t* pn = scratch + kWarp;                      // [C]
  acc_t* row_n = pn + c_dim;                        // [G]
  acc_t* best_sim = row_n + g_total;                // [32] per-warp winner
  int* best_slot = reinterpret_cast<int*>(best_sim + kWarp);  // [32]
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, n_warps = blockDim.x / kWarp;

  const int n_append = min(n_total, g_total - filled);
  const int64_t n_copy = static_cast<int64_t>(n_append) * c_dim;
  for (int64_t e = tid; e < n_copy; e += blockDim.x) bank[static_cast<int64_t>(filled) * c_dim + e] = protos[e];
  if (n_append == n_total) return;  // uniform: no thread is left at a barrier
  __syncthreads();                  // appended rows visible to every warp

  for (int g = warp; g < g_total; g += n_warps) {
    const acc_t n = warp_row_norm<scalar_t, acc_t>(bank + static_cast<int64_t>(g) * c_dim, c_dim, lane);
    if (lane == 0) row_n[g] = n;
  }
  // (row_n is first read after block_sum's barriers below)

  for (int i = n_append; i < n_total; ++i) {
    const scalar_t* p = protos + static_cast<int64_t>(i) * c_dim;
    block_normalize(p, pn, c_dim, scratch);
    __syncthreads();

    acc_t my_sim = 0;
    int my_slot = -1;
    for (int g = warp; g < g_total; g += n_warps) {
      const scalar_t* b = bank + static_cast<int64_t>(g) * c_dim;
      acc_t d = 0;
      for (int c = lane; c < c_dim; c += kWarp) d += pn[c] * static_cast<acc_t>(b[c]);
      const acc_t s = warp_sum(d) / row_n[g];
      if (my_slot < 0 || sim_before(s, g, my_sim, my_slot)) {
        my_sim = s;
        my_slot = g;
      }
    }
    if (lane == 0) {
      best_sim[warp] = my_sim;
      best_slot[warp] = my_slot;
    }
    __syncthreads();
    acc_t s_best = best_sim[0];
    int j = best_slot[0];  // warp 0 always owns slot 0 (G >= 1)
    for (int w = 1; w < n_warps; ++w) {
      if (best_slot[w] >= 0 && sim_before(best_sim[w], best_slot[w], s_best, j)) {
        s_best = best_sim[w];
        j = best_slot[w];
      }
    }

    scalar_t* b = bank + static_cast<int64_t>(j) * c_dim;
    for (int c = tid; c < c_dim; c += blockDim.x) {
      const scalar_t t1 = static_cast<scalar_t>(mul_rn(static_cast<acc_t>(b[c]), mu));
      const scalar_t t2 = static_cast<scalar_t>(mul_rn(static_cast<acc_t>(p[c]), one_minus_mu));
      b[c] = static_cast<scalar_t>(add_rn(static_cast<acc_t>(t1), static_cast<acc_t>(t2)));
    }
    __syncthreads();  // the moved row is visible to warp 0 (and every warp's reads of best_* are done)
    // The moved row's norm in the SAME reduction order as the initial norms (warp_row_norm), not a
    // block-wide sum: the two orders round differently for about half of all rows (C=512 fp32), so
    // a moved slot that is bit-equal to another slot (e.g. mu*x + (1-mu)*x == x) would get a norm
    // one ulp off its twin's and the next tie between them could go to the higher slot.
    if (warp == 0) {
      const acc_t n = warp_row_norm<scalar_t, acc_t>(b, c_dim, lane);
      if (lane == 0) row_n[j] = n;
    }
    // the next step's block_sum barriers order this write before row_n is read again, and keep the
    // next step's pn / best_* writes after this step's reads
  }
}

}  // namespace bank_kernels
}  // namespace hr2g
