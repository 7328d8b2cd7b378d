// y[M][N] = x[M][K] · Wᵀ over weights kept in llama.cpp's Q8_0 / Q4_0 blocks (or float32),
// repacked once so that eight rows' blocks sit together: per block, the eight rows' float16
// scales (16 bytes) then their values chunk-interleaved, so one 32-byte load feeds eight rows'
// dot products and the eight scales multiply as one vector (the file's bytes, rearranged). Activations are rounded to
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

[[maybe_unused]] float half_to_float(uint16_t h) {
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

// Quantized activations of one row: per block, its 32 int8 values as 8 int32 words, their
// sum, and d.
struct QRow {
  std::vector<int32_t> raw;
  std::vector<int32_t> sum;
  std::vector<float> d;
};

void quantize_row(const float* x, int K, QRow& q) {
  const int nb = K / 32;
  q.raw.resize(nb * 8);
  q.sum.resize(nb);
  q.d.resize(nb);
  for (int b = 0; b < nb; b++) {
    float amax = 0;
    for (int i = 0; i < 32; i++) amax = std::fmax(amax, std::fabs(x[32 * b + i]));
    const float id = amax > 0 ? 127.f / amax : 0.f;
    q.d[b] = amax / 127.f;
    int8_t v[32];
    int32_t sum = 0;
    for (int i = 0; i < 32; i++) {
      v[i] = static_cast<int8_t>(std::nearbyint(x[32 * b + i] * id));
      sum += v[i];
    }
    std::memcpy(&q.raw[8 * b], v, 32);
    q.sum[b] = sum;
  }
}

}  // namespace

int64_t qgemm_packed_bytes(int type, int N, int K) {
  const int64_t groups = (N + 7) / 8, nb = K / 32;
  if (type == QGEMM_F32) return static_cast<int64_t>(N) * K * 4;
  const int64_t quants = type == QGEMM_Q8_0 ? 256 : 128;
  return groups * nb * (16 + quants);
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
  const int64_t stride = 16 + quants;
  std::memset(dst, 0, qgemm_packed_bytes(type, N, K));
  for (int n = 0; n < N; n++) {
    const int g = n / 8, r = n % 8;
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = src + (static_cast<int64_t>(n) * nb + b) * bsrc;
      uint8_t* out = dst + (static_cast<int64_t>(g) * nb + b) * stride;
      // The 8 rows' float16 scales as the file has them (16 bytes).
      std::memcpy(out + 2 * r, blk, 2);
      // Chunk c of 4 values of row r at out[16 + 32c + 4r]; Q4_0 bytes as the file has them
      // (low nibble: value 4c+j, high nibble: value 16+4c+j).
      // Q8_0 values are stored plus 128 (unsigned bytes): the kernel multiplies unsigned
      // weights by signed activations and takes 128 · Σx back out per block.
      const int chunks = type == QGEMM_Q8_0 ? 8 : 4;
      for (int c = 0; c < chunks; c++)
        for (int j = 0; j < 4; j++)
          out[16 + 32 * c + 4 * r + j] = type == QGEMM_Q8_0 ? blk[2 + 4 * c + j] ^ 0x80 : blk[2 + 4 * c + j];
    }
  }
  return 0;
}

