#include "moe/grouped_dispatch.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

namespace llama_moe {
namespace {

// Where each (token, slot) pair sits in the grouped GEMMs' rows, computed on the device.
struct GroupedLayout {
  at::Tensor order;  // [P] pair index at each sorted position
  at::Tensor token;  // [P] source token of each sorted pair
  at::Tensor row;    // [P] GEMM row of each sorted pair (its position plus its group's padding)
  at::Tensor offs;   // [E] int32 cumulative ends of the (padded) groups
  int64_t rows = 0;  // GEMM rows: P plus the most padding E groups can need
};

// Group of expert e: learned experts (nf..E-1) first, then frozen (0..nf-1).
GroupedLayout LayOut(const at::Tensor& expert, int64_t nf, int64_t E, int64_t align) {
  const int64_t K = expert.size(1), P = expert.numel(), nl = E - nf;
  const at::Tensor id = expert.reshape({P}).to(at::kLong);
  const at::Tensor group = at::where(id >= nf, id - nf, id + nl);
  GroupedLayout l;
  l.order = std::get<1>(group.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  l.token = l.order.div(K, "floor");
  const at::Tensor counts = at::zeros({E}, id.options()).scatter_add_(0, group, at::ones_like(group));
  if (align == 1) {
    l.row = at::arange(P, id.options());
    l.offs = counts.cumsum(0).to(at::kInt);
    l.rows = P;
    return l;
  }
  const at::Tensor padded = counts.add(align - 1).div(align, "floor").mul(align);
  const at::Tensor start = counts.cumsum(0) - counts, padded_start = padded.cumsum(0) - padded;
  const at::Tensor sorted_group = group.index_select(0, l.order);
  l.row = at::arange(P, id.options()) + (padded_start - start).index_select(0, sorted_group);
  l.offs = padded.cumsum(0).to(at::kInt);
  l.rows = P + E * (align - 1);
  return l;
}

// Sorted pair rows [P,C] placed at their GEMM rows of a zeroed [rows,C] (padding rows stay zero).
at::Tensor ToGemmRows(const at::Tensor& pairs, const GroupedLayout& l) {
  if (l.rows == pairs.size(0)) return pairs;
  return at::zeros({l.rows, pairs.size(1)}, pairs.options()).index_copy_(0, l.row, pairs);
}

at::Tensor FromGemmRows(const at::Tensor& rows, const GroupedLayout& l) {
  return rows.size(0) == l.row.size(0) ? rows : rows.index_select(0, l.row);
}

bool Widens(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// The type element-wise terms are formed in: float32, or float64 for float64 inputs.
at::ScalarType Wide(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// sum over a token's pairs of `pairs` [P,C], in float32 for 16-bit types, rounded once.
at::Tensor SumToTokens(const at::Tensor& pairs, const at::Tensor& token, int64_t T) {
  const at::ScalarType dtype = pairs.scalar_type();
  const bool widen = Widens(dtype);
  at::Tensor out = at::zeros({T, pairs.size(1)}, pairs.options().dtype(widen ? at::kFloat : dtype));
  out.index_add_(0, token, widen ? pairs.to(at::kFloat) : pairs);
  return widen ? out.to(dtype) : out;
}

// The forward on detached tensors; stacks learned-then-frozen gate, up [E,Ie,H] and down
// [E,H,Ie]; nf frozen experts.
struct Forwarded {
  at::Tensor out;
  GroupedLayout layout;
  at::Tensor g, u, ws;  // pre-activations and weights at the GEMM rows (kept for backward)
};

Forwarded GroupedForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight, int64_t nf,
                         const at::Tensor& wg, const at::Tensor& wu, const at::Tensor& wd, const GroupedGemm& gemm) {
  Forwarded f;
  const GroupedLayout& l = f.layout = LayOut(expert, nf, wg.size(0), gemm.row_align);
  const at::Tensor xs = ToGemmRows(x.index_select(0, l.token), l);
  // At least float32 whatever x's dtype: the activations are weighted in float32; padding rows
  // weigh 0.
  const at::ScalarType wide = Wide(x.scalar_type());
  f.ws = ToGemmRows(weight.reshape({-1, 1}).index_select(0, l.order).to(wide), l);
  f.g = gemm.rows(xs, wg.transpose(1, 2), l.offs);
  f.u = gemm.rows(xs, wu.transpose(1, 2), l.offs);
  const at::Tensor z = (at::silu(f.g.to(wide)) * f.u.to(wide) * f.ws).to(x.scalar_type());
  f.out = SumToTokens(FromGemmRows(gemm.rows(z, wd.transpose(1, 2), l.offs), l), l.token, x.size(0));
  return f;
}

class GroupedMoeFunction : public torch::autograd::Function<GroupedMoeFunction> {
 public:
  // Stacks: learned-then-frozen gate, up [E,Ie,H] and down [E,H,Ie]; nf frozen experts.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& expert,
                            const at::Tensor& weight, const at::Tensor& fg, const at::Tensor& fu,
                            const at::Tensor& fd, const at::Tensor& lg, const at::Tensor& lu, const at::Tensor& ld,
                            int64_t kind, int64_t align) {
    at::AutoGradMode no_grad(false);
    const GroupedGemm gemm = GroupedGemmOf(static_cast<GroupedGemmKind>(kind), align);
    Forwarded f = GroupedForward(x.detach(), expert, weight.detach(), fg.size(0),
                                 LearnedThenFrozen(lg.detach(), fg.detach()),
                                 LearnedThenFrozen(lu.detach(), fu.detach()),
                                 LearnedThenFrozen(ld.detach(), fd.detach()), gemm);
    const GroupedLayout& l = f.layout;
    ctx->save_for_backward({x, weight, fg, fu, fd, lg, lu, ld});
    ctx->saved_data["order"] = l.order;
    ctx->saved_data["token"] = l.token;
    ctx->saved_data["row"] = l.row;
    ctx->saved_data["offs"] = l.offs;
    ctx->saved_data["rows"] = l.rows;
    ctx->saved_data["g"] = f.g;
    ctx->saved_data["u"] = f.u;
    ctx->saved_data["ws"] = f.ws;
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["align"] = align;
    return f.out;
  }

  // SparseMoeForward's gradients (moe/dispatch.cc writes them out), each product one grouped
  // GEMM over all experts: dz and dx row-grouped, the stacks' gradients contraction-grouped.
  // Rows past the last group are unspecified (never written by the GEMMs) and never read.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "GroupedMoeForward supports first-order gradients only");
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const at::Tensor x = saved[0].detach(), weight = saved[1].detach();
    const at::Tensor fg = saved[2].detach(), fu = saved[3].detach(), fd = saved[4].detach();
    const at::Tensor lg = saved[5].detach(), lu = saved[6].detach(), ld = saved[7].detach();
    GroupedLayout l;
    l.order = ctx->saved_data["order"].toTensor();
    l.token = ctx->saved_data["token"].toTensor();
    l.row = ctx->saved_data["row"].toTensor();
    l.offs = ctx->saved_data["offs"].toTensor();
    l.rows = ctx->saved_data["rows"].toInt();
    const at::Tensor g = ctx->saved_data["g"].toTensor(), u = ctx->saved_data["u"].toTensor();
    const at::Tensor ws = ctx->saved_data["ws"].toTensor();
    const GroupedGemm gemm = GroupedGemmOf(static_cast<GroupedGemmKind>(ctx->saved_data["kind"].toInt()),
                                           ctx->saved_data["align"].toInt());
    const int64_t nf = fg.size(0), nl = lg.size(0), T = x.size(0), P = l.order.numel();
    const at::ScalarType dtype = x.scalar_type();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(2);
    const bool need_frozen = ctx->needs_input_grad(3) || ctx->needs_input_grad(4) || ctx->needs_input_grad(5);
    const bool need_learned = ctx->needs_input_grad(6) || ctx->needs_input_grad(7) || ctx->needs_input_grad(8);

    const at::Tensor wg = LearnedThenFrozen(lg, fg), wu = LearnedThenFrozen(lu, fu), wd = LearnedThenFrozen(ld, fd);
    const at::Tensor dys = ToGemmRows(grads[0].index_select(0, l.token), l);
    const at::ScalarType wide = Wide(dtype);
    const at::Tensor gf = g.to(wide), uf = u.to(wide), sig = at::sigmoid(gf);
    const at::Tensor a = gf * sig * uf;  // silu(g)*u
    const at::Tensor dz = gemm.rows(dys, wd, l.offs).to(wide);
    at::Tensor dweight;
    if (need_w) {
      const at::Tensor dw_sorted = FromGemmRows((dz * a).sum(1), l);
      dweight = at::empty({P}, dw_sorted.options()).index_copy_(0, l.order, dw_sorted).reshape(weight.sizes())
                    .to(weight.scalar_type());
    }
    const at::Tensor da = dz * ws;
    const at::Tensor du = (da * gf * sig).to(dtype);
    const at::Tensor dg = (da * uf * sig * (1 + gf * (1 - sig))).to(dtype);

    // Stack gradients: the learned stack's are the leading nl groups; all E only when the frozen
    // stack wants one too.
    at::Tensor dfg, dfu, dfd, dlg, dlu, dld;
    if (need_frozen || (need_learned && nl > 0)) {
      const int64_t groups = need_frozen ? nf + nl : nl;
      const at::Tensor offs = l.offs.narrow(0, 0, groups);
      const at::Tensor xs = ToGemmRows(x.index_select(0, l.token), l);
      const at::Tensor z = (a * ws).to(dtype);
      const at::Tensor dwd = gemm.contraction(dys.t(), z, offs);  // [G,H,Ie]
      const at::Tensor dwg = gemm.contraction(dg.t(), xs, offs);  // [G,Ie,H]
      const at::Tensor dwu = gemm.contraction(du.t(), xs, offs);
      dlg = dwg.narrow(0, 0, nl);
      dlu = dwu.narrow(0, 0, nl);
      dld = dwd.narrow(0, 0, nl);
      if (need_frozen) {
        dfg = dwg.narrow(0, nl, nf);
        dfu = dwu.narrow(0, nl, nf);
        dfd = dwd.narrow(0, nl, nf);
      }
    }
    if (need_learned && !dlg.defined()) {  // an empty learned stack
      dlg = at::zeros_like(lg);
      dlu = at::zeros_like(lu);
      dld = at::zeros_like(ld);
    }
    at::Tensor dx;
    if (need_x) {
      at::Tensor dxs = gemm.rows(dg, wg, l.offs);
      dxs = Widens(dtype) ? dxs.to(at::kFloat).add_(gemm.rows(du, wu, l.offs).to(at::kFloat))
                          : dxs.add_(gemm.rows(du, wu, l.offs));
      dx = SumToTokens(FromGemmRows(dxs, l), l.token, T).to(dtype);  // 16-bit: summed in float32
    }
    auto keep = [&](int i, const at::Tensor& t) { return ctx->needs_input_grad(i) ? t : at::Tensor(); };
    return {dx,          at::Tensor(),   dweight,        keep(3, dfg), keep(4, dfu), keep(5, dfd),
            keep(6, dlg), keep(7, dlu),  keep(8, dld),   at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor GroupedMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                             const ExpertBank& bank, const GroupedGemm& gemm) {
  TORCH_CHECK(x.dim() == 2 && expert.dim() == 2 && expert.sizes() == weight.sizes() && expert.size(0) == x.size(0),
              "GroupedMoeForward: x ", x.sizes(), ", expert ", expert.sizes(), ", weight ", weight.sizes());
  bool needs_grad = x.requires_grad() || weight.requires_grad();
  for (const at::Tensor* t : {&bank.frozen_gate, &bank.frozen_up, &bank.frozen_down, &bank.learned_gate,
                              &bank.learned_up, &bank.learned_down}) {
    needs_grad = needs_grad || (t->defined() && t->requires_grad());
  }
  // Inference: no autograd node, nothing kept for a backward.
  if (!at::GradMode::is_enabled() || !needs_grad) {
    return GroupedForward(x, expert, weight, bank.num_frozen(), LearnedThenFrozen(bank.learned_gate, bank.frozen_gate),
                          LearnedThenFrozen(bank.learned_up, bank.frozen_up),
                          LearnedThenFrozen(bank.learned_down, bank.frozen_down), gemm)
        .out;
  }
  // Autograd functions take defined tensors only: an absent learned stack becomes an empty one.
  auto or_empty = [&](const at::Tensor& t, const at::Tensor& like) {
    return t.defined() ? t : at::empty({0, like.size(1), like.size(2)}, like.options());
  };
  return GroupedMoeFunction::apply(x, expert, weight, bank.frozen_gate, bank.frozen_up, bank.frozen_down,
                                   or_empty(bank.learned_gate, bank.frozen_gate),
                                   or_empty(bank.learned_up, bank.frozen_up),
                                   or_empty(bank.learned_down, bank.frozen_down), static_cast<int64_t>(gemm.kind),
                                   gemm.row_align);
}

}  // namespace llama_moe
