// What the LibTorch being compiled against offers, as named feature macros: a guard says what it
// needs, not a version number, and every version test lives here.
//   LLAMA_MOE_HAS_SDPA_GQA   at::scaled_dot_product_attention with `scale` and `enable_gqa`
//                            (LibTorch >= 2.5)
//   LLAMA_MOE_HAS_GROUPED_MM at::_grouped_mm with float32/float16 and a CPU form, its CUDA
//                            kernel for bfloat16 on compute capability 9.x/10.x (LibTorch >= 2.9;
//                            2.8 has a bfloat16-only, 9.x-only form with stricter alignment)
// To add one: a macro defined to 0 or 1 here from TORCH_VERSION_*, its line above, and a case in
// model/torch_features_test.cc.
//
// Example:
//   #if LLAMA_MOE_HAS_SDPA_GQA
//   // fused attention
//   #endif
//   const bool fused = LLAMA_MOE_HAS_SDPA_GQA;
#ifndef LLAMA_MOE_MODEL_TORCH_FEATURES_H_
#define LLAMA_MOE_MODEL_TORCH_FEATURES_H_

#include <torch/version.h>

#define LLAMA_MOE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#if LLAMA_MOE_TORCH_AT_LEAST(2, 5)
#define LLAMA_MOE_HAS_SDPA_GQA 1
#else
#define LLAMA_MOE_HAS_SDPA_GQA 0
#endif

#define LLAMA_MOE_GROUPED_MM_SINCE "2.9"
#if LLAMA_MOE_TORCH_AT_LEAST(2, 9)
#define LLAMA_MOE_HAS_GROUPED_MM 1
#else
#define LLAMA_MOE_HAS_GROUPED_MM 0
#endif

#endif  // LLAMA_MOE_MODEL_TORCH_FEATURES_H_
