#include "model/heap_policy.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace llama_moe {

bool ApplyInferenceHeapPolicy() {
#if defined(__GLIBC__)
  const char* off = std::getenv("LLAMA_MOE_HEAP_POLICY");
  if (off != nullptr && std::strcmp(off, "0") == 0) return false;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) return false;
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"}) {
    if (std::getenv(name) != nullptr) return false;
  }
  return mallopt(M_MMAP_THRESHOLD, static_cast<int>(kInferenceMmapThreshold)) == 1 &&
         mallopt(M_TRIM_THRESHOLD, static_cast<int>(kInferenceTrimThreshold)) == 1;
#else
  return false;
#endif
}

}  // namespace llama_moe
