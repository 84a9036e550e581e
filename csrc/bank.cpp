// Knowledge-bank ops of IKT as torch custom ops: schemas, argument checks, C++ CPU kernels, and the
// Python module stub `hr2g._C` (importing it runs the registrations below).
//
//   hr2g::bank_retrieve(protos [M,C], bank [G,C], filled, topk, temperature)
//       -> (out [M,C], index [M,k] int64, weights [M,k])      k = topk if filled > 0 else 0
//   hr2g::bank_retrieve_backward(grad_out [M,C], protos, bank, index, weights, temperature) -> grad_protos
//   hr2g::bank_update_(bank [G,C] (mutated), filled, protos [N,C], momentum) -> ()
//       (the new fill count is min(G, filled + N), computed by the caller: an `int` return would
//       stop torch.compile from functionalizing the op, which accepts mutating custom ops only
//       when they return nothing)
//
// Semantics are those of hr2g.reference (bank_retrieve_ref, bank_update_ref_): cosine similarity
// with norms floored at 1e-8, top-k in descending similarity with ties to the lower slot, softmax
// of sim / temperature, weighted sum of the *raw* slots; the update walks the prototypes in order,
// appending while the bank has room and otherwise moving the most similar slot (first maximum).
// `index` and `weights` (fp32, fp64 for fp64 inputs) are what the backward needs; the Python side
// (hr2g/_bank_ext.py) returns only `out` to users.
//
// Accumulation is in at::opmath_type (fp32 for fp16/bf16/fp32, fp64 for fp64).
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

#include "bank.h"

namespace hr2g {

// ----------------------------------------------------------------------------------------- checks
namespace {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_matrix(const char* op, const char* name, const char* dims, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be a 2-D ", dims, " tensor, got shape ", t.sizes());
}

void check_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& first,
                  c10::DeviceType device_type) {
  TORCH_CHECK(t.device().type() == device_type, op, ": ", name, " must be a ", c10::DeviceTypeName(device_type),
              " tensor here, got one on ", t.device());
  TORCH_CHECK(t.device() == first.device(), op, ": all tensors must be on one device, got ", name, " on ",
              t.device(), " and the first tensor on ", first.device());
}

}  // namespace

void check_retrieve_args(const at::Tensor& protos, const at::Tensor& bank, int64_t filled, int64_t topk,
                         double temperature, c10::DeviceType device_type) {
  constexpr const char* op = "hr2g::bank_retrieve";
  check_matrix(op, "protos", "[M, C]", protos);
  check_matrix(op, "bank", "[G, C]", bank);
  TORCH_CHECK(protos.size(1) == bank.size(1), op, ": protos and bank must have the same channel count C, got protos C=",
              protos.size(1), " and bank C=", bank.size(1));
  TORCH_CHECK(supported_dtype(protos.scalar_type()), op, ": protos must be float32, float64, float16 or bfloat16, got ",
              protos.scalar_type());
  TORCH_CHECK(bank.scalar_type() == protos.scalar_type(), op, ": bank must have the dtype of protos (",
              protos.scalar_type(), "), got ", bank.scalar_type());
  check_device(op, "protos", protos, protos, device_type);
  check_device(op, "bank", bank, protos, device_type);
  const int64_t g = bank.size(0);
  TORCH_CHECK(0 <= filled && filled <= g, op, ": filled must be in [0, G=", g, "], got ", filled);
  TORCH_CHECK(filled == 0 || (1 <= topk && topk <= filled), op, ": topk must be in [1, filled=", filled,
              "] when filled > 0, got ", topk);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
}

