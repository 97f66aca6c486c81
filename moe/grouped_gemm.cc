#include "moe/grouped_gemm.h"

#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "model/torch_features.h"

namespace llama_moe {
namespace {

// offs on the host, checked: non-decreasing ends within [0, extent].
std::vector<int64_t> HostEnds(const at::Tensor& offs, int64_t groups, int64_t extent) {
  TORCH_CHECK(offs.dim() == 1 && offs.size(0) == groups && offs.scalar_type() == at::kInt,
              "grouped GEMM: offs must be int32 [", groups, "], got ", offs.toString(), " ", offs.sizes());
  const at::Tensor host = offs.to(at::kCPU, at::kLong).contiguous();
  std::vector<int64_t> ends(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + groups);
  int64_t prev = 0;
  for (int64_t g = 0; g < groups; ++g) {
    TORCH_CHECK(ends[g] >= prev && ends[g] <= extent, "grouped GEMM: offs[", g, "] = ", ends[g],
                " is not within [", prev, ", ", extent, "]");
    prev = ends[g];
  }
  return ends;
}

}  // namespace

GroupedGemm AtenGroupedGemm() {
  GroupedGemm g;
  g.name = "at::_grouped_mm";
  g.kind = GroupedGemmKind::kAten;
#if LLAMA_MOE_HAS_GROUPED_MM
  g.rows = [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) { return at::_grouped_mm(a, b, offs); };
  g.contraction = [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
    return at::_grouped_mm(a, b, offs);
  };
  // No padding: the CUDA kernel asks 16-byte group sizes only of a column-major `a`, and every
  // `a` the dispatch passes to `rows` is row-major (its contraction operands are the transposed
  // gradients autograd's own backward passes, where empty and odd-sized groups are allowed).
  g.row_align = 1;
#else
  auto missing = [](const at::Tensor&, const at::Tensor&, const at::Tensor&) -> at::Tensor {
    TORCH_CHECK(false, "at::_grouped_mm needs LibTorch >= ", LLAMA_MOE_GROUPED_MM_SINCE, "; this is ", TORCH_VERSION);
  };
  g.rows = missing;
  g.contraction = missing;
#endif
  return g;
}

GroupedGemm ReferenceGroupedGemm(int64_t row_align) {
  TORCH_CHECK(row_align >= 1, "grouped GEMM: row_align ", row_align, " < 1");
  GroupedGemm g;
  g.name = "reference";
  g.kind = GroupedGemmKind::kReference;
  g.row_align = row_align;
  g.rows = [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
    TORCH_CHECK(a.dim() == 2 && b.dim() == 3 && a.size(1) == b.size(1), "grouped GEMM: a ", a.sizes(), " and b ",
                b.sizes(), " do not multiply");
    const std::vector<int64_t> ends = HostEnds(offs, b.size(0), a.size(0));
    at::Tensor out = at::full({a.size(0), b.size(2)}, std::numeric_limits<double>::quiet_NaN(), a.options());
    int64_t begin = 0;
    for (int64_t e = 0; e < b.size(0); ++e) {
      if (ends[e] > begin) {
        at::Tensor rows = out.narrow(0, begin, ends[e] - begin);
        at::mm_out(rows, a.narrow(0, begin, ends[e] - begin), b[e]);
      }
      begin = ends[e];
    }
    return out;
  };
  g.contraction = [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
    TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "grouped GEMM: a ", a.sizes(), " and b ",
                b.sizes(), " do not multiply");
    const int64_t groups = offs.numel();
    const std::vector<int64_t> ends = HostEnds(offs, groups, a.size(1));
    at::Tensor out = at::zeros({groups, a.size(0), b.size(1)}, a.options());
    int64_t begin = 0;
    for (int64_t e = 0; e < groups; ++e) {
      const int64_t n = ends[e] - begin;
      if (n > 0) {
        at::Tensor slice = out[e];
        at::mm_out(slice, a.narrow(1, begin, n), b.narrow(0, begin, n));
      }
      begin = ends[e];
    }
    return out;
  };
  return g;
}

GroupedGemm GroupedGemmOf(GroupedGemmKind kind, int64_t row_align) {
  return kind == GroupedGemmKind::kAten ? AtenGroupedGemm() : ReferenceGroupedGemm(row_align);
}

}  // namespace llama_moe
