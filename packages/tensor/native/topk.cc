#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels.h"

namespace skv {

void topk_f32(const float* x, int rows, int n, int k, int32_t* out) {
#pragma omp parallel for schedule(static) if (rows > 1 && static_cast<int64_t>(rows) * n > 8192)
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * n;
    std::vector<int32_t> id(n);
    std::iota(id.begin(), id.end(), 0);
    auto better = [xr](int32_t a, int32_t b) { return xr[a] > xr[b] || (xr[a] == xr[b] && a < b); };
    std::partial_sort(id.begin(), id.begin() + k, id.end(), better);
    std::copy(id.begin(), id.begin() + k, out + static_cast<int64_t>(r) * k);
  }
}

template <typename S>
int top_positions(const S* x, int n, int k, const uint8_t* exclude, int32_t* out, int32_t* work, bool byScore) {
  // Ranks as float32 (like topk_f32), NaN last; ties to the lower position.
  auto key = [x](int32_t i) {
    const float v = static_cast<float>(x[i]);
    return v != v ? -INFINITY : v;
  };
  int m = 0;
  for (int i = 0; i < n; ++i)
    if (exclude == nullptr || exclude[i] == 0) work[m++] = i;
  if (k < m) {
    auto better = [&key](int32_t a, int32_t b) {
      const float ka = key(a), kb = key(b);
      return ka > kb || (ka == kb && a < b);
    };
    std::nth_element(work, work + k, work + m, better);
    m = k;
  }
  if (byScore) {
    // Highest first in the scores' own precision (NaN last), ties to the lower position.
    auto full = [x](int32_t i) { return x[i] != x[i] ? -static_cast<S>(INFINITY) : x[i]; };
    std::sort(work, work + m, [&full](int32_t a, int32_t b) {
      const S ka = full(a), kb = full(b);
      return ka > kb || (ka == kb && a < b);
    });
  } else if (m < n) {
    std::sort(work, work + m);
  }
  std::copy(work, work + m, out);
  return m;
}

int top_positions_f64(const double* x, int n, int k, const uint8_t* exclude, int32_t* out, int32_t* work,
                      bool byScore) {
  return top_positions(x, n, k, exclude, out, work, byScore);
}

int top_positions_f32(const float* x, int n, int k, const uint8_t* exclude, int32_t* out, int32_t* work,
                      bool byScore) {
  return top_positions(x, n, k, exclude, out, work, byScore);
}

double sum_f32(const float* x, int64_t n) {
  double total = 0;
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
