#include "convert/export.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "convert/gguf_file.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/json_util.h"
#include "model/llama_config.h"
#include "model/llama_layout.h"
#include "model/llama_model.h"
#include "model/model_format.h"
#include "model/model_writer.h"
#include "model/rope.h"
#include "model/status_macros.h"
#include "model/tensor_spec.h"
#include "model/tokenizer.h"
#include "moe/moe_config.h"
#include "moe/moe_layer.h"
#include "moe/moe_layout.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

// The default calibration text for measuring an approximate plan: plain English prose.
constexpr char kDefaultCalibrationText[] =
    "The committee met on Tuesday to consider the proposal for a new library in the centre of the "
    "town. Several members argued that the old building could be repaired at a lower cost, while "
    "others pointed out that the roof had leaked for years and that the reading room was too small "
    "for the number of students who used it every evening. After a long discussion the chairman "
    "asked the architect to prepare two plans, one for a repair and one for a new building, and to "
    "present both of them, with their costs, at the next meeting in the spring.";
constexpr int64_t kMaxCalibrationTokens = 512;

// Token types of GGUF vocabularies (llama.cpp's `llama_token_type`).
enum TokenType : int32_t { kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5 };

// The Llama 3 chat format as a Jinja template (what model/chat_template.h formats), for
// vocabularies that have its header tokens and no template of their own.
constexpr char kLlama3ChatTemplate[] =
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
    "add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

struct Source {
  std::string dir;
  std::unique_ptr<Checkpoint> ckpt;
  LlamaConfig cfg;
  std::optional<MoeConfig> moe;
};

// Layer l's expert stack of `group` for `proj`. Serving engines have no per-expert adapters, so
// a model with LoRA adapters exports its frozen experts merged, W + (alpha/r) B A, in float32.
absl::StatusOr<at::Tensor> ExpertStackForExport(const Checkpoint& ck, const MoeConfig& m, int64_t l,
                                                const std::string& group, const std::string& proj) {
  ASSIGN_OR_RETURN(at::Tensor t, ck.Get(ExpertTensorName(l, group, proj)));
  if (group != kFrozenExperts || m.lora_rank == 0) return t;
  ASSIGN_OR_RETURN(const at::Tensor a, ck.Get(LoraTensorName(l, proj, "lora_A")));
  ASSIGN_OR_RETURN(const at::Tensor b, ck.Get(LoraTensorName(l, proj, "lora_B")));
  return t.to(at::kFloat) + at::matmul(b.to(at::kFloat), a.to(at::kFloat)) * m.lora_scale();
}

std::string LoraMergeNote(const MoeConfig& m) {
  return absl::StrFormat("LoRA adapters (rank %d, alpha %g) merged into the frozen experts (W + alpha/r B A)",
                         m.lora_rank, m.lora_alpha);
}

absl::StatusOr<Source> OpenSource(const std::string& dir) {
  Source s;
  s.dir = dir;
  if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("model directory '", dir, "' does not exist"));
  ASSIGN_OR_RETURN(s.ckpt, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(s.cfg, s.ckpt->LoadConfig());
  ASSIGN_OR_RETURN(s.moe, MoeConfigFromLlama(s.cfg), absl::StrCat("config of '", dir, "'"));
  return s;
}

absl::StatusOr<std::string> ResolveDtype(const ExportOptions& o, const LlamaConfig& cfg) {
  std::string d = o.dtype;
  if (d.empty()) {
    if (cfg.torch_dtype == "bfloat16") d = "bf16";
    else if (cfg.torch_dtype == "float16") d = "f16";
    else d = "f32";
  }
  if (d == "float32") d = "f32";
  if (d == "float16") d = "f16";
  if (d == "bfloat16") d = "bf16";
  if (d != "f32" && d != "f16" && d != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype '", o.dtype, "' is not one of f32, f16, bf16"));
  }
  return d;
}

GgufType GgufTypeOf(const std::string& dtype) {
  if (dtype == "f16") return GgufType::kF16;
  if (dtype == "bf16") return GgufType::kBF16;
  return GgufType::kF32;
}

c10::ScalarType ScalarTypeOf(const std::string& dtype) { return GgufScalarType(GgufTypeOf(dtype)); }

// A float16 output cannot hold magnitudes above 65504: refuse instead of writing infinities.
absl::Status CheckFits(const at::Tensor& t, c10::ScalarType st, const std::string& name) {
  if (st != at::kHalf || t.numel() == 0) return absl::OkStatus();
  const double peak = t.abs().max().item<double>();
  if (peak > 65504.0) {
    return absl::OutOfRangeError(absl::StrFormat(
        "tensor '%s' has values up to %g, beyond float16's range (65504); export with --dtype bf16 or f32", name, peak));
  }
  return absl::OkStatus();
}

bool IsPowerOfTwo(double x) {
  if (!(x > 0) || !std::isfinite(x)) return false;
  int e = 0;
  return std::frexp(x, &e) == 0.5;
}

