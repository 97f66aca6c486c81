#include "moe/dispatch.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/expert_kernels.h"

namespace llama_moe {
namespace {

at::Tensor SwiGlu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, const at::Tensor& down) {
  // x [n,H]; gate/up [Ie,H]; down [H,Ie].
  return at::matmul(at::silu(at::matmul(x, gate.t())) * at::matmul(x, up.t()), down.t());
}

// The six weight stacks in a fixed order, so that the autograd function can take them as inputs.
enum StackIndex { kFrozenGate, kFrozenUp, kFrozenDown, kLearnedGate, kLearnedUp, kLearnedDown };
using StackList = std::array<at::Tensor, 6>;

using ExpertWeights = ExpertMatrices;  // undefined tensors where a stack is

// Expert e's slices of a stack list (weights, or their gradients).
ExpertWeights Slices(const StackList& s, int64_t nf, int64_t e) {
  const int base = e < nf ? kFrozenGate : kLearnedGate;
  const int64_t i = e < nf ? e : e - nf;
  auto at_i = [&](int k) { return s[base + k].defined() ? s[base + k][i] : at::Tensor(); };
  return {at_i(0), at_i(1), at_i(2)};
}

at::Tensor Detached(const at::Tensor& t) { return t.defined() ? t.detach() : t; }

// Host-side plan of one dispatch: the active experts' contiguous segments of the expert-sorted
// pairs. Segments run one after another, each GEMM using the intra-op threads. (Running whole
// experts on separate OpenMP threads was tried: OpenBLAS 0.3.21 called from inside an OpenMP
// parallel region ran up to 10x slower here unless OPENBLAS_NUM_THREADS=1, which a library
// cannot set for its caller.)
struct Plan {
  std::vector<int64_t> expert, begin, count;  // one entry per active expert, in expert order
  int64_t max_count = 0;                      // largest segment
  int64_t min_count = 0;                      // smallest segment
};

Plan MakePlan(const at::Tensor& counts) {
  Plan p;
  const int64_t* c = counts.data_ptr<int64_t>();
  int64_t begin = 0;
  for (int64_t e = 0; e < counts.numel(); ++e) {
    if (c[e] == 0) continue;
    p.expert.push_back(e);
    p.begin.push_back(begin);
    p.count.push_back(c[e]);
    p.max_count = std::max(p.max_count, c[e]);
    p.min_count = p.min_count == 0 ? c[e] : std::min(p.min_count, c[e]);
    begin += c[e];
  }
  return p;
}

// Runs fn(j) for every active expert j of the plan. The body works on detached tensors and
// writes into preallocated buffers, so it runs in inference mode: no autograd bookkeeping per
// op, and out= writes are allowed whatever mode (inference or not) the caller's tensors come from.
template <typename F>
void ForEachSegment(const Plan& p, const F& fn) {
  c10::InferenceMode guard;
  for (size_t j = 0; j < p.expert.size(); ++j) fn(j);
}

// CPUs without AVX512-BF16 or AMX run LibTorch's bfloat16 GEMMs at 13-26 GFLOP/s (one core
// here) against 60-100 for float32, so on those, a bfloat16 GEMM whose dimensions are all at
// least kUpcastMin converts its operands to float32 and rounds the product to bfloat16 once,
// as a bfloat16 GEMM (float32 accumulation) does. The conversions cost O(M*K + K*N) against the
// GEMM's O(M*N*K); smaller GEMMs, mostly weight streaming, stay in bfloat16.
constexpr int64_t kUpcastMin = 32;

// The CPU's bfloat16 matrix units, as /proc/cpuinfo lists them (oneDNN uses the same ones).
struct CpuBf16Units {
  bool avx512_bf16 = false, amx = false;
};

const CpuBf16Units& Bf16Units() {
  static const CpuBf16Units units = [] {
    CpuBf16Units u;
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) == 0) {
        u.avx512_bf16 = line.find(" avx512_bf16") != std::string::npos;
        u.amx = line.find(" amx_bf16") != std::string::npos;
        break;
      }
    }
    return u;
  }();
  return units;
}

bool CpuHasFastBf16Gemm() { return Bf16Units().avx512_bf16 || Bf16Units().amx; }

bool UpcastGemm(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == at::kBFloat16 && a.device().is_cpu() && a.size(0) >= kUpcastMin &&
         a.size(1) >= kUpcastMin && b.size(1) >= kUpcastMin && !CpuHasFastBf16Gemm();
}

// out = a b, written into out (which may be a slice of a larger buffer).
void MmOut(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (UpcastGemm(a, b)) {
    out.copy_(at::mm(a.to(at::kFloat), b.to(at::kFloat)));
  } else {
    at::mm_out(out, a, b);
  }
}

