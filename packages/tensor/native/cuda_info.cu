#include <cuda_runtime.h>

#include <cstdio>

#include "cuda_api.h"

extern "C" int skv_cuda_info(int* device_count, int* error_code, char* message, int message_len) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    *device_count = 0;
    *error_code = static_cast<int>(err);
    std::snprintf(message, message_len, "no CUDA device: %s (%s, code %d)", cudaGetErrorString(err),
                  cudaGetErrorName(err), static_cast<int>(err));
    return 1;
  }
  *device_count = n;
  *error_code = 0;
  cudaDeviceProp p;
  if (n > 0 && cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
    std::snprintf(message, message_len, "%d CUDA device(s); device 0: %s (sm_%d%d, %.1f GiB)", n, p.name, p.major,
                  p.minor, p.totalGlobalMem / 1073741824.0);
  } else {
    std::snprintf(message, message_len, "%d CUDA device(s)", n);
  }
  return 1;
}
