#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kernels.h"

namespace skv {

namespace {

// e^x for x <= 0 (softmax after subtracting the row maximum), written so the compiler
// vectorises the loop around it: range reduction to 2^n * e^r, |r| <= ln2/2, a degree-6
// polynomial for e^r (relative error ~2e-7, like expf), 2^n through the exponent bits.
inline float exp_neg(float x) {
  x = std::max(x, -87.f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Softmax in place over w[0..n): returns nothing, leaves probabilities.
inline void softmax(float* w, int n) {
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) m = std::max(m, w[j]);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; ++j) {
    const float e = exp_neg(w[j] - m);
    w[j] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int j = 0; j < n; ++j) w[j] *= inv;
}

// The G query heads of one kv head, one query row, over n keys: row j of kh/vh (slots null)
// or row slots[j] (an index list into the store). Each key and value row is read once for
// the whole group. Leaves head i's probabilities in w[i*n..], writes the output rows o[i].
// kD > 0: the head dim known at compile time (the loops over d unroll; small heads such as
// 8 spend most of their time in loop overhead otherwise); 0: D at run time.
template <int kD>
inline void attend_group_d(const float* const* qr, int G, const float* kh, const float* vh, const int32_t* slots,
                           int n, int Drt, float scale, float* w, float* const* o) {
  const int D = kD > 0 ? kD : Drt;
  constexpr int kAhead = 6;  // rows prefetched ahead on an index list (random rows defeat the prefetcher)
  for (int j = 0; j < n; ++j) {
    const float* kr = kh + static_cast<int64_t>(slots ? slots[j] : j) * D;
    if (slots && j + kAhead < n) {
      const char* nx = reinterpret_cast<const char*>(kh + static_cast<int64_t>(slots[j + kAhead]) * D);
      for (int b = 0; b < D * 4; b += 64) __builtin_prefetch(nx + b);
    }
    for (int i = 0; i < G; ++i) {
      const float* qi = qr[i];
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int d = 0; d < D; ++d) s += qi[d] * kr[d];
      w[static_cast<int64_t>(i) * n + j] = s * scale;
    }
  }
  for (int i = 0; i < G; ++i) {
    softmax(w + static_cast<int64_t>(i) * n, n);
    std::memset(o[i], 0, sizeof(float) * D);
  }
  for (int j = 0; j < n; ++j) {
    const float* vr = vh + static_cast<int64_t>(slots ? slots[j] : j) * D;
    if (slots && j + kAhead < n) {
      const char* nx = reinterpret_cast<const char*>(vh + static_cast<int64_t>(slots[j + kAhead]) * D);
      for (int b = 0; b < D * 4; b += 64) __builtin_prefetch(nx + b);
    }
    for (int i = 0; i < G; ++i) {
      const float p = w[static_cast<int64_t>(i) * n + j];
      float* oi = o[i];
#pragma omp simd
      for (int d = 0; d < D; ++d) oi[d] += p * vr[d];
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Head dims up to 8 (stories260K and its assistants: 8 and 6), contiguous rows: one ymm per
// key row (masked below 8: the load never touches the next row's lanes), eight scores at once
// through a horizontal-add tree, and the outputs in registers. The generic loop spends its
// time on one horizontal sum per score and on the output rows' store-to-load chain: measured
// 5.0-5.9 ns per key and head against 1.7-2.1 here at D = 8 (2 heads, 200-1000 keys).
template <int kD>
inline __m256 load_row(const float* p, __m256i mask) {
  if constexpr (kD == 8) {
    (void)mask;
    return _mm256_loadu_ps(p);
  } else {
    return _mm256_maskload_ps(p, mask);
  }
}

template <int kD, int kG>
inline void attend_group_small(const float* const* qr, const float* kh, const float* vh, int n, float scale, float* w,
                               float* const* o) {
  const __m256i mask = _mm256_setr_epi32(0 < kD ? -1 : 0, 1 < kD ? -1 : 0, 2 < kD ? -1 : 0, 3 < kD ? -1 : 0,
                                         4 < kD ? -1 : 0, 5 < kD ? -1 : 0, 6 < kD ? -1 : 0, 7 < kD ? -1 : 0);
  __m256 q[kG];
  for (int i = 0; i < kG; ++i) q[i] = _mm256_mul_ps(load_row<kD>(qr[i], mask), _mm256_set1_ps(scale));
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const float* kr = kh + static_cast<int64_t>(j) * kD;
    const __m256 k0 = load_row<kD>(kr, mask), k1 = load_row<kD>(kr + kD, mask),
                 k2 = load_row<kD>(kr + 2 * kD, mask), k3 = load_row<kD>(kr + 3 * kD, mask),
                 k4 = load_row<kD>(kr + 4 * kD, mask), k5 = load_row<kD>(kr + 5 * kD, mask),
                 k6 = load_row<kD>(kr + 6 * kD, mask), k7 = load_row<kD>(kr + 7 * kD, mask);
    for (int i = 0; i < kG; ++i) {
      __m256 t0 = _mm256_hadd_ps(_mm256_mul_ps(k0, q[i]), _mm256_mul_ps(k1, q[i]));
      const __m256 t1 = _mm256_hadd_ps(_mm256_mul_ps(k2, q[i]), _mm256_mul_ps(k3, q[i]));
      __m256 t2 = _mm256_hadd_ps(_mm256_mul_ps(k4, q[i]), _mm256_mul_ps(k5, q[i]));
      const __m256 t3 = _mm256_hadd_ps(_mm256_mul_ps(k6, q[i]), _mm256_mul_ps(k7, q[i]));
      t0 = _mm256_hadd_ps(t0, t1);
      t2 = _mm256_hadd_ps(t2, t3);
      const __m256 lo = _mm256_permute2f128_ps(t0, t2, 0x20), hi = _mm256_permute2f128_ps(t0, t2, 0x31);
      _mm256_storeu_ps(w + static_cast<int64_t>(i) * n + j, _mm256_add_ps(lo, hi));
    }
  }
  for (; j < n; ++j) {
    const __m256 kr = load_row<kD>(kh + static_cast<int64_t>(j) * kD, mask);
    for (int i = 0; i < kG; ++i) {
      const __m256 p = _mm256_mul_ps(kr, q[i]);
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
      s = _mm_hadd_ps(s, s);
      s = _mm_hadd_ps(s, s);
      w[static_cast<int64_t>(i) * n + j] = _mm_cvtss_f32(s);
    }
  }
  for (int i = 0; i < kG; ++i) softmax(w + static_cast<int64_t>(i) * n, n);
  // Two accumulators per head: the multiply-adds of consecutive keys overlap.
  __m256 a0[kG], a1[kG];
  for (int i = 0; i < kG; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
  j = 0;
  for (; j + 2 <= n; j += 2) {
    const __m256 v0 = load_row<kD>(vh + static_cast<int64_t>(j) * kD, mask);
    const __m256 v1 = load_row<kD>(vh + static_cast<int64_t>(j + 1) * kD, mask);
    for (int i = 0; i < kG; ++i) {
      a0[i] = _mm256_fmadd_ps(_mm256_set1_ps(w[static_cast<int64_t>(i) * n + j]), v0, a0[i]);
      a1[i] = _mm256_fmadd_ps(_mm256_set1_ps(w[static_cast<int64_t>(i) * n + j + 1]), v1, a1[i]);
    }
  }
  if (j < n) {
    const __m256 v0 = load_row<kD>(vh + static_cast<int64_t>(j) * kD, mask);
    for (int i = 0; i < kG; ++i) a0[i] = _mm256_fmadd_ps(_mm256_set1_ps(w[static_cast<int64_t>(i) * n + j]), v0, a0[i]);
  }
  for (int i = 0; i < kG; ++i) {
    if constexpr (kD == 8) _mm256_storeu_ps(o[i], _mm256_add_ps(a0[i], a1[i]));
    else _mm256_maskstore_ps(o[i], mask, _mm256_add_ps(a0[i], a1[i]));
  }
}

template <int kD>
inline void attend_group_small_g(const float* const* qr, int G, const float* kh, const float* vh, int n, float scale,
                                 float* w, float* const* o) {
  switch (G) {
    case 1:
      return attend_group_small<kD, 1>(qr, kh, vh, n, scale, w, o);
    case 2:
      return attend_group_small<kD, 2>(qr, kh, vh, n, scale, w, o);
    case 3:
      return attend_group_small<kD, 3>(qr, kh, vh, n, scale, w, o);
    default:
      return attend_group_small<kD, 4>(qr, kh, vh, n, scale, w, o);
  }
}

// Head dims that fill whole ymm registers (D % 8 == 0, D >= 32), float or int8 rows, in the
// store's order or through an index list. Scores eight keys at a time: each key's products
// accumulate across D in its own register and one horizontal-add tree turns the eight into
// eight scores (the generic loop pays a horizontal sum per key and head). Each block of keys
// is read once for all G heads. The weighted sum of values runs over tiles of keys with a
// head's outputs in registers (a tile stays in cache for the next head), instead of a load
// and store of the output row for every key and head.
inline __m256 hsum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// out[0 .. 8kN) += sum over keys [j0, j1) of w[j] (times the row's scale) * value row.
template <int kN, typename T>
inline void weighted_values(const float* wi, const T* vh, const float* vsh, const int32_t* slots, int j0, int j1,
                            int D, int d0, float* out) {
  __m256 acc[kN];
  for (int c = 0; c < kN; ++c) acc[c] = _mm256_loadu_ps(out + 8 * c);
  constexpr int kAhead = 48;
  for (int j = j0; j < j1; ++j) {
    const int r = slots ? slots[j] : j;
    if (slots && j + kAhead < j1) {
      const char* nx = reinterpret_cast<const char*>(vh + static_cast<int64_t>(slots[j + kAhead]) * D + d0);
      for (int b = 0; b < kN * 8 * static_cast<int>(sizeof(T)); b += 64) __builtin_prefetch(nx + b);
    }
    const __m256 p = _mm256_set1_ps(vsh != nullptr ? wi[j] * vsh[r] : wi[j]);
    const T* row = vh + static_cast<int64_t>(r) * D + d0;
    for (int c = 0; c < kN; ++c) acc[c] = _mm256_fmadd_ps(p, load8(row + 8 * c), acc[c]);
  }
  for (int c = 0; c < kN; ++c) _mm256_storeu_ps(out + 8 * c, acc[c]);
}

template <typename T>
inline void attend_group_wide(const float* const* qr, int G, const T* kh, const float* ksh, const T* vh,
                              const float* vsh, const int32_t* slots, int n, int D, float scale, float* w,
                              float* const* o) {
  constexpr int kAhead = 48;  // index-list rows prefetched ahead (random rows defeat the prefetcher)
  const int n8 = n & ~7;
  for (int j = 0; j < n8; j += 8) {
    const T* rows[8];
    for (int k = 0; k < 8; ++k) rows[k] = kh + static_cast<int64_t>(slots ? slots[j + k] : j + k) * D;
    if (slots && j + kAhead + 8 <= n)
      for (int k = 0; k < 8; ++k) {
        const char* nx = reinterpret_cast<const char*>(kh + static_cast<int64_t>(slots[j + kAhead + k]) * D);
        for (int b = 0; b < D * static_cast<int>(sizeof(T)); b += 64) __builtin_prefetch(nx + b);
      }
    __m256 f = _mm256_set1_ps(scale);
    if (ksh != nullptr) {
      alignas(32) float sc[8];
      for (int k = 0; k < 8; ++k) sc[k] = ksh[slots ? slots[j + k] : j + k];
      f = _mm256_mul_ps(f, _mm256_load_ps(sc));
    }
    for (int i = 0; i < G; ++i) {
      const float* q = qr[i];
      __m256 acc[8];
      for (int k = 0; k < 8; ++k) acc[k] = _mm256_setzero_ps();
      for (int d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int k = 0; k < 8; ++k) acc[k] = _mm256_fmadd_ps(qv, load8(rows[k] + d), acc[k]);
      }
      _mm256_storeu_ps(w + static_cast<int64_t>(i) * n + j, _mm256_mul_ps(hsum8(acc), f));
    }
  }
  for (int j = n8; j < n; ++j) {
    const int r = slots ? slots[j] : j;
    const T* kr = kh + static_cast<int64_t>(r) * D;
    const float f = ksh != nullptr ? ksh[r] * scale : scale;
    for (int i = 0; i < G; ++i) {
      float s = 0.f;
      for (int d = 0; d < D; ++d) s += qr[i][d] * static_cast<float>(kr[d]);
      w[static_cast<int64_t>(i) * n + j] = s * f;
    }
  }
  for (int i = 0; i < G; ++i) {
    softmax(w + static_cast<int64_t>(i) * n, n);
    std::memset(o[i], 0, sizeof(float) * D);
  }
  // Tiles of keys small enough to stay in cache while every head of the group reads them.
  constexpr int kTile = 128;
  for (int j0 = 0; j0 < n; j0 += kTile) {
    const int j1 = std::min(n, j0 + kTile);
    for (int i = 0; i < G; ++i) {
      const float* wi = w + static_cast<int64_t>(i) * n;
      int d0 = 0;
      for (; d0 + 64 <= D; d0 += 64) weighted_values<8>(wi, vh, vsh, slots, j0, j1, D, d0, o[i] + d0);
      if (d0 + 32 <= D) {
        weighted_values<4>(wi, vh, vsh, slots, j0, j1, D, d0, o[i] + d0);
        d0 += 32;
      }
      for (; d0 < D; d0 += 8) weighted_values<1>(wi, vh, vsh, slots, j0, j1, D, d0, o[i] + d0);
    }
  }
}

inline bool wide_dim(int D) { return D >= 32 && D % 8 == 0; }
#endif

inline void attend_group(const float* const* qr, int G, const float* kh, const float* vh, const int32_t* slots, int n,
                         int D, float scale, float* w, float* const* o) {
#if defined(__AVX2__) && defined(__FMA__)
  if (slots == nullptr && G <= 4) {
    if (D == 8) return attend_group_small_g<8>(qr, G, kh, vh, n, scale, w, o);
    if (D == 6) return attend_group_small_g<6>(qr, G, kh, vh, n, scale, w, o);
  }
  if (wide_dim(D)) return attend_group_wide<float>(qr, G, kh, nullptr, vh, nullptr, slots, n, D, scale, w, o);
#endif
  switch (D) {
    case 6:  // stories260K-slm-a
      return attend_group_d<6>(qr, G, kh, vh, slots, n, D, scale, w, o);
    case 8:
      return attend_group_d<8>(qr, G, kh, vh, slots, n, D, scale, w, o);
    case 16:
      return attend_group_d<16>(qr, G, kh, vh, slots, n, D, scale, w, o);
    case 32:
      return attend_group_d<32>(qr, G, kh, vh, slots, n, D, scale, w, o);
    case 64:
      return attend_group_d<64>(qr, G, kh, vh, slots, n, D, scale, w, o);
    case 128:
      return attend_group_d<128>(qr, G, kh, vh, slots, n, D, scale, w, o);
    default:
      return attend_group_d<0>(qr, G, kh, vh, slots, n, D, scale, w, o);
  }
}

// Adds the V-only contribution of one (head, query row) to its output row: n rows, row j's
// weight w[j] times the value row that `row(j)` gives (pointer and scale).
template <typename Row>
inline void add_vonly_rows(float* o, int n, const float* w, int D, int mode, Row row) {
  if (n == 0 && mode == 0) return;
  float mass = 0.f;
  for (int j = 0; j < n; ++j) mass += w[j];
  if (mode == 1) {
    const float keep = 1.f - mass;
#pragma omp simd
    for (int d = 0; d < D; ++d) o[d] *= keep;
  }
  for (int j = 0; j < n; ++j) row(j, w[j], o);
}

// Float value rows: row j of vh, or row slots[j].
inline void add_vonly(float* o, const float* vh, const int32_t* slots, int n, const float* w, int D, int mode) {
  add_vonly_rows(o, n, w, D, mode, [=](int j, float p, float* out) {
    const float* vr = vh + static_cast<int64_t>(slots ? slots[j] : j) * D;
#pragma omp simd
    for (int d = 0; d < D; ++d) out[d] += p * vr[d];
  });
}

// attend_group over an int8 store: row r of K is kh[r*D ..] * ksh[r] (a scale per token and
// head), likewise V. Same order of work and the same softmax as the float path.
inline void attend_group_q8(const float* const* qr, int G, const int8_t* kh, const float* ksh, const int8_t* vh,
                            const float* vsh, const int32_t* slots, int n, int D, float scale, float* w,
                            float* const* o) {
#if defined(__AVX2__) && defined(__FMA__)
  if (wide_dim(D)) return attend_group_wide<int8_t>(qr, G, kh, ksh, vh, vsh, slots, n, D, scale, w, o);
#endif
  constexpr int kAhead = 8;
  for (int j = 0; j < n; ++j) {
    const int r = slots ? slots[j] : j;
    const int8_t* kr = kh + static_cast<int64_t>(r) * D;
    if (slots && j + kAhead < n) __builtin_prefetch(kh + static_cast<int64_t>(slots[j + kAhead]) * D);
    const float f = ksh[r] * scale;
    for (int i = 0; i < G; ++i) {
      const float* qi = qr[i];
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int d = 0; d < D; ++d) s += qi[d] * static_cast<float>(kr[d]);
      w[static_cast<int64_t>(i) * n + j] = s * f;
    }
  }
  for (int i = 0; i < G; ++i) {
    softmax(w + static_cast<int64_t>(i) * n, n);
    std::memset(o[i], 0, sizeof(float) * D);
  }
  for (int j = 0; j < n; ++j) {
    const int r = slots ? slots[j] : j;
    const int8_t* vr = vh + static_cast<int64_t>(r) * D;
    if (slots && j + kAhead < n) __builtin_prefetch(vh + static_cast<int64_t>(slots[j + kAhead]) * D);
    const float f = vsh[r];
    for (int i = 0; i < G; ++i) {
      const float p = w[static_cast<int64_t>(i) * n + j] * f;
      float* oi = o[i];
#pragma omp simd
      for (int d = 0; d < D; ++d) oi[d] += p * static_cast<float>(vr[d]);
    }
  }
}

// add_vonly over int8 rows of the store (indexed): row slots[j] times its scale.
inline void add_vonly_q8(float* o, const int8_t* vh, const float* vsh, const int32_t* slots, int n, const float* w,
                         int D, int mode) {
  add_vonly_rows(o, n, w, D, mode, [=](int j, float p, float* out) {
    const int r = slots[j];
    const float f = p * vsh[r];
    const int8_t* vr = vh + static_cast<int64_t>(r) * D;
#pragma omp simd
    for (int d = 0; d < D; ++d) out[d] += f * static_cast<float>(vr[d]);
  });
}

// Below this many multiply-adds a call runs on the calling thread: waking the team costs
// more than it saves (decode over a short hot set, small test shapes). Measured per decode
// step on two cores (runs alternated): the 100M model at 1 x 512 (~1M per layer) spent 1.3-1.5
// ms in attention on one thread against 2.2-2.4 ms with the team at the old 2^17; at 1 x 2048
// (~3M) the team still wins (3.3 against 4.1-4.5 ms); stories260K verifying 4 x 3 rows:
// 0.51 ms on one thread against 0.83-1.3 ms.
constexpr int64_t kParallelWork = 1 << 20;

}  // namespace

namespace {

// Query rows [t0, t1) of list g of one job (a kv head, or a query head for per-query-head
// lists): its query heads see keys [lo, n) of the store, all earlier ones or the last
// `window`; or, for an indexed job, the list's store slots and then the step's own rows.
// wbuf holds group * Lmax floats, sbuf Lmax slots.
void attend_cell(const AttentionJob& a, int g, int t0, int t1, float* wbuf, int32_t* sbuf) {
  const int group = a.Hq / a.Hkv;
  const int storeHeads = a.storeHeads > 0 ? a.storeHeads : a.Hkv;
  const int sh = static_cast<int>(static_cast<int64_t>(g) * storeHeads / a.Hkv);
  const int64_t headStride = static_cast<int64_t>(a.cap) * a.D;
  const int64_t vStride = static_cast<int64_t>(a.vcap) * a.D;
  const int D = a.D;
  const bool indexed = a.idx != nullptr;
  if (indexed) {
    const int nOld = a.past[g];
    for (int j = 0; j < nOld; ++j) sbuf[j] = a.idx[a.off[g] + j];
    for (int t = 0; t < a.T; ++t) sbuf[nOld + t] = a.newAt + t;
  }
  for (int t = t0; t < t1; ++t) {
    const int n = a.past[g] + t + 1;
    const int lo = !indexed && a.window > 0 && n > a.window ? n - a.window : 0;
    const int len = n - lo;
    const float* qr[64];
    float* o[64];
    for (int i = 0; i < group; i += 64) {
      const int G = std::min(64, group - i);
      for (int x = 0; x < G; ++x) {
        const int64_t at = (static_cast<int64_t>(t) * a.Hq + g * group + i + x) * D;
        qr[x] = a.q + at;
        o[x] = a.out + at;
      }
      float* wi = wbuf + static_cast<int64_t>(i) * len;
      const int64_t rowAt = sh * headStride + static_cast<int64_t>(lo) * D;
      const int64_t scaleAt = static_cast<int64_t>(sh) * a.cap + lo;
      if (a.k8 != nullptr)
        attend_group_q8(qr, G, a.k8 + rowAt, a.kS + scaleAt, a.v8 + rowAt, a.vS + scaleAt, indexed ? sbuf : nullptr,
                        len, D, a.scale, wi, o);
      else
        attend_group(qr, G, a.k + rowAt, a.v + rowAt, indexed ? sbuf : nullptr, len, D, a.scale, wi, o);
      for (int x = 0; x < G; ++x) {
        const int h = g * group + i + x;
        const float* wv = a.w != nullptr ? a.w + (static_cast<int64_t>(h) * a.T + t) * a.vmax : nullptr;
        if (a.vidx != nullptr && a.v8 != nullptr)
          add_vonly_q8(o[x], a.v8 + sh * headStride, a.vS + static_cast<int64_t>(sh) * a.cap, a.vidx + a.voff[g],
                       a.nV[g], wv, D, a.mode);
        else if (a.vo != nullptr) {
          if (a.vidx != nullptr)
            add_vonly(o[x], a.vo + sh * vStride, a.vidx + a.voff[g], a.nV[g], wv, D, a.mode);
          else
            add_vonly(o[x], a.vo + g * vStride, nullptr, a.nV[g], wv, D, a.mode);
        }
        const float* wh = wi + static_cast<int64_t>(x) * len;
        if (a.probs != nullptr) {
          float* pr = a.probs + (static_cast<int64_t>(h) * a.T + t) * a.Lmax;
          std::memset(pr, 0, sizeof(float) * lo);
          std::memcpy(pr + lo, wh, sizeof(float) * len);
          std::memset(pr + n, 0, sizeof(float) * (a.Lmax - n));
        }
        if (a.scores != nullptr && t >= a.scoreStart) {
          float* sr = a.scores + static_cast<int64_t>(h) * a.Lmax + lo;
#pragma omp simd
          for (int j = 0; j < len; ++j) sr[j] += wh[j];
        }
      }
    }
  }
}

struct Cell {
  int job, g, t0, t1;
};

}  // namespace

void AttentionJob::finish() {
  maxPast = 0;
  vmax = 0;
  for (int g = 0; g < Hkv; ++g) {
    maxPast = std::max(maxPast, past[g]);
    if (nV != nullptr) vmax = std::max(vmax, nV[g]);
  }
  Lmax = maxPast + T;
}

void attention_batch_f32(AttentionJob* jobs, int n) {
  // One team for all jobs (every sequence of a layer): waking the OpenMP team after an
  // onnxruntime call costs about as much as a short attention, so it is paid once per layer.
  std::vector<Cell> cells;
  int64_t work = 0;
  size_t wsize = 1;
  size_t lsize = 1;
  for (int j = 0; j < n; ++j) {
    AttentionJob& a = jobs[j];
    a.finish();
    work += static_cast<int64_t>(a.Hq) * a.T * (a.Lmax + a.vmax) * a.D * 2;
    wsize = std::max(wsize, static_cast<size_t>(a.Hq / a.Hkv) * a.Lmax);
    lsize = std::max(lsize, static_cast<size_t>(a.Lmax));
    for (int g = 0; g < a.Hkv; ++g) {
      // A job that accumulates scores keeps each kv head on one thread (its score rows); an
      // indexed job too (its slot list is built once per list).
      if (a.scores != nullptr || a.idx != nullptr) cells.push_back({j, g, 0, a.T});
      else
        for (int t = 0; t < a.T; ++t) cells.push_back({j, g, t, t + 1});
    }
  }
  const int count = static_cast<int>(cells.size());
  if (count == 0) return;
  // Below the threshold no parallel region at all: even a one-thread region costs
  // microseconds in libgomp, as much as a short decode attention.
  if (work < kParallelWork || count == 1) {
    std::vector<float> wbuf(wsize);
    std::vector<int32_t> sbuf(lsize);
    for (int c = 0; c < count; ++c)
      attend_cell(jobs[cells[c].job], cells[c].g, cells[c].t0, cells[c].t1, wbuf.data(), sbuf.data());
    return;
  }
#pragma omp parallel
  {
    std::vector<float> wbuf(wsize);
    std::vector<int32_t> sbuf(lsize);
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < count; ++c)
      attend_cell(jobs[cells[c].job], cells[c].g, cells[c].t0, cells[c].t1, wbuf.data(), sbuf.data());
  }
}

}  // namespace skv
