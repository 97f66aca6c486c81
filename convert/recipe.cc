#include "convert/recipe.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

ScoreFunction ToScoreFunction(ConversionRecipe::ScoreFunction f) {
  switch (f) {
    case ConversionRecipe::SIGMOID: return ScoreFunction::kSigmoid;
    case ConversionRecipe::SOFTMAX: break;
  }
  return ScoreFunction::kSoftmax;
}

}  // namespace

absl::StatusOr<ConversionRecipe> ParseRecipe(absl::string_view text, absl::string_view file) {
  ConversionRecipe recipe;
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &recipe)) {
    return absl::InvalidArgumentError(absl::StrCat("recipe '", file, "': ", errors.first()));
  }
  return recipe;
}

absl::StatusOr<ConversionRecipe> LoadRecipe(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxMetadataFileBytes));
  return ParseRecipe(text, path);
}

std::string RecipeToText(const ConversionRecipe& recipe) {
  // Setting every field to its current value makes the printer emit defaults too.
  ConversionRecipe full = recipe;
  const google::protobuf::Descriptor* d = full.GetDescriptor();
  const google::protobuf::Reflection* r = full.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (r->HasField(full, f)) continue;
    switch (f->cpp_type()) {
      case google::protobuf::FieldDescriptor::CPPTYPE_INT32: r->SetInt32(&full, f, r->GetInt32(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_INT64: r->SetInt64(&full, f, r->GetInt64(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(&full, f, r->GetUInt64(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(&full, f, r->GetFloat(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(&full, f, r->GetDouble(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_BOOL: r->SetBool(&full, f, r->GetBool(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(&full, f, r->GetEnum(full, f)); break;
      case google::protobuf::FieldDescriptor::CPPTYPE_STRING: r->SetString(&full, f, r->GetString(full, f)); break;
      default: break;
    }
  }
  std::string out;
  google::protobuf::TextFormat::PrintToString(full, &out);
  return out;
}

absl::StatusOr<MoeConfig> ResolveRecipe(const LlamaConfig& dense, ConversionRecipe* r) {
  auto bad = [](const std::string& s) { return absl::InvalidArgumentError(absl::StrCat("recipe: ", s)); };
  const int64_t I = dense.intermediate_size;
  if (r->expert_intermediate_size() == 0) {
    if (r->num_frozen_experts() < 1 || I % r->num_frozen_experts() != 0) {
      return bad(absl::StrCat("num_frozen_experts ", r->num_frozen_experts(), " does not divide intermediate_size ", I));
    }
    r->set_expert_intermediate_size(static_cast<int32_t>(I / r->num_frozen_experts()));
  } else {
    if (r->expert_intermediate_size() < 1 || I % r->expert_intermediate_size() != 0) {
      return bad(absl::StrCat("expert_intermediate_size ", r->expert_intermediate_size(),
                              " does not divide intermediate_size ", I));
    }
    // The frozen experts are the slices: their number follows from the size.
    r->set_num_frozen_experts(static_cast<int32_t>(I / r->expert_intermediate_size()));
  }
  if (!(r->noise_scale() >= 0)) return bad(absl::StrCat("noise_scale must be >= 0, got ", r->noise_scale()));
  if (!(r->reinit_fraction() >= 0 && r->reinit_fraction() <= 1)) {
    return bad(absl::StrCat("reinit_fraction must be in [0, 1], got ", r->reinit_fraction()));
  }
  if (!(r->router_std() >= 0)) return bad("router_std must be >= 0");
  if (r->router_init() == ConversionRecipe::COMPLEMENTARY &&
      !(r->num_learned_experts() == r->num_frozen_experts() && r->top_k() == r->num_frozen_experts())) {
    return bad(absl::StrCat("router_init COMPLEMENTARY needs num_learned_experts == num_frozen_experts == top_k, got ",
                            r->num_learned_experts(), ", ", r->num_frozen_experts(), " and ", r->top_k()));
  }
  if (r->router_init() == ConversionRecipe::COMPLEMENTARY &&
      !(r->learned_init() == ConversionRecipe::NOISY_SLICE && r->noise_scale() == 0)) {
    // Both groups must compute the dense FFN for routed mode to equal the dense model.
    return bad(absl::StrCat("router_init COMPLEMENTARY needs learned experts that are exact copies (learned_init "
                            "NOISY_SLICE with noise_scale 0), got ",
                            ConversionRecipe::LearnedInit_Name(r->learned_init()), " with noise_scale ",
                            r->noise_scale()));
  }
  if (r->partition() == ConversionRecipe::COACTIVATION_CLUSTERS) {
    if (r->calibration_text().empty()) return bad("partition COACTIVATION_CLUSTERS needs calibration_text");
    if (r->calibration_tokens() < r->num_frozen_experts() || r->calibration_tokens() > (1 << 16)) {
      return bad(absl::StrCat("calibration_tokens must be in [num_frozen_experts = ", r->num_frozen_experts(),
                              ", 65536], got ", r->calibration_tokens()));
    }
  }
  if (r->max_shard_bytes() < 1) return bad("max_shard_bytes must be positive");
  if (!r->dtype().empty() && r->dtype() != "float32" && r->dtype() != "bfloat16" && r->dtype() != "float16") {
    return bad(absl::StrCat("dtype '", r->dtype(), "' is not float32, bfloat16 or float16"));
  }
  MoeConfig m;
  m.num_frozen_experts = r->num_frozen_experts();
  m.num_learned_experts = r->num_learned_experts();
  m.expert_intermediate_size = r->expert_intermediate_size();
  m.top_k = r->top_k();
  m.score_function = ToScoreFunction(r->score_function());
  m.normalize_gates = r->normalize_gates();
  if (r->gate_scale() == 0) {
    // Uniform scores must give each selected expert weight 1 (K frozen slices = dense FFN).
    if (r->normalize_gates()) {
      r->set_gate_scale(static_cast<double>(r->top_k()));
    } else if (r->score_function() == ConversionRecipe::SIGMOID) {
      r->set_gate_scale(2.0);  // sigmoid(0) = 1/2
    } else {
      r->set_gate_scale(static_cast<double>(m.num_experts()));  // softmax of equal logits = 1/E
    }
  }
  m.gate_scale = r->gate_scale();
  m.bias_update_rate = r->bias_update_rate();
  if (r->lora_rank() < 0) return bad(absl::StrCat("lora_rank must be >= 0 (0: no adapters), got ", r->lora_rank()));
  if (r->lora_rank() > 0 && r->lora_alpha() == 0) r->set_lora_alpha(2.0 * r->lora_rank());
  if (r->lora_rank() == 0 && r->lora_alpha() != 0) return bad("lora_alpha is set but lora_rank is 0 (no adapters)");
  m.lora_rank = r->lora_rank();
  m.lora_alpha = r->lora_alpha();
  RETURN_IF_ERROR(ValidateMoeConfig(m, dense), "recipe");
  return m;
}

}  // namespace llama_moe
