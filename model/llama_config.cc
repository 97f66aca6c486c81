#include "model/llama_config.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/json_util.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

using json = nlohmann::json;

// Fields this struct interprets; everything else goes to extra_json untouched.
const std::set<std::string>& KnownFields() {
  static const auto* k = new std::set<std::string>{
      "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
      "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings", "torch_dtype", "dtype",
      "hidden_act", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id"};
  return *k;
}

class Reader {
 public:
  Reader(const json& root, absl::string_view file) : root_(root), file_(file) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("config '", file_, "': field '", field, "' ", what));
  }

  absl::Status Int(const char* field, bool required, int64_t* out) const {
    auto it = root_.find(field);
    if (it == root_.end() || it->is_null()) {
      return required ? Error(field, "is missing") : absl::OkStatus();
    }
    if (!it->is_number_integer()) return Error(field, absl::StrCat("must be an integer, got ", it->dump()));
    *out = it->get<int64_t>();
    return absl::OkStatus();
  }
  absl::Status Double(const char* field, double* out) const {
    auto it = root_.find(field);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number()) return Error(field, absl::StrCat("must be a number, got ", it->dump()));
    *out = it->get<double>();
    return absl::OkStatus();
  }
  absl::Status Bool(const char* field, bool* out) const {
    auto it = root_.find(field);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean()) return Error(field, absl::StrCat("must be true or false, got ", it->dump()));
    *out = it->get<bool>();
    return absl::OkStatus();
  }
  absl::Status String(const char* field, std::string* out) const {
    auto it = root_.find(field);
    if (it == root_.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_string()) return Error(field, absl::StrCat("must be a string, got ", it->dump()));
    *out = it->get<std::string>();
    return absl::OkStatus();
  }

 private:
  const json& root_;
  std::string file_;
};

