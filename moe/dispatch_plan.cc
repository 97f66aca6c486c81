#include "moe/dispatch_plan.h"

#include <atomic>
#include <fstream>
#include <limits>
#include <string>

#include "model/torch_features.h"
#include "moe/expert_kernels.h"

#if defined(LLAMA_MOE_WITH_CUDA)
#include <cuda_runtime_api.h>

#include <mutex>
#include <unordered_map>
#endif

namespace llama_moe {
namespace {

// bfloat16 GEMMs with every dimension at least this large upcast on slow-bf16 CPUs: the
// conversions cost O(M*K + K*N) against the GEMM's O(M*N*K); smaller ones mostly stream weights.
constexpr int64_t kUpcastMin = 32;

// Feature-major GEMMs ([N,n] = W x^T) suit OpenBLAS for few rows: 1.1-2x faster than [n,N]
// below 128 rows with H 1024 in float32; slower from 256, and 2.5x slower for oneDNN's bf16.
constexpr int64_t kFeatureMajorRows = 128;

// The CPU's bfloat16 matrix units, as /proc/cpuinfo lists them (oneDNN uses the same ones).
struct CpuBf16Units {
  bool avx512_bf16 = false, amx = false;
};

const CpuBf16Units& Bf16Units() {
  static const CpuBf16Units units = [] {
    CpuBf16Units u;
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) == 0) {
        u.avx512_bf16 = line.find(" avx512_bf16") != std::string::npos;
        u.amx = line.find(" amx_bf16") != std::string::npos;
        break;
      }
    }
    return u;
  }();
  return units;
}

bool CpuHasFastBf16Gemm() { return Bf16Units().avx512_bf16 || Bf16Units().amx; }

std::atomic<bool> grouped_allowed{true};

}  // namespace

bool UpcastGemm(const at::Tensor& a, const at::Tensor& b) {
  // Without AVX512-BF16 or AMX, LibTorch's bfloat16 GEMMs run at 13-26 GFLOP/s against 60-100
  // for float32 (one core).
  return a.scalar_type() == at::kBFloat16 && a.device().is_cpu() && a.size(0) >= kUpcastMin &&
         a.size(1) >= kUpcastMin && b.size(1) >= kUpcastMin && !CpuHasFastBf16Gemm();
}

int64_t KernelMaxRows(at::ScalarType dtype) {
  const bool bf16 = dtype == at::kBFloat16;
  // AMX runs oneDNN's bf16 GEMMs at ~270 GFLOP/s per core, above AVX512-BF16's peak; its
  // crossover is unmeasured, so the kernel keeps to segments where weight packing dominates.
  if (bf16 && Bf16Units().amx) return 8;
  // The panel form beats OpenBLAS and oneDNN at every segment size measured (README: MoE layer).
  if (HasPanelForm(BestKernelIsa(), bf16)) return std::numeric_limits<int64_t>::max();
  // float32 dot tiles with AVX2: 1.1-3.7x faster than OpenBLAS up to 16-32 rows, 0.8-0.9x from 64.
  if (!bf16) return 24;
  // bf16 without AVX512-BF16/AMX: oneDNN runs 26-36 GFLOP/s, below the dot tiles' ~50, until upcast.
  return kUpcastMin - 1;
}

SegmentPath DispatchPlan::PathFor(int64_t rows) const {
  if (rows <= kernel_max_rows) return SegmentPath::kKernel;
  if (rows < feature_major_below) return SegmentPath::kGemmFeatureMajor;
  return SegmentPath::kGemmRowMajor;
}

bool HasGroupedGemmKernel(const c10::Device& device) {
#if defined(LLAMA_MOE_WITH_CUDA)
  if (!LLAMA_MOE_HAS_GROUPED_MM || !device.is_cuda()) return false;
  static std::mutex mu;
  static std::unordered_map<int, bool> known;
  std::lock_guard<std::mutex> lock(mu);
  int index = device.index();
  if (!device.has_index() && cudaGetDevice(&index) != cudaSuccess) return false;
  auto it = known.find(index);
  if (it == known.end()) {
    cudaDeviceProp prop;
    const bool read = cudaGetDeviceProperties(&prop, index) == cudaSuccess;
    it = known.emplace(index, read && (prop.major == 9 || prop.major == 10)).first;
  }
  return it->second;
#else
  (void)device;
  return false;
#endif
}

void SetGroupedDispatchAllowed(bool allowed) { grouped_allowed = allowed; }

DispatchPlan PlanDispatch(DispatchMode mode, const at::Tensor& x, const at::Tensor& expert) {
  DispatchPlan p;
  p.mode = mode;
  p.grouped = grouped_allowed && x.scalar_type() == at::kBFloat16 && !x.is_cpu() && HasGroupedGemmKernel(x.device());
  if (p.grouped) return p;
  if (mode == DispatchMode::kTraining) return p;  // training: row-major GEMMs that keep g and u
  const at::ScalarType dtype = x.scalar_type();
  const bool kernel = x.is_cpu() && expert.is_cpu() && (dtype == at::kFloat || dtype == at::kBFloat16);
  if (kernel) {
    p.one_token = x.size(0) == 1;
    p.kernel_max_rows = KernelMaxRows(dtype);
  }
  if (dtype == at::kFloat) p.feature_major_below = kFeatureMajorRows;
  return p;
}

}  // namespace llama_moe
