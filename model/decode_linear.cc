#include "model/decode_linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "model/bfloat16.h"
#include "model/x86_intrinsics.h"

namespace llama_moe {
namespace {

// How far ahead of its loads a bfloat16 weight stream of a several-row block is prefetched, in
// bytes: the hardware prefetcher alone leaves a core's 4 interleaved row streams short of the
// read bandwidth (bfloat16 decode of the peer benchmark's dense model on the AMD EPYC, 4 rows a
// block: 76 -> 81 tokens/s at one thread, 114 -> 122 at two, with 4 or 8 KB ahead; 16 KB gains
// less at one thread). One row of x needs none: it reads its weights in one sequential stream
// (StreamRows below). The float32 loop keeps to the hardware prefetcher: the same prefetch cost
// it 4% at one thread.
constexpr int64_t kPrefetchBytes = 8192;

#ifdef LLAMA_MOE_X86_INTRINSICS
// Prefetching past a matrix's end is harmless: a prefetch never faults.
inline void PrefetchAhead(const uint16_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
}
#endif

// Weight rows handled together for M rows of x: R * M accumulators stay in registers, and R
// weight streams are read at once.
constexpr int RowsPerBlock(int m) { return m >= 8 ? 1 : 8 / m; }
// AVX-512 for two rows of x and more: 4 weight rows at once for two rows of x (measured on the
// AMD EPYC with one row of x, float32 at one thread: 2 rows 28-30 GB/s, 4 rows 34-39, 8 rows
// 28-33), fewer for more rows of x.
constexpr int Avx512RowsPerBlock(int m) { return m * 4 > 8 ? (8 / m > 0 ? 8 / m : 1) : 4; }

// One row of x (a decode step of one sequence) in the vector forms: each weight row is read
// whole before the next, so a thread's share of W is one sequential stream, and kStreamChains
// accumulators over interleaved vectors of the row hide the FMA latency a single sum would
// expose. Blocks of rows read side by side (R streams 2 KB long at K 1024, each restarting R
// rows further on) kept the prefetchers short of the bandwidth: bfloat16 decode of the peer
// benchmark's dense model, 5 interleaved runs each, against 8-row blocks: 84.0 -> 98.9
// tokens/s at one thread, 142.0 -> 173.3 at two (1, 2, 4 and 8 rows with 8, 4, 2 and 1
// accumulators: 95.8, 92.8, 99.3 and 84.0 at one thread). The AVX2 form against its 4-row
// blocks (//benchmarks:decode_linear_benchmark, a Llama 3 8B layer, fraction of the read
// bandwidth): float32 0.79 -> 0.90 at one thread, 0.74 -> 0.85 at two; bfloat16, where
// widening the weights bounds it, 0.53 -> 0.63 and 0.53 -> 0.68.
constexpr int kStreamChains = 4;

// out[m * ldo + n] for rows n in [n0, n1): the dot products of weight rows with the M rows of
// xf (float32, [M][K]).
template <typename W>
void PortableRows(const float* xf, int m_rows, const W* w, int64_t k, int64_t n0, int64_t n1, float* out,
                  int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n) {
    const W* row = w + n * k;
    for (int m = 0; m < m_rows; ++m) {
      const float* x = xf + m * k;
      float acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += AsFloat(row[i]) * x[i];
      out[m * ldo + n] = acc;
    }
  }
}

#ifdef LLAMA_MOE_X86_INTRINSICS
#define LLAMA_MOE_DL_AVX2 __attribute__((target("avx2,fma")))
#define LLAMA_MOE_DL_AVX512 __attribute__((target("avx2,fma,avx512f")))

LLAMA_MOE_DL_AVX512 inline __m512 Load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
LLAMA_MOE_DL_AVX512 inline __m512 Load16(const uint16_t* p, __mmask16 mask) {
  __m256i h;
  if (mask == 0xffff) {
    h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  } else {  // the row's tail: AVX-512F has no masked 16-bit load
    alignas(32) uint16_t tmp[16] = {0};
    for (int i = 0; i < 16; ++i) tmp[i] = (mask >> i) & 1 ? p[i] : 0;
    h = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
  }
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int M, typename W>
LLAMA_MOE_DL_AVX512 void Avx512Block(const float* xf, const W* w, int64_t k, int64_t n, int rows, float* out, int64_t ldo) {
  constexpr int R = Avx512RowsPerBlock(M);
  __m512 acc[R][M];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const W* wr[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = w + (n + std::min(r, rows - 1)) * k;  // a short block repeats its last row
  const int64_t k16 = k / 16 * 16;
  for (int64_t i = 0; i < k16; i += 16) {
    __m512 xv[M];
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(xf + m * k + i);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = Load16(wr[r] + i, static_cast<__mmask16>(0xffff));
      #pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  if (k16 < k) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - k16)) - 1);
    __m512 xv[M];
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, xf + m * k + k16);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = Load16(wr[r] + k16, mask);
      #pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < rows; ++r)
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[m * ldo + n + r] = _mm512_reduce_add_ps(acc[r][m]);
}

// out[n] = W[n] . x for one float32 row x (StreamRows: kStreamChains sums per row).
template <typename W>
LLAMA_MOE_DL_AVX512 void Avx512StreamRows(const float* xf, const W* w, int64_t k, int64_t n0, int64_t n1, float* out) {
  constexpr int U = kStreamChains;
  const int64_t k_main = k / (16 * U) * (16 * U);
  for (int64_t n = n0; n < n1; ++n) {
    const W* row = w + n * k;
    __m512 acc[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[u] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k_main; i += 16 * U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        acc[u] = _mm512_fmadd_ps(Load16(row + i + 16 * u, static_cast<__mmask16>(0xffff)),
                                 _mm512_loadu_ps(xf + i + 16 * u), acc[u]);
      }
    }
    for (int64_t i = k_main; i < k; i += 16) {
      const __mmask16 mask = k - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (k - i)) - 1);
      acc[0] = _mm512_fmadd_ps(Load16(row + i, mask), _mm512_maskz_loadu_ps(mask, xf + i), acc[0]);
    }
    __m512 sum = acc[0];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u]);
    out[n] = _mm512_reduce_add_ps(sum);
  }
}