// Whether any layer's selection bias is non-zero (a trained model's is; a converted one's is not).
absl::StatusOr<std::vector<int64_t>> LayersWithBias(const Source& s) {
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < s.cfg.num_hidden_layers; ++l) {
    const std::string name = RouterBiasName(l);
    if (!s.ckpt->Has(name)) continue;
    ASSIGN_OR_RETURN(at::Tensor b, s.ckpt->Get(name));
    if (b.ne(0).any().item<bool>()) layers.push_back(l);
  }
  return layers;
}

// Each rotary frequency's divisor under the config's RoPE scaling (1 everywhere without one):
// what llama.cpp's `rope_freqs.weight` holds.
at::Tensor RopeFrequencyFactors(const LlamaConfig& cfg) {
  LlamaConfig plain = cfg;
  plain.rope_scaling.reset();
  return RopeInverseFrequencies(plain) / RopeInverseFrequencies(cfg);
}

bool RopeScalingChangesFrequencies(const LlamaConfig& cfg) {
  return cfg.rope_scaling.has_value() && RopeFrequencyFactors(cfg).ne(1.0f).any().item<bool>();
}

// ---- Measuring an approximate plan ----------------------------------------------------------

struct Measured {
  double max_abs_logit_diff = 0;
  double mean_kl = 0;  // KL(ours || approximation), nats per token
};

Measured Compare(const at::Tensor& ref, const at::Tensor& approx) {
  const at::Tensor r = ref.to(at::kDouble);
  const at::Tensor a = approx.to(at::kDouble);
  const at::Tensor lr = at::log_softmax(r, -1);
  const at::Tensor la = at::log_softmax(a, -1);
  Measured m;
  m.max_abs_logit_diff = (r - a).abs().max().item<double>();
  m.mean_kl = (lr.exp() * (lr - la)).sum(-1).mean().item<double>();
  return m;
}

absl::StatusOr<std::vector<int64_t>> CalibrationTokens(const ExportOptions& o, const Source& s) {
  std::string text = kDefaultCalibrationText;
  if (!o.calibration_text_file.empty()) {
    ASSIGN_OR_RETURN(text, ReadFileToString(o.calibration_text_file, kMaxMetadataFileBytes));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile(JoinPath(s.dir, "tokenizer.json")));
  std::vector<int64_t> ids;
  if (tok->bos_id()) ids.push_back(*tok->bos_id());
  for (int32_t id : tok->Encode(text)) {
    if (static_cast<int64_t>(ids.size()) >= kMaxCalibrationTokens) break;
    ids.push_back(id);
  }
  if (ids.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration text '", o.calibration_text_file, "' has fewer than 2 tokens"));
  }
  return ids;
}

void ZeroSelectionBias(LlamaForCausalLM& model, int64_t num_layers) {
  for (int64_t l = 0; l < num_layers; ++l) {
    auto* layer = dynamic_cast<MoeFeedForward*>(&model.backbone().layer(l).mlp());
    if (layer == nullptr) continue;
    at::Tensor b = layer->router().balance_state();
    if (b.defined()) b.zero_();
  }
}

// Our forward's float32 logits on `tokens` for a config (possibly altered); with
// `also_without_bias`, a second pass on the same loaded model after zeroing every selection bias.
absl::StatusOr<std::vector<at::Tensor>> Logits(const Source& s, const LlamaConfig& cfg,
                                               const std::vector<int64_t>& tokens, bool also_without_bias) {
  LlamaLoadOptions lo;
  lo.dtype = DType::kF32;
  if (s.moe) lo.ffn = MoeFeedForwardFactory(*s.moe, MoeLayerOptions{});
  ASSIGN_OR_RETURN(std::shared_ptr<LlamaForCausalLM> model, LoadLlamaForCausalLM(*s.ckpt, cfg, lo));
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::tensor(tokens, at::kLong);
  std::vector<at::Tensor> out;
  ASSIGN_OR_RETURN(at::Tensor logits, model->Forward(ids));
  out.push_back(logits.to(at::kFloat));
  if (also_without_bias) {
    ZeroSelectionBias(*model, cfg.num_hidden_layers);
    ASSIGN_OR_RETURN(logits, model->Forward(ids));
    out.push_back(logits.to(at::kFloat));
  }
  return out;
}

// ---- GGUF -------------------------------------------------------------------------------------

std::string LayerName(int64_t l, absl::string_view rest) { return absl::StrCat("model.layers.", l, ".", rest); }
std::string Blk(int64_t l, absl::string_view rest) { return absl::StrCat("blk.", l, ".", rest); }