// a b as float32 (for products used only in float32 arithmetic).
at::Tensor MmFloat(const at::Tensor& a, const at::Tensor& b) {
  if (UpcastGemm(a, b)) return at::mm(a.to(at::kFloat), b.to(at::kFloat));
  return at::mm(a, b).to(at::kFloat);
}

// out [n,N] = a [n,K] w[N,K]^T. A single float32 row (every segment of a decode step) goes to
// BLAS gemv: OpenBLAS's sgemm with one row streams the weights at 2-2.5 GB/s here, its sgemv at
// 6.6-8.2 GB/s. bfloat16 has no BLAS gemv and its one-row GEMM is already at read bandwidth.
void LinearOut(at::Tensor& out, const at::Tensor& a, const at::Tensor& w) {
  if (a.size(0) == 1 && a.scalar_type() == at::kFloat) {
    at::Tensor row = out.select(0, 0);
    at::mv_out(row, w, a.select(0, 0));
  } else {
    MmOut(out, a, w.t());
  }
}

// out [N,n] = w [N,K] b [K,n], b usually a transposed [n,K] activation. The BLAS call behind an
// [N,n] row-major output is the one OpenBLAS runs fastest for few rows n: measured with H 1024,
// one thread, float32, 16 rows per expert, 33-49 GFLOP/s against 24-32 for [n,N] = a w^T (and
// 1.1-2x at 4 and 64 rows; even at 128, slower from 256). One float32 column is a gemv.
// Float32 only: bfloat16 GEMMs (oneDNN) run 2.5x slower this way at 2 rows, even from 16.
void WeightTimesOut(at::Tensor& out, const at::Tensor& w, const at::Tensor& b) {
  if (b.size(1) == 1 && b.scalar_type() == at::kFloat) {
    at::Tensor col = out.select(1, 0);
    at::mv_out(col, w, b.select(1, 0));
  } else {
    at::mm_out(out, w, b);
  }
}
// Segments of fewer rows than this run feature-major in inference (see WeightTimesOut).
constexpr int64_t kFeatureMajorRows = 128;

// The forward of the fast path, shared by training (keep = true: the pre-activation gate and up
// values of every pair are kept for backward, in [T*K,Ie] buffers whose segments the GEMMs write)
// and inference (keep = false: one [max n,Ie] pair of buffers reused by every expert, which stays
// in cache and allocates T*K/max_n times less). Per active expert it gathers the expert's rows of
// x into a reused buffer, runs the gate/up GEMMs, folds the routing weight into the [n,Ie]
// activation before the down projection (cheaper than scaling the [n,H] output), and index-adds
// the result into the output: no per-expert outputs to concatenate, no autograd graph per expert.
struct Dispatched {
  at::Tensor out;                   // [T,H]
  at::Tensor order, token, counts;  // the routing permutation, source token per sorted pair, [E] counts
  at::Tensor g, u, w_sorted;        // kept pre-activations [T*K,Ie] (keep only) and sorted weights (float32)
};

// One expert's weighted SwiGLU on rows xs [n,H] with routing weights w [n], into preallocated
// buffers. Feature-major (float32 inference, see WeightTimesOut): g, u [Ie,n] and y [H,n];
// row-major: g, u [n,Ie] and y [n,H]. With keep the pre-activations g and u survive (saved for
// backward); otherwise g becomes the activation in place.
void ExpertSwiGluInto(const ExpertMatrices& m, const at::Tensor& xs, const at::Tensor& w, bool feature_major,
                      bool keep, at::Tensor& g, at::Tensor& u, at::Tensor& y) {
  if (feature_major) {
    WeightTimesOut(g, m.gate, xs.t());
    WeightTimesOut(u, m.up, xs.t());
    at::silu_(g).mul_(u).mul_(w.unsqueeze(0));
    WeightTimesOut(y, m.down, g);
    return;
  }
  LinearOut(g, xs, m.gate);
  LinearOut(u, xs, m.up);
  if (g.scalar_type() == at::kFloat) {
    at::Tensor act = keep ? at::silu(g) : at::silu_(g);
    act.mul_(u).mul_(w.unsqueeze(1));
    LinearOut(y, act, m.down);
    return;
  }
  // bfloat16/float16: the weighted activation in float32, rounded once (instead of after silu,
  // the product and the weighting), which is also 2x faster here than ATen's bfloat16 silu.
  const at::Tensor a32 = at::silu(g.to(at::kFloat)).mul_(u.to(at::kFloat)).mul_(w.unsqueeze(1));
  const at::Tensor act = keep ? a32.to(g.scalar_type()) : g.copy_(a32);
  LinearOut(y, act, m.down);
}

