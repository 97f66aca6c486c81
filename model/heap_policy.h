// The inference binaries' heap policy: blocks up to 32 MiB come from the heap and stay mapped
// once freed, instead of being mapped fresh (and faulted in page by page) on every call.
//
// Why: LibTorch's CPU allocator is plain malloc, and a forward allocates and frees the same
// few hundred KB to MB buffers layer after layer (activations, the MoE dispatch's output and
// scratch, attention scores). glibc maps blocks above its threshold with mmap and, below it,
// trims the heap top back to the system; either way the next layer's buffers are new pages, and
// the kernel's page faults and unmaps ran on the critical path (perf, the peer benchmark's MoE,
// bfloat16 prefill at two threads: a fifth of the main thread's time, while the second thread
// waited). Fixed thresholds (mmap 32 MiB, the most glibc takes; trim 256 MiB) keep them:
// bfloat16 prefill of the peer benchmark's MoE at two threads 1655 -> 2029 tokens/s, the dense
// model's 2098 -> 2199 (4 interleaved runs each). PyTorch's CPU inference guides get the same
// from jemalloc or tcmalloc preloaded.
//
// The cost is memory a process keeps after freeing it: at most the 256 MiB trim threshold at
// the heap top, plus whatever heap fragmentation holds, never more than its peak heap use.
// Training binaries keep glibc's defaults. A user's own glibc malloc settings win
// (GLIBC_TUNABLES with glibc.malloc.*, MALLOC_*_ variables), and LLAMA_MOE_HEAP_POLICY=0 turns
// the policy off (ablations). Elsewhere than glibc it does nothing.
//
// Example:
//   // First in an inference binary's main(), before the allocations it governs:
//   const bool applied = ApplyInferenceHeapPolicy();  // false off glibc, or when turned off
#ifndef LLAMA_MOE_MODEL_HEAP_POLICY_H_
#define LLAMA_MOE_MODEL_HEAP_POLICY_H_

#include <cstddef>

namespace llama_moe {

inline constexpr size_t kInferenceMmapThreshold = size_t{32} << 20;
inline constexpr size_t kInferenceTrimThreshold = size_t{256} << 20;

// Sets the policy; returns whether it is in effect (false: not glibc, turned off, or the
// user's own settings kept).
bool ApplyInferenceHeapPolicy();

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_HEAP_POLICY_H_
