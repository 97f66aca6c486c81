// The x86 SIMD intrinsics for kernels that pick their instruction set per function with
// `target` attributes (the build passes no -m flags): LLAMA_MOE_X86_INTRINSICS is defined to 1
// where <immintrin.h> is included (x86-64 with GCC or Clang).
//
// Example:
//   #ifdef LLAMA_MOE_X86_INTRINSICS
//   const bool avx2 = __builtin_cpu_supports("avx2");  // pick a form at run time
//   #endif
#ifndef LLAMA_MOE_MODEL_X86_INTRINSICS_H_
#define LLAMA_MOE_MODEL_X86_INTRINSICS_H_

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLAMA_MOE_X86_INTRINSICS 1
// GCC 12's AVX-512 intrinsics initialise their "undefined" operands from themselves, which
// -Wuninitialized and -Wmaybe-uninitialized report (at the header's lines) wherever they are
// inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#endif  // LLAMA_MOE_MODEL_X86_INTRINSICS_H_
