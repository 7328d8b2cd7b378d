// y[M][N] = x[M][K] · Wᵀ over weights kept in llama.cpp's Q8_0 / Q4_0 blocks (or float32),
// repacked once so that eight rows' blocks sit together: one 32-byte load feeds eight rows'
// dot products and the eight block scales multiply as one vector. Activations are rounded to
// int8 per block of 32 (scale amax/127), as ggml's Q8_0 activations are.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include "kernels.h"

namespace skv {

namespace {

float half_to_float(uint16_t h) {
  const uint32_t s = (h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 31;
  uint32_t m = h & 1023;
  uint32_t bits;
  if (e == 0) {
    if (m == 0) bits = s;
    else {
      e = 127 - 15 + 1;
      while (!(m & 1024)) {
        m <<= 1;
        e--;
      }
      bits = s | (e << 23) | ((m & 1023) << 13);
    }
  } else if (e == 31) bits = s | 0x7f800000u | (m << 13);
  else bits = s | ((e + 127 - 15) << 23) | (m << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Quantized activations of one row: per block, its 32 int8 values as 8 int32 words, and d.
struct QRow {
  std::vector<int32_t> raw;
  std::vector<float> d;
};

void quantize_row(const float* x, int K, QRow& q) {
  const int nb = K / 32;
  q.raw.resize(nb * 8);
  q.d.resize(nb);
  for (int b = 0; b < nb; b++) {
    float amax = 0;
    for (int i = 0; i < 32; i++) amax = std::fmax(amax, std::fabs(x[32 * b + i]));
    const float id = amax > 0 ? 127.f / amax : 0.f;
    q.d[b] = amax / 127.f;
    int8_t v[32];
    for (int i = 0; i < 32; i++) v[i] = static_cast<int8_t>(std::nearbyint(x[32 * b + i] * id));
    std::memcpy(&q.raw[8 * b], v, 32);
  }
}

}  // namespace

int64_t qgemm_packed_bytes(int type, int N, int K) {
  const int64_t groups = (N + 7) / 8, nb = K / 32;
  if (type == QGEMM_F32) return static_cast<int64_t>(N) * K * 4;
  const int64_t quants = type == QGEMM_Q8_0 ? 256 : 128;
  return groups * nb * (32 + quants);
}

int qgemm_pack(int type, const uint8_t* src, int N, int K, uint8_t* dst) {
  if (type == QGEMM_F32) {
    std::memcpy(dst, src, static_cast<size_t>(N) * K * 4);
    return 0;
  }
  if (K % 32 != 0) return -1;
  const int nb = K / 32;
  const int bsrc = type == QGEMM_Q8_0 ? 34 : 18;
  const int quants = type == QGEMM_Q8_0 ? 256 : 128;
  const int64_t stride = 32 + quants;
  std::memset(dst, 0, qgemm_packed_bytes(type, N, K));
  for (int n = 0; n < N; n++) {
    const int g = n / 8, r = n % 8;
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = src + (static_cast<int64_t>(n) * nb + b) * bsrc;
      uint8_t* out = dst + (static_cast<int64_t>(g) * nb + b) * stride;
      const float d = half_to_float(static_cast<uint16_t>(blk[0] | (blk[1] << 8)));
      std::memcpy(out + 4 * r, &d, 4);
      // Chunk c of 4 values of row r at out[32 + 32c + 4r]; Q4_0 bytes as the file has them
      // (low nibble: value 4c+j, high nibble: value 16+4c+j).
      const int chunks = type == QGEMM_Q8_0 ? 8 : 4;
      for (int c = 0; c < chunks; c++) std::memcpy(out + 32 + 32 * c + 4 * r, blk + 2 + 4 * c, 4);
    }
  }
  return 0;
}

namespace {

// One group of 8 rows against up to 4 activation rows.
template <int TYPE, int T>
void group_dot(const uint8_t* w, int nb, const QRow* const* xs, float* out /* [T][8] */) {
  const int64_t stride = 32 + (TYPE == QGEMM_Q8_0 ? 256 : 128);
#if defined(__AVX2__)
  __m256 acc[T];
  for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
  for (int b = 0; b < nb; b++, w += stride) {
    __m256i isum[T];
    for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
    // u8 × s8 products as |w| × (x with w's sign): the activations are never −128 (they are
    // rounded into [−127, 127]), the weights may be (|−128| = 128 as a byte).
    auto chunk = [&](__m256i wv, int c) {
      const __m256i aw = _mm256_abs_epi8(wv);
      for (int t = 0; t < T; t++) {
        const __m256i sx = _mm256_sign_epi8(_mm256_set1_epi32(xs[t]->raw[8 * b + c]), wv);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        isum[t] = _mm256_dpbusd_epi32(isum[t], aw, sx);
#elif defined(__AVXVNNI__)
        isum[t] = _mm256_dpbusd_avx_epi32(isum[t], aw, sx);
#else
        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1)));
#endif
      }
    };
    if (TYPE == QGEMM_Q8_0) {
      for (int c = 0; c < 8; c++) chunk(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 + 32 * c)), c);
    } else {
      for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 + 32 * c));
        chunk(_mm256_sub_epi8(_mm256_and_si256(v, low), eight), c);
        chunk(_mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), eight), c + 4);
      }
    }
    const __m256 sc = _mm256_loadu_ps(reinterpret_cast<const float*>(w));
    for (int t = 0; t < T; t++)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(sc, _mm256_set1_ps(xs[t]->d[b])), acc[t]);
  }
  for (int t = 0; t < T; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);
