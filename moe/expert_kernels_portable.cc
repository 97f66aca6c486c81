// The portable form of the expert kernel: plain C++ dot tiles that run on any CPU.
#include "moe/expert_kernel_forms.h"

namespace llama_moe {
namespace kernel_internal {
namespace {

template <typename W, int R, int NT>
void DotTilePortable(const W* const* rows, const float* const* v, int64_t len, float* out) {
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) {
      float s[4] = {0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 4 <= len; i += 4) {
        for (int k = 0; k < 4; ++k) s[k] += AsFloat(rows[r][i + k]) * v[t][i + k];
      }
      for (; i < len; ++i) s[0] += AsFloat(rows[r][i]) * v[t][i];
      out[r * NT + t] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  }
}

template <typename W>
constexpr Tiles<W, float> kPortable = {
    {nullptr, &DotTilePortable<W, 1, 1>, &DotTilePortable<W, 1, 2>, &DotTilePortable<W, 1, 3>,
     &DotTilePortable<W, 1, 4>},
    {nullptr, &DotTilePortable<W, 2, 1>, &DotTilePortable<W, 2, 2>, &DotTilePortable<W, 2, 3>,
     &DotTilePortable<W, 2, 4>}};

}  // namespace

const Tiles<float, float>& PortableTilesF32() { return kPortable<float>; }
const Tiles<uint16_t, float>& PortableTilesBf16() { return kPortable<uint16_t>; }

}  // namespace kernel_internal
}  // namespace llama_moe
