// A small CPU emulator of CUDA's SIMT execution model, enough to run hr2g's bank kernels
// (csrc/cuda/bank_kernels.cuh) unchanged on a machine without a GPU.
//
// Each thread of a block is a coroutine (ucontext) on one OS thread.  The scheduler runs every
// runnable thread up to its next synchronisation point: __syncthreads() parks it until the whole
// block has arrived, __shfl_xor_sync() until all 32 lanes of its warp have, then the values are
// exchanged (a warp at a time in the warp orders, see Order).  Blocks of a grid run one after
// another.  What this checks that a plain C++ port would not:
//   * barrier placement: a read of shared memory that another thread writes in the same
//     barrier interval gets different bits under different thread orders.  Launches take an
//     order (forward, reverse, seeded random) and the tests require bit-equal results for all;
//   * divergence: a __syncthreads() that only part of the block reaches (or that different
//     threads reach at different calls), or a full-mask shuffle that only part of a warp reaches,
//     is an error naming the block and the lanes (on a GPU: a hang or undefined results);
//   * shared-memory sizing: dynamic shared memory is exactly the launch's size, filled with 0xFF
//     (NaN in every float type, -1 as an int) and followed by a 0xFF guard that must come back
//     intact: an uninitialised or out-of-range read shows up as NaN, a write past the end as
//     an error;
//   * device-side asserts (CUDA_KERNEL_ASSERT) become errors instead of a dead context.
// What it cannot check: timing, occupancy, the memory model beyond barriers, and nvcc's own
// floating-point choices (contraction into FMAs, the accuracy of expf): the harness compiles with
// -ffp-contract=off, so results match a GPU's up to rounding, not bit for bit, except where the
// kernels round explicitly (__fmul_rn & co.).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The built-in variables: the scheduler sets them before it resumes a thread.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace simt {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 64 * 1024;   // per emulated thread; the kernels keep a few scalars
constexpr size_t kSmemGuardBytes = 4096;     // after the dynamic shared memory
constexpr unsigned char kPoison = 0xFF;      // NaN in fp16/bf16/fp32/fp64, -1 in ints

// Thread orders.  The first three run every runnable thread of the block in a round, so a warp
// never gets past a shuffle before the other warps reach their next barrier.  The warp orders run
// one warp at a time to its next barrier (or its exit), resolving its shuffles as it goes, as a GPU
// may: they expose a missing barrier between warps that a shuffle in between hides from the
// others (warp 0 writes, shuffles, warp 1 reads -- warp 1 first sees the write undone).
enum Order : int { kForward = 0, kReverse = 1, kRandom = 2, kWarpForward = 3, kWarpReverse = 4, kWarpRandom = 5 };

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class State { kRunnable, kBarrier, kShuffle, kDone, kFailed };

struct Thread {
  ucontext_t ctx;
  State state = State::kRunnable;
  int barrier_line = 0;  // the source line of the __syncthreads() the thread is parked at
  uint64_t shfl_value = 0;  // the lane's operand, then its result (bytes of a float/double/int)
  unsigned shfl_mask = 0;
  int shfl_xor = 0;
};

struct Block {
  std::vector<Thread> threads;
  std::vector<char> stacks;
  std::vector<unsigned char> smem;
  std::function<void()> body;
  ucontext_t scheduler;
  int current = -1;
  std::string error;
};

inline Block*& active() {
  static Block* block = nullptr;
  return block;
}

inline unsigned char* dynamic_smem() { return active()->smem.data(); }

// Park the running thread in `state` and return to the scheduler.
inline void park(State state) {
  Block* b = active();
  Thread& t = b->threads[b->current];
  t.state = state;
  swapcontext(&t.ctx, &b->scheduler);
}

[[noreturn]] inline void fail(const std::string& what) {
  active()->error = what;
  park(State::kFailed);
  std::abort();  // a failed thread is never resumed
}

inline void entry() {
  Block* b = active();
  b->body();
  b->threads[b->current].state = State::kDone;  // uc_link returns to the scheduler
}

inline std::string where() {
  return "block " + std::to_string(blockIdx.x) + " of " + std::to_string(gridDim.x);
}

