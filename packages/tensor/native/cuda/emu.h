// A CUDA execution emulator for tests on machines without a GPU. Each block runs to
// completion before the next; its threads are fibers on one OS thread that switch only at
// __syncthreads and warp collectives, so shared memory is plain static storage and there
// are no data races. It checks what real hardware would punish silently: a barrier not
// reached by every live thread of its block (or warp) aborts with a message, and WMMA
// pointers/strides must meet their alignment rules. Fidelity is about kernel logic and
// indexing, not speed: fragments hold a full tile per lane and mma is computed per lane.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

namespace emu {

struct ThreadCtx {
  dim3 tid, bid, bdim, gdim;
};
extern thread_local ThreadCtx* current;

void syncthreads();
void warp_exchange(uint64_t mine, int src_lane, uint64_t* out);  // collective over the warp
void* dynamic_shared();
void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);
// Stream work: run now, or recorded while a graph is captured (CUDA graphs' semantics: the
// recorded work replays with the arguments it had at capture).
void submit(std::function<void()> work);
bool capturing();
void capture_begin();
void* capture_end();
void replay(void* graph);
void graph_free(void* graph);
[[noreturn]] void fail(const char* what);

// 16-bit float storage types with round-to-nearest-even conversions.
struct half { uint16_t bits; };
struct bfloat16 { uint16_t bits; };
float half2float(half h);
half float2half(float f);
inline float bf162float(bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bfloat16 float2bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}
inline float to_f(float x) { return x; }
inline float to_f(half x) { return half2float(x); }
inline float to_f(bfloat16 x) { return bf162float(x); }

template <class T>
T shfl(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0, got = 0;
  std::memcpy(&bits, &v, sizeof(T));
  warp_exchange(bits, src_lane, &got);
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
inline int lane_id() { return static_cast<int>(current->tid.x % 32); }

namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// Every lane holds the whole tile (rows x cols, row-major) as float.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  float v[rows * cols];
  static constexpr int num_elements = rows * cols;
};

inline void check_ptr(const void* p, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fail("wmma: pointer not 256-bit aligned");
  if ((ldm * elem) % 16 != 0) fail("wmma: ldm is not a multiple of 16 bytes");
}

template <class Use, int M, int N, int K, class T, class Layout, class E>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const E* p, unsigned ldm) {
  check_ptr(p, ldm, sizeof(E));
  using F = fragment<Use, M, N, K, T, Layout>;
  const bool col = std::is_same<Layout, col_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.v[r * F::cols + c] = to_f(col ? p[c * ldm + r] : p[r * ldm + c]);
}
template <int M, int N, int K, class T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t l) {
  check_ptr(p, ldm, sizeof(T));
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.v[r * N + c] = l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
}
template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float x) {
  for (float& e : f.v) e = x;
}
template <int M, int N, int K, class T, class TA, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, T>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.v[i * N + j];
      for (int k = 0; k < K; ++k) s += a.v[i * K + k] * b.v[k * N + j];
      out[i * N + j] = s;
    }
  std::memcpy(d.v, out, sizeof(out));
}
template <int M, int N, int K, class T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t l) {
  check_ptr(p, ldm, sizeof(T));
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.v[r * N + c];
}
}  // namespace wmma
}  // namespace emu

#define threadIdx (::emu::current->tid)
#define blockIdx (::emu::current->bid)
#define blockDim (::emu::current->bdim)
#define gridDim (::emu::current->gdim)
inline void __syncthreads() { ::emu::syncthreads(); }
template <class T> T __shfl_sync(unsigned, T v, int src) { return ::emu::shfl(v, src & 31); }
template <class T> T __shfl_xor_sync(unsigned, T v, int m) { return ::emu::shfl(v, (::emu::lane_id() ^ m) & 31); }
template <class T> T __shfl_down_sync(unsigned, T v, unsigned d) {
  const int src = ::emu::lane_id() + static_cast<int>(d);
  return ::emu::shfl(v, src < 32 ? src : ::emu::lane_id());
}
template <class T> T __shfl_up_sync(unsigned, T v, unsigned d) {
  const int src = ::emu::lane_id() - static_cast<int>(d);
  return ::emu::shfl(v, src >= 0 ? src : ::emu::lane_id());
}
// Fibers switch only at __syncthreads and shuffles, so a read-modify-write is atomic here.
inline float atomicAdd(float* p, float v) { const float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { const double o = *p; *p = o + v; return o; }
inline int atomicAdd(int* p, int v) { const int o = *p; *p = o + v; return o; }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
