#include "model/tensor_spec.h"

namespace llama_moe {

uint64_t TensorSpec::nbytes() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

}  // namespace llama_moe
