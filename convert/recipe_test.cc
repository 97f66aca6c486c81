#include "convert/recipe.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/file_util.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

LlamaConfig Dense(int64_t I) {
  LlamaConfig c;
  c.intermediate_size = I;
  return c;
}

TEST(RecipeTest, DefaultsResolveToTheSeedLayoutWithDenseScale) {
  ConversionRecipe r;
  absl::StatusOr<MoeConfig> m = ResolveRecipe(Dense(14336), &r);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->num_frozen_experts, 8);
  EXPECT_EQ(m->num_learned_experts, 8);
  EXPECT_EQ(m->expert_intermediate_size, 1792);
  EXPECT_EQ(m->top_k, 8);
  EXPECT_DOUBLE_EQ(m->gate_scale, 8.0);  // uniform normalised weights 1/8 -> 1
  EXPECT_EQ(r.expert_intermediate_size(), 1792);
}

TEST(RecipeTest, ExpertSizeDeterminesFrozenCountAndAutoScales) {
  ConversionRecipe r = *ParseRecipe("expert_intermediate_size: 448 normalize_gates: false top_k: 4", "t");
  absl::StatusOr<MoeConfig> m = ResolveRecipe(Dense(14336), &r);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->num_frozen_experts, 32);
  EXPECT_DOUBLE_EQ(m->gate_scale, 40.0);  // unnormalised softmax over E = 32 + 8
  r = *ParseRecipe("score_function: SIGMOID normalize_gates: false", "t");
  EXPECT_DOUBLE_EQ(ResolveRecipe(Dense(14336), &r)->gate_scale, 2.0);
}

TEST(RecipeTest, RejectsBadRecipes) {
  ConversionRecipe r = *ParseRecipe("expert_intermediate_size: 1000", "t");
  EXPECT_THAT(std::string(ResolveRecipe(Dense(14336), &r).status().message()), HasSubstr("does not divide"));
  r = *ParseRecipe("top_k: 17", "t");
  EXPECT_THAT(std::string(ResolveRecipe(Dense(14336), &r).status().message()), HasSubstr("top_k 17"));
  r = *ParseRecipe("reinit_fraction: 1.5", "t");
  EXPECT_THAT(std::string(ResolveRecipe(Dense(14336), &r).status().message()), HasSubstr("reinit_fraction"));
  r = *ParseRecipe("router_init: COMPLEMENTARY top_k: 4", "t");
  EXPECT_THAT(std::string(ResolveRecipe(Dense(14336), &r).status().message()),
              HasSubstr("COMPLEMENTARY needs num_learned_experts == num_frozen_experts == top_k, got 8, 8 and 4"));
  // Routed mode equals the dense model only when both groups compute it: no noise.
  r = *ParseRecipe("router_init: COMPLEMENTARY noise_scale: 0.2", "t");
  EXPECT_THAT(std::string(ResolveRecipe(Dense(14336), &r).status().message()),
              HasSubstr("COMPLEMENTARY needs learned experts that are exact copies"));
  r = *ParseRecipe("router_init: COMPLEMENTARY noise_scale: 0 learned_init: DROP_UPCYCLING", "t");
  EXPECT_FALSE(ResolveRecipe(Dense(14336), &r).ok());
  absl::StatusOr<ConversionRecipe> bad = ParseRecipe("top_k: 4\nno_such_field: 1", "r.textproto");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("r.textproto"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("line 2"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("no_such_field"));
}

TEST(RecipeTest, TextRoundTripWritesEveryField) {
  ConversionRecipe r = *ParseRecipe("top_k: 4 router_init: DENSE_PRESERVING", "t");
  const std::string text = RecipeToText(r);
  EXPECT_THAT(text, HasSubstr("noise_scale: 0.2"));
  EXPECT_THAT(text, HasSubstr("router_init: DENSE_PRESERVING"));
  absl::StatusOr<ConversionRecipe> back = ParseRecipe(text, "t");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->SerializeAsString(), ParseRecipe(RecipeToText(*back), "t")->SerializeAsString());
  EXPECT_EQ(back->top_k(), 4);
}

TEST(RecipeTest, ShippedRecipesParse) {
  for (const char* f : {"convert/recipes/default.textproto", "convert/recipes/dense_preserving.textproto"}) {
    absl::StatusOr<ConversionRecipe> r = LoadRecipe(f);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(ResolveRecipe(Dense(14336), &*r).ok()) << f;
  }
}

}  // namespace
}  // namespace llama_moe