absl::Status ParseRopeScaling(const json& v, const Reader& top, LlamaConfig* cfg) {
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_object()) return top.Error("rope_scaling", "must be an object or null");
  Reader r(v, "");
  RopeScaling rs;
  std::string type;
  // Older configs spell it "type", newer ones "rope_type".
  if (v.contains("rope_type")) {
    if (!v["rope_type"].is_string()) return top.Error("rope_scaling.rope_type", "must be a string");
    type = v["rope_type"].get<std::string>();
  } else if (v.contains("type")) {
    if (!v["type"].is_string()) return top.Error("rope_scaling.type", "must be a string");
    type = v["type"].get<std::string>();
  }
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return top.Error("rope_scaling", absl::StrCat("has rope_type '", type, "'; only 'llama3' is supported"));
  }
  rs.rope_type = type;
  for (const char* f : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
    if (!v.contains(f) || !v[f].is_number()) {
      return top.Error(absl::StrCat("rope_scaling.", f), "is missing or not a number (llama3 needs it)");
    }
  }
  rs.factor = v["factor"].get<double>();
  rs.low_freq_factor = v["low_freq_factor"].get<double>();
  rs.high_freq_factor = v["high_freq_factor"].get<double>();
  if (!v["original_max_position_embeddings"].is_number_integer()) {
    return top.Error("rope_scaling.original_max_position_embeddings", "must be an integer");
  }
  rs.original_max_position_embeddings = v["original_max_position_embeddings"].get<int64_t>();
  cfg->rope_scaling = rs;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LlamaConfig> ParseLlamaConfig(absl::string_view text, absl::string_view file) {
  ASSIGN_OR_RETURN(json root, ParseJson(text, absl::StrCat("config '", file, "'")));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("config '", file, "' is not a JSON object"));
  }
  Reader r(root, file);
  LlamaConfig cfg;
  // Hugging Face's LlamaConfig defaults for optional fields; the five sizes are required since a
  // config without them is broken rather than "7B by default".
  cfg.max_position_embeddings = 2048;
  cfg.rms_norm_eps = 1e-6;
  cfg.rope_theta = 10000.0;
  cfg.tie_word_embeddings = false;
  cfg.torch_dtype = "float32";
  cfg.bos_token_id = 1;
  cfg.eos_token_ids = {2};
  RETURN_IF_ERROR(r.String("model_type", &cfg.model_type));
  RETURN_IF_ERROR(r.Int("vocab_size", true, &cfg.vocab_size));
  RETURN_IF_ERROR(r.Int("hidden_size", true, &cfg.hidden_size));
  RETURN_IF_ERROR(r.Int("intermediate_size", true, &cfg.intermediate_size));
  RETURN_IF_ERROR(r.Int("num_hidden_layers", true, &cfg.num_hidden_layers));
  RETURN_IF_ERROR(r.Int("num_attention_heads", true, &cfg.num_attention_heads));
  cfg.num_key_value_heads = cfg.num_attention_heads;
  RETURN_IF_ERROR(r.Int("num_key_value_heads", false, &cfg.num_key_value_heads));
  cfg.head_dim = cfg.num_attention_heads > 0 ? cfg.hidden_size / cfg.num_attention_heads : 0;
  RETURN_IF_ERROR(r.Int("head_dim", false, &cfg.head_dim));
  RETURN_IF_ERROR(r.Int("max_position_embeddings", false, &cfg.max_position_embeddings));
  RETURN_IF_ERROR(r.Double("rms_norm_eps", &cfg.rms_norm_eps));
  RETURN_IF_ERROR(r.Double("rope_theta", &cfg.rope_theta));
  if (root.contains("rope_scaling")) RETURN_IF_ERROR(ParseRopeScaling(root["rope_scaling"], r, &cfg));
  RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &cfg.tie_word_embeddings));
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  RETURN_IF_ERROR(r.String("dtype", &cfg.torch_dtype));
  RETURN_IF_ERROR(r.String("torch_dtype", &cfg.torch_dtype));
  RETURN_IF_ERROR(r.String("hidden_act", &cfg.hidden_act));
  RETURN_IF_ERROR(r.Bool("attention_bias", &cfg.attention_bias));
  RETURN_IF_ERROR(r.Bool("mlp_bias", &cfg.mlp_bias));
  RETURN_IF_ERROR(r.Int("bos_token_id", false, &cfg.bos_token_id));
  if (root.contains("eos_token_id") && !root["eos_token_id"].is_null()) {
    const json& e = root["eos_token_id"];
    cfg.eos_token_ids.clear();
    if (e.is_number_integer()) {
      cfg.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array()) {
      for (const json& x : e) {
        if (!x.is_number_integer()) return r.Error("eos_token_id", "must be an integer or a list of integers");
        cfg.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      return r.Error("eos_token_id", "must be an integer or a list of integers");
    }
  }
  json extra = json::object();
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!KnownFields().count(it.key())) extra[it.key()] = it.value();
  }
  cfg.extra_json = extra.dump();
  RETURN_IF_ERROR(ValidateLlamaConfig(cfg), absl::StrCat("config '", file, "'"));
  return cfg;
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxMetadataFileBytes));
  return ParseLlamaConfig(text, path);
}

