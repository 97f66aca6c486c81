#include "moe/random_expert_bank.h"

#include <ATen/ATen.h>

#include <cmath>

namespace llama_moe {

at::Tensor RandomWeight(std::vector<int64_t> shape, at::ScalarType dtype, at::Generator gen) {
  const double fan_in = double(shape.back());
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor z = gen.defined() ? at::randn(shape, gen, f32) : at::randn(shape, f32);
  return (z / std::sqrt(fan_in)).to(dtype);
}

ExpertBank RandomExpertBank(int64_t frozen, int64_t learned, int64_t ie, int64_t h, at::ScalarType dtype,
                            at::Generator gen) {
  ExpertBank b;
  b.frozen_gate = RandomWeight({frozen, ie, h}, dtype, gen);
  b.frozen_up = RandomWeight({frozen, ie, h}, dtype, gen);
  b.frozen_down = RandomWeight({frozen, h, ie}, dtype, gen);
  if (learned > 0) {
    b.learned_gate = RandomWeight({learned, ie, h}, dtype, gen);
    b.learned_up = RandomWeight({learned, ie, h}, dtype, gen);
    b.learned_down = RandomWeight({learned, h, ie}, dtype, gen);
  }
  return b;
}

}  // namespace llama_moe