// The hand-written kernel (moe/expert_kernels.h) serves inference on the CPU in float32 and
// bfloat16. The GEMM libraries pack (copy) each expert's weights before multiplying, a large
// share of the work when an expert sees a few dozen tokens (OpenBLAS's sgemm_oncopy/incopy took
// 25-36% of a T=256, 16-expert forward). With AVX-512 (AVX512-BF16 for bfloat16) the kernel's
// panel form packs the tokens instead and its tiles run at 110-120 GFLOP/s in float32 and
// 220-240 in bfloat16 on one core of the AMD EPYC (AVX512-BF16) they were measured on, where
// OpenBLAS's sgemm reaches 53-96 and oneDNN's bfloat16 GEMM 168-213 on the same expert shapes;
// below kPanelMinTokens its dot-product tiles beat both. So there the kernel serves every
// segment. Elsewhere the dot-product tiles serve segments up to measured crossovers
// (//benchmarks:moe_benchmark, H 1024, one thread; the segment size is about T*K/E): float32
// with AVX2, 24 rows (1.1-3.7x faster than OpenBLAS up to 16-32 rows, 0.8-0.9x from 64).
// Without AVX512-BF16 or AMX, oneDNN's bfloat16 GEMMs run at 26-36 GFLOP/s (measured here with
// ONEDNN_MAX_CPU_ISA=AVX512_CORE), below the dot tiles' ~50, so they serve every segment below
// kUpcastMin rows, from which the dispatch upcasts to a float32 GEMM. AMX runs oneDNN at ~270
// GFLOP/s per core (shared/ENVIRONMENT.md), above AVX512-BF16's peak; no AMX machine was at hand
// to measure the crossover, so there bfloat16 keeps to the kernel for segments of up to 8 rows,
// where packing dominates.
int64_t KernelMaxRows(at::ScalarType dtype) {
  const bool bf16 = dtype == at::kBFloat16;
  if (bf16 && Bf16Units().amx) return 8;
  if (HasPanelForm(BestKernelIsa(), bf16)) return std::numeric_limits<int64_t>::max();
  if (!bf16) return 24;
  return kUpcastMin - 1;
}

bool KernelServes(const at::Tensor& xd) {
  return xd.is_cpu() && (xd.scalar_type() == at::kFloat || xd.scalar_type() == at::kBFloat16);
}

// One expert e on n tokens through the kernel: y_rows[t] += w[t] * SwiGLU(x_rows[t]), with x
// rows of float32 (X float) or, for bfloat16 weights, bfloat16 bits (X uint16_t) and float32
// output rows. Checks that the weights are what the dispatch expects; weights a cache hands out
// are usually contiguous views, anything else is copied once.
template <typename X>
void KernelExpert(const ExpertMatrices& m, int64_t e, at::ScalarType dtype, int64_t H, int64_t ie, int64_t n,
                  const X* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  const at::Tensor g = m.gate.contiguous(), u = m.up.contiguous(), d = m.down.contiguous();
  for (const at::Tensor* t : {&g, &u, &d}) {
    TORCH_CHECK(t->is_cpu() && t->scalar_type() == dtype, "expert ", e, ": weights are ", t->toString(),
                ", the hidden states ", dtype);
  }
  TORCH_CHECK(g.sizes() == at::IntArrayRef({ie, H}) && u.sizes() == g.sizes() && d.sizes() == at::IntArrayRef({H, ie}),
              "expert ", e, ": gate/up/down of shape ", g.sizes(), "/", u.sizes(), "/", d.sizes(), ", expected [", ie,
              ",", H, "] and [", H, ",", ie, "]");
  auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
  if constexpr (std::is_same<X, float>::value) {
    if (dtype == at::kFloat) {
      SwiGluAccumulate(g.data_ptr<float>(), u.data_ptr<float>(), d.data_ptr<float>(), H, ie, n, x_rows, w, scratch,
                       y_rows, BestKernelIsa());
      return;
    }
  }
  TORCH_CHECK(dtype == at::kBFloat16, "expert ", e, ": the kernel takes ", dtype, " weights with float32 tokens only");
  SwiGluAccumulate(bits(g), bits(u), bits(d), H, ie, n, x_rows, w, scratch, y_rows, BestKernelIsa());
}