void check_retrieve_backward_args(const at::Tensor& grad_out, const at::Tensor& protos, const at::Tensor& bank,
                                  const at::Tensor& index, const at::Tensor& weights, double temperature,
                                  c10::DeviceType device_type) {
  constexpr const char* op = "hr2g::bank_retrieve_backward";
  check_matrix(op, "protos", "[M, C]", protos);
  check_matrix(op, "bank", "[G, C]", bank);
  check_matrix(op, "index", "[M, k]", index);
  TORCH_CHECK(grad_out.sizes() == protos.sizes(), op, ": grad_out must have the shape of protos ", protos.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(protos.size(1) == bank.size(1), op, ": protos and bank must have the same channel count C, got protos C=",
              protos.size(1), " and bank C=", bank.size(1));
  TORCH_CHECK(index.size(0) == protos.size(0), op, ": index must have one row per prototype (M=", protos.size(0),
              "), got shape ", index.sizes());
  TORCH_CHECK(weights.sizes() == index.sizes(), op, ": weights must have the shape of index ", index.sizes(), ", got ",
              weights.sizes());
  TORCH_CHECK(supported_dtype(protos.scalar_type()), op, ": protos must be float32, float64, float16 or bfloat16, got ",
              protos.scalar_type());
  TORCH_CHECK(bank.scalar_type() == protos.scalar_type() && grad_out.scalar_type() == protos.scalar_type(), op,
              ": grad_out and bank must have the dtype of protos (", protos.scalar_type(), "), got ",
              grad_out.scalar_type(), " and ", bank.scalar_type());
  TORCH_CHECK(index.scalar_type() == at::kLong, op, ": index must be int64, got ", index.scalar_type());
  const auto acc = at::toOpMathType(protos.scalar_type());
  TORCH_CHECK(weights.scalar_type() == acc, op, ": weights must be ", acc, " for ", protos.scalar_type(),
              " prototypes, got ", weights.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_out", grad_out}, {"protos", protos},
                                {"bank", bank}, {"index", index}, {"weights", weights}}) {
    check_device(op, name, t, grad_out, device_type);
  }
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
}

void check_update_args(const at::Tensor& bank, int64_t filled, const at::Tensor& protos, double momentum,
                       c10::DeviceType device_type) {
  constexpr const char* op = "hr2g::bank_update_";
  check_matrix(op, "bank", "[G, C]", bank);
  check_matrix(op, "protos", "[N, C]", protos);
  TORCH_CHECK(protos.size(1) == bank.size(1), op, ": protos and bank must have the same channel count C, got protos C=",
              protos.size(1), " and bank C=", bank.size(1));
  TORCH_CHECK(supported_dtype(bank.scalar_type()), op, ": bank must be float32, float64, float16 or bfloat16, got ",
              bank.scalar_type());
  TORCH_CHECK(protos.is_floating_point(), op, ": protos must be a floating-point tensor, got ", protos.scalar_type());
  check_device(op, "bank", bank, bank, device_type);
  check_device(op, "protos", protos, bank, device_type);
  // Updated in place through a raw pointer: a strided view would need a copy-back the caller
  // would not see ordered with other writes.
  TORCH_CHECK(bank.is_contiguous(), op, ": bank must be contiguous (it is updated in place), got strides ",
              bank.strides());
  TORCH_CHECK(!protos.is_alias_of(bank), op, ": protos must not share memory with bank (the update writes bank while ",
              "reading protos); pass protos.clone()");
  const int64_t g = bank.size(0);
  TORCH_CHECK(0 <= filled && filled <= g, op, ": filled must be in [0, G=", g, "], got ", filled);
  TORCH_CHECK(g > 0 || protos.size(0) == 0, op, ": bank must have at least one slot (G >= 1) to take prototypes");
  TORCH_CHECK(0.0 <= momentum && momentum <= 1.0, op, ": momentum must be in [0, 1], got ", momentum);
}

// -------------------------------------------------------------------------------- CPU kernels
namespace {

// Rows per parallel_for chunk so a chunk does ~64k multiply-adds: below that OpenMP's fork/join
// (~several us) costs more than the work, e.g. the model's G=50, C=512 stays on one thread.
int64_t grain(int64_t work_per_item) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work_per_item)); }

