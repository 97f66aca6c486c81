#include "moe/grouped_gemm.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "model/torch_features.h"

namespace llama_moe {
namespace {

TEST(GroupedGemmTest, ReferenceRowsAreEachGroupsProduct) {
  at::manual_seed(0);
  const at::Tensor a = at::randn({7, 4}, at::kDouble), b = at::randn({3, 4, 5}, at::kDouble);
  // Groups of 2, 0 and 3 rows; rows 5-6 lie past the last group.
  const at::Tensor y = ReferenceGroupedGemm().rows(a, b, at::tensor({2, 2, 5}, at::kInt));
  EXPECT_TRUE(at::allclose(y.narrow(0, 0, 2), at::mm(a.narrow(0, 0, 2), b[0])));
  EXPECT_TRUE(at::allclose(y.narrow(0, 2, 3), at::mm(a.narrow(0, 2, 3), b[2])));
  // Unwritten rows are NaN, so a caller that reads them notices.
  EXPECT_TRUE(y.narrow(0, 5, 2).isnan().all().item<bool>());
}

TEST(GroupedGemmTest, ReferenceContractionSumsEachGroupsSlice) {
  at::manual_seed(1);
  const at::Tensor a = at::randn({3, 9}, at::kDouble), b = at::randn({9, 4}, at::kDouble);
  const at::Tensor y = ReferenceGroupedGemm().contraction(a, b, at::tensor({4, 4, 7}, at::kInt));
  ASSERT_EQ(y.sizes(), at::IntArrayRef({3, 3, 4}));
  EXPECT_TRUE(at::allclose(y[0], at::mm(a.narrow(1, 0, 4), b.narrow(0, 0, 4))));
  EXPECT_TRUE(at::equal(y[1], at::zeros({3, 4}, at::kDouble)));  // an empty group
  EXPECT_TRUE(at::allclose(y[2], at::mm(a.narrow(1, 4, 3), b.narrow(0, 4, 3))));
  // Columns past the last group are not read.
  at::Tensor a2 = a.clone(), b2 = b.clone();
  a2.narrow(1, 7, 2).fill_(NAN);
  b2.narrow(0, 7, 2).fill_(NAN);
  EXPECT_TRUE(at::equal(ReferenceGroupedGemm().contraction(a2, b2, at::tensor({4, 4, 7}, at::kInt)), y));
}

TEST(GroupedGemmTest, ReferenceRefusesBadOffsets) {
  const at::Tensor a = at::randn({4, 2}), b = at::randn({2, 2, 3});
  EXPECT_THROW(ReferenceGroupedGemm().rows(a, b, at::tensor({3, 2}, at::kInt)), c10::Error);   // decreasing
  EXPECT_THROW(ReferenceGroupedGemm().rows(a, b, at::tensor({2, 5}, at::kInt)), c10::Error);   // past the rows
  EXPECT_THROW(ReferenceGroupedGemm().rows(a, b, at::tensor({2, 4}, at::kLong)), c10::Error);  // not int32
  EXPECT_THROW(ReferenceGroupedGemm().rows(a, b, at::tensor({4}, at::kInt)), c10::Error);      // one per group
  EXPECT_THROW(ReferenceGroupedGemm(0), c10::Error);
}

TEST(GroupedGemmTest, KindRebuildsTheImplementation) {
  EXPECT_EQ(GroupedGemmOf(GroupedGemmKind::kReference, 8).row_align, 8);
  EXPECT_EQ(GroupedGemmOf(GroupedGemmKind::kReference, 8).kind, GroupedGemmKind::kReference);
  EXPECT_EQ(GroupedGemmOf(GroupedGemmKind::kAten, 1).kind, GroupedGemmKind::kAten);
}

#if LLAMA_MOE_HAS_GROUPED_MM
// LibTorch's grouped GEMM on the CPU (its portable form) against the reference, in the layouts
// the dispatch passes: transposed weight stacks and transposed gradients.
TEST(GroupedGemmTest, AtenEqualsReference) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({24, 16}), w = at::randn({3, 8, 16}), offs = at::tensor({8, 8, 24}, at::kInt);
  const at::Tensor ours = AtenGroupedGemm().rows(x, w.transpose(1, 2), offs);
  EXPECT_TRUE(at::allclose(ours, ReferenceGroupedGemm().rows(x, w.transpose(1, 2), offs), 1e-5, 1e-5));
  const at::Tensor dy = at::randn({24, 8});
  EXPECT_TRUE(at::allclose(AtenGroupedGemm().contraction(dy.t(), x, offs),
                           ReferenceGroupedGemm().contraction(dy.t(), x, offs), 1e-5, 1e-5));
}
#else
TEST(GroupedGemmTest, AtenSaysWhichLibTorchItNeeds) {
  try {
    AtenGroupedGemm().rows(at::randn({2, 2}), at::randn({1, 2, 2}), at::tensor({2}, at::kInt));
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs LibTorch >="), std::string::npos) << e.what();
  }
}
#endif

}  // namespace
}  // namespace llama_moe
