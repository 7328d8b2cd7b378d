#include <cmath>
#include <vector>

#include "kernels.h"

namespace skv {

void rope_f32(float* x, const int32_t* pos, int T, int H, int D, double theta, const float* inv_freq,
              double scale) {
  const int half = D / 2;
  // Frequencies: theta^(-2i/D), or a given table (scaled RoPE: linear, NTK, llama3, YaRN);
  // `scale` multiplies cos and sin (YaRN's attention factor).
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) inv[i] = inv_freq ? static_cast<double>(inv_freq[i]) : std::pow(theta, -2.0 * i / D);
  for_each_index(T, T * H * D > 16384, [&](int t) {
    // cos/sin per token, computed in double then rounded: matches an fp32 reference to ~1e-7.
    std::vector<float> c(half), s(half);
    for (int i = 0; i < half; ++i) {
      const double a = static_cast<double>(pos[t]) * inv[i];
      c[i] = static_cast<float>(std::cos(a) * scale);
      s[i] = static_cast<float>(std::sin(a) * scale);
    }
    for (int h = 0; h < H; ++h) {
      float* r = x + (static_cast<int64_t>(t) * H + h) * D;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float x1 = r[i], x2 = r[i + half];
        r[i] = x1 * c[i] - x2 * s[i];
        r[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  });
}

}  // namespace skv