namespace {

// Blocks ahead the next ones are prefetched from (measured on a 2-core Sapphire Rapids VM:
// the step's matrices stream from memory; without it Q4_0 reached 8.9 GB/s, with 16 blocks
// ahead about 11).
#ifndef PF
#define PF 16
#endif

// The offset left in a Q8_0 block's integer sum: 128 · Σx where the dot multiplies the stored
// unsigned bytes (VNNI), 0 where the fallback multiplies signed weights.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)
constexpr int kQ8Offset = 128;
#else
constexpr int kQ8Offset = 0;
#endif

// G groups of 8 rows (adjacent in `w`, `gstride` apart) against up to 4 activation rows: each
// broadcast activation word feeds G groups' dot products (G = 2 halves the broadcasts).
// out[g][t][r].
template <int TYPE, int T, int G>
void group_dot(const uint8_t* w, int64_t gstride, int nb, const QRow* const* xs, float* out) {
  const int64_t stride = 16 + (TYPE == QGEMM_Q8_0 ? 256 : 128);
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  // AVX-512: the pair of groups side by side in one 512-bit register, so that one dot-product
  // instruction serves sixteen rows (prefill, several activation rows).
  if constexpr (G == 2 && T > 1) {
    __m512 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    const __m512i low = _mm512_set1_epi8(15);
    auto both = [&](const uint8_t* p) {
      return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + gstride)), 1);
    };
    for (int b = 0; b < nb; b++, w += stride) {
      for (int g = 0; g < 2; g++) {
        const char* p = reinterpret_cast<const char*>(w + g * gstride + PF * stride);
        for (int o = 0; o < (TYPE == QGEMM_Q8_0 ? 256 : 128); o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
      }
      __m512i isum[T];
      for (int t = 0; t < T; t++) isum[t] = _mm512_setzero_si512();
      auto chunk = [&](__m512i wv, int c) {
        for (int t = 0; t < T; t++) isum[t] = _mm512_dpbusd_epi32(isum[t], wv, _mm512_set1_epi32(xs[t]->raw[8 * b + c]));
      };
      if (TYPE == QGEMM_Q8_0) {
        for (int c = 0; c < 8; c++) chunk(both(w + 16 + 32 * c), c);
      } else {
        for (int c = 0; c < 4; c++) {
          const __m512i v = both(w + 16 + 32 * c);
          chunk(_mm512_and_si512(v, low), c);
          chunk(_mm512_and_si512(_mm512_srli_epi16(v, 4), low), c + 4);
        }
      }
      const __m512 sc = _mm512_cvtph_ps(_mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + gstride)),
                                                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
      constexpr int offset = TYPE == QGEMM_Q8_0 ? kQ8Offset : 8;
      for (int t = 0; t < T; t++) {
        const __m512i is = _mm512_sub_epi32(isum[t], _mm512_set1_epi32(offset * xs[t]->sum[b]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(sc, _mm512_set1_ps(xs[t]->d[b])), acc[t]);
      }
    }
    for (int t = 0; t < T; t++) {
      _mm256_storeu_ps(out + 8 * t, _mm512_castps512_ps256(acc[t]));
      _mm256_storeu_ps(out + 8 * (T + t), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[t]), 1)));
    }
    return;
  }
#endif
#if defined(__AVX2__)
  __m256 acc[G][T];
  for (int g = 0; g < G; g++)
    for (int t = 0; t < T; t++) acc[g][t] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(15);
  for (int b = 0; b < nb; b++, w += stride) {
    for (int g = 0; g < G; g++) {
      const char* p = reinterpret_cast<const char*>(w + g * gstride + PF * stride);
      _mm_prefetch(p, _MM_HINT_T0);
      _mm_prefetch(p + 64, _MM_HINT_T0);
      if (TYPE == QGEMM_Q8_0) {
        _mm_prefetch(p + 128, _MM_HINT_T0);
        _mm_prefetch(p + 192, _MM_HINT_T0);
      }
    }
    __m256i isum[G][T];
    for (int g = 0; g < G; g++)
      for (int t = 0; t < T; t++) isum[g][t] = _mm256_setzero_si256();
    // Unsigned weights (Q8_0 + 128, Q4_0's nibbles) times signed activations; the offset
    // (128 or 8) times the block's Σx comes out after.
    auto dot = [&](__m256i& acc_i, __m256i wv, __m256i xr) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
      acc_i = _mm256_dpbusd_epi32(acc_i, wv, xr);
#elif defined(__AVXVNNI__)
      acc_i = _mm256_dpbusd_avx_epi32(acc_i, wv, xr);
#else
      // Without VNNI: maddubs (u8 × s8 pairs into 16 bits) would saturate on Q8_0's unsigned
      // bytes (2·255·127 > 32767), so Q8_0 goes back to signed weights and the sign trick,
      // |w| × (x with w's sign), and needs no offset correction (kQ8Offset).
      if (TYPE == QGEMM_Q8_0) {
        const __m256i sw = _mm256_xor_si256(wv, _mm256_set1_epi8(static_cast<char>(0x80)));
        acc_i = _mm256_add_epi32(
            acc_i, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(sw), _mm256_sign_epi8(xr, sw)),
                                     _mm256_set1_epi16(1)));
      } else {
        acc_i = _mm256_add_epi32(acc_i, _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xr), _mm256_set1_epi16(1)));
      }