template <int M, typename W>
LLAMA_MOE_DL_AVX512 void Avx512Rows(const float* xf, const W* w, int64_t k, int64_t n0, int64_t n1, float* out,
                                    int64_t ldo) {
  if constexpr (M == 1) {
    Avx512StreamRows<W>(xf, w, k, n0, n1, out);
  } else {
    constexpr int R = Avx512RowsPerBlock(M);
    for (int64_t n = n0; n < n1; n += R) {
      Avx512Block<M, W>(xf, w, k, n, static_cast<int>(std::min<int64_t>(R, n1 - n)), out, ldo);
    }
  }
}

#define LLAMA_MOE_DL_AVX512BF16 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512bf16")))

// bfloat16 weights and rows of x: VDPBF16PS multiplies 32 pairs of bfloat16 exactly and adds
// them into 16 float32 sums, so nothing is widened and nothing is rounded but the sums.
template <int M>
LLAMA_MOE_DL_AVX512BF16 void DpBf16Block(const uint16_t* xb, const uint16_t* w, int64_t k, int64_t n, int rows,
                                         float* out, int64_t ldo) {
  constexpr int R = Avx512RowsPerBlock(M);
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const uint16_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = w + (n + std::min(r, rows - 1)) * k;
  const int64_t k32 = k / 32 * 32;
  for (int64_t i = 0; i < k32; i += 32) {
    __m512i xv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_si512(xb + m * k + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      PrefetchAhead(wr[r] + i);
      const __m512i wv = _mm512_loadu_si512(wr[r] + i);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], (__m512bh)wv, (__m512bh)xv[m]);
    }
  }
  if (k32 < k) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - k32)) - 1);
    __m512i xv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm512_maskz_loadu_epi16(mask, xb + m * k + k32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, wr[r] + k32);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], (__m512bh)wv, (__m512bh)xv[m]);
    }
  }
  for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[m * ldo + n + r] = _mm512_reduce_add_ps(acc[r][m]);
}

