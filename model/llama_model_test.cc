// Whole-model logits against a float64 reference written here with plain loops. The reference
// shares no code with the model: its own RoPE (with llama3 scaling), RMSNorm, attention with
// grouped heads and causal masking, and SwiGLU, reading weights straight from the checkpoint.
#include "model/llama_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/llama_test_util.h"

namespace llama_moe {
namespace {

using Matrix = std::vector<double>;  // row-major

class Reference {
 public:
  Reference(const Checkpoint& ckpt, const LlamaConfig& cfg) : cfg_(cfg) {
    for (const std::string& name : ckpt.TensorNames()) {
      at::Tensor t = ckpt.Get(name).value().to(at::kDouble).contiguous();
      w_[name] = Matrix(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
    }
  }

  // logits [T*V] for `tokens`, positions 0..T-1.
  Matrix Logits(const std::vector<int64_t>& tokens) const {
    const int64_t T = tokens.size(), H = cfg_.hidden_size, V = cfg_.vocab_size;
    const Matrix& emb = W("model.embed_tokens.weight");
    Matrix x(T * H);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) x[t * H + h] = emb[tokens[t] * H + h];
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      const Matrix attn = Attention(Norm(x, W(p + "input_layernorm.weight")), p, T);
      for (int64_t i = 0; i < T * H; ++i) x[i] += attn[i];
      const Matrix xn = Norm(x, W(p + "post_attention_layernorm.weight"));
      const int64_t I = cfg_.intermediate_size;
      const Matrix g = MatVec(xn, W(p + "mlp.gate_proj.weight"), T, H, I);
      const Matrix u = MatVec(xn, W(p + "mlp.up_proj.weight"), T, H, I);
      Matrix a(T * I);
      for (int64_t i = 0; i < T * I; ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Matrix d = MatVec(a, W(p + "mlp.down_proj.weight"), T, I, H);
      for (int64_t i = 0; i < T * H; ++i) x[i] += d[i];
    }
    const Matrix xn = Norm(x, W("model.norm.weight"));
    const Matrix& head = cfg_.tie_word_embeddings ? emb : W("lm_head.weight");
    return MatVec(xn, head, T, H, V);
  }

 private:
  const Matrix& W(const std::string& name) const { return w_.at(name); }

  // y[t][o] = sum_i x[t][i] * w[o][i]
  static Matrix MatVec(const Matrix& x, const Matrix& w, int64_t T, int64_t in, int64_t out) {
    Matrix y(T * out, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < out; ++o) {
        double s = 0;
        for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * w[o * in + i];
        y[t * out + o] = s;
      }
    return y;
  }

  Matrix Norm(const Matrix& x, const Matrix& w) const {
    const int64_t H = cfg_.hidden_size, T = x.size() / H;
    Matrix y(x.size());
    for (int64_t t = 0; t < T; ++t) {
      double ms = 0;
      for (int64_t h = 0; h < H; ++h) ms += x[t * H + h] * x[t * H + h];
      const double r = 1.0 / std::sqrt(ms / H + cfg_.rms_norm_eps);
      for (int64_t h = 0; h < H; ++h) y[t * H + h] = x[t * H + h] * r * w[h];
    }
    return y;
  }

  // Frequency of rotation pair (i, i + D/2), HF's llama3 rule written out per case.
  double InvFreq(int64_t i) const {
    const int64_t D = cfg_.head_dim;
    double f = std::pow(cfg_.rope_theta, -2.0 * i / D);
    if (cfg_.rope_scaling) {
      const RopeScaling& s = *cfg_.rope_scaling;
      const double wavelen = 2 * M_PI / f;
      const double low = s.original_max_position_embeddings / s.low_freq_factor;
      const double high = s.original_max_position_embeddings / s.high_freq_factor;
      if (wavelen < high) {
        // unchanged
      } else if (wavelen > low) {
        f /= s.factor;
      } else {
        const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * (f / s.factor) + smooth * f;
      }
    }
    // HF keeps inv_freq as a float32 buffer: that rounding is part of the model's definition.
    return static_cast<float>(f);
  }

  void Rotate(Matrix& m, int64_t T, int64_t heads) const {
    const int64_t D = cfg_.head_dim, half = D / 2;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = t * InvFreq(i);
          double& a = m[(t * heads + h) * D + i];
          double& b = m[(t * heads + h) * D + i + half];
          const double na = a * std::cos(angle) - b * std::sin(angle);
          const double nb = b * std::cos(angle) + a * std::sin(angle);
          a = na;
          b = nb;
        }
  }

