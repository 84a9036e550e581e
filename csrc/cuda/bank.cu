// CUDA kernels of the knowledge-bank ops (schemas and CPU kernels: ../bank.cpp).
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
// Accumulation in at::opmath_type (fp32 for fp16/bf16/fp32, fp64 for fp64).
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

namespace hr2g {
namespace {

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
  extern __shared__ __align__(16) unsigned char smem[];
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
  extern __shared__ __align__(16) unsigned char smem[];
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
    acc_t uc = 0;
    for (int j = 0; j < k; ++j) {
      uc += ds[j] * (static_cast<acc_t>(bank[static_cast<int64_t>(sel[j]) * c_dim + c]) / row_n[j]);
    }
    u[c] = uc;
    const acc_t v = static_cast<acc_t>(p[c]);
    pss += v * v;
    up += uc * v;
  }
  pss = block_sum(pss, scratch);
  up = block_sum(up, scratch);
  const acc_t p_norm = sqrt(pss), n = floor_norm(p_norm);
  const acc_t coef = p_norm >= static_cast<acc_t>(kBankNormEps) ? up / (n * n * p_norm) : acc_t(0);
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
  extern __shared__ __align__(16) unsigned char smem[];
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