// out[n] = W[n] . x for one bfloat16 row x (StreamRows: kStreamChains sums per row).
LLAMA_MOE_DL_AVX512BF16 void DpBf16StreamRows(const uint16_t* xb, const uint16_t* w, int64_t k, int64_t n0, int64_t n1,
                                              float* out) {
  constexpr int U = kStreamChains;
  const int64_t k_main = k / (32 * U) * (32 * U);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* row = w + n * k;
    __m512 acc[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[u] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k_main; i += 32 * U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        acc[u] = _mm512_dpbf16_ps(acc[u], (__m512bh)_mm512_loadu_si512(row + i + 32 * u),
                                  (__m512bh)_mm512_loadu_si512(xb + i + 32 * u));
      }
    }
    for (int64_t i = k_main; i < k; i += 32) {
      const __mmask32 mask = k - i >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << (k - i)) - 1);
      acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_maskz_loadu_epi16(mask, row + i),
                                (__m512bh)_mm512_maskz_loadu_epi16(mask, xb + i));
    }
    __m512 sum = acc[0];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u]);
    out[n] = _mm512_reduce_add_ps(sum);
  }
}

template <int M>
void DpBf16Rows(const uint16_t* xb, const uint16_t* w, int64_t k, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  if constexpr (M == 1) {
    DpBf16StreamRows(xb, w, k, n0, n1, out);
  } else {
    constexpr int R = Avx512RowsPerBlock(M);
    for (int64_t n = n0; n < n1; n += R) {
      DpBf16Block<M>(xb, w, k, n, static_cast<int>(std::min<int64_t>(R, n1 - n)), out, ldo);
    }
  }
}

using Bf16RowsFn = void (*)(const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, float*, int64_t);

Bf16RowsFn PickDpBf16Rows(int m) {
  switch (m) {
    case 1: return &DpBf16Rows<1>;
    case 2: return &DpBf16Rows<2>;
    case 3: return &DpBf16Rows<3>;
    case 4: return &DpBf16Rows<4>;
    case 5: return &DpBf16Rows<5>;
    case 6: return &DpBf16Rows<6>;
    case 7: return &DpBf16Rows<7>;
    default: return &DpBf16Rows<8>;
  }
}

LLAMA_MOE_DL_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
LLAMA_MOE_DL_AVX2 inline __m256 Load8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

LLAMA_MOE_DL_AVX2 inline float Sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

template <int M, typename W>
LLAMA_MOE_DL_AVX2 void Avx2Block(const float* xf, const W* w, int64_t k, int64_t n, int rows, float* out, int64_t ldo) {
  constexpr int R = RowsPerBlock(M) > 4 ? 4 : RowsPerBlock(M);
  __m256 acc[R][M];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const int64_t k8 = k / 8 * 8;
  for (int64_t i = 0; i < k8; i += 8) {
    __m256 xv[M];
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(xf + m * k + i);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
      const __m256 wv = Load8(w + (n + r) * k + i);
      #pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < rows; ++r) {
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      float s = Sum8(acc[r][m]);
      for (int64_t i = k8; i < k; ++i) s += AsFloat(w[(n + r) * k + i]) * xf[m * k + i];
      out[m * ldo + n + r] = s;
    }
  }
}

// out[n] = W[n] . x for one float32 row x (StreamRows: kStreamChains sums per row).
template <typename W>
LLAMA_MOE_DL_AVX2 void Avx2StreamRows(const float* xf, const W* w, int64_t k, int64_t n0, int64_t n1, float* out) {
  constexpr int U = kStreamChains;
  const int64_t k_main = k / (8 * U) * (8 * U);
  for (int64_t n = n0; n < n1; ++n) {
    const W* row = w + n * k;
    __m256 acc[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[u] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k_main; i += 8 * U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[u] = _mm256_fmadd_ps(Load8(row + i + 8 * u), _mm256_loadu_ps(xf + i + 8 * u), acc[u]);
    }
    for (int64_t i = k_main; i + 8 <= k; i += 8) acc[0] = _mm256_fmadd_ps(Load8(row + i), _mm256_loadu_ps(xf + i), acc[0]);
    __m256 sum = acc[0];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[u]);
    float s = Sum8(sum);
    for (int64_t i = k / 8 * 8; i < k; ++i) s += AsFloat(row[i]) * xf[i];
    out[n] = s;
  }
}