// HF stores q/k rows so that RoPE rotates the two halves of each head (rotate_half); llama.cpp's
// `llama` rotation pairs adjacent rows. Reorders each head's rows [first half | second half] into
// interleaved pairs.
at::Tensor PermuteForGgufRope(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  return w.reshape({heads, 2, rows / heads / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

struct PlannedTensor {
  std::string name;
  GgufType type;
  std::vector<int64_t> shape;
  std::function<absl::StatusOr<at::Tensor>()> make;  // in any dtype; cast at write
  std::vector<std::string> sources;                  // released after writing
};

absl::Status AddTokenizer(const Source& s, GgufWriter* w, ExportPlan* plan) {
  const std::string path = JoinPath(s.dir, "tokenizer.json");
  if (!PathExists(path)) {
    // A model without a tokenizer (a benchmark's random weights) still runs from token ids.
    w->SetString("tokenizer.ggml.model", "none");
    plan->dropped.push_back(absl::StrCat("tokenizer: '", path, "' does not exist; llama.cpp runs the file from token ids only"));
    return absl::OkStatus();
  }
  // Validates the file the way every tool of the project reads it (Llama 3 pre-tokenizer, BPE).
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile(path));
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, uint64_t{512} << 20));
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(text, path));
  const int64_t V = s.cfg.vocab_size;
  std::vector<std::string> tokens(V);
  std::vector<int32_t> types(V, kUnused);
  std::vector<bool> set(V, false);
  for (int64_t i = 0; i < V; ++i) tokens[i] = absl::StrCat("[PAD", i, "]");
  auto put = [&](const std::string& token, int64_t id, int32_t type) -> absl::Status {
    if (id < 0 || id >= V) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": token '", token, "' has id ", id,
                                                     ", outside the model's vocabulary of ", V));
    }
    tokens[id] = token;
    types[id] = type;
    set[id] = true;
    return absl::OkStatus();
  };
  const nlohmann::json& vocab = j["model"]["vocab"];
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    RETURN_IF_ERROR(put(it.key(), it.value().get<int64_t>(), kNormal));
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const nlohmann::json& a : j["added_tokens"]) {
      const bool special = a.value("special", false);
      RETURN_IF_ERROR(put(a.at("content").get<std::string>(), a.at("id").get<int64_t>(), special ? kControl : kUserDefined));
    }
  }
  std::vector<std::string> merges;
  for (const nlohmann::json& m : j["model"]["merges"]) {
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.push_back(absl::StrCat(m[0].get<std::string>(), " ", m[1].get<std::string>()));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ": a merge is neither \"a b\" nor [\"a\", \"b\"]"));
    }
  }
  int64_t unset = 0;
  for (bool b : set) unset += b ? 0 : 1;
  w->SetString("tokenizer.ggml.model", "gpt2");
  // The Llama 3 pre-tokenizer (the only one model/tokenizer.h accepts), as llama.cpp names it.
  w->SetString("tokenizer.ggml.pre", "llama-bpe");
  w->SetStringArray("tokenizer.ggml.tokens", tokens);
  w->SetI32Array("tokenizer.ggml.token_type", types);
  w->SetStringArray("tokenizer.ggml.merges", merges);
  w->SetU32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(s.cfg.bos_token_id));
  if (!s.cfg.eos_token_ids.empty()) w->SetU32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(s.cfg.eos_token_ids[0]));
  if (tok->eot_id()) w->SetU32("tokenizer.ggml.eot_token_id", static_cast<uint32_t>(*tok->eot_id()));
  w->SetBool("tokenizer.ggml.add_bos_token", true);
  w->SetBool("tokenizer.ggml.add_eos_token", false);
  plan->kept.push_back(absl::StrCat("tokenizer: ", vocab.size(), " tokens + ", j.value("added_tokens", nlohmann::json::array()).size(),
                                    " added, ", merges.size(), " merges, pre-tokenizer llama-bpe, BOS ", s.cfg.bos_token_id,
                                    s.cfg.eos_token_ids.empty() ? "" : absl::StrCat(", EOS ", s.cfg.eos_token_ids[0]),
                                    unset ? absl::StrCat(", ", unset, " unused ids as [PADn]") : ""));

  // The chat template: the source's own (tokenizer_config.json), else Llama 3's when the
  // vocabulary has its header tokens.
  std::string tmpl;
  const std::string tc_path = JoinPath(s.dir, "tokenizer_config.json");
  if (PathExists(tc_path)) {
    ASSIGN_OR_RETURN(std::string tc_text, ReadFileToString(tc_path, kMaxMetadataFileBytes));
    ASSIGN_OR_RETURN(nlohmann::json tc, ParseJson(tc_text, tc_path));
    if (tc.contains("chat_template") && tc["chat_template"].is_string()) tmpl = tc["chat_template"].get<std::string>();
  }
  if (tmpl.empty() && tok->TokenToId("<|start_header_id|>").ok() && tok->TokenToId("<|end_header_id|>").ok() &&
      tok->TokenToId("<|eot_id|>").ok()) {
    tmpl = kLlama3ChatTemplate;
  }
  if (!tmpl.empty()) {
    w->SetString("tokenizer.chat_template", tmpl);
    plan->kept.push_back("chat template");
  } else {
    plan->dropped.push_back("chat template (the source has none and its vocabulary lacks the Llama 3 header tokens)");
  }
  return absl::OkStatus();
}

// Which llama.cpp architecture carries the model, and what it drops.
struct GgufChoice {
  std::string arch;           // "llama" or "ernie4_5-moe"
  bool keep_bias = false;     // write exp_probs_b
  bool keep_rope_factors = false;
  GgufWriter tokenizer;       // the tokenizer's metadata, read once while planning
};