  Matrix Attention(const Matrix& xn, const std::string& p, int64_t T) const {
    const int64_t H = cfg_.hidden_size, D = cfg_.head_dim;
    const int64_t nq = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads;
    Matrix q = MatVec(xn, W(p + "self_attn.q_proj.weight"), T, H, nq * D);
    Matrix k = MatVec(xn, W(p + "self_attn.k_proj.weight"), T, H, nkv * D);
    const Matrix v = MatVec(xn, W(p + "self_attn.v_proj.weight"), T, H, nkv * D);
    Rotate(q, T, nq);
    Rotate(k, T, nkv);
    Matrix out(T * nq * D, 0.0);
    std::vector<double> score(T);
    for (int64_t h = 0; h < nq; ++h) {
      const int64_t kh = h / (nq / nkv);
      for (int64_t t = 0; t < T; ++t) {
        double mx = -1e300;
        for (int64_t s = 0; s <= t; ++s) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[(t * nq + h) * D + i] * k[(s * nkv + kh) * D + i];
          score[s] = d / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, score[s]);
        }
        double z = 0;
        for (int64_t s = 0; s <= t; ++s) z += (score[s] = std::exp(score[s] - mx));
        for (int64_t s = 0; s <= t; ++s)
          for (int64_t i = 0; i < D; ++i)
            out[(t * nq + h) * D + i] += score[s] / z * v[(s * nkv + kh) * D + i];
      }
    }
    return MatVec(out, W(p + "self_attn.o_proj.weight"), T, nq * D, H);
  }

  LlamaConfig cfg_;
  std::map<std::string, Matrix> w_;
};

std::vector<int64_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> t(n);
  for (auto& x : t) x = static_cast<int64_t>(rng() % vocab);
  return t;
}

