#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace skv {

namespace {

inline float dot(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// One query row against keys [0, n): writes the output row and leaves the normalised
// probabilities in w[0..n).
inline void attend_row(const float* qr, const float* kh, const float* vh, int n, int D, float scale, float* w,
                       float* o) {
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) {
    const float s = dot(qr, kh + static_cast<int64_t>(j) * D, D) * scale;
    w[j] = s;
    m = std::max(m, s);
  }
  float sum = 0.f;
  for (int j = 0; j < n; ++j) {
    w[j] = std::exp(w[j] - m);
    sum += w[j];
  }
  const float inv = 1.f / sum;
  std::memset(o, 0, sizeof(float) * D);
  for (int j = 0; j < n; ++j) {
    w[j] *= inv;
    const float p = w[j];
    const float* vr = vh + static_cast<int64_t>(j) * D;
#pragma omp simd
    for (int d = 0; d < D; ++d) o[d] += p * vr[d];
  }
}

}  // namespace

void attention_f32(const float* q, const float* k, const float* v, int cap, int T, const int32_t* past, int Hq,
                   int Hkv, int D, float scale, float* out, float* probs, float* scores) {
  const int group = Hq / Hkv;
  int maxPast = 0;
  for (int g = 0; g < Hkv; ++g) maxPast = std::max(maxPast, past[g]);
  const int Lmax = maxPast + T;
  const int64_t headStride = static_cast<int64_t>(cap) * D;

  if (scores != nullptr) {
    // Parallel over heads only: each head owns its score row, so accumulation is race-free.
#pragma omp parallel
    {
      std::vector<float> w(Lmax);
#pragma omp for schedule(static)
      for (int h = 0; h < Hq; ++h) {
        const int g = h / group;
        float* sr = scores + static_cast<int64_t>(h) * Lmax;
        for (int t = 0; t < T; ++t) {
          const int n = past[g] + t + 1;
          attend_row(q + (static_cast<int64_t>(t) * Hq + h) * D, k + g * headStride, v + g * headStride, n, D,
                     scale, w.data(), out + (static_cast<int64_t>(t) * Hq + h) * D);
          for (int j = 0; j < n; ++j) sr[j] += w[j];
          if (probs != nullptr) {
            float* pr = probs + (static_cast<int64_t>(h) * T + t) * Lmax;
            std::memcpy(pr, w.data(), sizeof(float) * n);
            std::memset(pr + n, 0, sizeof(float) * (Lmax - n));
          }
        }
      }
    }
    return;
  }

#pragma omp parallel
  {
    std::vector<float> w(Lmax);
#pragma omp for collapse(2) schedule(static)
    for (int h = 0; h < Hq; ++h) {
      for (int t = 0; t < T; ++t) {
        const int g = h / group;
        const int n = past[g] + t + 1;
        attend_row(q + (static_cast<int64_t>(t) * Hq + h) * D, k + g * headStride, v + g * headStride, n, D, scale,
                   w.data(), out + (static_cast<int64_t>(t) * Hq + h) * D);
        if (probs != nullptr) {
          float* pr = probs + (static_cast<int64_t>(h) * T + t) * Lmax;
          std::memcpy(pr, w.data(), sizeof(float) * n);
          std::memset(pr + n, 0, sizeof(float) * (Lmax - n));
        }
      }
    }
  }
}

}  // namespace skv