absl::Status ChooseGgufArchitecture(const ExportOptions& o, const Source& s, ExportPlan* plan, GgufChoice* choice) {
  GgufChoice& c = *choice;
  c.arch = "llama";
  const bool rope_changes = RopeScalingChangesFrequencies(s.cfg);
  c.keep_rope_factors = rope_changes;
  if (!s.moe) return absl::OkStatus();
  const MoeConfig& m = *s.moe;
  if (m.score_function != ScoreFunction::kSoftmax) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", s.dir, "' scores experts with ", ScoreFunctionName(m.score_function),
        "; llama.cpp's architectures with Llama attention (llama, ernie4_5-moe) score with softmax only"));
  }
  if (!m.normalize_gates) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", s.dir, "' does not renormalise its top-k gate weights (moe.normalize_gates false); llama.cpp's "
        "llama and ernie4_5-moe architectures always do"));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> biased, LayersWithBias(s));
  if (biased.empty()) return absl::OkStatus();  // llama, exact
  if (!rope_changes) {
    c.arch = "ernie4_5-moe";
    c.keep_bias = true;
    return absl::OkStatus();
  }
  // No architecture carries both: measure both ways of dropping one and keep the nearer.
  ASSIGN_OR_RETURN(std::vector<int64_t> tokens, CalibrationTokens(o, s));
  // One load gives the reference and the form without the bias; a second the form without the
  // RoPE factors.
  ASSIGN_OR_RETURN(std::vector<at::Tensor> with_scaling, Logits(s, s.cfg, tokens, /*also_without_bias=*/true));
  const at::Tensor& ref = with_scaling[0];
  const at::Tensor& no_bias = with_scaling[1];
  LlamaConfig plain = s.cfg;
  plain.rope_scaling.reset();
  ASSIGN_OR_RETURN(std::vector<at::Tensor> without_scaling, Logits(s, plain, tokens, /*also_without_bias=*/false));
  const at::Tensor& no_rope = without_scaling[0];
  const Measured mb = Compare(ref, no_bias);
  const Measured mr = Compare(ref, no_rope);
  const bool drop_bias = mb.mean_kl <= mr.mean_kl;
  const Measured& chosen = drop_bias ? mb : mr;
  plan->exact = false;
  plan->max_abs_logit_diff = chosen.max_abs_logit_diff;
  plan->mean_kl = chosen.mean_kl;
  plan->calibration_tokens = static_cast<int64_t>(tokens.size());
  if (drop_bias) {
    plan->approximation = absl::StrFormat(
        "the selection bias of %d layer(s) (llama has no selection bias; ernie4_5-moe, which has one, would drop the "
        "llama3 RoPE frequency factors instead: max |logit diff| %.4g, KL %.4g)",
        biased.size(), mr.max_abs_logit_diff, mr.mean_kl);
  } else {
    c.arch = "ernie4_5-moe";
    c.keep_bias = true;
    c.keep_rope_factors = false;
    plan->approximation = absl::StrFormat(
        "the llama3 RoPE frequency factors (ernie4_5-moe has none; llama, which has them, would drop the selection "
        "bias instead: max |logit diff| %.4g, KL %.4g)",
        mb.max_abs_logit_diff, mb.mean_kl);
  }
  plan->dropped.push_back(plan->approximation);
  return absl::OkStatus();
}

absl::Status PlanGguf(const ExportOptions& o, const Source& s, ExportPlan* plan, GgufChoice* choice) {
  RETURN_IF_ERROR(ChooseGgufArchitecture(o, s, plan, choice));
  plan->architecture = choice->arch;
  const LlamaConfig& c = s.cfg;
  plan->kept.push_back(absl::StrFormat("%d layers, hidden %d, %d/%d heads of %d, vocab %d, context %d", c.num_hidden_layers,
                                       c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                       c.vocab_size, c.max_position_embeddings));
  plan->kept.push_back(absl::StrFormat("RoPE theta %g%s", c.rope_theta,
                                       choice->keep_rope_factors ? ", llama3 frequency factors (rope_freqs.weight)" : ""));
  if (c.tie_word_embeddings) plan->kept.push_back("tied output head (llama.cpp reuses token_embd)");
  if (s.moe) {
    const MoeConfig& m = *s.moe;
    plan->kept.push_back(absl::StrFormat("%d experts of %d (%d frozen + %d learned, in that order), top-%d, softmax, "
                                         "renormalised",
                                         m.num_experts(), m.expert_intermediate_size, m.num_frozen_experts,
                                         m.num_learned_experts, m.top_k));
    plan->kept.push_back(absl::StrFormat("gate scale %g folded into ffn_down_exps%s", m.gate_scale,
                                         IsPowerOfTwo(m.gate_scale) ? " (a power of two: exact)"
                                                                    : " (rounded once per weight)"));
    if (choice->keep_bias) plan->kept.push_back("selection bias (exp_probs_b)");
    if (m.lora_rank > 0) plan->kept.push_back(LoraMergeNote(m));
    plan->dropped.push_back("balancing state's update rate (training only)");
  }
  return absl::OkStatus();
}

