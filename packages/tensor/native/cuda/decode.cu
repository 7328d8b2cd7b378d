// The rest of a batched decode step on the device: appending the step's K/V rows to every
// sequence's stores in one launch per layer, and greedy argmax so that B integers come back
// instead of B x vocab logits.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"

namespace {

// Row dst[e] of head h of entry e's K and V stores (addresses ks[e]/vs[e], cap[e] rows a head)
// gets the float rows kr and vr, converted to KT; the block's threads share the head dim.
template <class KT>
__device__ inline void store_rows(const int64_t* ks, const int64_t* vs, const int32_t* cap, const int32_t* dst, int e,
                                  int h, int D, const float* kr, const float* vr) {
  const int64_t off = (static_cast<int64_t>(h) * cap[e] + dst[e]) * D;
  KT* ko = reinterpret_cast<KT*>(static_cast<uintptr_t>(ks[e])) + off;
  KT* vo = reinterpret_cast<KT*>(static_cast<uintptr_t>(vs[e])) + off;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    ko[d] = ck::from_float<KT>(kr[d]);
    vo[d] = ck::from_float<KT>(vr[d]);
  }
}

template <class KT>
__global__ void kv_append_kernel(const int64_t* ks, const int64_t* vs, const int32_t* cap, const int32_t* dst,
                                 const int32_t* rows, const float* k, const float* v, int Hkv, int D) {
  const int i = blockIdx.x, g = blockIdx.y, r = rows ? rows[i] : i;
  const int64_t src = (static_cast<int64_t>(r) * Hkv + g) * D;
  store_rows<KT>(ks, vs, cap, dst, i, g, D, k + src, v + src);
}

// RoPE of q and k with the KV append folded in: a block per (row, head) of q, then of k; a k
// block whose row belongs to the batch (entry[t] >= 0) writes its rotated K row and the V row
// to that sequence's stores.
template <class KT>
__global__ void rope_append_kernel(float* q, float* k, const float* v, const int32_t* pos, int T, int Hq, int Hkv,
                                   int D, float theta, const float* inv_freq, float scale, const int64_t* ks,
                                   const int64_t* vs, const int32_t* cap, const int32_t* dst, const int32_t* entry) {
  const bool isK = static_cast<int>(blockIdx.x) >= T * Hq;
  const int b = isK ? blockIdx.x - T * Hq : blockIdx.x, H = isK ? Hkv : Hq;
  const int t = b / H, h = b % H;
  float* r = (isK ? k : q) + (static_cast<int64_t>(t) * H + h) * D;
  ck::rope_rotate(r, pos[t], D, theta, inv_freq, scale);
  if (!isK) return;
  const int e = entry[t];
  if (e < 0) return;  // a row of the per-sequence path: it writes its own store
  __syncthreads();    // the rotated row, written by the block's threads, is read back
  store_rows<KT>(ks, vs, cap, dst, e, h, D, r, v + (static_cast<int64_t>(t) * Hkv + h) * D);
}

__global__ void argmax_kernel(int32_t* out, const float* x, int n) {
  CK_SHARED float bv[32];
  CK_SHARED int bi[32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * n;
  float best = -INFINITY;
  int at = -1;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (at < 0 && v == best)) {  // NaN compares false: it never wins
      best = v;
      at = i;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(ck::kFull, best, o);
    const int oi = __shfl_xor_sync(ck::kFull, at, o);
    if (oi >= 0 && (at < 0 || ov > best || (ov == best && oi < at))) {
      best = ov;
      at = oi;
    }
  }
  if (lane == 0) {
    bv[warp] = best;
    bi[warp] = at;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; ++w)
      if (bi[w] >= 0 && (at < 0 || bv[w] > best || (bv[w] == best && bi[w] < at))) {
        best = bv[w];
        at = bi[w];
      }
    // As the host's argmax: a NaN first entry, or a row of NaN, gives 0.
    out[blockIdx.x] = at < 0 || row[0] != row[0] ? 0 : at;
  }
}

}  // namespace

extern "C" {

int skv_k_kv_append(const int64_t* kStore, const int64_t* vStore, const int32_t* cap, const int32_t* dst,
                    const int32_t* rows, const float* k, const float* v, int n, int Hkv, int D, int kvDtype,
                    int stream) {
  if (n <= 0) return SKV_OK;
  if (Hkv > 65535) return skv_arg_error("kv_append: at most 65535 kv heads");
  const int threads = D < 128 ? ((D + 31) / 32) * 32 : 128;
  void* s = skv_stream(stream);
  const dim3 grid(n, Hkv);
  if (kvDtype == SKV_F32) CK_LAUNCH(kv_append_kernel<float>, grid, threads, 0, s, kStore, vStore, cap, dst, rows, k, v, Hkv, D);
  else if (kvDtype == SKV_F16) CK_LAUNCH(kv_append_kernel<ck::half_t>, grid, threads, 0, s, kStore, vStore, cap, dst, rows, k, v, Hkv, D);
  else if (kvDtype == SKV_BF16) CK_LAUNCH(kv_append_kernel<ck::bf16_t>, grid, threads, 0, s, kStore, vStore, cap, dst, rows, k, v, Hkv, D);
  else return skv_arg_error("kv_append: unknown kv dtype");
  return skv_check_launch("kv_append");
}

int skv_k_rope_append(float* q, float* k, const float* v, const int32_t* pos, int T, int Hq, int Hkv, int D,
                      float theta, const float* inv_freq, float scale, const int64_t* kStore, const int64_t* vStore,
                      const int32_t* cap, const int32_t* dst, const int32_t* entry, int kvDtype, int stream) {
  if (T <= 0) return SKV_OK;
  if (D % 2 != 0) return skv_arg_error("rope_append: head dim must be even");
  // Enough threads for the write-out of D values as well as the D/2 rotations.
  const int threads = D < 128 ? ((D + 31) / 32) * 32 : 128;
  const int blocks = T * (Hq + Hkv);
  void* s = skv_stream(stream);
  if (kvDtype == SKV_F32)
    CK_LAUNCH(rope_append_kernel<float>, blocks, threads, 0, s, q, k, v, pos, T, Hq, Hkv, D, theta, inv_freq, scale,
              kStore, vStore, cap, dst, entry);
  else if (kvDtype == SKV_F16)
    CK_LAUNCH(rope_append_kernel<ck::half_t>, blocks, threads, 0, s, q, k, v, pos, T, Hq, Hkv, D, theta, inv_freq,
              scale, kStore, vStore, cap, dst, entry);
  else if (kvDtype == SKV_BF16)
    CK_LAUNCH(rope_append_kernel<ck::bf16_t>, blocks, threads, 0, s, q, k, v, pos, T, Hq, Hkv, D, theta, inv_freq,
              scale, kStore, vStore, cap, dst, entry);
  else return skv_arg_error("rope_append: unknown kv dtype");
  return skv_check_launch("rope_append");
}

int skv_k_argmax(int32_t* out, const float* x, int rows, int n, int stream) {
  if (rows <= 0) return SKV_OK;
  if (n <= 0) return skv_arg_error("argmax: empty rows");
  CK_LAUNCH(argmax_kernel, rows, 256, 0, skv_stream(stream), out, x, n);
  return skv_check_launch("argmax");
}

}  // extern "C"
