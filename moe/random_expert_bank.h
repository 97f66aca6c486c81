// Random expert banks for tests and benchmarks: N(0, 1/fan_in) weights, so that activations keep
// their scale through an expert as in a trained model.
//
// Example:
//   at::manual_seed(7);
//   ExpertBank bank = RandomExpertBank(/*frozen=*/4, /*learned=*/4, /*ie=*/8, /*h=*/16, at::kBFloat16);
//   ExpertBank frozen_only = RandomExpertBank(4, 0, 8, 16, at::kFloat);  // learned stacks undefined
#ifndef LLAMA_MOE_MOE_RANDOM_EXPERT_BANK_H_
#define LLAMA_MOE_MOE_RANDOM_EXPERT_BANK_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "moe/expert_bank.h"

namespace llama_moe {

// N(0, 1/fan_in) weights (fan_in = the last dimension), drawn in float32 from `gen` (undefined:
// the default generator), stored in `dtype`.
at::Tensor RandomWeight(std::vector<int64_t> shape, at::ScalarType dtype, at::Generator gen = {});

// `frozen` + `learned` experts of width `ie` on hidden size `h`, drawn in stack order (frozen
// gate, up, down, then learned); no learned stacks when `learned` is 0.
ExpertBank RandomExpertBank(int64_t frozen, int64_t learned, int64_t ie, int64_t h, at::ScalarType dtype,
                            at::Generator gen = {});

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_RANDOM_EXPERT_BANK_H_