absl::Status WriteGguf(const ExportOptions& o, const Source& s, const ExportPlan& plan, const GgufChoice& choice,
                       uint64_t* bytes) {
  const LlamaConfig& c = s.cfg;
  const std::string& arch = choice.arch;
  const GgufType wt = GgufTypeOf(plan.dtype);
  GgufWriter w;
  w.SetString("general.architecture", arch);
  std::string name = s.dir;
  while (!name.empty() && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);
  w.SetString("general.name", name);
  w.SetU32("general.file_type", wt == GgufType::kF32 ? 0 : wt == GgufType::kF16 ? 1 : 32);
  auto key = [&](absl::string_view k) { return absl::StrCat(arch, ".", k); };
  w.SetU32(key("vocab_size"), static_cast<uint32_t>(c.vocab_size));
  w.SetU32(key("context_length"), static_cast<uint32_t>(c.max_position_embeddings));
  w.SetU32(key("embedding_length"), static_cast<uint32_t>(c.hidden_size));
  w.SetU32(key("block_count"), static_cast<uint32_t>(c.num_hidden_layers));
  const bool moe_in_llama = s.moe && arch == "llama";
  w.SetU32(key("feed_forward_length"),
           static_cast<uint32_t>(moe_in_llama ? s.moe->expert_intermediate_size : c.intermediate_size));
  w.SetU32(key("attention.head_count"), static_cast<uint32_t>(c.num_attention_heads));
  w.SetU32(key("attention.head_count_kv"), static_cast<uint32_t>(c.num_key_value_heads));
  w.SetU32(key("attention.key_length"), static_cast<uint32_t>(c.head_dim));
  w.SetU32(key("attention.value_length"), static_cast<uint32_t>(c.head_dim));
  w.SetF32(key("attention.layer_norm_rms_epsilon"), static_cast<float>(c.rms_norm_eps));
  w.SetU32(key("rope.dimension_count"), static_cast<uint32_t>(c.head_dim));
  w.SetF32(key("rope.freq_base"), static_cast<float>(c.rope_theta));
  if (s.moe) {
    w.SetU32(key("expert_count"), static_cast<uint32_t>(s.moe->num_experts()));
    w.SetU32(key("expert_used_count"), static_cast<uint32_t>(s.moe->top_k));
    if (arch == "ernie4_5-moe") {
      w.SetU32(key("expert_feed_forward_length"), static_cast<uint32_t>(s.moe->expert_intermediate_size));
      w.SetU32(key("interleave_moe_layer_step"), 1);
      w.SetU32(key("leading_dense_block_count"), 0);
    }
  }
  w.CopyMetadataFrom(choice.tokenizer);

  const Checkpoint& ck = *s.ckpt;
  std::vector<PlannedTensor> tensors;
  auto plain = [&](const std::string& gguf, const std::string& hf, GgufType t, std::vector<int64_t> shape) {
    tensors.push_back({gguf, t, std::move(shape), [&ck, hf]() { return ck.Get(hf); }, {hf}});
  };
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim;
  plain("token_embd.weight", "model.embed_tokens.weight", wt, {V, H});
  plain("output_norm.weight", "model.norm.weight", GgufType::kF32, {H});
  if (!c.tie_word_embeddings) plain("output.weight", "lm_head.weight", wt, {V, H});
  if (choice.keep_rope_factors) {
    const at::Tensor factors = RopeFrequencyFactors(c);
    tensors.push_back({"rope_freqs.weight", GgufType::kF32, {D / 2}, [factors]() -> absl::StatusOr<at::Tensor> { return factors; }, {}});
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    plain(Blk(l, "attn_norm.weight"), LayerName(l, "input_layernorm.weight"), GgufType::kF32, {H});
    const std::string q = LayerName(l, "self_attn.q_proj.weight"), k = LayerName(l, "self_attn.k_proj.weight");
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads;
    tensors.push_back({Blk(l, "attn_q.weight"), wt, {nh * D, H}, [&ck, q, nh]() -> absl::StatusOr<at::Tensor> {
                         ASSIGN_OR_RETURN(at::Tensor t, ck.Get(q));
                         return PermuteForGgufRope(t, nh);
                       }, {q}});
    tensors.push_back({Blk(l, "attn_k.weight"), wt, {nkv * D, H}, [&ck, k, nkv]() -> absl::StatusOr<at::Tensor> {
                         ASSIGN_OR_RETURN(at::Tensor t, ck.Get(k));
                         return PermuteForGgufRope(t, nkv);
                       }, {k}});
    plain(Blk(l, "attn_v.weight"), LayerName(l, "self_attn.v_proj.weight"), wt, {nkv * D, H});
    plain(Blk(l, "attn_output.weight"), LayerName(l, "self_attn.o_proj.weight"), wt, {H, nh * D});
    plain(Blk(l, "ffn_norm.weight"), LayerName(l, "post_attention_layernorm.weight"), GgufType::kF32, {H});
    if (!s.moe) {
      const int64_t I = c.intermediate_size;
      plain(Blk(l, "ffn_gate.weight"), DenseFfnName(l, "gate_proj"), wt, {I, H});
      plain(Blk(l, "ffn_up.weight"), DenseFfnName(l, "up_proj"), wt, {I, H});
      plain(Blk(l, "ffn_down.weight"), DenseFfnName(l, "down_proj"), wt, {H, I});
      continue;
    }
    const MoeConfig& m = *s.moe;
    const int64_t E = m.num_experts(), Ie = m.expert_intermediate_size;
    // The router keeps float32, as llama.cpp's converter keeps it: expert choice is sensitive to it.
    plain(Blk(l, "ffn_gate_inp.weight"), RouterWeightName(l), GgufType::kF32, {E, H});
    if (choice.keep_bias) plain(Blk(l, "exp_probs_b.bias"), RouterBiasName(l), GgufType::kF32, {E});
    const double scale = m.gate_scale;
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      std::vector<std::string> groups = {kFrozenExperts};
      if (m.num_learned_experts > 0) groups.push_back(kLearnedExperts);
      std::vector<std::string> srcs;
      for (const std::string& g : groups) srcs.push_back(ExpertTensorName(l, g, proj));
      if (m.lora_rank > 0) {
        for (const char* matrix : {"lora_A", "lora_B"}) srcs.push_back(LoraTensorName(l, proj, matrix));
      }
      const bool down = std::string(proj) == "down_proj";
      const std::string gguf = Blk(l, down ? "ffn_down_exps.weight" : std::string(proj) == "gate_proj"
                                                                          ? "ffn_gate_exps.weight"
                                                                          : "ffn_up_exps.weight");
      std::vector<int64_t> shape = down ? std::vector<int64_t>{E, H, Ie} : std::vector<int64_t>{E, Ie, H};
      const std::string proj_name = proj;
      tensors.push_back({gguf, wt, shape, [&ck, m, l, groups, proj_name, down, scale]() -> absl::StatusOr<at::Tensor> {
                           std::vector<at::Tensor> parts;
                           for (const std::string& g : groups) {
                             ASSIGN_OR_RETURN(at::Tensor t, ExpertStackForExport(ck, m, l, g, proj_name));
                             parts.push_back(t);
                           }
                           // Mixed dtypes when a merged float32 stack meets a stored learned one.
                           if (parts.size() > 1 && parts[0].scalar_type() != parts[1].scalar_type()) {
                             for (at::Tensor& p : parts) p = p.to(at::kFloat);
                           }
                           at::Tensor all = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
                           // llama.cpp's llama and ernie4_5-moe read no expert weight scale: fold it
                           // into the down projections, in float32 before the cast.
                           if (down && scale != 1.0) all = all.to(at::kFloat) * scale;
                           return all;
                         }, srcs});
    }
  }
  for (const PlannedTensor& t : tensors) w.AddTensor(t.name, t.type, t.shape);
  RETURN_IF_ERROR(w.Open(o.output, o.overwrite));
  for (const PlannedTensor& t : tensors) {
    ASSIGN_OR_RETURN(at::Tensor v, t.make(), absl::StrCat("exporting '", s.dir, "' tensor ", t.name));
    RETURN_IF_ERROR(CheckFits(v, GgufScalarType(t.type), t.name));
    RETURN_IF_ERROR(w.WriteTensor(t.name, v.to(GgufScalarType(t.type)).contiguous()));
    for (const std::string& src : t.sources) ck.Release(src);
  }
  RETURN_IF_ERROR(w.Commit());
  *bytes = w.tensor_bytes();
  return absl::OkStatus();
}