// x / max(|x|, eps), elementwise division like the reference's `x / x.norm().clamp_min(eps)`.
// Returns the floored norm.  (NaN norms propagate, as torch.clamp_min does.)
template <typename scalar_t, typename acc_t>
acc_t normalize_row(const scalar_t* x, int64_t n, acc_t* out) {
  acc_t ss = 0;
  for (int64_t c = 0; c < n; ++c) {
    const acc_t v = static_cast<acc_t>(x[c]);
    ss += v * v;
  }
  const acc_t eps = static_cast<acc_t>(kBankNormEps);
  const acc_t norm = std::sqrt(ss);
  const acc_t floored = norm < eps ? eps : norm;
  for (int64_t c = 0; c < n; ++c) out[c] = static_cast<acc_t>(x[c]) / floored;
  return floored;
}

// sum over c in [0, n) of f(c), in 8 interleaved partial sums added pairwise at the end: a fixed
// order (deterministic, independent of the thread count) with 8 independent add chains the compiler
// vectorises.  One serial chain is bound by the FP-add latency: the retrieval of 192 prototypes
// (G=50, C=512) forward+backward took 8.9 ms on 2 EPYC cores, slower than the reference's 6.0 ms.
// Retrieval only; the update keeps normalize_row's single chain (its order is part of what makes
// the CPU update reproduce the reference's slot choices).
template <typename acc_t, typename F>
acc_t lane_sum(int64_t n, F&& f) {
  acc_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int l = 0; l < 8; ++l) s[l] += f(c + l);
  }
  for (int l = 0; c < n; ++c, ++l) s[l] += f(c);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  return lane_sum<acc_t>(n, [&](int64_t c) { return a[c] * b[c]; });
}

template <typename scalar_t>
void retrieve_cpu_impl(const at::Tensor& protos, const at::Tensor& bank, int64_t filled, int64_t k, double temperature,
                       at::Tensor& out, at::Tensor& index, at::Tensor& weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t m_total = protos.size(0), c_dim = protos.size(1);
  const scalar_t* P = protos.const_data_ptr<scalar_t>();
  const scalar_t* B = bank.const_data_ptr<scalar_t>();
  scalar_t* O = out.mutable_data_ptr<scalar_t>();
  int64_t* I = index.mutable_data_ptr<int64_t>();
  acc_t* W = weights.mutable_data_ptr<acc_t>();
  const acc_t temp = static_cast<acc_t>(temperature);

  std::vector<acc_t> bn(filled * c_dim);  // normalised filled slots [filled, C]
  at::parallel_for(0, filled, grain(c_dim), [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) normalize_row(B + g * c_dim, c_dim, bn.data() + g * c_dim);
  });
  at::parallel_for(0, m_total, grain(filled * c_dim), [&](int64_t lo, int64_t hi) {
    std::vector<acc_t> pn(c_dim), sims(filled), acc(c_dim);
    std::vector<int64_t> order(filled);
    for (int64_t m = lo; m < hi; ++m) {
      normalize_row(P + m * c_dim, c_dim, pn.data());
      for (int64_t g = 0; g < filled; ++g) sims[g] = dot(pn.data(), bn.data() + g * c_dim, c_dim);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int64_t a, int64_t b) { return sim_before(sims[a], a, sims[b], b); });
      // softmax(sim / T) over the k best; the first is the largest, so it is the max-shift
      const acc_t x0 = sims[order[0]] / temp;
      acc_t* w = W + m * k;
      for (int64_t j = 0; j < k; ++j) w[j] = std::exp(sims[order[j]] / temp - x0);
      // in lanes, not one chain: at T = 0.1 the weights' rounding is amplified 10x into the
      // gradient (see the backward's u below; tests/test_bank.py, "sharp softmax")
      const acc_t total = lane_sum<acc_t>(k, [&](int64_t j) { return w[j]; });
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t j = 0; j < k; ++j) {
        w[j] /= total;
        I[m * k + j] = order[j];
        const scalar_t* row = B + order[j] * c_dim;
        for (int64_t c = 0; c < c_dim; ++c) acc[c] += w[j] * static_cast<acc_t>(row[c]);
      }
      for (int64_t c = 0; c < c_dim; ++c) O[m * c_dim + c] = static_cast<scalar_t>(acc[c]);
    }
  });
}