// Inference on one token (a decode step): its K experts in ascending id order through the
// kernel, without the routing permutation, the gather of x and the scatter of the output. The
// output is summed over experts in float32 and rounded once to x's dtype.
at::Tensor OneTokenForward(const at::Tensor& xd, const at::Tensor& expert, const at::Tensor& weight, int64_t E,
                           int64_t ie, const std::function<ExpertMatrices(int64_t)>& get) {
  const at::ScalarType dtype = xd.scalar_type();
  const int64_t K = expert.size(1), H = xd.size(1);
  const at::Tensor ids = expert.reshape({K}).to(at::kLong).contiguous();
  const at::Tensor wk = weight.detach().reshape({K}).to(at::kCPU, at::kFloat).contiguous();
  std::vector<std::pair<int64_t, int64_t>> slots;  // (expert id, slot)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t e = ids.data_ptr<int64_t>()[k];
    TORCH_CHECK(e >= 0 && e < E, "expert id ", e, " out of range [0, ", E, ")");
    slots.emplace_back(e, k);
  }
  std::stable_sort(slots.begin(), slots.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  c10::InferenceMode guard;
  const at::Tensor x32 = xd.reshape({H}).to(at::kFloat).contiguous();
  at::Tensor y = at::zeros({1, H}, xd.options().dtype(at::kFloat));
  at::Tensor scratch = at::empty({SwiGluScratchFloats(H, ie, 1)}, y.options());
  const float* x_row = x32.data_ptr<float>();
  float* y_row = y.data_ptr<float>();
  for (const auto& [e, slot] : slots) {
    KernelExpert(get(e), e, dtype, H, ie, 1, &x_row, wk.data_ptr<float>() + slot, scratch.data_ptr<float>(), &y_row);
  }
  return dtype == at::kFloat ? y : y.to(dtype);
}

