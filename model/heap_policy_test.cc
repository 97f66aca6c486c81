#include "model/heap_policy.h"

#include <sys/resource.h>

#include <cstdlib>
#include <cstring>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

long MinorFaults() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// Allocates `bytes`, writes every page, frees it; returns the page faults that took.
long FaultsOfOneUse(size_t bytes) {
  const long before = MinorFaults();
  char* p = static_cast<char*>(std::malloc(bytes));
  if (p == nullptr) return -1;
  for (size_t i = 0; i < bytes; i += 4096) p[i] = static_cast<char>(i);
  volatile char sink = p[bytes / 2];
  (void)sink;
  std::free(p);
  return MinorFaults() - before;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitizerAllocator = true;  // AddressSanitizer's allocator replaces glibc's malloc
#else
constexpr bool kSanitizerAllocator = false;
#endif

#if defined(__GLIBC__)
TEST(HeapPolicyTest, AFreedBlockIsReusedWithoutFaultingItsPagesInAgain) {
  // The default policy maps a first 16 MiB block with mmap and unmaps it on free, so its next
  // use faults its 4096 pages in again; under the policy the heap keeps it.
  if (kSanitizerAllocator) GTEST_SKIP() << "AddressSanitizer's allocator, not glibc's, serves malloc";
  ASSERT_TRUE(ApplyInferenceHeapPolicy());
  constexpr size_t kBytes = size_t{16} << 20;
  ASSERT_GE(FaultsOfOneUse(kBytes), 0);
  EXPECT_LT(FaultsOfOneUse(kBytes), 64);
  EXPECT_LT(FaultsOfOneUse(kBytes / 2), 64);
}

TEST(HeapPolicyTest, TheUsersOwnSettingsWin) {
  setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576", 1);
  EXPECT_FALSE(ApplyInferenceHeapPolicy());
  unsetenv("GLIBC_TUNABLES");
  setenv("LLAMA_MOE_HEAP_POLICY", "0", 1);
  EXPECT_FALSE(ApplyInferenceHeapPolicy());
  unsetenv("LLAMA_MOE_HEAP_POLICY");
  // Under AddressSanitizer mallopt has no glibc heap to configure.
  if (!kSanitizerAllocator) EXPECT_TRUE(ApplyInferenceHeapPolicy());
}
#endif

}  // namespace
}  // namespace llama_moe