// d out / d protos through the selected similarities (the selection itself has no gradient):
//   a_j = g . b_j,  ds_j = w_j (a_j - sum_l w_l a_l) / T     (softmax and / T)
//   u   = sum_j ds_j b_j / max(|b_j|, eps)                   (d sim / d p_normalised)
//   grad = u / n - [|p| >= eps] (u . p) p / (n^2 |p|),  n = max(|p|, eps)   (through the floored norm)
template <typename scalar_t>
void retrieve_backward_cpu_impl(const at::Tensor& grad_out, const at::Tensor& protos, const at::Tensor& bank,
                                const at::Tensor& index, const at::Tensor& weights, double temperature,
                                at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t m_total = protos.size(0), c_dim = protos.size(1), g_total = bank.size(0), k = index.size(1);
  const scalar_t* GO = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* P = protos.const_data_ptr<scalar_t>();
  const scalar_t* B = bank.const_data_ptr<scalar_t>();
  const int64_t* I = index.const_data_ptr<int64_t>();
  const acc_t* W = weights.const_data_ptr<acc_t>();
  scalar_t* GP = grad.mutable_data_ptr<scalar_t>();
  const acc_t temp = static_cast<acc_t>(temperature), eps = static_cast<acc_t>(kBankNormEps);
  for (int64_t e = 0; e < m_total * k; ++e) {
    TORCH_CHECK(0 <= I[e] && I[e] < g_total, "hr2g::bank_retrieve_backward: index holds slot ", I[e],
                ", outside the bank's [0, G=", g_total, ")");
  }
  at::parallel_for(0, m_total, grain(2 * k * c_dim), [&](int64_t lo, int64_t hi) {
    std::vector<acc_t> ds(k), u(c_dim), row_n(k), u_lanes(8 * c_dim);
    for (int64_t m = lo; m < hi; ++m) {
      const scalar_t* g = GO + m * c_dim;
      const scalar_t* p = P + m * c_dim;
      const acc_t* w = W + m * k;
      for (int64_t j = 0; j < k; ++j) {
        const scalar_t* b = B + I[m * k + j] * c_dim;
        const acc_t a = lane_sum<acc_t>(c_dim, [&](int64_t c) { return static_cast<acc_t>(g[c]) * static_cast<acc_t>(b[c]); });
        const acc_t ss = lane_sum<acc_t>(c_dim, [&](int64_t c) { return static_cast<acc_t>(b[c]) * static_cast<acc_t>(b[c]); });
        const acc_t n = std::sqrt(ss);
        row_n[j] = n < eps ? eps : n;
        ds[j] = a;
      }
      const acc_t abar = lane_sum<acc_t>(k, [&](int64_t j) { return w[j] * ds[j]; });
      // u in 8 lanes (slot j into lane j % 8, added pairwise as lane_sum does): the d_j nearly
      // cancel (they sum to 0).  At T = 0.1 over k = 216 of G = 300 slots (C = 2), one chain here
      // and in the normaliser gave 2.9-5.0x the reference's mean gradient error (five seeds of
      // 24 draws); lanes in both, 0.8-1.3x, at no measurable cost for G = 50, k = 35, C = 512
      std::fill(u_lanes.begin(), u_lanes.end(), acc_t(0));
      for (int64_t j = 0; j < k; ++j) {
        // one division per slot, not per element (vdivps costs ~5x a multiply): rounds differently
        // from the reference's b / |b| by an ulp, within the retrieval's tolerance
        const acc_t d = w[j] * (ds[j] - abar) / temp / row_n[j];
        const scalar_t* b = B + I[m * k + j] * c_dim;
        acc_t* lane = u_lanes.data() + (j % 8) * c_dim;
        for (int64_t c = 0; c < c_dim; ++c) lane[c] += d * static_cast<acc_t>(b[c]);
      }
      for (int64_t c = 0; c < c_dim; ++c) {
        const acc_t* l = u_lanes.data() + c;
        u[c] = ((l[0] + l[c_dim]) + (l[2 * c_dim] + l[3 * c_dim])) + ((l[4 * c_dim] + l[5 * c_dim]) + (l[6 * c_dim] + l[7 * c_dim]));
      }
      const acc_t pss = lane_sum<acc_t>(c_dim, [&](int64_t c) { return static_cast<acc_t>(p[c]) * static_cast<acc_t>(p[c]); });
      const acc_t up = lane_sum<acc_t>(c_dim, [&](int64_t c) { return u[c] * static_cast<acc_t>(p[c]); });
      const acc_t pnorm = std::sqrt(pss);
      const acc_t n = pnorm < eps ? eps : pnorm;
      // divided in turn: n * n * pnorm overflows fp32 from prototype norms of ~7e12 on
      const acc_t coef = pnorm >= eps ? up / n / n / pnorm : acc_t(0);
      for (int64_t c = 0; c < c_dim; ++c) {
        GP[m * c_dim + c] = static_cast<scalar_t>(u[c] / n - coef * static_cast<acc_t>(p[c]));
      }
    }
  });
}

