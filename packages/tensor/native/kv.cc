#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace skv {

void kv_write_f32(float* store, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst) {
  for (int t = 0; t < T; ++t) {
    for (int g = 0; g < Hkv; ++g) {
      std::memcpy(store + (static_cast<int64_t>(g) * cap + dst[t]) * D, src + (static_cast<int64_t>(t) * Hkv + g) * D,
                  sizeof(float) * D);
    }
  }
}

void kv_write_q8(int8_t* store, float* scales, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst) {
  for (int t = 0; t < T; ++t) {
    for (int g = 0; g < Hkv; ++g) {
      const float* x = src + (static_cast<int64_t>(t) * Hkv + g) * D;
      float amax = 0.f;
      for (int d = 0; d < D; ++d) amax = std::max(amax, std::fabs(x[d]));
      const float scale = amax > 0.f ? amax / 127.f : 1.f;
      const float inv = 1.f / scale;
      int8_t* q = store + (static_cast<int64_t>(g) * cap + dst[t]) * D;
      for (int d = 0; d < D; ++d) q[d] = static_cast<int8_t>(std::lrintf(std::min(127.f, std::max(-127.f, x[d] * inv))));
      scales[static_cast<int64_t>(g) * cap + dst[t]] = scale;
    }
  }
}

void kv_gather_f32(const float* src, int scap, float* dst, int dcap, int Hkv, int D, const int32_t* idx,
                   const int32_t* off, const int32_t* dstStart) {
  for_each_index(Hkv, off[Hkv] * D > 65536, [&](int g) {
    const float* s = src + static_cast<int64_t>(g) * scap * D;
    float* d = dst + (static_cast<int64_t>(g) * dcap + dstStart[g]) * D;
    for (int i = off[g]; i < off[g + 1]; ++i, d += D) {
      std::memcpy(d, s + static_cast<int64_t>(idx[i]) * D, sizeof(float) * D);
    }
  });
}

void kv_copy_rows(const float* src, const int8_t* src8, const float* scales, int scap, float* dst, int dcap, int D,
                  const int32_t* moves, int count) {
  for (int i = 0; i < count; ++i) {
    const int32_t* m = moves + 4 * i;
    float* d = dst + (static_cast<int64_t>(m[0]) * dcap + m[1]) * D;
    const int64_t at = static_cast<int64_t>(m[2]) * scap + m[3];
    if (src8 == nullptr) {
      std::memcpy(d, src + at * D, sizeof(float) * D);
    } else {
      const int8_t* q = src8 + at * D;
      const float f = scales[at];
      for (int j = 0; j < D; ++j) d[j] = static_cast<float>(q[j]) * f;
    }
  }
}

}  // namespace skv
