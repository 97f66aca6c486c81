#include "moe/dispatch.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "model/decode_linear.h"
#include "moe/dispatch_plan.h"
#include "moe/expert_gemm.h"
#include "moe/expert_kernels.h"
#include "moe/grouped_dispatch.h"

namespace llama_moe {
namespace {

// The six weight stacks in a fixed order, so that the autograd function can take them as inputs.
enum StackIndex { kFrozenGate, kFrozenUp, kFrozenDown, kLearnedGate, kLearnedUp, kLearnedDown };
using StackList = std::array<at::Tensor, 6>;

// Expert e's slices of a stack list (weights, or their gradients); undefined where a stack is.
ExpertWeights Slices(const StackList& s, int64_t nf, int64_t e) {
  const int base = e < nf ? kFrozenGate : kLearnedGate;
  const int64_t i = e < nf ? e : e - nf;
  auto at_i = [&](int k) { return s[base + k].defined() ? s[base + k][i] : at::Tensor(); };
  return {at_i(0), at_i(1), at_i(2)};
}

at::Tensor Detached(const at::Tensor& t) { return t.defined() ? t.detach() : t; }

std::function<ExpertWeights(int64_t)> StackGetter(const StackList& s) {
  return [&s](int64_t e) { return Slices(s, s[kFrozenGate].size(0), e); };
}

// The (token, slot) pairs sorted by expert, stably (pairs of one expert stay in token order).
struct SortedPairs {
  at::Tensor order;   // [P] pair index at each sorted position
  at::Tensor token;   // [P] source token of each sorted pair
  at::Tensor counts;  // [E] int64 on the host: pairs per expert
};

SortedPairs SortPairsByExpert(const at::Tensor& expert, int64_t E) {
  const int64_t K = expert.size(1), P = expert.numel();
  const at::Tensor flat = expert.reshape({P});
  SortedPairs s;
  if (!flat.is_cpu()) {
    s.order = std::get<1>(flat.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    s.token = s.order.div(K, "floor");
    // The one host sync: segment sizes drive the per-expert loop (counted by scatter_add, since
    // at::bincount would first read the largest id on the host).
    s.counts = at::zeros({E}, flat.options().dtype(at::kLong))
                   .scatter_add_(0, flat.to(at::kLong), at::ones_like(flat, at::kLong))
                   .to(at::kCPU);
    return s;
  }
  // A counting sort on the host: the same order as the device sort, without its five ATen calls.
  const at::Tensor ids = flat.to(at::kLong).contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  s.counts = at::zeros({E}, at::kLong);
  int64_t* c = s.counts.data_ptr<int64_t>();
  for (int64_t p = 0; p < P; ++p) {
    TORCH_CHECK(id[p] >= 0 && id[p] < E, "expert id ", id[p], " out of range [0, ", E, ")");
    ++c[id[p]];
  }
  std::vector<int64_t> next(E, 0);
  for (int64_t e = 1; e < E; ++e) next[e] = next[e - 1] + c[e - 1];
  s.order = at::empty({P}, at::kLong);
  s.token = at::empty({P}, at::kLong);
  int64_t* order = s.order.data_ptr<int64_t>();
  int64_t* token = s.token.data_ptr<int64_t>();
  for (int64_t p = 0; p < P; ++p) {
    const int64_t at_pos = next[id[p]]++;
    order[at_pos] = p;
    token[at_pos] = p / K;
  }
  return s;
}

// The active experts' contiguous segments of the sorted pairs, in expert order. Segments run one
// after another, each using the intra-op threads (whole experts on separate OpenMP threads ran
// OpenBLAS up to 10x slower unless OPENBLAS_NUM_THREADS=1, which a library cannot set).
struct Segments {
  std::vector<int64_t> expert, begin, count;
  int64_t max_count = 0, min_count = 0;
};

Segments MakeSegments(const at::Tensor& counts) {
  Segments p;
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

// Runs fn(j) for every segment. The body works on detached tensors and writes into preallocated
// buffers, so it runs in inference mode: no autograd bookkeeping per op, and out= writes are
// allowed whatever mode the caller's tensors come from.
template <typename F>
void ForEachSegment(const Segments& s, const F& fn) {
  c10::InferenceMode guard;
  for (size_t j = 0; j < s.expert.size(); ++j) fn(j);
}

// Expert e on n tokens through the kernel: y_rows[t] += w[t] * SwiGLU(x_rows[t]), x rows float32
// (X float) or, for bfloat16 weights, bfloat16 bits (X uint16_t); float32 output rows. Weights a
// cache hands out are usually contiguous views; anything else is copied once.
template <typename X>
void KernelExpert(const ExpertWeights& m, int64_t e, at::ScalarType dtype, int64_t H, int64_t ie, int64_t n,
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

// The one-token rule: a decode step's K experts in ascending id order through the kernel, the
// output summed over experts in float32 and rounded once to x's dtype.
at::Tensor OneTokenForward(const at::Tensor& xd, const at::Tensor& expert, const at::Tensor& weight, int64_t E,
                           int64_t ie, const std::function<ExpertWeights(int64_t)>& get) {
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

// The result of a forward, and what training keeps for backward.
struct Dispatched {
  at::Tensor out;                   // [T,H]
  at::Tensor order, token, counts;  // SortedPairs
  at::Tensor g, u, w_sorted;        // pre-activations [T*K,Ie] (training only), sorted weights (float32)
};

// Scratch of one forward, allocated for the paths its segments take. GEMM segments gather their
// rows of x into, and scatter their output from, one [max n,H] buffer reused by every expert
// ([T*K,H] buffers would be fresh pages on every call and fall out of cache between the gather
// and the GEMMs); inference reuses one [max n,Ie] pair of g/u buffers, training writes g and u
// of every pair. Kernel segments read x's rows in place (float32, or bfloat16 bits: no float32
// copy of a bfloat16 batch) and accumulate into rows of the float32 output.
struct SegmentBuffers {
  at::Tensor xbuf, ybuf;  // GEMM gather/scatter
  at::Tensor xk, kscratch;
  std::vector<const float*> x_rows;
  std::vector<const uint16_t*> xb_rows;
  std::vector<float*> y_rows;
};

SegmentBuffers AllocateBuffers(const DispatchPlan& plan, const Segments& seg, const at::Tensor& xd, int64_t ie,
                               int64_t pairs, Dispatched& d) {
  SegmentBuffers b;
  const bool training = plan.mode == DispatchMode::kTraining;
  if (training || plan.PathFor(seg.max_count) != SegmentPath::kKernel) {
    const int64_t rows = training ? pairs : seg.max_count;
    d.g = at::empty({rows, ie}, xd.options());
    d.u = at::empty({rows, ie}, xd.options());
    b.xbuf = at::empty({seg.max_count, xd.size(1)}, xd.options());
    b.ybuf = at::empty({seg.max_count, xd.size(1)}, xd.options());
  }
  if (plan.PathFor(seg.min_count) == SegmentPath::kKernel) {
    const int64_t rows = std::min(seg.max_count, plan.kernel_max_rows);
    b.xk = xd.contiguous();
    b.kscratch = at::empty({SwiGluScratchFloats(xd.size(1), ie, rows)}, d.out.options());
    b.x_rows.resize(rows);
    b.xb_rows.resize(rows);
    b.y_rows.resize(rows);
  }
  return b;
}

// Segment [begin, begin + n) of expert e through the kernel.
void RunKernelSegment(const ExpertWeights& w, int64_t e, int64_t begin, int64_t n, const at::Tensor& xd, int64_t ie,
                      Dispatched& d, SegmentBuffers& b) {
  const int64_t H = xd.size(1);
  const int64_t* tok = d.token.data_ptr<int64_t>() + begin;
  auto run = [&](auto* x_base, auto& rows) {
    for (int64_t t = 0; t < n; ++t) {
      rows[t] = x_base + tok[t] * H;
      b.y_rows[t] = d.out.data_ptr<float>() + tok[t] * H;
    }
    KernelExpert(w, e, xd.scalar_type(), H, ie, n, rows.data(), d.w_sorted.data_ptr<float>() + begin,
                 b.kscratch.data_ptr<float>(), b.y_rows.data());
  };
  if (xd.scalar_type() == at::kBFloat16) {
    run(reinterpret_cast<const uint16_t*>(b.xk.data_ptr<at::BFloat16>()), b.xb_rows);
  } else {
    run(b.xk.data_ptr<float>(), b.x_rows);
  }
}

// Segment [begin, begin + n) through ATen GEMMs in the path's layout; `widen` sums a bfloat16
// output in float32.
void RunGemmSegment(const ExpertWeights& w, SegmentPath path, bool keep, int64_t begin, int64_t n,
                    const at::Tensor& xd, int64_t ie, bool widen, Dispatched& d, SegmentBuffers& b) {
  const int64_t H = xd.size(1);
  const at::Tensor tok = d.token.narrow(0, begin, n);
  at::Tensor xs = b.xbuf.narrow(0, 0, n), ys = b.ybuf.narrow(0, 0, n);
  at::index_select_out(xs, xd, 0, tok);
  const at::Tensor ws = d.w_sorted.narrow(0, begin, n);
  if (path == SegmentPath::kGemmFeatureMajor) {
    // [Ie,n] = W [Ie,H] x^T, then [H,n] = Wd act^T, in the buffers' storage.
    at::Tensor gt = d.g.view({-1}).narrow(0, 0, ie * n).view({ie, n});
    at::Tensor ut = d.u.view({-1}).narrow(0, 0, ie * n).view({ie, n});
    at::Tensor yt = b.ybuf.view({-1}).narrow(0, 0, H * n).view({H, n});
    ExpertSwiGluInto(w, xs, ws, path, keep, gt, ut, yt);
    d.out.index_add_(0, tok, yt.t());  // float32: no widening
    return;
  }
  at::Tensor gs = d.g.narrow(0, keep ? begin : 0, n), us = d.u.narrow(0, keep ? begin : 0, n);
  ExpertSwiGluInto(w, xs, ws, path, keep, gs, us, ys);
  d.out.index_add_(0, tok, widen ? ys.to(at::kFloat) : ys);
}

Dispatched DispatchForward(const at::Tensor& xd, const at::Tensor& expert, const at::Tensor& weight, int64_t E,
                           int64_t ie, const std::function<ExpertWeights(int64_t)>& get, DispatchMode mode) {
  const DispatchPlan plan = PlanDispatch(mode, xd, expert);
  Dispatched d;
  if (plan.one_token) {
    d.out = OneTokenForward(xd, expert, weight, E, ie, get);
    return d;
  }
  SortedPairs sorted = SortPairsByExpert(expert, E);
  d.order = sorted.order;
  d.token = sorted.token;
  d.counts = sorted.counts;
  // float32 whatever x's dtype: the activations are weighted in float32.
  d.w_sorted = weight.detach().reshape({expert.numel()}).index_select(0, d.order).to(at::kFloat);
  // bfloat16/float16 outputs are summed over a token's K experts in float32 and rounded once, as
  // the dense FFN's GEMM rounds once (rounding K times drifted 8 exact slices from the dense
  // model by KL 1e-4 per token).
  const bool widen = xd.scalar_type() == at::kBFloat16 || xd.scalar_type() == at::kHalf;
  d.out = at::zeros({xd.size(0), xd.size(1)}, xd.options().dtype(widen ? at::kFloat : xd.scalar_type()));
  const Segments seg = MakeSegments(d.counts);
  const bool keep = mode == DispatchMode::kTraining;
  SegmentBuffers buffers = AllocateBuffers(plan, seg, xd, ie, expert.numel(), d);
  ForEachSegment(seg, [&](size_t j) {
    const int64_t e = seg.expert[j], begin = seg.begin[j], n = seg.count[j];
    const SegmentPath path = plan.PathFor(n);
    if (path == SegmentPath::kKernel) {
      RunKernelSegment(get(e), e, begin, n, xd, ie, d, buffers);
    } else {
      RunGemmSegment(get(e), path, keep, begin, n, xd, ie, widen, d, buffers);
    }
  });
  if (widen) d.out = d.out.to(xd.scalar_type());
  if (!keep) d.g = d.u = at::Tensor();
  return d;
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
                                   DispatchMode::kTraining);
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
    const Segments seg = MakeSegments(ctx->saved_data["counts"].toTensor());
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
    for (const int64_t e : seg.expert) {
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
    const int64_t m = seg.max_count;
    at::Tensor dybuf = at::empty({m, H}, x.options()), xbuf = at::empty({need_gate_up ? m : 0, H}, x.options());
    at::Tensor dxbuf = at::empty({need_x ? m : 0, H}, x.options());
    // As in the forward: a token's K contributions are summed in float32, rounded once.
    const bool widen = dtype == at::kBFloat16 || dtype == at::kHalf;
    at::Tensor dx = need_x ? at::zeros({T, H}, x.options().dtype(widen ? at::kFloat : dtype)) : at::Tensor();
    const at::Tensor dy = grads[0];
    const at::Tensor dw_sorted = need_w ? at::empty({P}, x.options().dtype(at::kFloat)) : at::Tensor();

    ForEachSegment(seg, [&](size_t j) {
      const int64_t b = seg.begin[j], n = seg.count[j], e = seg.expert[j];
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

// The whole stack as one dense SwiGLU through the linear primitive of the dense model's MLP (the
// decode kernel for a decode step's rows, model/decode_linear.h), so that identity routing equals
// the dense model bit for bit in prefill and in decode.
at::Tensor AllExpertsOfStack(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                             const at::Tensor& down) {
  const int64_t n = gate.size(0) * gate.size(1), H = x.size(-1);
  // [N,Ie,H] -> [N*Ie,H]; [N,H,Ie] -> [H,N*Ie] (neuron order matches the gate/up rows).
  const at::Tensor g = gate.reshape({n, H}), u = up.reshape({n, H}), d = down.permute({1, 0, 2}).reshape({H, n});
  return ModelLinear(at::silu(ModelLinear(x, g)) * ModelLinear(x, u), d);
}

}  // namespace

at::Tensor SparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                            const ExpertBank& bank) {
  if (PlanDispatch(DispatchMode::kInference, x, expert).grouped) {
    return GroupedMoeForward(x, expert, weight, bank, AtenGroupedGemm());
  }
  // Autograd functions take defined tensors only: an absent learned stack becomes an empty one.
  auto or_empty = [&](const at::Tensor& t, const at::Tensor& like) {
    return t.defined() ? t : at::empty({0, like.size(1), like.size(2)}, like.options());
  };
  const StackList list = {bank.frozen_gate, bank.frozen_up, bank.frozen_down,
                          or_empty(bank.learned_gate, bank.frozen_gate),
                          or_empty(bank.learned_up, bank.frozen_up),
                          or_empty(bank.learned_down, bank.frozen_down)};
  bool needs_grad = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  for (const at::Tensor& t : list) needs_grad = needs_grad || (at::GradMode::is_enabled() && t.requires_grad());
  // Inference (no gradient wanted): no autograd node, nothing kept for a backward.
  if (!needs_grad) {
    return DispatchForward(x, expert, weight, bank.num_experts(), list[0].size(1), StackGetter(list),
                           DispatchMode::kInference)
        .out;
  }
  return SparseMoeFunction::apply(x, expert, weight, list[0], list[1], list[2], list[3], list[4], list[5]);
}

at::Tensor SparseMoeForwardWith(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                int64_t num_experts, int64_t expert_intermediate_size,
                                const std::function<ExpertWeights(int64_t)>& get) {
  c10::NoGradGuard no_grad;
  return DispatchForward(x, expert, weight, num_experts, expert_intermediate_size, get, DispatchMode::kInference).out;
}

at::Tensor AllFrozenForward(const at::Tensor& x, const ExpertBank& bank) {
  return AllExpertsOfStack(x, bank.frozen_gate, bank.frozen_up, bank.frozen_down);
}

at::Tensor AllLearnedForward(const at::Tensor& x, const ExpertBank& bank) {
  return AllExpertsOfStack(x, bank.learned_gate, bank.learned_up, bank.learned_down);
}

}  // namespace llama_moe
