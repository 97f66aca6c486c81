// End to end: dense checkpoint -> converter -> MoE model; identity mode and the dense-preserving
// and complementary routers reproduce the dense model's logits and greedy decoding; routed mode
// is sparse.
#include <ATen/ATen.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "convert/converter.h"
#include "convert/recipe.h"
#include "gtest/gtest.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"
#include "moe/moe_model.h"

namespace llama_moe {
namespace {

struct Models {
  std::string dense, moe;
};

// `hidden`, `intermediate`: 0 keeps the tiny model's (64, 128).
Models Make(const std::string& recipe, DType dtype, int64_t kv_heads, bool tie, int64_t hidden = 0,
            int64_t intermediate = 0) {
  Models m{TestPath("dense"), TestPath("moe")};
  TinyLlamaOptions o;
  o.dtype = dtype;
  o.seed = 11;
  o.num_shards = 2;
  o.config.num_key_value_heads = kv_heads;
  o.config.tie_word_embeddings = tie;
  if (hidden > 0) o.config.hidden_size = hidden;
  if (intermediate > 0) o.config.intermediate_size = intermediate;
  EXPECT_TRUE(WriteTinyLlama(m.dense, o).ok());
  ConvertOptions c;
  c.input_dir = m.dense;
  c.output_dir = m.moe;
  c.recipe = *ParseRecipe(recipe, "test");
  EXPECT_TRUE(ConvertDenseToMoe(c).ok());
  return m;
}

at::Tensor Logits(const std::string& dir, RoutingMode mode, const at::Tensor& tokens) {
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  o.moe.mode = mode;
  absl::StatusOr<LoadedModel> m = LoadModel(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m->model->Forward(tokens);
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

std::vector<int64_t> Greedy(const std::string& dir, RoutingMode mode, const std::vector<int64_t>& prompt) {
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  o.moe.mode = mode;
  LoadedModel m = *LoadModel(dir, o);
  GenerateOptions g;
  g.max_new_tokens = 24;
  g.eos_token_ids = {};  // run to the end: more tokens compared
  absl::StatusOr<GenerateResult> r = Generate(*m.model, {prompt}, g);
  EXPECT_TRUE(r.ok()) << r.status();
  return r->tokens[0];
}

TEST(MoeLogitMatchTest, IdentityModeEqualsDenseAcrossShapes) {
  at::manual_seed(0);
  const at::Tensor tokens = at::randint(0, 510, {96}, at::kLong);
  for (const auto& [kv, tie] : std::vector<std::pair<int64_t, bool>>{{2, false}, {4, true}, {1, false}}) {
    Models m = Make("partition: RANDOM_PERMUTATION seed: 1", DType::kF32, kv, tie);
    const at::Tensor dense = Logits(m.dense, RoutingMode::kRouted, tokens);
    // Exact slices in float32: only the FFN's summation order differs (1e-5 as for the dense
    // model against its float64 reference).
    EXPECT_LT(RelErr(Logits(m.moe, RoutingMode::kIdentity, tokens), dense), 1e-5) << kv << tie;
  }
}

TEST(MoeLogitMatchTest, IdentityGreedyDecodingEqualsDense) {
  Models m = Make("", DType::kBF16, 2, false);
  const std::vector<int64_t> prompt = {510, 17, 300, 42, 7, 99};
  const std::vector<int64_t> dense = Greedy(m.dense, RoutingMode::kRouted, prompt);
  EXPECT_EQ(Greedy(m.moe, RoutingMode::kIdentity, prompt), dense);
  ASSERT_EQ(dense.size(), 24u);
}

// In bfloat16 with a KV cache, prefill and every decode step: the identity-routed layer runs
// the frozen stack through the dense MLP's linear primitive, the decode kernel included, so its
// logits are the dense model's to the bit (a different summation order flips near-tied greedy
// tokens of a random model within a few steps).
TEST(MoeLogitMatchTest, IdentityDecodeStepsEqualDenseInBfloat16) {
  // Widths at which the two summation orders round differently.
  Models m = Make("", DType::kBF16, 2, false, 512, 2048);
  ModelLoadOptions o;
  o.dtype = DType::kBF16;
  o.moe.mode = RoutingMode::kIdentity;
  LoadedModel dense = *LoadModel(m.dense, o);
  LoadedModel moe = *LoadModel(m.moe, o);
  const at::Tensor prompt = at::tensor({510L, 17L, 300L, 42L, 7L, 99L}, at::kLong).unsqueeze(0);
  KvCache dense_cache = *KvCache::Create(dense.config, 32, {0}, dense.model->options());
  KvCache moe_cache = *KvCache::Create(moe.config, 32, {0}, moe.model->options());
  ForwardOptions fd, fm;
  fd.cache = &dense_cache;
  fm.cache = &moe_cache;
  at::Tensor step = prompt;
  for (int i = 0; i < 8; ++i) {
    const at::Tensor a = *dense.model->Forward(step, fd), b = *moe.model->Forward(step, fm);
    ASSERT_TRUE(at::equal(a, b)) << "step " << i << ": max |d| " << (a - b).abs().max().item<double>();
    step = at::tensor({(37L * i + 11) % 510}, at::kLong).unsqueeze(0);  // the same next token for both
  }
}

TEST(MoeLogitMatchTest, DensePreservingRouterEqualsDenseAtStepZero) {
  at::manual_seed(1);
  const at::Tensor tokens = at::randint(0, 510, {64}, at::kLong);
  Models m = Make("router_init: DENSE_PRESERVING", DType::kF32, 2, false);
  EXPECT_LT(RelErr(Logits(m.moe, RoutingMode::kRouted, tokens), Logits(m.dense, RoutingMode::kRouted, tokens)), 1e-5);
}

TEST(MoeLogitMatchTest, ComplementaryRouterEqualsDenseWithBothGroupsLoaded) {
  at::manual_seed(3);
  const at::Tensor tokens = at::randint(0, 510, {200}, at::kLong);
  Models m = Make("router_init: COMPLEMENTARY noise_scale: 0 router_std: 0.1", DType::kF32, 2, false);
  EXPECT_LT(RelErr(Logits(m.moe, RoutingMode::kRouted, tokens), Logits(m.dense, RoutingMode::kRouted, tokens)), 1e-5);
  // Unlike DENSE_PRESERVING (every token on the frozen group), tokens split between the groups,
  // each token taking one whole group: every expert of a group carries the same load.
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  LoadedModel model = *LoadModel(m.moe, o);
  ASSERT_TRUE(model.model->Forward(tokens).ok());
  for (MoeFeedForward* layer : model.moe_layers) {
    const at::Tensor load = layer->TakeRoutingStats().load;  // [16]: 8 frozen, 8 learned
    const at::Tensor frozen = load.slice(0, 0, 8), learned = load.slice(0, 8, 16);
    EXPECT_EQ(frozen.min().item<int64_t>(), frozen.max().item<int64_t>()) << load;
    EXPECT_EQ(learned.min().item<int64_t>(), learned.max().item<int64_t>()) << load;
    EXPECT_EQ(frozen[0].item<int64_t>() + learned[0].item<int64_t>(), 200);
    // A random hyperplane through the hidden states: neither group is empty.
    EXPECT_GT(frozen[0].item<int64_t>(), 20) << load;
    EXPECT_GT(learned[0].item<int64_t>(), 20) << load;
  }
}

// LoRA adapters as converted (B = 0) leave every mode's logits as they were without them:
// identity still equals the dense model, learned_only and identity exactly, routed to float32
// rounding (its adapted experts run through ATen GEMMs instead of the dispatch's kernels).
TEST(MoeLogitMatchTest, ZeroBLoraAdaptersLeaveEveryModeUnchanged) {
  at::manual_seed(4);
  const at::Tensor tokens = at::randint(0, 510, {80}, at::kLong);
  Models m = Make("lora_rank: 4 lora_alpha: 8", DType::kF32, 2, false);
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  LoadedModel model = *LoadModel(m.moe, o);
  ASSERT_EQ(model.moe->lora_rank, 4);
  ASSERT_TRUE(model.moe_layers[0]->lora_active());
  // A is drawn, B is zero, as LoRA initialises them.
  EXPECT_GT(model.moe_layers[0]->lora().gate_a.abs().sum().item<double>(), 0);
  EXPECT_EQ(model.moe_layers[0]->lora().down_b.abs().sum().item<double>(), 0);
  const at::Tensor dense = Logits(m.dense, RoutingMode::kRouted, tokens);
  for (RoutingMode mode : {RoutingMode::kIdentity, RoutingMode::kLearnedOnly, RoutingMode::kRouted}) {
    model.SetRouting(mode);
    model.SetLoraEnabled(true);
    const at::Tensor with = *model.model->Forward(tokens);
    model.SetLoraEnabled(false);
    const at::Tensor without = *model.model->Forward(tokens);
    if (mode == RoutingMode::kRouted) {
      EXPECT_LT(RelErr(with, without), 1e-6);
    } else {
      EXPECT_TRUE(at::equal(with, without)) << RoutingModeName(mode);
    }
    if (mode == RoutingMode::kIdentity) EXPECT_LT(RelErr(with, dense), 1e-5);
    for (MoeFeedForward* l : model.moe_layers) l->TakeRoutingStats();
  }
}

TEST(MoeLogitMatchTest, NormalRouterRoutedModeDiffersButStaysOnScale) {
  at::manual_seed(2);
  const at::Tensor tokens = at::randint(0, 510, {64}, at::kLong);
  Models m = Make("", DType::kF32, 2, false);
  const at::Tensor dense = Logits(m.dense, RoutingMode::kRouted, tokens);
  const at::Tensor routed = Logits(m.moe, RoutingMode::kRouted, tokens);
  const double err = RelErr(routed, dense);
  // Half the selected experts are noisy copies: different from dense, but the gate scale keeps
  // the FFN output at the dense scale instead of 1/8 of it (where an unscaled top-8 softmax would leave it).
  EXPECT_GT(err, 1e-3);
  EXPECT_LT(err, 0.5);
  EXPECT_TRUE(at::isfinite(Logits(m.moe, RoutingMode::kLearnedOnly, tokens)).all().item<bool>());
}

TEST(MoeLogitMatchTest, RoutedModeCountsLoadsForBalancing) {
  Models m = Make("top_k: 2", DType::kF32, 2, false);
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  LoadedModel model = *LoadModel(m.moe, o);
  ASSERT_EQ(model.moe_layers.size(), 2u);
  ASSERT_TRUE(model.model->Forward(at::randint(0, 510, {40}, at::kLong)).ok());
  for (MoeFeedForward* layer : model.moe_layers) {
    RoutingStats s = layer->TakeRoutingStats();
    EXPECT_EQ(s.load.sum().item<int64_t>(), 40 * 2);  // every (token, slot) pair counted once
    EXPECT_EQ(s.tokens, 40);
    EXPECT_GT(s.entropy_sum.item<double>(), 0);
    EXPECT_EQ(layer->TakeRoutingStats().load.sum().item<int64_t>(), 0);  // reset
  }
  // Without statistics (generation) the output is the same and nothing is counted.
  const at::Tensor tokens = at::randint(0, 510, {12}, at::kLong);
  const at::Tensor with = *model.model->Forward(tokens);
  for (MoeFeedForward* layer : model.moe_layers) layer->TakeRoutingStats();
  o.moe.routing_stats = false;
  LoadedModel quiet = *LoadModel(m.moe, o);
  EXPECT_TRUE(at::equal(*quiet.model->Forward(tokens), with));
  for (MoeFeedForward* layer : quiet.moe_layers) {
    const RoutingStats s = layer->TakeRoutingStats();
    EXPECT_EQ(s.tokens, 0);
    EXPECT_EQ(s.load.sum().item<int64_t>(), 0);
  }
}

TEST(MoeLogitMatchTest, RoutingSummariesReadEveryLayerAtOnceAndEqualTheRouterChoices) {
  Models m = Make("top_k: 2", DType::kF32, 2, false);
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  LoadedModel model = *LoadModel(m.moe, o);
  const at::Tensor tokens = at::randint(0, 510, {2, 30}, at::kLong);
  ASSERT_TRUE(model.model->Forward(tokens).ok());
  ASSERT_TRUE(model.model->Forward(tokens.narrow(1, 0, 7)).ok());
  // The statistics stay tensors on the layer's device until read.
  const RoutingStats peek = model.moe_layers[0]->TakeRoutingStats();
  EXPECT_EQ(peek.load.device(), model.model->device());
  EXPECT_EQ(peek.entropy_sum.dim(), 0);
  EXPECT_EQ(peek.tokens, 2 * 30 + 2 * 7);
  ASSERT_TRUE(model.model->Forward(tokens).ok());
  const std::vector<RoutingSummary> s = TakeRoutingSummaries(model.moe_layers);
  ASSERT_EQ(s.size(), 2u);
  // Layer 0 was read after the first two forwards; layer 1 holds all three.
  const std::vector<int64_t> tokens_seen = {2 * 30, 2 * 30 + 2 * 7 + 2 * 30};
  for (size_t i = 0; i < s.size(); ++i) {
    const RoutingSummary& l = s[i];
    ASSERT_EQ(l.load.size(), 16u);  // 8 frozen + 8 learned
    EXPECT_EQ(std::accumulate(l.load.begin(), l.load.end(), 0.0), tokens_seen[i] * 2);
    EXPECT_EQ(l.tokens, tokens_seen[i]);
    EXPECT_GT(l.entropy_mean, 0);
    EXPECT_LE(l.entropy_mean, std::log(16.0) + 1e-9);
  }
  // The first layer's loads equal the ids its router picks for the same input (counted per expert).
  const at::Tensor x = at::randn({5, 64});
  const at::Tensor ids = model.moe_layers[0]->router().forward(x).expert;
  const at::Tensor counted = CountPerExpert(ids, 16);
  EXPECT_TRUE(at::equal(counted, at::bincount(ids.reshape({-1}), {}, 16)));
  EXPECT_TRUE(TakeRoutingSummaries(model.moe_layers)[1].load == std::vector<double>(16, 0.0));  // reset
}

TEST(MoeLogitMatchTest, AuxiliaryBalanceAndZLossesReachTheRouter) {
  Models m = Make("top_k: 2", DType::kF32, 2, false);
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  o.moe.aux_loss_coef = 0.01;
  o.moe.z_loss_coef = 0.001;
  LoadedModel model = *LoadModel(m.moe, o);
  ForwardOptions fo;
  fo.enable_grad = true;
  model.model->ForwardUnchecked(at::randint(0, 510, {1, 24}, at::kLong), fo);
  at::Tensor aux = at::zeros({});
  for (MoeFeedForward* l : model.moe_layers) {
    at::Tensor a = l->TakeAuxLoss();
    ASSERT_TRUE(a.defined());
    EXPECT_FALSE(l->TakeAuxLoss().defined());  // taken once
    aux = aux + a;
  }
  // The Switch loss is E * sum f_e P_e >= coef (equality at perfect balance); z-loss >= 0.
  EXPECT_GT(aux.item<float>(), 0.01f * 2 * 0.99f);
  aux.backward();
  const at::Tensor w = model.moe_layers[0]->router().named_parameters(/*recurse=*/false)["weight"];
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(w.grad().abs().sum().item<float>(), 0.0f);
}

}  // namespace
}  // namespace llama_moe