Dispatched DispatchForward(const at::Tensor& xd, const at::Tensor& expert, const at::Tensor& weight, int64_t E,
                           int64_t ie, const std::function<ExpertMatrices(int64_t)>& get, bool keep) {
  const int64_t T = xd.size(0), H = xd.size(1), K = expert.size(1), P = T * K;
  Dispatched d;
  const bool kernel = !keep && KernelServes(xd) && expert.is_cpu();
  if (kernel && T == 1) {
    d.out = OneTokenForward(xd, expert, weight, E, ie, get);
    return d;
  }
  const at::Tensor flat_expert = expert.reshape({P});
  if (flat_expert.is_cpu()) {
    // A counting sort on the host: the same stable order as the device path's sort, without its
    // five ATen calls (a decode step's whole dispatch is a few hundred microseconds).
    const at::Tensor ids = flat_expert.to(at::kLong).contiguous();
    const int64_t* id = ids.data_ptr<int64_t>();
    d.counts = at::zeros({E}, at::kLong);
    int64_t* c = d.counts.data_ptr<int64_t>();
    for (int64_t p = 0; p < P; ++p) {
      TORCH_CHECK(id[p] >= 0 && id[p] < E, "expert id ", id[p], " out of range [0, ", E, ")");
      ++c[id[p]];
    }
    std::vector<int64_t> next(E, 0);
    for (int64_t e = 1; e < E; ++e) next[e] = next[e - 1] + c[e - 1];
    d.order = at::empty({P}, at::kLong);
    d.token = at::empty({P}, at::kLong);
    int64_t* order = d.order.data_ptr<int64_t>();
    int64_t* token = d.token.data_ptr<int64_t>();
    for (int64_t p = 0; p < P; ++p) {
      const int64_t at_pos = next[id[p]]++;
      order[at_pos] = p;
      token[at_pos] = p / K;
    }
  } else {
    // Stable sort keeps pairs of one expert in token order, so results do not depend on sort
    // implementation details.
    d.order = std::get<1>(flat_expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    d.token = d.order.div(K, "floor");  // [P] source token of each sorted pair
    // The one host sync: segment sizes drive the per-expert loop.
    d.counts = at::bincount(flat_expert, /*weights=*/{}, E).to(at::kCPU);
  }
  // float32 whatever x's dtype: the activations are weighted in float32.
  d.w_sorted = weight.detach().reshape({P}).index_select(0, d.order).to(at::kFloat);
  const Plan plan = MakePlan(d.counts);
  const int64_t kernel_max_rows = kernel ? KernelMaxRows(xd.scalar_type()) : 0;
  // The GEMM path's buffers, for segments the kernel does not take (training saves g and u).
  at::Tensor xbuf, ybuf;
  if (keep || plan.max_count > kernel_max_rows) {
    const int64_t rows = keep ? P : plan.max_count;
    d.g = at::empty({rows, ie}, xd.options());
    d.u = at::empty({rows, ie}, xd.options());
    // Each expert's rows of x are gathered into, and its output scattered from, one [max n,H]
    // buffer reused by every expert: [T*K,H] buffers would be fresh pages on every call (large
    // allocations are mmap'ed) and fall out of cache between the gather and the GEMMs.
    xbuf = at::empty({plan.max_count, H}, xd.options());
    ybuf = at::empty({plan.max_count, H}, xd.options());
  }
  // bfloat16/float16 outputs are summed over the K experts of a token in float32 and rounded
  // once at the end, as the dense FFN's GEMM rounds once: summing in bfloat16 rounded K times
  // (with 8 exact slices the routed model drifted from the dense one by KL 1e-4 per token).
  const bool widen = xd.scalar_type() == at::kBFloat16 || xd.scalar_type() == at::kHalf;
  d.out = at::zeros({T, H}, xd.options().dtype(widen ? at::kFloat : xd.scalar_type()));
  // Segments through the kernel: rows of x as they are (float32, or bfloat16 bits: no float32
  // copy of a bfloat16 batch) and rows of the float32 output.
  at::Tensor xk, kscratch;
  std::vector<const float*> x_rows;
  std::vector<const uint16_t*> xb_rows;
  std::vector<float*> y_rows;
  if (plan.min_count <= kernel_max_rows) {
    const int64_t rows = std::min(plan.max_count, kernel_max_rows);
    xk = xd.contiguous();
    kscratch = at::empty({SwiGluScratchFloats(H, ie, rows)}, d.out.options());
    x_rows.resize(rows);
    xb_rows.resize(rows);
    y_rows.resize(rows);
  }
  ForEachSegment(plan, [&](size_t j) {
    const int64_t b = plan.begin[j], n = plan.count[j];
    const ExpertMatrices w = get(plan.expert[j]);
    if (n <= kernel_max_rows) {
      const int64_t* tok = d.token.data_ptr<int64_t>() + b;
      auto run = [&](auto* x_base, auto& rows) {
        for (int64_t t = 0; t < n; ++t) {
          rows[t] = x_base + tok[t] * H;
          y_rows[t] = d.out.data_ptr<float>() + tok[t] * H;
        }
        KernelExpert(w, plan.expert[j], xd.scalar_type(), H, ie, n, rows.data(), d.w_sorted.data_ptr<float>() + b,
                     kscratch.data_ptr<float>(), y_rows.data());
      };
      if (xd.scalar_type() == at::kBFloat16) {
        run(reinterpret_cast<const uint16_t*>(xk.data_ptr<at::BFloat16>()), xb_rows);
      } else {
        run(xk.data_ptr<float>(), x_rows);
      }
      return;
    }
    const at::Tensor tok = d.token.narrow(0, b, n);
    at::Tensor xs = xbuf.narrow(0, 0, n), ys = ybuf.narrow(0, 0, n);
    at::index_select_out(xs, xd, 0, tok);
    const at::Tensor ws = d.w_sorted.narrow(0, b, n);
    if (!keep && n < kFeatureMajorRows && xd.scalar_type() == at::kFloat) {
      // Feature-major: [Ie,n] = W [Ie,H] x^T, then [H,n] = Wd act^T, in the buffers' storage.
      at::Tensor gt = d.g.view({-1}).narrow(0, 0, ie * n).view({ie, n});
      at::Tensor ut = d.u.view({-1}).narrow(0, 0, ie * n).view({ie, n});
      at::Tensor yt = ybuf.view({-1}).narrow(0, 0, H * n).view({H, n});
      ExpertSwiGluInto(w, xs, ws, /*feature_major=*/true, keep, gt, ut, yt);
      d.out.index_add_(0, tok, yt.t());  // float32: no widening
      return;
    }
    at::Tensor gs = d.g.narrow(0, keep ? b : 0, n), us = d.u.narrow(0, keep ? b : 0, n);
    ExpertSwiGluInto(w, xs, ws, /*feature_major=*/false, keep, gs, us, ys);
    d.out.index_add_(0, tok, widen ? ys.to(at::kFloat) : ys);
  });
  if (widen) d.out = d.out.to(xd.scalar_type());
  if (!keep) d.g = d.u = at::Tensor();
  return d;
}

std::function<ExpertMatrices(int64_t)> StackGetter(const StackList& s) {
  return [&s](int64_t e) { return Slices(s, s[kFrozenGate].size(0), e); };
}

// The fast path as one autograd node with a hand-written backward. Saved for backward: the
// pre-activation gate and up values of every pair and the routing permutation; hidden states
// are gathered again instead of saved.
class SparseMoeFunction : public torch::autograd::Function<SparseMoeFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& expert,
                            const at::Tensor& weight, const at::Tensor& fg, const at::Tensor& fu,
                            const at::Tensor& fd, const at::Tensor& lg, const at::Tensor& lu,
                            const at::Tensor& ld) {
    const StackList s = {Detached(fg), Detached(fu), Detached(fd), Detached(lg), Detached(lu), Detached(ld)};
    Dispatched d = DispatchForward(x.detach(), expert, weight, fg.size(0) + lg.size(0), fg.size(1), StackGetter(s),
                                   /*keep=*/true);
    ctx->save_for_backward({x, weight, fg, fu, fd, lg, lu, ld});
    ctx->saved_data["order"] = d.order;
    ctx->saved_data["token"] = d.token;
    ctx->saved_data["counts"] = d.counts;
    ctx->saved_data["g"] = d.g;
    ctx->saved_data["u"] = d.u;
    ctx->saved_data["w_sorted"] = d.w_sorted;
    return d.out;
  }

  // With a = silu(g)*u, z = a*w, y = z Wd^T:
  //   dWd = dy^T z, dz = dy Wd, dw = sum(dz*a), da = dz*w,
  //   du = da*silu(g), dg = da*u*sigmoid(g)*(1 + g*(1 - sigmoid(g))),
  //   dWg = dg^T x, dWu = du^T x, dx = dg Wg + du Wu (then scattered back to tokens).
  // Elementwise terms are formed in float32 so that bfloat16 gradients round once, at the end.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The engine enables grad mode here only for create_graph=true; this backward builds no graph.
    TORCH_CHECK(!at::GradMode::is_enabled(), "SparseMoeForward supports first-order gradients only");
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const at::Tensor x = saved[0].detach(), weight = saved[1].detach();
    const StackList s = {Detached(saved[2]), Detached(saved[3]), Detached(saved[4]),
                         Detached(saved[5]), Detached(saved[6]), Detached(saved[7])};
    const at::Tensor order = ctx->saved_data["order"].toTensor(), token = ctx->saved_data["token"].toTensor();
    const at::Tensor g = ctx->saved_data["g"].toTensor(), u = ctx->saved_data["u"].toTensor();
    const at::Tensor w_sorted = ctx->saved_data["w_sorted"].toTensor();
    const Plan plan = MakePlan(ctx->saved_data["counts"].toTensor());
    const int64_t T = x.size(0), H = x.size(1), P = order.numel(), nf = s[kFrozenGate].size(0);
    const at::ScalarType dtype = x.scalar_type();

    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(2);
    // Gradients of the stacks that need one. Always defined, even when no expert of a stack was
    // chosen (torch::autograd::grad without allow_unused would fail on an undefined one); such a
    // stack's gradient is a zero expanded to its shape, as autograd's own sum backward returns,
    // which costs no memory (a decode-sized batch often chooses no learned expert). Otherwise
    // active experts' slices are written whole by their GEMMs, so only the others are zeroed,
    // after the loop: one pass over the stack instead of a memset and then the writes.
    const int64_t num_experts = nf + (s[kLearnedGate].defined() ? s[kLearnedGate].size(0) : 0);
    std::vector<bool> active(static_cast<size_t>(num_experts));
    bool stack_active[2] = {false, false};  // frozen, learned
    for (const int64_t e : plan.expert) {
      active[static_cast<size_t>(e)] = true;
      stack_active[e < nf ? 0 : 1] = true;
    }
    StackList ds;
    for (int k = 0; k < 6; ++k) {
      if (!s[k].defined() || !ctx->needs_input_grad(3 + k)) continue;
      ds[k] = stack_active[k < kLearnedGate ? 0 : 1] ? at::empty_like(s[k])
                                                      : at::zeros({}, s[k].options()).expand(s[k].sizes());
    }
    const bool need_gate_up = ds[kFrozenGate].defined() || ds[kFrozenUp].defined() ||
                              ds[kLearnedGate].defined() || ds[kLearnedUp].defined();
    // Per-expert gathers and scatters through reused [max n,H] buffers, as in the forward.
    const int64_t m = plan.max_count;
    at::Tensor dybuf = at::empty({m, H}, x.options()), xbuf = at::empty({need_gate_up ? m : 0, H}, x.options());
    at::Tensor dxbuf = at::empty({need_x ? m : 0, H}, x.options());
    // As in the forward: a token's K contributions are summed in float32, rounded once.
    const bool widen = dtype == at::kBFloat16 || dtype == at::kHalf;
    at::Tensor dx = need_x ? at::zeros({T, H}, x.options().dtype(widen ? at::kFloat : dtype)) : at::Tensor();
    const at::Tensor dy = grads[0];
    const at::Tensor dw_sorted = need_w ? at::empty({P}, x.options().dtype(at::kFloat)) : at::Tensor();

    ForEachSegment(plan, [&](size_t j) {
      const int64_t b = plan.begin[j], n = plan.count[j], e = plan.expert[j];
      const ExpertWeights w = Slices(s, nf, e);
      ExpertWeights dw = Slices(ds, nf, e);
      const at::Tensor tok = token.narrow(0, b, n);
      at::Tensor dys = dybuf.narrow(0, 0, n);
      at::index_select_out(dys, dy, 0, tok);
      const at::Tensor gf = g.narrow(0, b, n).to(at::kFloat), uf = u.narrow(0, b, n).to(at::kFloat);
      const at::Tensor wf = w_sorted.narrow(0, b, n).to(at::kFloat).unsqueeze(1);
      const at::Tensor sig = at::sigmoid(gf);
      const at::Tensor a = gf * sig * uf;  // silu(g)*u
      if (dw.down.defined()) MmOut(dw.down, dys.t(), (a * wf).to(dtype));
      const at::Tensor dz = MmFloat(dys, w.down);  // [n,Ie]
      if (need_w) {
        at::Tensor dws = dw_sorted.narrow(0, b, n);
        at::sum_out(dws, dz * a, {1});
      }
      if (!need_x && !need_gate_up) return;
      const at::Tensor da = dz * wf;
      const at::Tensor du = (da * gf * sig).to(dtype);
      const at::Tensor dg = (da * uf * sig * (1 + gf * (1 - sig))).to(dtype);
      if (need_gate_up) {
        at::Tensor xs = xbuf.narrow(0, 0, n);
        at::index_select_out(xs, x, 0, tok);
        if (dw.gate.defined()) MmOut(dw.gate, dg.t(), xs);
        if (dw.up.defined()) MmOut(dw.up, du.t(), xs);
      }
      if (need_x) {
        at::Tensor dxs = dxbuf.narrow(0, 0, n);
        if (UpcastGemm(dg, w.gate)) {
          dxs.copy_(at::mm(dg.to(at::kFloat), w.gate.to(at::kFloat)).addmm_(du.to(at::kFloat), w.up.to(at::kFloat)));
        } else {
          at::mm_out(dxs, dg, w.gate);
          dxs.addmm_(du, w.up);
        }
        dx.index_add_(0, tok, widen ? dxs.to(at::kFloat) : dxs);
      }
    });

    {
      c10::InferenceMode guard;
      for (int64_t e = 0; e < num_experts; ++e) {
        // Unchosen experts of a stack with chosen ones (the others' stacks are expanded zeros).
        if (active[static_cast<size_t>(e)] || !stack_active[e < nf ? 0 : 1]) continue;
        const ExpertWeights dw = Slices(ds, nf, e);
        for (const at::Tensor* t : {&dw.gate, &dw.up, &dw.down}) {
          if (t->defined()) t->zero_();
        }
      }
    }
    if (need_x && widen) dx = dx.to(dtype);
    at::Tensor dweight;
    // order is a permutation of the pairs: dweight[order[i]] = dw_sorted[i].
    if (need_w) dweight = at::empty({P}, dw_sorted.options()).index_copy_(0, order, dw_sorted).reshape(weight.sizes()).to(weight.scalar_type());
    return {dx, at::Tensor(), dweight, ds[0], ds[1], ds[2], ds[3], ds[4], ds[5]};
  }
};

}  // namespace