template <int M, typename W>
LLAMA_MOE_DL_AVX2 void Avx2Rows(const float* xf, const W* w, int64_t k, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  if constexpr (M == 1) {
    Avx2StreamRows<W>(xf, w, k, n0, n1, out);
  } else {
    constexpr int R = RowsPerBlock(M) > 4 ? 4 : RowsPerBlock(M);
    for (int64_t n = n0; n < n1; n += R) {
      Avx2Block<M, W>(xf, w, k, n, static_cast<int>(std::min<int64_t>(R, n1 - n)), out, ldo);
    }
  }
}
#endif  // LLAMA_MOE_X86_INTRINSICS

using RowsFn = void (*)(const float*, const void*, int64_t, int64_t, int64_t, float*, int64_t);

template <int M, typename W>
void PortableAdapter(const float* xf, const void* w, int64_t k, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  PortableRows<W>(xf, M, static_cast<const W*>(w), k, n0, n1, out, ldo);
}
#ifdef LLAMA_MOE_X86_INTRINSICS
template <int M, typename W>
void Avx512Adapter(const float* xf, const void* w, int64_t k, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  Avx512Rows<M, W>(xf, static_cast<const W*>(w), k, n0, n1, out, ldo);
}
template <int M, typename W>
void Avx2Adapter(const float* xf, const void* w, int64_t k, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  Avx2Rows<M, W>(xf, static_cast<const W*>(w), k, n0, n1, out, ldo);
}
#endif

template <typename W>
RowsFn PickRows(DecodeLinearForm form, int m) {
  // One instantiation per row count keeps the accumulators in registers.
#define LLAMA_MOE_DL_CASES(ADAPTER)                 \
  switch (m) {                                      \
    case 1: return &ADAPTER<1, W>;                  \
    case 2: return &ADAPTER<2, W>;                  \
    case 3: return &ADAPTER<3, W>;                  \
    case 4: return &ADAPTER<4, W>;                  \
    case 5: return &ADAPTER<5, W>;                  \
    case 6: return &ADAPTER<6, W>;                  \
    case 7: return &ADAPTER<7, W>;                  \
    default: return &ADAPTER<8, W>;                 \
  }
  switch (form) {
#ifdef LLAMA_MOE_X86_INTRINSICS
    case DecodeLinearForm::kAvx512:
    case DecodeLinearForm::kAvx512Bf16: LLAMA_MOE_DL_CASES(Avx512Adapter)
    case DecodeLinearForm::kAvx2: LLAMA_MOE_DL_CASES(Avx2Adapter)
#endif
    default: LLAMA_MOE_DL_CASES(PortableAdapter)
  }
#undef LLAMA_MOE_DL_CASES
}

DecodeLinearForm BestForm() {
  static const DecodeLinearForm best = DecodeLinearFormSupported(DecodeLinearForm::kAvx512Bf16) ? DecodeLinearForm::kAvx512Bf16
                                       : DecodeLinearFormSupported(DecodeLinearForm::kAvx512) ? DecodeLinearForm::kAvx512
                                       : DecodeLinearFormSupported(DecodeLinearForm::kAvx2) ? DecodeLinearForm::kAvx2
                                                                                             : DecodeLinearForm::kPortable;
  return best;
}

}  // namespace

const char* DecodeLinearFormName(DecodeLinearForm form) {
  switch (form) {
    case DecodeLinearForm::kPortable: return "portable";
    case DecodeLinearForm::kAvx2: return "avx2";
    case DecodeLinearForm::kAvx512: return "avx512";
    case DecodeLinearForm::kAvx512Bf16: return "avx512_bf16";
  }
  return "?";
}