absl::Status ValidateLlamaConfig(const LlamaConfig& c) {
  auto bad = [](absl::string_view what) { return absl::InvalidArgumentError(std::string(what)); };
  struct Size {
    const char* name;
    int64_t value, limit;
  };
  const Size sizes[] = {{"vocab_size", c.vocab_size, kMaxVocabSize},
                        {"hidden_size", c.hidden_size, kMaxHiddenSize},
                        {"intermediate_size", c.intermediate_size, kMaxIntermediateSize},
                        {"num_hidden_layers", c.num_hidden_layers, kMaxLayers},
                        {"num_attention_heads", c.num_attention_heads, kMaxHeads},
                        {"num_key_value_heads", c.num_key_value_heads, kMaxHeads},
                        {"head_dim", c.head_dim, kMaxHeadDim},
                        {"max_position_embeddings", c.max_position_embeddings, kMaxPositions}};
  for (const Size& s : sizes) {
    if (s.value <= 0) return bad(absl::StrCat(s.name, " must be positive, got ", s.value));
    if (s.value > s.limit) return bad(absl::StrCat(s.name, " ", s.value, " is above the limit of ", s.limit));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return bad(absl::StrCat("num_attention_heads ", c.num_attention_heads,
                            " is not a multiple of num_key_value_heads ", c.num_key_value_heads,
                            " (grouped-query attention needs whole groups)"));
  }
  if (c.head_dim % 2 != 0) return bad(absl::StrCat("head_dim ", c.head_dim, " must be even for RoPE"));
  if (!(c.rms_norm_eps > 0)) return bad(absl::StrCat("rms_norm_eps must be positive, got ", c.rms_norm_eps));
  if (!(c.rope_theta > 0)) return bad(absl::StrCat("rope_theta must be positive, got ", c.rope_theta));
  if (c.rope_scaling) {
    const RopeScaling& r = *c.rope_scaling;
    if (!(r.factor > 0) || !(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor) ||
        r.original_max_position_embeddings <= 0) {
      return bad(absl::StrCat("rope_scaling llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor "
                              "and original_max_position_embeddings > 0; got factor ", r.factor,
                              ", low_freq_factor ", r.low_freq_factor, ", high_freq_factor ",
                              r.high_freq_factor, ", original_max_position_embeddings ",
                              r.original_max_position_embeddings));
    }
  }
  if (c.torch_dtype != "float32" && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16") {
    return bad(absl::StrCat("torch_dtype '", c.torch_dtype, "' is not float32, bfloat16 or float16"));
  }
  if (c.hidden_act != "silu") return bad(absl::StrCat("hidden_act '", c.hidden_act, "' is not supported (silu)"));
  if (c.attention_bias || c.mlp_bias) return bad("attention_bias and mlp_bias are not supported");
  if (c.bos_token_id < 0 || c.bos_token_id >= c.vocab_size) {
    return bad(absl::StrCat("bos_token_id ", c.bos_token_id, " is outside the vocabulary of ", c.vocab_size));
  }
  if (c.eos_token_ids.empty()) return bad("eos_token_id is empty");
  for (int64_t e : c.eos_token_ids) {
    if (e < 0 || e >= c.vocab_size) {
      return bad(absl::StrCat("eos_token_id ", e, " is outside the vocabulary of ", c.vocab_size));
    }
  }
  return absl::OkStatus();
}

std::string LlamaConfigToJson(const LlamaConfig& c) {
  json root = json::parse(c.extra_json.empty() ? "{}" : c.extra_json, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object()) root = json::object();
  if (!root.contains("architectures")) root["architectures"] = {"LlamaForCausalLM"};
  root["model_type"] = c.model_type;
  root["vocab_size"] = c.vocab_size;
  root["hidden_size"] = c.hidden_size;
  root["intermediate_size"] = c.intermediate_size;
  root["num_hidden_layers"] = c.num_hidden_layers;
  root["num_attention_heads"] = c.num_attention_heads;
  root["num_key_value_heads"] = c.num_key_value_heads;
  root["head_dim"] = c.head_dim;
  root["max_position_embeddings"] = c.max_position_embeddings;
  root["rms_norm_eps"] = c.rms_norm_eps;
  root["rope_theta"] = c.rope_theta;
  if (c.rope_scaling) {
    root["rope_scaling"] = {{"rope_type", c.rope_scaling->rope_type},
                            {"factor", c.rope_scaling->factor},
                            {"low_freq_factor", c.rope_scaling->low_freq_factor},
                            {"high_freq_factor", c.rope_scaling->high_freq_factor},
                            {"original_max_position_embeddings",
                             c.rope_scaling->original_max_position_embeddings}};
  } else {
    root["rope_scaling"] = nullptr;
  }
  root["tie_word_embeddings"] = c.tie_word_embeddings;
  root["torch_dtype"] = c.torch_dtype;
  root["hidden_act"] = c.hidden_act;
  root["attention_bias"] = c.attention_bias;
  root["mlp_bias"] = c.mlp_bias;
  root["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    root["eos_token_id"] = c.eos_token_ids[0];
  } else {
    root["eos_token_id"] = c.eos_token_ids;
  }
  return root.dump(2) + "\n";
}

}  // namespace llama_moe