at::Tensor ExpertStacks::Expert(int64_t e, const at::Tensor& x) const {
  const int64_t nf = num_frozen();
  if (e < nf) return SwiGlu(x, frozen_gate[e], frozen_up[e], frozen_down[e]);
  return SwiGlu(x, learned_gate[e - nf], learned_up[e - nf], learned_down[e - nf]);
}

at::Tensor SparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                            const ExpertStacks& stacks) {
  // Autograd functions take defined tensors only: an absent learned stack becomes an empty one.
  auto or_empty = [&](const at::Tensor& t, const at::Tensor& like) {
    return t.defined() ? t : at::empty({0, like.size(1), like.size(2)}, like.options());
  };
  const StackList list = {stacks.frozen_gate, stacks.frozen_up, stacks.frozen_down,
                          or_empty(stacks.learned_gate, stacks.frozen_gate),
                          or_empty(stacks.learned_up, stacks.frozen_up),
                          or_empty(stacks.learned_down, stacks.frozen_down)};
  bool needs_grad = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  for (const at::Tensor& t : list) needs_grad = needs_grad || (at::GradMode::is_enabled() && t.requires_grad());
  // Inference (no gradient wanted): no autograd node, nothing kept for a backward.
  if (!needs_grad) {
    return DispatchForward(x, expert, weight, stacks.num_experts(), list[0].size(1), StackGetter(list), /*keep=*/false).out;
  }
  return SparseMoeFunction::apply(x, expert, weight, list[0], list[1], list[2], list[3], list[4], list[5]);
}