// ---- Hugging Face Mixtral ------------------------------------------------------------------------

absl::Status PlanHfMixtral(const Source& s, ExportPlan* plan) {
  plan->architecture = "MixtralForCausalLM";
  if (!s.moe) {
    return absl::InvalidArgumentError(absl::StrCat("'", s.dir, "' is a dense model; hf_mixtral holds MoE models only "
                                                   "(use the directory itself, or --format gguf)"));
  }
  const MoeConfig& m = *s.moe;
  if (m.score_function != ScoreFunction::kSoftmax) {
    return absl::InvalidArgumentError(absl::StrCat("'", s.dir, "' scores experts with ", ScoreFunctionName(m.score_function),
                                                   "; Mixtral's router is a softmax over all experts"));
  }
  if (!m.normalize_gates) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", s.dir, "' does not renormalise its top-k gate weights; Mixtral always renormalises them"));
  }
  if (!IsPowerOfTwo(m.gate_scale)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", s.dir, "' scales its gate weights by ", m.gate_scale,
        "; Mixtral has no gate scale, and folding one into the down projections is exact only for a power of two"));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> biased, LayersWithBias(s));
  if (!biased.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", s.dir, "' has a non-zero selection bias in ", biased.size(), " layer(s) (first: layer ", biased[0],
        "); Mixtral's router has no selection bias (--format gguf carries one)"));
  }
  plan->kept.push_back(absl::StrFormat("%d experts of %d (%d frozen + %d learned, renumbered 0..%d), top-%d, softmax, "
                                       "renormalised",
                                       m.num_experts(), m.expert_intermediate_size, m.num_frozen_experts,
                                       m.num_learned_experts, m.num_experts() - 1, m.top_k));
  plan->kept.push_back(absl::StrFormat("gate scale %g folded into each expert's w2 (a power of two: exact)", m.gate_scale));
  if (m.lora_rank > 0) plan->kept.push_back(LoraMergeNote(m));
  plan->kept.push_back("attention, norms, embeddings, head, RoPE (rope_scaling as in the source config)");
  plan->kept.push_back("tokenizer and generation files, copied");
  plan->dropped.push_back("which experts are frozen (training metadata; the forward is unchanged)");
  plan->dropped.push_back("balancing state's update rate (training only)");
  return absl::OkStatus();
}

