// read_bandwidth: this machine's memory read bandwidth as a decode step sees it, measured as
// at::sum over a float32 buffer far larger than the caches (1 GiB), with the given threads;
// prints "read: X GB/s" (10^9 bytes per second, the median of 7 passes after one warm-up).
//
//   read_bandwidth --threads 2
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  int threads = 1;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
  }
  at::set_num_threads(std::max(threads, 1));
  const at::Tensor buf = at::ones({int64_t{1} << 28}, at::kFloat);  // 1 GiB
  std::vector<double> gbps;
  for (int pass = 0; pass < 8; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    const double s = buf.sum().item<double>();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s != static_cast<double>(buf.numel())) return 1;
    if (pass > 0) gbps.push_back(buf.numel() * 4.0 / sec / 1e9);
  }
  std::sort(gbps.begin(), gbps.end());
  std::printf("read: %.2f GB/s\n", gbps[gbps.size() / 2]);
  return 0;
}
