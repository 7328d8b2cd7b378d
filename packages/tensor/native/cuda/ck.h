// One kernel source, two compilers. Under nvcc the .cu files are ordinary CUDA; under g++
// with SKV_EMU they compile against emu.h, which runs each block's threads as fibers on the
// CPU so that CI (which has no GPU) executes the very same kernel code against the CPU
// references. Kernels therefore use only what both sides provide: the index variables,
// __syncthreads, __shfl_*_sync, atomicAdd, static and dynamic shared memory, and the WMMA
// fragment API (load/fill/mma/store, never fragment element layout).
#pragma once
#include <cstdint>

#ifdef SKV_EMU
#include "emu.h"
#define CK_SHARED static
#define CK_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_shared())
#define CK_LAUNCH(kernel, grid, block, smem, stream, ...)                                        \
  do {                                                                                           \
    (void)(stream);                                                                              \
    const dim3 skv_g_(grid), skv_b_(block);                                                      \
    const size_t skv_s_ = (smem);                                                                \
    ::emu::submit([=] { ::emu::launch(skv_g_, skv_b_, skv_s_, [=] { kernel(__VA_ARGS__); }); }); \
  } while (0)
#define CK_ALIGN(n) __attribute__((aligned(n)))
#define CK_UNROLL
namespace ck {
using half_t = ::emu::half;
using bf16_t = ::emu::bfloat16;
inline float to_float(float x) { return x; }
inline float to_float(half_t x) { return ::emu::half2float(x); }
inline float to_float(bf16_t x) { return ::emu::bf162float(x); }
template <class T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline half_t from_float<half_t>(float x) { return ::emu::float2half(x); }
template <> inline bf16_t from_float<bf16_t>(float x) { return ::emu::float2bf16(x); }
namespace wmma = ::emu::wmma;
// Asynchronous 16-byte global -> shared copies (cp.async): the emulator copies at once, so a
// missing wait cannot show here; the kernels wait before every __syncthreads that publishes.
inline void cp_async16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0))
    ::emu::fail("cp_async16: address not 16-byte aligned");
  if (valid) std::memcpy(dst, src, 16);
  else std::memset(dst, 0, 16);
}
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
}  // namespace ck
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define CK_SHARED __shared__
#define CK_DYN_SHARED(T, name) extern __shared__ __align__(128) unsigned char skv_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(skv_dyn_smem_)
#define CK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#define CK_ALIGN(n) __align__(n)
// Register arrays stay in registers only when every index is a constant after unrolling.
#define CK_UNROLL _Pragma("unroll")
namespace ck {
using half_t = __half;
using bf16_t = __nv_bfloat16;
__device__ __host__ inline float to_float(float x) { return x; }
__device__ inline float to_float(half_t x) { return __half2float(x); }
__device__ inline float to_float(bf16_t x) { return __bfloat162float(x); }
template <class T> __device__ inline T from_float(float x);
template <> __device__ inline float from_float<float>(float x) { return x; }
template <> __device__ inline half_t from_float<half_t>(float x) { return __float2half_rn(x); }
template <> __device__ inline bf16_t from_float<bf16_t>(float x) { return __float2bfloat16_rn(x); }
namespace wmma = ::nvcuda::wmma;
// cp.async (sm_80+): 16 bytes global -> shared, zero-filled when !valid.
__device__ inline void cp_async16(void* dst, const void* src, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
}  // namespace ck
#endif

namespace ck {
constexpr unsigned kFull = 0xffffffffu;

// 16-byte vector loads: E elements of T (8 of f16/bf16, 4 of f32) widened to float. The
// address must be 16-byte aligned; callers check rows and offsets once, on the host.
template <class T> struct Vec { static constexpr int E = 16 / static_cast<int>(sizeof(T)); };
#ifdef SKV_EMU
template <class T>
inline void load16(const T* p, float* out) {
  T tmp[Vec<T>::E];
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ::emu::fail("load16: address not 16-byte aligned");
  std::memcpy(tmp, p, 16);
  for (int i = 0; i < Vec<T>::E; ++i) out[i] = to_float(tmp[i]);
}
#else
template <class T> __device__ inline void load16(const T* p, float* out);
template <> __device__ inline void load16<float>(const float* p, float* out) {
  const float4 u = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = u.x; out[1] = u.y; out[2] = u.z; out[3] = u.w;
}
template <> __device__ inline void load16<bf16_t>(const bf16_t* p, float* out) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
  CK_UNROLL for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
template <> __device__ inline void load16<half_t>(const half_t* p, float* out) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
  CK_UNROLL for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}
#endif
// E activations (float) for a dot product with load16's weights: four at a time.
template <int E>
__device__ inline void load_f32(const float* p, float* out) {
#ifdef SKV_EMU
  std::memcpy(out, p, sizeof(float) * E);
#else
  CK_UNROLL for (int i = 0; i < E; i += 4) {
    const float4 u = *reinterpret_cast<const float4*>(p + i);
    out[i] = u.x; out[i + 1] = u.y; out[i + 2] = u.z; out[i + 3] = u.w;
  }
#endif
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
// HF rotate-half RoPE of one head row r[D] at position p, the block's threads over the pairs.
// Angles in double, as the CPU kernel: positions reach 1e5 and float angles drift. A frequency
// table (scaled RoPE) replaces theta^(-2i/D); `scale` multiplies cos and sin.
__device__ inline void rope_rotate(float* r, int p, int D, float theta, const float* inv_freq, float scale) {
  const int half = D / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double f = inv_freq ? static_cast<double>(inv_freq[i]) : pow(static_cast<double>(theta), -2.0 * i / D);
    const double a = static_cast<double>(p) * f;
    const float c = static_cast<float>(cos(a) * scale), s = static_cast<float>(sin(a) * scale);
    const float x1 = r[i], x2 = r[i + half];
    r[i] = x1 * c - x2 * s;
    r[i + half] = x2 * c + x1 * s;
  }
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
// Block-wide reduction through `scratch` (one float per warp); every thread gets the result.
template <bool Max>
__device__ inline float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = Max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = Max ? -INFINITY : 0.f;
  for (int w = 0; w < nw; ++w) r = Max ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}
}  // namespace ck
