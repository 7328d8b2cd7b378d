#include <cstdio>

#include "cuda_api.h"

extern "C" int skv_cuda_info(int* device_count, int* error_code, char* message, int message_len) {
  *device_count = 0;
  *error_code = -1;
  std::snprintf(message, message_len, "addon built without CUDA (no nvcc at build time)");
  return 0;
}
