// Calibration statistics for data-driven partitions: the dense model runs on calibration text
// and every FFN records the magnitude |silu(gate x) * up x| of each intermediate neuron on each
// token. The weights are mapped, not copied, where the checkpoint's dtype is the compute dtype.
//
// Example:
//   ASSIGN_OR_RETURN(std::vector<at::Tensor> acts,
//                    NeuronActivations("/models/llama3-8b", "calibration.txt", /*max_tokens=*/512));
//   // acts[layer]: float32 [intermediate_size, tokens]
#ifndef LLAMA_MOE_CONVERT_CALIBRATION_H_
#define LLAMA_MOE_CONVERT_CALIBRATION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llama_moe {

// Largest calibration text read, bytes.
inline constexpr int64_t kMaxCalibrationTextBytes = int64_t{256} << 20;

// Per layer, float32 [I, N]: neuron activation magnitudes on the first N <= max_tokens tokens of
// `text_path`, tokenized with `dense_dir`/tokenizer.json and run in sequences of up to 512.
absl::StatusOr<std::vector<at::Tensor>> NeuronActivations(const std::string& dense_dir, const std::string& text_path,
                                                          int64_t max_tokens);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_CALIBRATION_H_
