// The CUDA half of the addon sits behind this C ABI so that nvcc never sees Node headers
// and a build without nvcc links cuda_stub.cc instead, with the same symbols.
#pragma once

extern "C" {
// Returns 1 when the addon was built with CUDA. Fills the device count (0 when none can
// be used) and a human-readable message.
int skv_cuda_info(int* device_count, int* error_code, char* message, int message_len);
}