absl::Status WriteHfMixtral(const ExportOptions& o, const Source& s, const ExportPlan& plan, uint64_t* bytes) {
  const LlamaConfig& c = s.cfg;
  const MoeConfig& m = *s.moe;
  const DType dt = plan.dtype == "f32" ? DType::kF32 : plan.dtype == "f16" ? DType::kF16 : DType::kBF16;
  const c10::ScalarType st = ScalarTypeOf(plan.dtype);
  const int64_t H = c.hidden_size, E = m.num_experts(), Ie = m.expert_intermediate_size, L = c.num_hidden_layers;
  const Checkpoint& ck = *s.ckpt;
  // Everything but the MLPs keeps its name.
  std::vector<std::pair<std::string, std::string>> copied;  // (name, source)
  std::vector<TensorSpec> specs;
  for (const TensorSpec& spec : LlamaTensorSpecs(c, dt)) {
    if (spec.name.find(".mlp.") != std::string::npos) continue;
    specs.push_back(spec);
    copied.push_back({spec.name, spec.name});
  }
  auto moe_name = [](int64_t l, absl::string_view rest) {
    return absl::StrCat("model.layers.", l, ".block_sparse_moe.", rest);
  };
  for (int64_t l = 0; l < L; ++l) {
    specs.push_back({moe_name(l, "gate.weight"), dt, {E, H}});
    for (int64_t e = 0; e < E; ++e) {
      specs.push_back({moe_name(l, absl::StrCat("experts.", e, ".w1.weight")), dt, {Ie, H}});
      specs.push_back({moe_name(l, absl::StrCat("experts.", e, ".w2.weight")), dt, {H, Ie}});
      specs.push_back({moe_name(l, absl::StrCat("experts.", e, ".w3.weight")), dt, {Ie, H}});
    }
  }
  ModelWriterOptions wo;
  wo.overwrite = o.overwrite;
  wo.metadata["format"] = "pt";
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w, CreateModelWriter(ModelFormat::kHfSafetensors, o.output, specs, wo));
  for (const auto& [name, src] : copied) {
    ASSIGN_OR_RETURN(at::Tensor t, ck.Get(src));
    RETURN_IF_ERROR(CheckFits(t, st, name));
    RETURN_IF_ERROR(w->Write(name, t.to(st)));
    ck.Release(src);
  }
  for (int64_t l = 0; l < L; ++l) {
    ASSIGN_OR_RETURN(at::Tensor router, ck.Get(RouterWeightName(l)));
    RETURN_IF_ERROR(CheckFits(router, st, moe_name(l, "gate.weight")));
    RETURN_IF_ERROR(w->Write(moe_name(l, "gate.weight"), router.to(st)));
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      std::vector<at::Tensor> parts;
      for (const std::string& group : {std::string(kFrozenExperts), std::string(kLearnedExperts)}) {
        if (group == kLearnedExperts && m.num_learned_experts == 0) continue;
        ASSIGN_OR_RETURN(at::Tensor t, ExpertStackForExport(ck, m, l, group, proj));
        parts.push_back(t);
      }
      if (parts.size() > 1 && parts[0].scalar_type() != parts[1].scalar_type()) {
        for (at::Tensor& p : parts) p = p.to(at::kFloat);
      }
      const at::Tensor all = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
      const std::string wname = std::string(proj) == "gate_proj" ? "w1" : std::string(proj) == "down_proj" ? "w2" : "w3";
      for (int64_t e = 0; e < E; ++e) {
        at::Tensor x = all[e];
        if (wname == "w2" && m.gate_scale != 1.0) x = x.to(at::kFloat) * m.gate_scale;
        RETURN_IF_ERROR(CheckFits(x, st, moe_name(l, absl::StrCat("experts.", e, ".", wname, ".weight"))));
        RETURN_IF_ERROR(w->Write(moe_name(l, absl::StrCat("experts.", e, ".", wname, ".weight")), x.to(st)));
      }
      for (const std::string& group : {std::string(kFrozenExperts), std::string(kLearnedExperts)}) {
        ck.Release(ExpertTensorName(l, group, proj));
      }
      if (m.lora_rank > 0) {
        for (const char* matrix : {"lora_A", "lora_B"}) ck.Release(LoraTensorName(l, proj, matrix));
      }
    }
  }
  nlohmann::json cfg = {
      {"architectures", {"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", H},
      {"intermediate_size", Ie},
      {"num_hidden_layers", L},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"sliding_window", nullptr},
      {"attention_dropout", 0.0},
      {"num_local_experts", E},
      {"num_experts_per_tok", m.top_k},
      {"output_router_logits", false},
      {"router_aux_loss_coef", 0.0},
      {"router_jitter_noise", 0.0},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"bos_token_id", c.bos_token_id},
      {"torch_dtype", plan.dtype == "f32" ? "float32" : plan.dtype == "f16" ? "float16" : "bfloat16"},
      {"use_cache", true},
  };
  cfg["eos_token_id"] = c.eos_token_ids.size() == 1 ? nlohmann::json(c.eos_token_ids[0]) : nlohmann::json(c.eos_token_ids);
  if (c.rope_scaling) {
    const RopeScaling& r = *c.rope_scaling;
    cfg["rope_scaling"] = {{"rope_type", r.rope_type},
                           {"factor", r.factor},
                           {"low_freq_factor", r.low_freq_factor},
                           {"high_freq_factor", r.high_freq_factor},
                           {"original_max_position_embeddings", r.original_max_position_embeddings}};
  } else {
    cfg["rope_scaling"] = nullptr;
  }
  RETURN_IF_ERROR(w->AddFile("config.json", cfg.dump(2) + "\n"));
  RETURN_IF_ERROR(w->CopySideFiles(s.dir));
  RETURN_IF_ERROR(w->Commit());
  uint64_t n = 0;
  for (const TensorSpec& spec : specs) n += spec.nbytes();
  *bytes = n;
  return absl::OkStatus();
}

