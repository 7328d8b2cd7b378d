#include <algorithm>
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
