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

namespace {

// Adds the V-only contribution of one (head, query row) to its output row.
inline void add_vonly(float* o, const float* vh, int n, const float* w, int D, int mode) {
  if (n == 0 && mode == 0) return;
  float mass = 0.f;
  for (int j = 0; j < n; ++j) mass += w[j];
  if (mode == 1) {
    const float keep = 1.f - mass;
#pragma omp simd
    for (int d = 0; d < D; ++d) o[d] *= keep;
  }
  for (int j = 0; j < n; ++j) {
    const float p = w[j];
    const float* vr = vh + static_cast<int64_t>(j) * D;
#pragma omp simd
    for (int d = 0; d < D; ++d) o[d] += p * vr[d];
  }
}

}  // namespace

void mixed_attention_f32(const float* q, const float* k, const float* v, int cap, int T, const int32_t* past, int Hq,
                         int Hkv, int D, float scale, const float* vo, int vcap, const int32_t* nV, const float* w,
                         int mode, float* out, float* probs, float* scores, int scoreStart, int window) {
  const int group = Hq / Hkv;
  int maxPast = 0, vmax = 0;
  for (int g = 0; g < Hkv; ++g) {
    maxPast = std::max(maxPast, past[g]);
    if (vo != nullptr) vmax = std::max(vmax, nV[g]);
  }
  const int Lmax = maxPast + T;
  const int64_t headStride = static_cast<int64_t>(cap) * D;
  const int64_t vStride = static_cast<int64_t>(vcap) * D;

  // Query row t sees keys [lo, n): all earlier ones, or the last `window` (sliding window).
  auto row = [&](int h, int t, float* wbuf, int* lo_out) {
    const int g = h / group;
    const int n = past[g] + t + 1;
    const int lo = window > 0 && n > window ? n - window : 0;
    float* o = out + (static_cast<int64_t>(t) * Hq + h) * D;
    attend_row(q + (static_cast<int64_t>(t) * Hq + h) * D, k + g * headStride + static_cast<int64_t>(lo) * D,
               v + g * headStride + static_cast<int64_t>(lo) * D, n - lo, D, scale, wbuf, o);
    if (vo != nullptr) add_vonly(o, vo + g * vStride, nV[g], w + (static_cast<int64_t>(h) * T + t) * vmax, D, mode);
    if (probs != nullptr) {
      float* pr = probs + (static_cast<int64_t>(h) * T + t) * Lmax;
      std::memset(pr, 0, sizeof(float) * lo);
      std::memcpy(pr + lo, wbuf, sizeof(float) * (n - lo));
      std::memset(pr + n, 0, sizeof(float) * (Lmax - n));
    }
    *lo_out = lo;
    return n;
  };

  if (scores != nullptr) {
    // Parallel over heads only: each head owns its score row, so accumulation is race-free.
#pragma omp parallel
    {
      std::vector<float> wbuf(Lmax);
#pragma omp for schedule(static)
      for (int h = 0; h < Hq; ++h) {
        float* sr = scores + static_cast<int64_t>(h) * Lmax;
        for (int t = 0; t < T; ++t) {
          int lo = 0;
          const int n = row(h, t, wbuf.data(), &lo);
          if (t >= scoreStart)
            for (int j = lo; j < n; ++j) sr[j] += wbuf[j - lo];
        }
      }
    }
    return;
  }
#pragma omp parallel
  {
    std::vector<float> wbuf(Lmax);
#pragma omp for collapse(2) schedule(static)
    for (int h = 0; h < Hq; ++h)
      for (int t = 0; t < T; ++t) {
        int lo = 0;
        row(h, t, wbuf.data(), &lo);
      }
  }
}

void attention_f32(const float* q, const float* k, const float* v, int cap, int T, const int32_t* past, int Hq,
                   int Hkv, int D, float scale, float* out, float* probs, float* scores, int scoreStart, int window) {
  mixed_attention_f32(q, k, v, cap, T, past, Hq, Hkv, D, scale, nullptr, 0, nullptr, nullptr, 0, out, probs, scores,
                      scoreStart, window);
}

}  // namespace skv