// One update step's arithmetic, rounded like the reference's `mu * m + (1 - mu) * p` in torch: each
// product and the sum are separate ops, each rounded to the storage type (torch computes reduced
// types in fp32 and rounds each op's result).  No FMA: setup.py builds with -ffp-contract=off,
// which keeps fp64 bit-identical to the reference.
template <typename scalar_t, typename acc_t>
scalar_t momentum_step(scalar_t m, scalar_t p, acc_t mu, acc_t one_minus_mu) {
  const scalar_t a = static_cast<scalar_t>(static_cast<acc_t>(m) * mu);
  const scalar_t b = static_cast<scalar_t>(static_cast<acc_t>(p) * one_minus_mu);
  return static_cast<scalar_t>(static_cast<acc_t>(a) + static_cast<acc_t>(b));
}

template <typename scalar_t>
void update_cpu_impl(at::Tensor& bank, int64_t filled, const at::Tensor& protos, double momentum) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t g_total = bank.size(0), c_dim = bank.size(1), n_total = protos.size(0);
  scalar_t* B = bank.mutable_data_ptr<scalar_t>();
  const scalar_t* P = protos.const_data_ptr<scalar_t>();
  const int64_t n_append = std::min(n_total, g_total - filled);
  std::copy(P, P + n_append * c_dim, B + filled * c_dim);
  if (n_append == n_total) return;

  // The bank is full from here on.  Floored row norms are kept current: one row moves per step.
  std::vector<acc_t> row_n(g_total), pn(c_dim), sims(g_total);
  std::vector<acc_t> scratch(c_dim);
  for (int64_t g = 0; g < g_total; ++g) row_n[g] = normalize_row(B + g * c_dim, c_dim, scratch.data());
  // Scalars as torch sees them: python floats cast to the op-math type; 1 - mu is taken in fp64 first.
  const acc_t mu = static_cast<acc_t>(momentum), one_minus_mu = static_cast<acc_t>(1.0 - momentum);
  for (int64_t i = n_append; i < n_total; ++i) {
    const scalar_t* p = P + i * c_dim;
    normalize_row(p, c_dim, pn.data());
    at::parallel_for(0, g_total, grain(c_dim), [&](int64_t lo, int64_t hi) {
      for (int64_t g = lo; g < hi; ++g) {
        const scalar_t* b = B + g * c_dim;
        acc_t s = 0;
        for (int64_t c = 0; c < c_dim; ++c) s += pn[c] * (static_cast<acc_t>(b[c]) / row_n[g]);
        sims[g] = s;
      }
    });
    int64_t best = 0;
    for (int64_t g = 1; g < g_total; ++g) {
      if (sim_before(sims[g], g, sims[best], best)) best = g;
    }
    scalar_t* b = B + best * c_dim;
    for (int64_t c = 0; c < c_dim; ++c) b[c] = momentum_step(b[c], p[c], mu, one_minus_mu);
    row_n[best] = normalize_row(b, c_dim, scratch.data());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bank_retrieve_cpu(const at::Tensor& protos_in, const at::Tensor& bank_in,
                                                                 int64_t filled, int64_t topk, double temperature) {
  check_retrieve_args(protos_in, bank_in, filled, topk, temperature, c10::DeviceType::CPU);
  const auto protos = protos_in.contiguous();
  const auto bank = bank_in.contiguous();
  const int64_t m_total = protos.size(0), k = filled > 0 ? topk : 0;
  const auto acc = at::toOpMathType(protos.scalar_type());
  auto index = at::empty({m_total, k}, protos.options().dtype(at::kLong));
  auto weights = at::empty({m_total, k}, protos.options().dtype(acc));
  if (filled == 0) return {at::zeros_like(protos), index, weights};
  auto out = at::empty_like(protos);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(), "bank_retrieve_cpu", [&] {
    retrieve_cpu_impl<scalar_t>(protos, bank, filled, k, temperature, out, index, weights);
  });
  return {out, index, weights};
}