at::Tensor SparseMoeForwardWith(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                int64_t num_experts, int64_t expert_intermediate_size,
                                const std::function<ExpertMatrices(int64_t)>& get) {
  c10::NoGradGuard no_grad;
  return DispatchForward(x, expert, weight, num_experts, expert_intermediate_size, get, /*keep=*/false).out;
}

at::Tensor AllFrozenForward(const at::Tensor& x, const ExpertStacks& s) {
  const int64_t n = s.frozen_gate.size(0) * s.frozen_gate.size(1), H = x.size(-1);
  // [Nf,Ie,H] -> [Nf*Ie,H]; [Nf,H,Ie] -> [H,Nf*Ie] (neuron order matches the gate/up rows).
  return SwiGlu(x, s.frozen_gate.reshape({n, H}), s.frozen_up.reshape({n, H}),
                s.frozen_down.permute({1, 0, 2}).reshape({H, n}));
}

at::Tensor AllLearnedForward(const at::Tensor& x, const ExpertStacks& s) {
  const int64_t n = s.learned_gate.size(0) * s.learned_gate.size(1), H = x.size(-1);
  return SwiGlu(x, s.learned_gate.reshape({n, H}), s.learned_up.reshape({n, H}),
                s.learned_down.permute({1, 0, 2}).reshape({H, n}));
}