struct Case {
  std::string name;
  int64_t heads, kv_heads;
  bool tied;
  bool rope_scaling;
  DType storage;
  uint64_t max_shard_bytes;
  int64_t head_dim = 16;
  int64_t hidden = 64;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ReferenceTest : public ::testing::TestWithParam<Case> {};

// Max |model - reference| / max |reference|.
double RelativeError(const at::Tensor& logits, const Matrix& ref) {
  const at::Tensor r = at::tensor(ref, at::TensorOptions().dtype(at::kDouble)).view(logits.sizes());
  return ((logits.to(at::kDouble) - r).abs().max() / r.abs().max()).item<double>();
}

TEST_P(ReferenceTest, LogitsMatchFloat64Reference) {
  const Case& c = GetParam();
  LlamaConfig cfg = TinyLlamaConfig(c.heads, c.kv_heads);
  cfg.tie_word_embeddings = c.tied;
  cfg.head_dim = c.head_dim;
  cfg.hidden_size = c.hidden;
  cfg.torch_dtype = c.storage == DType::kBF16 ? "bfloat16" : "float32";
  if (c.rope_scaling) {
    // original_max_position_embeddings 32 puts the 8 frequencies of D = 16 in all three regions
    // of the llama3 rule (wavelengths 6.3 .. 19500 vs thresholds 8 and 32).
    cfg.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 32};
  }
  const std::string dir = NewTestDir(c.name);
  ASSERT_TRUE(WriteRandomLlama(dir, cfg, c.storage, /*seed=*/11, c.max_shard_bytes).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  if (c.max_shard_bytes < 100000) {
    ASSERT_GT((*ckpt)->shards().size(), 2u);
  }
  const Reference ref(**ckpt, cfg);

  LlamaLoadOptions opts;
  opts.dtype = DType::kF32;  // bfloat16 storage is upcast: the weights are then exact in both
  auto model = LoadLlamaForCausalLM(**ckpt, cfg, opts);
  ASSERT_TRUE(model.ok()) << model.status();

  for (int64_t T : {1, 7, 256}) {
    const std::vector<int64_t> tokens = RandomTokens(T, cfg.vocab_size, 100 + T);
    auto logits = (*model)->Forward(at::tensor(tokens, at::TensorOptions().dtype(at::kLong)));
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->sizes(), (std::vector<int64_t>{T, cfg.vocab_size}));
    const Matrix expected = ref.Logits(tokens);
    // float32 with reductions of at most 256 terms: relative rounding ~1e-7 per op, a few e-7
    // after two layers; 1e-5 leaves margin yet catches any wrong rotation, mask or head mapping
    // (those change logits by O(1)).
    const double err = RelativeError(*logits, expected);
    std::cout << c.name << " T=" << T << " relative error " << err << "\n";
    EXPECT_LE(err, 1e-5) << c.name << " T=" << T;
    // Logits are far from uniform, so the comparison is not between near-constants.
    EXPECT_GT(logits->std().item<double>(), 1.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, ReferenceTest,
    ::testing::Values(Case{"mha_untied_f32", 4, 4, false, false, DType::kF32, 5'000'000'000ull},
                      Case{"gqa_untied_scaled_sharded", 8, 2, false, true, DType::kF32, 20'000},
                      Case{"mqa_tied_scaled_bf16", 4, 1, true, true, DType::kBF16, 5'000'000'000ull},
                      Case{"gqa_tied_bf16_sharded", 4, 2, true, false, DType::kBF16, 30'000},
                      // head_dim * heads (64) != hidden (48), as HF allows.
                      Case{"head_dim_not_hidden_over_heads", 4, 2, false, true, DType::kF32,
                           5'000'000'000ull, 16, 48}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(LlamaModelTest, BFloat16ComputeTracksReference) {
  LlamaConfig cfg = TinyLlamaConfig(4, 2);
  cfg.torch_dtype = "bfloat16";
  const std::string dir = NewTestDir("bf16_compute");
  ASSERT_TRUE(WriteRandomLlama(dir, cfg, DType::kBF16, 5).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  const Reference ref(**ckpt, cfg);
  auto model = LoadLlamaForCausalLM(**ckpt, cfg, {});  // default: the checkpoint's bfloat16
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->dtype(), at::kBFloat16);
  const std::vector<int64_t> tokens = RandomTokens(64, cfg.vocab_size, 3);
  auto logits = (*model)->Forward(at::tensor(tokens, at::TensorOptions().dtype(at::kLong)));
  ASSERT_TRUE(logits.ok());
  // bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4%); activations are rounded at
  // every op across two layers, so a few percent of the logit range is the expected error, while
  // a structural bug gives O(100%).
  const double err = RelativeError(*logits, ref.Logits(tokens));
  std::cout << "bfloat16 compute relative error " << err << "\n";
  EXPECT_LE(err, 0.05);
}

TEST(LlamaModelTest, ParameterNamesAreHuggingFaceKeys) {
  LlamaConfig cfg = TinyLlamaConfig(4, 2);
  LlamaForCausalLM model(cfg, at::TensorOptions().dtype(at::kFloat));
  std::vector<std::string> names;
  for (const auto& p : model.named_parameters()) names.push_back(p.key());
  std::vector<std::string> expected;
  for (const TensorSpec& s : TinyLlamaSpecs(cfg, DType::kF32)) expected.push_back(s.name);
  std::sort(names.begin(), names.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(names, expected);
}

TEST(LlamaModelTest, MissingTensorIsNamed) {
  LlamaConfig cfg = TinyLlamaConfig(4, 2);
  std::vector<TensorSpec> specs = TinyLlamaSpecs(cfg, DType::kF32);
  specs.erase(std::find_if(specs.begin(), specs.end(), [](const TensorSpec& s) {
    return s.name == "model.layers.1.mlp.up_proj.weight";
  }));
  const std::string dir = NewTestDir("missing");
  ASSERT_TRUE(WriteRandomCheckpoint(dir, cfg, specs, 1).ok());
  auto model = LoadLlamaFromDir(dir, {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(model.status().message().find("model.layers.1.mlp.up_proj.weight"), std::string::npos)
      << model.status();
}

TEST(LlamaModelTest, WrongShapeNamesTensorAndBothShapes) {
  LlamaConfig cfg = TinyLlamaConfig(4, 2);
  std::vector<TensorSpec> specs = TinyLlamaSpecs(cfg, DType::kF32);
  for (TensorSpec& s : specs) {
    if (s.name == "model.layers.0.self_attn.k_proj.weight") s.shape = {48, 64};
  }
  const std::string dir = NewTestDir("wrong_shape");
  ASSERT_TRUE(WriteRandomCheckpoint(dir, cfg, specs, 1).ok());
  auto model = LoadLlamaFromDir(dir, {});
  ASSERT_FALSE(model.ok());
  const std::string msg(model.status().message());
  EXPECT_NE(msg.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[48,64]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32,64]"), std::string::npos) << msg;
}

TEST(LlamaModelTest, UnexpectedTensorIsAnError) {
  LlamaConfig cfg = TinyLlamaConfig(4, 2);
  std::vector<TensorSpec> specs = TinyLlamaSpecs(cfg, DType::kF32);
  specs.push_back(TensorSpec{"model.layers.0.mlp.extra.weight", DType::kF32, {4, 4}});
  const std::string dir = NewTestDir("unexpected");
  ASSERT_TRUE(WriteRandomCheckpoint(dir, cfg, specs, 1).ok());
  auto model = LoadLlamaFromDir(dir, {});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model.layers.0.mlp.extra.weight"), std::string::npos);
}

class ForwardErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = TinyLlamaConfig(4, 2);
    cfg_.max_position_embeddings = 16;
    const std::string dir = NewTestDir("errors");
    ASSERT_TRUE(WriteRandomLlama(dir, cfg_, DType::kF32, 2).ok());
    auto m = LoadLlamaFromDir(dir, {});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *m;
  }
  LlamaConfig cfg_;
  std::shared_ptr<LlamaForCausalLM> model_;
};

TEST_F(ForwardErrorTest, TokenOutsideVocabulary) {
  auto r = model_->Forward(at::tensor(std::vector<int64_t>{1, 211, 3}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("211"), std::string::npos) << r.status();
  EXPECT_FALSE(model_->Forward(at::tensor(std::vector<int64_t>{-1})).ok());
}

TEST_F(ForwardErrorTest, LongerThanContext) {
  EXPECT_TRUE(model_->Forward(at::ones({16}, at::kLong)).ok());
  auto r = model_->Forward(at::ones({17}, at::kLong));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(r.status().message().find("context of 16"), std::string::npos) << r.status();
}

TEST_F(ForwardErrorTest, FloatTokensAreRejected) {
  EXPECT_FALSE(model_->Forward(at::ones({3}, at::kFloat)).ok());
}

}  // namespace
}  // namespace llama_moe
