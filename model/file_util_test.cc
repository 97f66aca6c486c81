#include "model/file_util.h"

#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

// Pages of [p, p + bytes) the process has mapped in.
int ResidentPages(void* p, size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  EXPECT_EQ(::mincore(p, bytes, vec.data()), 0);
  int n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

TEST(FileUtilTest, PrefaultMemoryMapsEveryPageOfTheRange) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE)), pages = 64;
  void* p = ::mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(ResidentPages(p, pages * page), 0);  // nothing touched yet
  // An unaligned range still covers its first and last pages.
  PrefaultMemory(static_cast<char*>(p) + 100, pages * page - 200);
  EXPECT_EQ(ResidentPages(p, pages * page), static_cast<int>(pages));
  PrefaultMemory(p, 0);  // nothing to do
  ::munmap(p, pages * page);
}

}  // namespace
}  // namespace llama_moe