#else
  for (int t = 0; t < T; t++)
    for (int r = 0; r < 8; r++) out[8 * t + r] = 0;
  for (int b = 0; b < nb; b++, w += stride) {
    float sc[8];
    std::memcpy(sc, w, 32);
    for (int t = 0; t < T; t++) {
      const int8_t* xv = reinterpret_cast<const int8_t*>(&xs[t]->raw[8 * b]);
      for (int r = 0; r < 8; r++) {
        int32_t s = 0;
        for (int c = 0; c < 8; c++)
          for (int j = 0; j < 4; j++) {
            int wv;
            if (TYPE == QGEMM_Q8_0) wv = static_cast<int8_t>(w[32 + 32 * c + 4 * r + j]);
            else {
              const uint8_t byte = w[32 + 32 * (c % 4) + 4 * r + j];
              wv = (c < 4 ? (byte & 15) : (byte >> 4)) - 8;
            }
            s += wv * xv[4 * c + j];
          }
        out[8 * t + r] += static_cast<float>(s) * (sc[r] * xs[t]->d[b]);
      }
    }
  }
#endif
}

template <int TYPE>
void run_quantized(const uint8_t* packed, int N, int K, const float* x, int M, float* y, int threads) {
  const int nb = K / 32, groups = (N + 7) / 8;
  const int64_t gstride = static_cast<int64_t>(nb) * (32 + (TYPE == QGEMM_Q8_0 ? 256 : 128));
  std::vector<QRow> q(M);
  for (int m = 0; m < M; m++) quantize_row(x + static_cast<int64_t>(m) * K, K, q[m]);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int g = 0; g < groups; g++) {
    float out[4 * 8];
    const int rows = N - 8 * g < 8 ? N - 8 * g : 8;
    for (int m0 = 0; m0 < M; m0 += 4) {
      const QRow* xs[4];
      const int T = M - m0 < 4 ? M - m0 : 4;
      for (int t = 0; t < T; t++) xs[t] = &q[m0 + t];
      const uint8_t* w = packed + g * gstride;
      switch (T) {
        case 1: group_dot<TYPE, 1>(w, nb, xs, out); break;
        case 2: group_dot<TYPE, 2>(w, nb, xs, out); break;
        case 3: group_dot<TYPE, 3>(w, nb, xs, out); break;
        default: group_dot<TYPE, 4>(w, nb, xs, out); break;
      }
      for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) y[static_cast<int64_t>(m0 + t) * N + 8 * g + r] = out[8 * t + r];
    }
  }
}

void run_f32(const float* W, int N, int K, const float* x, int M, float* y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int n = 0; n < N; n++) {
    const float* w = W + static_cast<int64_t>(n) * K;
    for (int m = 0; m < M; m++) {
      const float* xm = x + static_cast<int64_t>(m) * K;
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (int k = 0; k < K; k++) s += w[k] * xm[k];
      y[static_cast<int64_t>(m) * N + n] = s;
    }
  }
}

}  // namespace

void qgemm(int type, const uint8_t* packed, int N, int K, const float* x, int M, float* y, int threads) {
  if (threads < 1) threads = 1;
  if (type == QGEMM_Q8_0) run_quantized<QGEMM_Q8_0>(packed, N, K, x, M, y, threads);
  else if (type == QGEMM_Q4_0) run_quantized<QGEMM_Q4_0>(packed, N, K, x, M, y, threads);
  else run_f32(reinterpret_cast<const float*>(packed), N, K, x, M, y, threads);
}

}  // namespace skv