bool DecodeLinearFormSupported(DecodeLinearForm form) {
  switch (form) {
    case DecodeLinearForm::kPortable: return true;
#ifdef LLAMA_MOE_X86_INTRINSICS
    case DecodeLinearForm::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case DecodeLinearForm::kAvx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2");
    case DecodeLinearForm::kAvx512Bf16:
      return DecodeLinearFormSupported(DecodeLinearForm::kAvx512) && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512bf16");
#endif
    default: return false;
  }
}

namespace {
std::atomic<bool>& EnabledFlag() {
  static std::atomic<bool> enabled([] {
    const char* env = std::getenv("LLAMA_MOE_DECODE_LINEAR");
    return env == nullptr || std::string(env) != "0";
  }());
  return enabled;
}
}  // namespace

void SetDecodeLinearEnabled(bool enabled) { EnabledFlag().store(enabled); }
bool DecodeLinearEnabled() { return EnabledFlag().load(); }

at::Tensor ModelLinear(const at::Tensor& x, const at::Tensor& w) {
  return CanDecodeLinear(x, w) ? DecodeLinear(x, w) : at::linear(x, w);
}

bool CanDecodeLinear(const at::Tensor& x, const at::Tensor& w) {
  if (!DecodeLinearEnabled()) return false;
  if (!x.defined() || !w.defined() || !x.device().is_cpu() || !w.device().is_cpu()) return false;
  if (w.dim() != 2 || x.dim() < 1 || x.size(-1) != w.size(1) || !w.is_contiguous()) return false;
  if (x.scalar_type() != w.scalar_type()) return false;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) return false;
  if (c10::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  const int64_t rows = x.size(-1) == 0 ? 0 : x.numel() / x.size(-1);
  return rows >= 1 && rows <= kDecodeLinearMaxRows;
}

at::Tensor DecodeLinearWith(DecodeLinearForm form, const at::Tensor& x, const at::Tensor& w) {
  const int64_t k = w.size(1), n = w.size(0);
  const int m = static_cast<int>(x.numel() / k);
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  at::Tensor y32 = at::empty({m, n}, x.options().dtype(at::kFloat));
  float* out = y32.data_ptr<float>();
  // Chunks of at least ~64K weights, so that a chunk's reads dwarf handing it to a thread.
  const int64_t grain = std::max<int64_t>(8, 65536 / std::max<int64_t>(1, k));
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = n;
#ifdef LLAMA_MOE_X86_INTRINSICS
  if (bf16 && form == DecodeLinearForm::kAvx512Bf16) {
    const at::Tensor xb = x.reshape({m, k}).contiguous();
    const uint16_t* xp = reinterpret_cast<const uint16_t*>(xb.data_ptr());
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
    const Bf16RowsFn rows = PickDpBf16Rows(m);
    at::parallel_for(0, n, grain, [&](int64_t n0, int64_t n1) { rows(xp, wp, k, n0, n1, out, n); });
    at::Tensor y = at::empty(shape, x.options());
    uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
    for (int64_t i = 0; i < static_cast<int64_t>(m) * n; ++i) yp[i] = RoundToBf16(out[i]);
    return y;
  }
#endif
  const at::Tensor xf = x.reshape({m, k}).to(at::kFloat).contiguous();
  const RowsFn rows = bf16 ? PickRows<uint16_t>(form, m) : PickRows<float>(form, m);
  const float* xp = xf.data_ptr<float>();
  const void* wp = w.data_ptr();
  at::parallel_for(0, n, grain, [&](int64_t n0, int64_t n1) { rows(xp, wp, k, n0, n1, out, n); });
  if (!bf16) return y32.view(shape);
  at::Tensor y = at::empty(shape, x.options());
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  for (int64_t i = 0; i < static_cast<int64_t>(m) * n; ++i) yp[i] = RoundToBf16(out[i]);
  return y;
}

at::Tensor DecodeLinear(const at::Tensor& x, const at::Tensor& w) { return DecodeLinearWith(BestForm(), x, w); }

}  // namespace llama_moe
