// The adaptive split's last step, shared by the host's rankSplit (select.cc) and the device's
// rankSelect (cuda/policy.cu): with `exact` ranks chosen to hold the exact share, the units
// left buy V-only tokens (half a unit each) in rank order while their mass is not negligible,
// then what is still left goes back to exact tokens.
#pragma once

#if defined(__CUDACC__)
#define SKV_HOST_DEVICE __host__ __device__
#else
#define SKV_HOST_DEVICE
#endif

namespace skv {

// m: ranked candidates; notNegligible: how many of them (the best) have a non-negligible mass.
SKV_HOST_DEVICE inline void adaptive_leftovers(int m, int notNegligible, double units, int& exact, int& v) {
  double left = units - exact;
  while (exact + v < m && left >= 0.5 - 1e-9 && exact + v < notNegligible) {
    ++v;
    left -= 0.5;
  }
  while (v > 0 && left >= 0.5 - 1e-9) {
    ++exact;
    --v;
    left -= 0.5;
  }
  while (exact + v < m && left >= 1 - 1e-9 && v == 0) {
    ++exact;
    left -= 1;
  }
}

}  // namespace skv