#endif
    };
    auto chunk = [&](const __m256i* wv, int c) {
      for (int t = 0; t < T; t++) {
        const __m256i xr = _mm256_set1_epi32(xs[t]->raw[8 * b + c]);
        for (int g = 0; g < G; g++) dot(isum[g][t], wv[g], xr);
      }
    };
    if (TYPE == QGEMM_Q8_0) {
      for (int c = 0; c < 8; c++) {
        __m256i wv[G];
        for (int g = 0; g < G; g++)
          wv[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * gstride + 16 + 32 * c));
        chunk(wv, c);
      }
    } else {
      for (int c = 0; c < 4; c++) {
        __m256i lo[G], hi[G];
        for (int g = 0; g < G; g++) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * gstride + 16 + 32 * c));
          lo[g] = _mm256_and_si256(v, low);
          hi[g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        chunk(lo, c);
        chunk(hi, c + 4);
      }
    }
    constexpr int offset = TYPE == QGEMM_Q8_0 ? kQ8Offset : 8;
    for (int g = 0; g < G; g++) {
      const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + g * gstride)));
      for (int t = 0; t < T; t++) {
        const __m256i is = _mm256_sub_epi32(isum[g][t], _mm256_set1_epi32(offset * xs[t]->sum[b]));
        acc[g][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(sc, _mm256_set1_ps(xs[t]->d[b])), acc[g][t]);
      }
    }
  }
  for (int g = 0; g < G; g++)
    for (int t = 0; t < T; t++) _mm256_storeu_ps(out + 8 * (g * T + t), acc[g][t]);
#else
  for (int g = 0; g < G; g++)
    for (int t = 0; t < T; t++)
      for (int r = 0; r < 8; r++) out[8 * (g * T + t) + r] = 0;
  for (int b = 0; b < nb; b++, w += stride) {
    for (int g = 0; g < G; g++) {
      const uint8_t* wg = w + g * gstride;
      float sc[8];
      for (int r = 0; r < 8; r++) sc[r] = half_to_float(static_cast<uint16_t>(wg[2 * r] | (wg[2 * r + 1] << 8)));
      for (int t = 0; t < T; t++) {
        const int8_t* xv = reinterpret_cast<const int8_t*>(&xs[t]->raw[8 * b]);
        for (int r = 0; r < 8; r++) {
          int32_t s = 0;
          for (int c = 0; c < 8; c++)
            for (int j = 0; j < 4; j++) {
              int wv;
              if (TYPE == QGEMM_Q8_0) wv = static_cast<int8_t>(wg[16 + 32 * c + 4 * r + j] ^ 0x80);
              else {
                const uint8_t byte = wg[16 + 32 * (c % 4) + 4 * r + j];
                wv = (c < 4 ? (byte & 15) : (byte >> 4)) - 8;
              }
              s += wv * xv[4 * c + j];
            }
          out[8 * (g * T + t) + r] += static_cast<float>(s) * (sc[r] * xs[t]->d[b]);
        }
      }
    }
  }
#endif
}

