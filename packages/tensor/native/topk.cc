#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include "kernels.h"

namespace skv {

// A float32 rank as an unsigned key that orders like the float (NaN lowest), with the lower
// position winning ties: one 64-bit integer per candidate, compared directly.
inline uint64_t rank_key(float v, int32_t i) {
  uint32_t b;
  if (v != v) v = -INFINITY;
  if (v == 0.f) v = 0.f;  // -0 ranks equal to +0
  std::memcpy(&b, &v, sizeof b);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(b) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

void topk_f32(const float* x, int rows, int n, int k, int32_t* out) {
  for_each_index(rows, static_cast<int64_t>(rows) * n > 65536, [&](int r) {
    const float* xr = x + static_cast<int64_t>(r) * n;
    std::vector<uint64_t> keys(n);
    for (int i = 0; i < n; ++i) keys[i] = rank_key(xr[i], i);
    if (k < n) std::nth_element(keys.begin(), keys.begin() + k, keys.end(), std::greater<uint64_t>());
    std::sort(keys.begin(), keys.begin() + k, std::greater<uint64_t>());
    int32_t* o = out + static_cast<int64_t>(r) * k;
    for (int j = 0; j < k; ++j) o[j] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(keys[j]));
  });
}

void topk_ragged_f32(const float* x, int rows, int stride, const int32_t* lens, const int32_t* ks, const int32_t* off,
                     int32_t* out) {
  auto row = [&](int r, std::vector<uint64_t>& keys) {
    const float* xr = x + static_cast<int64_t>(r) * stride;
    const int n = lens[r], k = ks[r];
    for (int i = 0; i < n; ++i) keys[i] = rank_key(xr[i], i);
    if (k < n) std::nth_element(keys.begin(), keys.begin() + k, keys.begin() + n, std::greater<uint64_t>());
    std::sort(keys.begin(), keys.begin() + k, std::greater<uint64_t>());
    for (int j = 0; j < k; ++j) out[off[r] + j] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(keys[j]));
  };
  // No parallel region for small calls (even a one-thread region costs microseconds).
  if (static_cast<int64_t>(rows) * stride <= 65536 || rows < 2) {
    std::vector<uint64_t> keys(stride);
    for (int r = 0; r < rows; ++r) row(r, keys);
    return;
  }
#pragma omp parallel
  {
    std::vector<uint64_t> keys(stride);
#pragma omp for schedule(static)
    for (int r = 0; r < rows; ++r) row(r, keys);
  }
}

void attention_row_tops(const float* probs, int T, int mode, const int32_t* off, int32_t* out) {
  std::vector<uint64_t> keys(T);
  std::vector<double> cs(mode == 2 ? T : 0);
  for (int u = 1; u < T; ++u) {
    const float* row = probs + static_cast<int64_t>(u) * T;
    const int n = mode == 0 ? u + 1 : u;
    const int k = off[u + 1] - off[u];
    if (mode == 2) {
      // The head's own past: column sums over rows < u, each over the rows that could attend it.
      const float* prev = probs + static_cast<int64_t>(u - 1) * T;
      for (int v = 0; v < u; ++v) cs[v] += prev[v];
      for (int v = 0; v < u; ++v) keys[v] = rank_key(static_cast<float>(cs[v] / (u - v)), v);
    } else
      for (int v = 0; v < n; ++v) keys[v] = rank_key(row[v], v);
    if (k < n) std::nth_element(keys.begin(), keys.begin() + k, keys.begin() + n, std::greater<uint64_t>());
    std::sort(keys.begin(), keys.begin() + k, std::greater<uint64_t>());
    for (int j = 0; j < k; ++j) out[off[u] + j] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(keys[j]));
  }
}

template <typename S>
int top_positions(const S* x, int n, int k, const uint8_t* exclude, int32_t* out, uint64_t* work, bool byScore) {
  int m = 0;
  for (int i = 0; i < n; ++i)
    if (exclude == nullptr || exclude[i] == 0) work[m++] = rank_key(static_cast<float>(x[i]), i);
  if (k < m) {
    std::nth_element(work, work + k, work + m, std::greater<uint64_t>());
    m = k;
  }
  auto pos = [](uint64_t key) { return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); };
  if (byScore) {
    std::sort(work, work + m, std::greater<uint64_t>());
    for (int j = 0; j < m; ++j) out[j] = pos(work[j]);
    // Scores finer than float32: order within equal float32 ranks by the scores themselves.
    if (sizeof(S) > sizeof(float)) {
      auto full = [x](int32_t i) { return x[i] != x[i] ? -static_cast<S>(INFINITY) : x[i]; };
      for (int lo = 0; lo < m;) {
        int hi = lo + 1;
        while (hi < m && (work[hi] >> 32) == (work[lo] >> 32)) ++hi;
        if (hi - lo > 1)
          std::sort(out + lo, out + hi, [&full](int32_t a, int32_t b) {
            const S ka = full(a), kb = full(b);
            return ka > kb || (ka == kb && a < b);
          });
        lo = hi;
      }
    }
    return m;
  }
  for (int j = 0; j < m; ++j) out[j] = pos(work[j]);
  if (m < n) std::sort(out, out + m);
  return m;
}

int top_positions_f64(const double* x, int n, int k, const uint8_t* exclude, int32_t* out, uint64_t* work,
                      bool byScore) {
  return top_positions(x, n, k, exclude, out, work, byScore);
}

int top_positions_f32(const float* x, int n, int k, const uint8_t* exclude, int32_t* out, uint64_t* work,
                      bool byScore) {
  return top_positions(x, n, k, exclude, out, work, byScore);
}

double sum_f32(const float* x, int64_t n) {
  double total = 0;
  if (n <= 65536) {
    for (int64_t i = 0; i < n; ++i) total += x[i];
    return total;
  }
#pragma omp parallel reduction(+ : total)
  {
    float acc[16] = {0};
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n / 16; ++i) {
#pragma omp simd
      for (int j = 0; j < 16; ++j) acc[j] += x[i * 16 + j];
    }
    for (int j = 0; j < 16; ++j) total += acc[j];
  }
  for (int64_t i = (n / 16) * 16; i < n; ++i) total += x[i];
  return total;
}

}  // namespace skv