absl::StatusOr<ExportPlan> PlanWith(const ExportOptions& o, const Source& s, GgufChoice* choice) {
  ExportPlan plan;
  plan.format = ExportFormatName(o.format);
  ASSIGN_OR_RETURN(plan.dtype, ResolveDtype(o, s.cfg));
  if (o.format == ExportFormat::kGguf) {
    RETURN_IF_ERROR(PlanGguf(o, s, &plan, choice));
    RETURN_IF_ERROR(AddTokenizer(s, &choice->tokenizer, &plan));
  } else {
    RETURN_IF_ERROR(PlanHfMixtral(s, &plan));
  }
  return plan;
}

}  // namespace

const char* ExportFormatName(ExportFormat f) {
  switch (f) {
    case ExportFormat::kGguf: return "gguf";
    case ExportFormat::kHfMixtral: return "hf_mixtral";
  }
  return "?";
}

absl::StatusOr<ExportFormat> ParseExportFormat(absl::string_view name) {
  if (name == "gguf") return ExportFormat::kGguf;
  if (name == "hf_mixtral") return ExportFormat::kHfMixtral;
  return absl::InvalidArgumentError(absl::StrCat("unknown export format '", name, "' (known: gguf, hf_mixtral)"));
}

absl::StatusOr<ExportPlan> PlanExport(const ExportOptions& options) {
  ASSIGN_OR_RETURN(Source s, OpenSource(options.model_dir));
  GgufChoice choice;
  return PlanWith(options, s, &choice);
}

std::string DescribePlan(const ExportPlan& plan) {
  std::string out = absl::StrCat(plan.format, " as ", plan.architecture, ", ", plan.dtype, ": ",
                                 plan.exact ? "exact" : "approximate", "\n");
  if (!plan.exact) {
    absl::StrAppendFormat(&out, "  measured on %d calibration tokens: max |logit diff| %.4g, KL %.4g nats/token\n",
                          plan.calibration_tokens, plan.max_abs_logit_diff, plan.mean_kl);
  }
  out += "  keeps:\n";
  for (const std::string& k : plan.kept) absl::StrAppend(&out, "    ", k, "\n");
  out += "  drops:\n";
  if (plan.dropped.empty()) out += "    nothing\n";
  for (const std::string& d : plan.dropped) absl::StrAppend(&out, "    ", d, "\n");
  return out;
}

absl::StatusOr<ExportStats> Export(const ExportOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.output.empty()) return absl::InvalidArgumentError("--output is required");
  ASSIGN_OR_RETURN(Source s, OpenSource(options.model_dir));
  // Refuse an existing output before any measuring or writing.
  if (PathExists(options.output) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat("output '", options.output, "' exists (pass --overwrite to replace it)"));
  }
  GgufChoice choice;
  ExportStats st;
  ASSIGN_OR_RETURN(st.plan, PlanWith(options, s, &choice));
  if (!st.plan.exact && !options.allow_approximate) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "'%s' has no exact %s form: the nearest (%s) drops %s; measured on %d calibration tokens against our forward: "
        "max |logit diff| %.4g, KL %.4g nats/token. Pass --allow_approximate to write it",
        options.model_dir, st.plan.format, st.plan.architecture, st.plan.approximation,
        st.plan.calibration_tokens, st.plan.max_abs_logit_diff, st.plan.mean_kl));
  }
  if (options.log) options.log(DescribePlan(st.plan));
  if (options.format == ExportFormat::kGguf) {
    RETURN_IF_ERROR(WriteGguf(options, s, st.plan, choice, &st.bytes_written));
  } else {
    RETURN_IF_ERROR(WriteHfMixtral(options, s, st.plan, &st.bytes_written));
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return st;
}

}  // namespace llama_moe