at::Tensor bank_retrieve_backward_cpu(const at::Tensor& grad_out, const at::Tensor& protos, const at::Tensor& bank,
                                      const at::Tensor& index, const at::Tensor& weights, double temperature) {
  check_retrieve_backward_args(grad_out, protos, bank, index, weights, temperature, c10::DeviceType::CPU);
  const auto go = grad_out.contiguous(), p = protos.contiguous(), b = bank.contiguous();
  const auto idx = index.contiguous(), w = weights.contiguous();
  auto grad = at::empty_like(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "bank_retrieve_backward_cpu", [&] {
    retrieve_backward_cpu_impl<scalar_t>(go, p, b, idx, w, temperature, grad);
  });
  return grad;
}

void bank_update_cpu(at::Tensor& bank, int64_t filled, const at::Tensor& protos_in, double momentum) {
  check_update_args(bank, filled, protos_in, momentum, c10::DeviceType::CPU);
  // Like the reference, prototypes are first cast to the bank's dtype.
  const auto protos = protos_in.to(bank.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "bank_update_cpu", [&] {
    update_cpu_impl<scalar_t>(bank, filled, protos, momentum);
  });
}

// The autograd layer's part of an in-place op: bump bank's version counter, so a graph that saved
// the bank before the update fails loudly at backward instead of using moved slots (torch's own
// in-place ops do this; a C++ custom op gets nothing by default), then run the kernel below it.
void bank_update_ad_inplace_or_view(c10::DispatchKeySet keys, at::Tensor& bank, int64_t filled, const at::Tensor& protos,
                                    double momentum) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("hr2g::bank_update_", "")
                             .typed<void(at::Tensor&, int64_t, const at::Tensor&, double)>();
  op.redispatch(keys & c10::after_ADInplaceOrView_keyset, bank, filled, protos, momentum);
  bank.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

// ---------------------------------------------------------------------------------- registration
TORCH_LIBRARY(hr2g, m) {
  m.def("bank_retrieve(Tensor protos, Tensor bank, int filled, int topk, float temperature) -> (Tensor, Tensor, Tensor)");
  m.def("bank_retrieve_backward(Tensor grad_out, Tensor protos, Tensor bank, Tensor index, Tensor weights, "
        "float temperature) -> Tensor");
  m.def("bank_update_(Tensor(a!) bank, int filled, Tensor protos, float momentum) -> ()");
}

TORCH_LIBRARY_IMPL(hr2g, CPU, m) {
  m.impl("bank_retrieve", &bank_retrieve_cpu);
  m.impl("bank_retrieve_backward", &bank_retrieve_backward_cpu);
  m.impl("bank_update_", &bank_update_cpu);
}

TORCH_LIBRARY_IMPL(hr2g, ADInplaceOrView, m) { m.impl("bank_update_", &bank_update_ad_inplace_or_view); }

}  // namespace hr2g

// The Python module is only a handle: importing it runs the static registrations above.  No
// pybind11 / torch/extension.h and only per-operator ATen headers: this file compiles in 8 s
// instead of 25 s with torch/extension.h (g++ 12, -O3, one core).
#ifdef HR2G_WITH_CUDA
#define HR2G_CUDA_BUILT 1
#else
#define HR2G_CUDA_BUILT 0
#endif

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "hr2g's compiled ops, registered as torch.ops.hr2g.* on import.", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddIntConstant(module, "WITH_CUDA", HR2G_CUDA_BUILT) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