at::Tensor ReferenceMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertStacks& stacks) {
  at::Tensor out = at::zeros_like(x);
  const at::Tensor ex = expert.to(at::kCPU);
  for (int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor acc = at::zeros_like(x[t]);
    for (int64_t k = 0; k < expert.size(1); ++k) {
      const int64_t e = ex[t][k].item<int64_t>();
      acc = acc + stacks.Expert(e, x.narrow(0, t, 1))[0] * weight[t][k].to(x.scalar_type());
    }
    out[t].copy_(acc);
  }
  return out;
}

at::Tensor SeedStyleMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertStacks& stacks) {
  const int64_t T = x.size(0), K = expert.size(1);
  const at::Tensor active = std::get<0>(at::_unique(expert.reshape({T * K}), /*sorted=*/true)).to(at::kCPU);
  // all_out[j] = expert active[j] on every token.
  std::vector<at::Tensor> all;
  at::Tensor slot_of = at::full({stacks.num_experts()}, -1, at::kLong);
  for (int64_t j = 0; j < active.size(0); ++j) {
    const int64_t e = active[j].item<int64_t>();
    slot_of[e] = j;
    all.push_back(stacks.Expert(e, x));
  }
  const at::Tensor all_out = at::stack(all, 0);                            // [A,T,H]
  const at::Tensor j = slot_of.to(x.device()).index_select(0, expert.reshape({T * K})).reshape({T, K});
  const at::Tensor tok = at::arange(T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(1).expand({T, K});
  const int64_t H = x.size(1);
  const at::Tensor picked = all_out.reshape({-1, H}).index_select(0, (j * T + tok).reshape({T * K})).reshape({T, K, H});
  return (picked * weight.to(x.scalar_type()).unsqueeze(-1)).sum(1);
}

at::Tensor MixtralLoopMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                 const ExpertStacks& stacks) {
  const int64_t E = stacks.num_experts();
  at::Tensor out = at::zeros_like(x);
  // expert_mask [E,K,T] as in transformers' MixtralSparseMoeBlock.
  const at::Tensor mask = at::one_hot(expert, E).permute({2, 1, 0});
  const at::Tensor w = weight.to(x.scalar_type());
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<at::Tensor> idx = at::where(mask[e]);  // (slot, token)
    const at::Tensor& slot = idx[0];
    const at::Tensor& tok = idx[1];
    if (tok.numel() == 0) continue;
    const at::Tensor we = w.reshape({-1}).index_select(0, tok * expert.size(1) + slot);
    const at::Tensor y = stacks.Expert(e, x.index_select(0, tok)) * we.unsqueeze(1);
    out.index_add_(0, tok, y);
  }
  return out;
}

}  // namespace llama_moe
