// A tensor declared before it is written or checked: name, stored dtype, shape. The layouts
// (model/llama_layout.h, moe/moe_layout.h) produce them; writers (model/model_writer.h) and
// checkers consume them.
//
// Example:
//   TensorSpec s{"model.layers.0.mlp.up_proj.weight", DType::kBF16, {14336, 4096}};
//   uint64_t bytes = s.nbytes();  // 117440512
#ifndef LLAMA_MOE_MODEL_TENSOR_SPEC_H_
#define LLAMA_MOE_MODEL_TENSOR_SPEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "model/safetensors_header.h"

namespace llama_moe {

struct TensorSpec {
  std::string name;            // e.g. "model.layers.0.mlp.up_proj.weight"
  DType dtype = DType::kF32;   // stored element type
  std::vector<int64_t> shape;  // e.g. {14336, 4096}

  uint64_t nbytes() const;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_TENSOR_SPEC_H_