// Exchange the shuffle operands of the warp starting at thread w0 if its 32 lanes are all parked
// at a shuffle.  Returns whether it moved; throws if it is split between a shuffle and anything
// else (called only once none of its lanes can run).
inline bool resolve_warp(Block& b, int w0) {
  int at_shfl = 0, at_barrier = 0, done = 0;
  for (int l = 0; l < kWarpSize; ++l) {
    const State s = b.threads[w0 + l].state;
    at_shfl += s == State::kShuffle;
    at_barrier += s == State::kBarrier;
    done += s == State::kDone;
  }
  if (at_shfl == 0) return false;
  if (at_shfl != kWarpSize) {
    throw KernelError("__shfl_xor_sync(0xffffffff) reached by " + std::to_string(at_shfl) + " of the 32 lanes of warp " +
                      std::to_string(w0 / kWarpSize) + " (" + std::to_string(at_barrier) + " at __syncthreads, " +
                      std::to_string(done) + " exited), " + where());
  }
  uint64_t in[kWarpSize];
  for (int l = 0; l < kWarpSize; ++l) {
    const Thread& t = b.threads[w0 + l];
    if (t.shfl_mask != 0xffffffffu || t.shfl_xor != b.threads[w0].shfl_xor) {
      throw KernelError("lanes of warp " + std::to_string(w0 / kWarpSize) +
                        " disagree on a shuffle's mask or lane offset, " + where());
    }
    in[l] = t.shfl_value;
  }
  for (int l = 0; l < kWarpSize; ++l) {
    Thread& t = b.threads[w0 + l];
    t.shfl_value = in[l ^ t.shfl_xor];
    t.state = State::kRunnable;
  }
  return true;
}

inline bool resolve_shuffles(Block& b) {
  bool moved = false;
  for (int w0 = 0; w0 < static_cast<int>(b.threads.size()); w0 += kWarpSize) moved = resolve_warp(b, w0) || moved;
  return moved;
}

// Resume each of `ready` once, up to its next synchronisation point, in the given order.
inline void run_threads(Block& b, Order order, std::mt19937_64& rng, std::vector<int>& ready) {
  if (order == kReverse || order == kWarpReverse) std::reverse(ready.begin(), ready.end());
  if (order == kRandom || order == kWarpRandom) std::shuffle(ready.begin(), ready.end(), rng);
  for (int i : ready) {
    b.current = i;
    threadIdx = dim3{static_cast<unsigned>(i), 1, 1};
    swapcontext(&b.scheduler, &b.threads[i].ctx);
    if (b.threads[i].state == State::kFailed) {
      throw KernelError(b.error + " (thread " + std::to_string(i) + ", " + where() + ")");
    }
  }
}

// One warp at a time, in the order's warp order, each up to its next barrier or its exit.
inline void run_by_warp(Block& b, Order order, std::mt19937_64& rng, std::vector<int>& ready) {
  const int n = static_cast<int>(b.threads.size());
  std::vector<int> warps;
  for (int w0 = 0; w0 < n; w0 += kWarpSize) warps.push_back(w0);
  if (order == kWarpReverse) std::reverse(warps.begin(), warps.end());
  if (order == kWarpRandom) std::shuffle(warps.begin(), warps.end(), rng);
  for (int w0 : warps) {
    for (;;) {
      ready.clear();
      for (int i = w0; i < w0 + kWarpSize; ++i) {
        if (b.threads[i].state == State::kRunnable) ready.push_back(i);
      }
      if (!ready.empty()) {
        run_threads(b, order, rng, ready);
      } else if (!resolve_warp(b, w0)) {
        break;
      }
    }
  }
}

