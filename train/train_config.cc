#include "train/train_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

// Collects the first syntax error (instead of protobuf's own log lines on stderr).
class Collect : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (first.empty()) first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  std::string first;
};

}  // namespace

absl::StatusOr<TrainConfig> ParseTrainConfig(absl::string_view text, absl::string_view source) {
  google::protobuf::TextFormat::Parser parser;
  Collect errors;
  parser.RecordErrorsTo(&errors);
  TrainConfig cfg;
  if (!parser.ParseFromString(std::string(text), &cfg)) {
    return absl::InvalidArgumentError(absl::StrCat(source, " is not a valid TrainConfig: ", errors.first));
  }
  return cfg;
}

absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path, const std::string& overrides) {
  TrainConfig cfg;
  if (!path.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxMetadataFileBytes));
    ASSIGN_OR_RETURN(cfg, ParseTrainConfig(text, absl::StrCat("training config '", path, "'")));
  }
  if (!overrides.empty()) {
    ASSIGN_OR_RETURN(TrainConfig over, ParseTrainConfig(overrides, "--set"));
    cfg.MergeFrom(over);
  }
  return cfg;
}

absl::Status ValidateTrainConfig(const TrainConfig& cfg) {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(absl::StrCat("training config: ", field, " is ", value, ", ", want));
  };
  if (cfg.model_dir().empty() || cfg.data_dir().empty() || cfg.output_dir().empty()) {
    return absl::InvalidArgumentError("training config: model_dir, data_dir and output_dir must be set");
  }
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"steps", cfg.steps()},
                                     {"seq_len", cfg.seq_len()},
                                     {"micro_batch", cfg.micro_batch()},
                                     {"global_batch", cfg.global_batch()},
                                     {"timeout_seconds", cfg.timeout_seconds()},
                                     {"checkpoint_timeout_seconds", cfg.checkpoint_timeout_seconds()},
                                     {"bucket_mb", cfg.bucket_mb()},
                                     {"eval_sequences", cfg.eval_sequences()}}) {
    if (value < 1) return bad(field, value, "must be positive");
  }
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"warmup_steps", cfg.warmup_steps()},
                                     {"checkpoint_every", cfg.checkpoint_every()},
                                     {"eval_every", cfg.eval_every()},
                                     {"log_every", cfg.log_every()},
                                     {"keep_checkpoints", cfg.keep_checkpoints()}}) {
    if (value < 0) return bad(field, value, "must be >= 0");
  }
  for (const auto& [field, value] : {std::pair<const char*, double>{"lr", cfg.lr()},
                                     {"min_lr_ratio", cfg.min_lr_ratio()},
                                     {"eps", cfg.eps()},
                                     {"weight_decay", cfg.weight_decay()},
                                     {"grad_clip", cfg.grad_clip()},
                                     {"bias_update_rate", cfg.bias_update_rate()},
                                     {"aux_loss_coef", cfg.aux_loss_coef()},
                                     {"z_loss_coef", cfg.z_loss_coef()},
                                     {"router_lr_scale", cfg.router_lr_scale()},
                                     {"distill_weight", cfg.distill_weight()}}) {
    if (!(std::isfinite(value) && value >= 0)) return bad(field, value, "must be a finite number >= 0");
  }
  if (cfg.distill_weight_end() != -1 && !(std::isfinite(cfg.distill_weight_end()) && cfg.distill_weight_end() >= 0)) {
    return bad("distill_weight_end", cfg.distill_weight_end(), "must be -1 (constant) or a finite number >= 0");
  }
  for (const auto& [field, value] : {std::pair<const char*, double>{"beta1", cfg.beta1()}, {"beta2", cfg.beta2()}}) {
    if (!(value >= 0 && value < 1)) return bad(field, value, "must be in [0, 1)");
  }
  if (cfg.dtype() != "bfloat16" && cfg.dtype() != "float32") {
    return bad("dtype", absl::StrCat("'", cfg.dtype(), "'"), "must be \"bfloat16\" or \"float32\"");
  }
  if (cfg.activation_checkpointing() && (cfg.aux_loss_coef() > 0 || cfg.z_loss_coef() > 0)) {
    return absl::InvalidArgumentError(
        "training config: aux_loss_coef / z_loss_coef need activation_checkpointing off");
  }
  return absl::OkStatus();
}

}  // namespace llama_moe
