// KV movement on the device: appending new rows to a store, and the hot-set moves (the
// difference between consecutive selections) from the cold store, which may live in mapped
// pinned host memory so that only the moved rows cross the bus.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"

namespace {

__global__ void kv_write_kernel(float* store, int cap, int Hkv, int D, const float* src, const int32_t* dst) {
  const int t = blockIdx.x / Hkv, g = blockIdx.x % Hkv;
  float* o = store + (static_cast<int64_t>(g) * cap + dst[t]) * D;
  const float* s = src + (static_cast<int64_t>(t) * Hkv + g) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = s[d];
}

// moves[i] = {dst head, dst row, src head, src row}; one warp per move; blockIdx.y picks the
// plane pair (K, then V: both planes of a hot set in one launch).
__global__ void kv_move_kernel(float* dst0, const float* src0, float* dst1, const float* src1, int dcap, int scap,
                               int D, const int32_t* moves, int n) {
  const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= n) return;
  float* dst = blockIdx.y == 0 ? dst0 : dst1;
  const float* src = blockIdx.y == 0 ? src0 : src1;
  const int32_t* mv = moves + 4 * static_cast<int64_t>(i);
  float* o = dst + (static_cast<int64_t>(mv[0]) * dcap + mv[1]) * D;
  const float* s = src + (static_cast<int64_t>(mv[2]) * scap + mv[3]) * D;
  for (int d = lane; d < D; d += 32) o[d] = s[d];
}

}  // namespace

extern "C" {

int skv_k_kv_write(float* store, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst, int stream) {
  if (T <= 0) return SKV_OK;
  const int threads = D < 256 ? ((D + 31) / 32) * 32 : 256;
  CK_LAUNCH(kv_write_kernel, T * Hkv, threads, 0, skv_stream(stream), store, cap, Hkv, D, src, dst);
  return skv_check_launch("kv_write");
}

int skv_k_kv_move(float* dst, int dcap, const float* src, int scap, int D, const int32_t* moves, int n, float* dst2,
                  const float* src2, int stream) {
  if (n <= 0) return SKV_OK;
  if ((dst2 == nullptr) != (src2 == nullptr)) return skv_arg_error("kv_move: a second plane needs both pointers");
  const dim3 grid((n + 7) / 8, dst2 ? 2 : 1);
  CK_LAUNCH(kv_move_kernel, grid, 256, 0, skv_stream(stream), dst, src, dst2, src2, dcap, scap, D, moves, n);
  return skv_check_launch("kv_move");
}

}  // extern "C"