template <int TYPE>
void run_quantized(const uint8_t* packed, int N, int K, const float* x, int M, float* y, int threads, bool add) {
  const int nb = K / 32, groups = (N + 7) / 8;
  const int64_t gstride = static_cast<int64_t>(nb) * (16 + (TYPE == QGEMM_Q8_0 ? 256 : 128));
  std::vector<QRow> q(M);
  for (int m = 0; m < M; m++) quantize_row(x + static_cast<int64_t>(m) * K, K, q[m]);
  // Several activation rows (prefill): pairs of groups, each activation word loaded feeds
  // sixteen rows (measured: the 512-token prefill's products 460 -> 390 ms). One row (decode):
  // single groups (pairs measured no faster there).
  const int span = M > 1 ? 2 : 1;
  const int units = (groups + span - 1) / span;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int p = 0; p < units; p++) {
    const int g0 = span * p;
    const int G = span == 2 && g0 + 1 < groups ? 2 : 1;
    float out[2 * 4 * 8];
    for (int m0 = 0; m0 < M; m0 += 4) {
      const QRow* xs[4];
      const int T = M - m0 < 4 ? M - m0 : 4;
      for (int t = 0; t < T; t++) xs[t] = &q[m0 + t];
      const uint8_t* w = packed + g0 * gstride;
#define SKV_QG(TT)                                                          \
  if (G == 2) group_dot<TYPE, TT, 2>(w, gstride, nb, xs, out);              \
  else group_dot<TYPE, TT, 1>(w, gstride, nb, xs, out);
      switch (T) {
        case 1: SKV_QG(1) break;
        case 2: SKV_QG(2) break;
        case 3: SKV_QG(3) break;
        default: SKV_QG(4) break;
      }
#undef SKV_QG
      for (int g = 0; g < G; g++) {
        const int base = 8 * (g0 + g);
        const int rows = N - base < 8 ? N - base : 8;
        for (int t = 0; t < T; t++)
          for (int r = 0; r < rows; r++) {
            float& dst = y[static_cast<int64_t>(m0 + t) * N + base + r];
            dst = add ? dst + out[8 * (g * T + t) + r] : out[8 * (g * T + t) + r];
          }
      }
    }
  }
}

void run_f32(const float* W, int N, int K, const float* x, int M, float* y, int threads, bool add) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int n = 0; n < N; n++) {
    const float* w = W + static_cast<int64_t>(n) * K;
    for (int m = 0; m < M; m++) {
      const float* xm = x + static_cast<int64_t>(m) * K;
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (int k = 0; k < K; k++) s += w[k] * xm[k];
      float& dst = y[static_cast<int64_t>(m) * N + n];
      dst = add ? dst + s : s;
    }
  }
}

}  // namespace

// Below this many multiply-adds a product runs on the calling thread: waking the team costs
// more than it saves. Measured on two cores, the ~10M assistant's decode step (matrices of
// 65K-352K) took 2.7 ms with the team against 1.1 ms without; the ~100M model's (590K-3.1M)
// is the same either way.
constexpr int64_t kParallelMacs = 1 << 19;

void qgemm(int type, const uint8_t* packed, int N, int K, const float* x, int M, float* y, int threads, bool add) {
  if (threads < 1 || static_cast<int64_t>(N) * K * M < kParallelMacs) threads = 1;
  if (type == QGEMM_Q8_0) run_quantized<QGEMM_Q8_0>(packed, N, K, x, M, y, threads, add);
  else if (type == QGEMM_Q4_0) run_quantized<QGEMM_Q4_0>(packed, N, K, x, M, y, threads, add);
  else run_f32(reinterpret_cast<const float*>(packed), N, K, x, M, y, threads, add);
}

void swiglu_f32(const float* gu, int M, int I, float* out) {
  for (int m = 0; m < M; m++) {
    const float* g = gu + static_cast<int64_t>(m) * 2 * I;
    const float* u = g + I;
    float* o = out + static_cast<int64_t>(m) * I;
    for (int i = 0; i < I; i++) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
}

}  // namespace skv
