// Reading and checking a training config (train/train_config.proto): the text a user edits.
//
// Example:
//   ASSIGN_OR_RETURN(TrainConfig cfg, ParseTrainConfig("steps: 50 lr: 3e-4", "--set"));
//   cfg.set_model_dir("/tmp/moe");
//   cfg.set_data_dir("/tmp/data");
//   cfg.set_output_dir("/tmp/run");
//   RETURN_IF_ERROR(ValidateTrainConfig(cfg));
#ifndef LLAMA_MOE_TRAIN_TRAIN_CONFIG_H_
#define LLAMA_MOE_TRAIN_TRAIN_CONFIG_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "train/train_config.pb.h"

namespace llama_moe {

// A text-proto TrainConfig; a syntax error names `source`, the line and the column.
absl::StatusOr<TrainConfig> ParseTrainConfig(absl::string_view text, absl::string_view source);

// The config at `path` (none when empty), then `overrides` (text proto, e.g. from --set)
// merged over it.
absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path, const std::string& overrides);

// Every field in its range, with an error naming the field and its value.
absl::Status ValidateTrainConfig(const TrainConfig& cfg);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_TRAIN_CONFIG_H_
