#include "moe/lora.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/llama_config.h"
#include "moe/dispatch.h"
#include "moe/moe_config.h"
#include "moe/moe_layer.h"
#include "moe/moe_reference.h"

namespace llama_moe {
namespace {

constexpr int64_t kNf = 3, kNl = 2, kIe = 6, kH = 10, kRank = 2, kT = 7, kK = 3;

ExpertBank RandomBank(at::ScalarType dtype) {
  const at::TensorOptions o = at::TensorOptions().dtype(dtype);
  ExpertBank b;
  b.frozen_gate = at::randn({kNf, kIe, kH}, o) * 0.3;
  b.frozen_up = at::randn({kNf, kIe, kH}, o) * 0.3;
  b.frozen_down = at::randn({kNf, kH, kIe}, o) * 0.3;
  b.learned_gate = (at::randn({kNl, kIe, kH}, o) * 0.3).requires_grad_(true);
  b.learned_up = (at::randn({kNl, kIe, kH}, o) * 0.3).requires_grad_(true);
  b.learned_down = (at::randn({kNl, kH, kIe}, o) * 0.3).requires_grad_(true);
  return b;
}

LoraAdapters RandomAdapters(const ExpertBank& bank) {
  LoraAdapters l = ZeroLoraAdapters(bank, kRank, 1.5);
  for (at::Tensor* t : {&l.gate_a, &l.up_a, &l.down_a, &l.gate_b, &l.up_b, &l.down_b}) {
    *t = (at::randn_like(*t) * 0.4).requires_grad_(true);
  }
  return l;
}

std::vector<at::Tensor> AdapterTensors(const LoraAdapters& l) {
  return {l.gate_a, l.up_a, l.down_a, l.gate_b, l.up_b, l.down_b};
}

// Distinct experts per token, so that every expert (frozen and learned) gets some pairs.
at::Tensor RoutedExperts() {
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < kT; ++t) {
    for (int64_t k = 0; k < kK; ++k) ids.push_back((t + 2 * k) % (kNf + kNl));
  }
  return at::tensor(ids, at::kLong).reshape({kT, kK});
}

TEST(LoraTest, RoutedEqualsTheMergedReferenceWithItsGradients) {
  at::manual_seed(3);
  const ExpertBank bank = RandomBank(at::kDouble);
  const LoraAdapters lora = RandomAdapters(bank);
  const at::Tensor x = at::randn({kT, kH}, at::kDouble).requires_grad_(true);
  const at::Tensor w = at::rand({kT, kK}, at::kDouble).requires_grad_(true);
  const at::Tensor expert = RoutedExperts();
  const at::Tensor probe = at::randn({kT, kH}, at::kDouble);

  const at::Tensor y = LoraSparseMoeForward(x, expert, w, bank, lora);
  const at::Tensor want = ReferenceMoeForward(x, expert, w, MergeLora(bank, lora));
  EXPECT_LE((y - want).abs().max().item<double>(), 1e-12);

  std::vector<at::Tensor> inputs = {x, w, bank.learned_gate, bank.learned_up, bank.learned_down};
  for (const at::Tensor& t : AdapterTensors(lora)) inputs.push_back(t);
  const std::vector<at::Tensor> got = torch::autograd::grad({(y * probe).sum()}, inputs);
  const std::vector<at::Tensor> ref = torch::autograd::grad({(want * probe).sum()}, inputs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(got[i].defined()) << "input " << i;
    EXPECT_GT(ref[i].abs().max().item<double>(), 0) << "input " << i;
    EXPECT_LE((got[i] - ref[i]).abs().max().item<double>(), 1e-11) << "input " << i;
  }
}

TEST(LoraTest, IdentityEqualsTheMergedDenseFfn) {
  at::manual_seed(4);
  const ExpertBank bank = RandomBank(at::kDouble);
  const LoraAdapters lora = RandomAdapters(bank);
  const at::Tensor x = at::randn({kT, kH}, at::kDouble);
  const at::Tensor y = LoraAllFrozenForward(x, bank, lora);
  const at::Tensor want = AllFrozenForward(x, MergeLora(bank, lora));
  EXPECT_LE((y - want).abs().max().item<double>(), 1e-12);
  // A changes nothing through a zero B, and the base products are AllFrozenForward's: bit-equal.
  LoraAdapters zero_b = lora;
  for (at::Tensor* b : {&zero_b.gate_b, &zero_b.up_b, &zero_b.down_b}) *b = at::zeros_like(*b);
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const ExpertBank bk = RandomBank(dtype);
    LoraAdapters zb = ZeroLoraAdapters(bk, kRank, 2.0);
    zb.gate_a = at::randn_like(zb.gate_a);
    zb.down_a = at::randn_like(zb.down_a);
    const at::Tensor xx = at::randn({kT, kH}, at::TensorOptions().dtype(dtype));
    EXPECT_TRUE(at::equal(LoraAllFrozenForward(xx, bk, zb), AllFrozenForward(xx, bk))) << dtype;
  }
}