inline void run_block(Block& b, Order order, std::mt19937_64& rng) {
  const int n = static_cast<int>(b.threads.size());
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t = Thread{};
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = b.stacks.data() + static_cast<size_t>(i) * kStackBytes;
    t.ctx.uc_stack.ss_size = kStackBytes;
    t.ctx.uc_link = &b.scheduler;
    makecontext(&t.ctx, entry, 0);
  }
  std::vector<int> ready;
  ready.reserve(n);
  const bool by_warp = order == kWarpForward || order == kWarpReverse || order == kWarpRandom;
  for (;;) {
    if (by_warp) {
      run_by_warp(b, order, rng, ready);  // every warp is now at a barrier or done
    } else {
      ready.clear();
      for (int i = 0; i < n; ++i) {
        if (b.threads[i].state == State::kRunnable) ready.push_back(i);
      }
      if (!ready.empty()) {
        run_threads(b, order, rng, ready);
        continue;
      }
      if (resolve_shuffles(b)) continue;
    }
    int done = 0;
    for (const Thread& t : b.threads) done += t.state == State::kDone;
    if (done == n) return;
    if (done > 0) {  // everyone else is at a barrier
      throw KernelError("__syncthreads() reached by " + std::to_string(n - done) + " of " + std::to_string(n) +
                        " threads, the others have exited (" + where() + ")");
    }
    for (const Thread& t : b.threads) {
      if (t.barrier_line != b.threads[0].barrier_line) {
        throw KernelError("threads of one block wait at different __syncthreads() (lines " +
                          std::to_string(b.threads[0].barrier_line) + " and " + std::to_string(t.barrier_line) + ", " +
                          where() + ")");
      }
    }
    for (Thread& t : b.threads) t.state = State::kRunnable;  // the whole block is at one barrier
  }
}

// kernel<<<grid, block, smem_bytes>>>(args...), blocks run in order.
template <typename Kernel, typename... Args>
void launch(unsigned grid, unsigned block, size_t smem_bytes, Order order, uint64_t seed, Kernel kernel, Args... args) {
  if (block == 0 || block % kWarpSize != 0 || block > 1024) {
    throw KernelError("block of " + std::to_string(block) + " threads: the emulator wants a multiple of 32, <= 1024");
  }
  Block b;
  b.threads.resize(block);
  b.stacks.resize(static_cast<size_t>(block) * kStackBytes);
  b.body = [&] { kernel(args...); };
  std::mt19937_64 rng(seed);
  Block* outer = active();
  active() = &b;
  gridDim = dim3{grid, 1, 1};
  blockDim = dim3{block, 1, 1};
  try {
    for (unsigned g = 0; g < grid; ++g) {
      blockIdx = dim3{g, 1, 1};
      b.smem.assign(smem_bytes + kSmemGuardBytes, kPoison);
      run_block(b, order, rng);
      for (size_t i = smem_bytes; i < b.smem.size(); ++i) {
        if (b.smem[i] != kPoison) {
          throw KernelError("write past the " + std::to_string(smem_bytes) + " bytes of dynamic shared memory, at byte " +
                            std::to_string(i) + " (" + where() + ")");
        }
      }
    }
  } catch (...) {
    active() = outer;
    throw;
  }
  active() = outer;
}

}  // namespace simt

// ------------------------------------------------------------------ CUDA built-ins, host versions
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define HR2G_DYNAMIC_SMEM(name) unsigned char* const name = ::simt::dynamic_smem()

// A macro, so that a barrier knows its source line: threads parked at different lines are an error
// (one line reached through different calls of a helper is not told apart).
namespace simt {
inline void sync_threads(int line) {
  Block* b = active();
  b->threads[b->current].barrier_line = line;
  park(State::kBarrier);
}
}  // namespace simt
#define __syncthreads() ::simt::sync_threads(__LINE__)

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle operands of at most 8 bytes");
  simt::Block* b = simt::active();
  simt::Thread& t = b->threads[b->current];
  std::memcpy(&t.shfl_value, &value, sizeof(T));
  t.shfl_mask = mask;
  t.shfl_xor = lane_mask;
  simt::park(simt::State::kShuffle);
  T out;
  std::memcpy(&out, &b->threads[b->current].shfl_value, sizeof(T));
  return out;
}

// Correctly rounded single operations: what the _rn intrinsics promise, given -ffp-contract=off.
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline int min(int a, int b) { return a < b ? a : b; }
using std::exp;
using std::sqrt;

#ifdef CUDA_KERNEL_ASSERT
#undef CUDA_KERNEL_ASSERT
#endif
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) ::simt::fail("device-side assert failed: " #cond); \
  } while (0)