TEST(LoraTest, ZeroBLeavesTheRoutedLayerAsItWas) {
  at::manual_seed(5);
  const ExpertBank bank = RandomBank(at::kFloat);
  LoraAdapters lora = ZeroLoraAdapters(bank, kRank, 2.0);
  lora.gate_a = at::randn_like(lora.gate_a);
  const at::Tensor x = at::randn({kT, kH});
  const at::Tensor w = at::rand({kT, kK});
  const at::Tensor expert = RoutedExperts();
  const at::Tensor before = SparseMoeForward(x, expert, w, bank);
  const at::Tensor after = LoraSparseMoeForward(x, expert, w, bank, lora);
  // The same sums through ATen GEMMs instead of the dispatch's kernels: float32 rounding apart.
  EXPECT_LE((after - before).abs().max().item<double>(), 1e-6 * before.abs().max().item<double>());
}

TEST(LoraTest, LayerCarriesAdaptersInEveryModeAndCanSwitchThemOff) {
  at::manual_seed(6);
  MoeConfig moe;
  moe.num_frozen_experts = kNf;
  moe.num_learned_experts = kNl;
  moe.expert_intermediate_size = kIe;
  moe.top_k = kK;
  moe.lora_rank = kRank;
  moe.lora_alpha = 4;
  MoeLayerOptions options;
  MoeFeedForward layer(kH, moe, options, at::TensorOptions().dtype(at::kDouble));
  for (at::Tensor& p : layer.parameters()) p.data().normal_(0, 0.3);
  ASSERT_TRUE(layer.lora_active());
  EXPECT_EQ(layer.lora().scale, 2.0);
  const at::Tensor x = at::randn({kT, kH}, at::kDouble);
  for (RoutingMode mode : {RoutingMode::kIdentity, RoutingMode::kLearnedOnly, RoutingMode::kRouted}) {
    layer.set_mode(mode);
    layer.set_lora_enabled(true);
    const at::Tensor with = layer.forward(x);
    layer.set_lora_enabled(false);
    const at::Tensor without = layer.forward(x);
    if (mode == RoutingMode::kIdentity) {
      EXPECT_TRUE(at::equal(without, AllFrozenForward(x, layer.experts())));
      EXPECT_LE((with - AllFrozenForward(x, MergeLora(layer.experts(), layer.lora()))).abs().max().item<double>(), 1e-12);
    }
    // Learned experts have no adapters; the other modes use them.
    EXPECT_EQ(at::equal(with, without), mode == RoutingMode::kLearnedOnly) << RoutingModeName(mode);
  }
  // The parameter names are the checkpoint's (moe/moe_layout.h).
  std::vector<std::string> names;
  for (const auto& item : layer.named_parameters(true)) names.push_back(item.key());
  EXPECT_NE(std::find(names.begin(), names.end(), "frozen_lora.down_proj.lora_B"), names.end());
}

TEST(LoraTest, RankMustFitTheMatrices) {
  LlamaConfig cfg;
  cfg.hidden_size = 16;
  cfg.intermediate_size = 24;
  MoeConfig moe;
  moe.num_frozen_experts = 4;
  moe.num_learned_experts = 4;
  moe.expert_intermediate_size = 6;
  moe.top_k = 2;
  moe.lora_rank = 6;
  moe.lora_alpha = 12;
  EXPECT_TRUE(ValidateMoeConfig(moe, cfg).ok());
  moe.lora_rank = 7;
  const absl::Status too_big = ValidateMoeConfig(moe, cfg);
  EXPECT_NE(std::string(too_big.message()).find("lora_rank 7 must be between 1 and 6"), std::string::npos) << too_big;
  moe.lora_rank = 2;
  moe.lora_alpha = 0;
  EXPECT_NE(std::string(ValidateMoeConfig(moe, cfg).message()).find("lora_alpha"), std::string::npos);

  // config.json: an explicit rank 0 is refused; the fields round-trip.
  moe.lora_alpha = 4;
  SetMoeConfig(moe, &cfg);
  absl::StatusOr<std::optional<MoeConfig>> read = MoeConfigFromLlama(cfg);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ((*read)->lora_rank, 2);
  EXPECT_EQ((*read)->lora_alpha, 4);
  moe.lora_rank = 0;
  SetMoeConfig(moe, &cfg);
  EXPECT_EQ(cfg.extra_json.find("lora_rank"), std::string::npos);  // no field written for none
  const size_t at = cfg.extra_json.find("\"gate_scale\"");
  ASSERT_NE(at, std::string::npos);
  cfg.extra_json.insert(at, "\"lora_rank\": 0, \"lora_alpha\": 1, ");
  const absl::Status zero = MoeConfigFromLlama(cfg).status();
  EXPECT_NE(std::string(zero.message()).find("'moe.lora_rank' is 0"), std::string::npos) << zero;
}

}  // namespace
}  // namespace llama_moe
