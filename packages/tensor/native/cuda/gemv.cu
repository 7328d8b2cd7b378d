// Decode-sized matrix products (m <= 16 rows): bandwidth-bound, so the kernel's job is to
// stream each weight row once with 16-byte loads while every SM has work. A column is one
// warp's, or split over KS warps of its block when the matrix has too few columns to fill
// the chip (split-K inside the block, one shared-memory reduction). The epilogue does what
// the layer needs next: bias, residual add, the fused gate/up product with SiLU, or the
// columns of a fused QKV matrix written to three outputs.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"

namespace {

constexpr int kWarps = 4;
constexpr int kMaxRows = 16;
constexpr int kMaxNormRows = 4;  // the folded RMSNorm reads every row once per block: small m only

struct GemvArgs {
  float* y[3];       // outputs of the column segments [0, n0), [n0, n0 + n1), [n0 + n1, n)
  int nseg[3];       // their widths (row strides)
  const float* x;    // [m][k]
  const void* w;     // [n][k]
  const void* w2;    // gate mode: the up matrix [n][k]
  const float* bias;
  const float* bias2;
  const float* norm;  // RMSNorm weights applied to x first (m <= 4), or null
  float eps;
  int m, n, k, mode;  // mode: SKV_GEMV_STORE, _ACCUMULATE or _SILU_GATE
};

__device__ inline void store_col(const GemvArgs& a, int r, int j, float v) {
  // Selects, not an index into a.y[]: a dynamic index would copy the arguments to local memory.
  const int n0 = a.nseg[0], n1 = a.nseg[1];
  const bool s0 = j < n0, s1 = !s0 && j < n0 + n1;
  float* base = s0 ? a.y[0] : s1 ? a.y[1] : a.y[2];
  const int width = s0 ? n0 : s1 ? n1 : a.nseg[2];
  const int col = s0 ? j : s1 ? j - n0 : j - n0 - n1;
  float* p = base + static_cast<int64_t>(r) * width + col;
  *p = a.mode == SKV_GEMV_ACCUMULATE ? *p + v : v;
}

// E = elements per load (16 bytes of T, or 1 for rows that are not 16-byte aligned).
template <class T, int MR, int KS, int E, bool Gate>
__global__ void gemv_kernel(GemvArgs a) {
  CK_SHARED float red[kWarps][Gate ? 2 * MR : MR];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * (kWarps / KS) + warp / KS, part = warp % KS;
  const bool live = j < a.n;
  const int k = a.k, m = a.m;
  float acc[MR], acc2[Gate ? MR : 1];
  CK_UNROLL for (int r = 0; r < MR; ++r) acc[r] = 0.f;
  if (Gate)
    CK_UNROLL for (int r = 0; r < MR; ++r) acc2[r] = 0.f;
  // RMSNorm folded in: x . (g * W) summed, then times each row's 1 / rms (computed by every
  // block for its few rows: the rows are read from L2, and a launch is saved).
  CK_SHARED float inv[kMaxNormRows];
  if (a.norm) {
    CK_SHARED float scratch[32];
    for (int r = 0; r < m && r < kMaxNormRows; ++r) {
      float ss = 0.f;
      for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const float v = a.x[static_cast<int64_t>(r) * k + i];
        ss += v * v;
      }
      ss = ck::block_reduce<false>(ss, scratch);
      if (threadIdx.x == 0) inv[r] = 1.f / sqrtf(ss / k + a.eps);
    }
    __syncthreads();
  }
  if (live) {
    const T* wr = static_cast<const T*>(a.w) + static_cast<int64_t>(j) * k;
    const T* ur = Gate ? static_cast<const T*>(a.w2) + static_cast<int64_t>(j) * k : nullptr;
    const int nvec = k / E;
    for (int iv = part * 32 + lane; iv < nvec; iv += KS * 32) {
      float wv[E], uv[Gate ? E : 1], xv[E];
      if (E == 1) wv[0] = ck::to_float(wr[iv]);
      else ck::load16(wr + static_cast<int64_t>(iv) * E, wv);
      if (Gate) {
        if (E == 1) uv[0] = ck::to_float(ur[iv]);
        else ck::load16(ur + static_cast<int64_t>(iv) * E, uv);
      }
      CK_UNROLL for (int r = 0; r < MR; ++r) {
        if (r >= m) break;
        const float* xr = a.x + static_cast<int64_t>(r) * k + static_cast<int64_t>(iv) * E;
        if (E == 1) xv[0] = *xr;
        else ck::load_f32<E>(xr, xv);
        if (a.norm) {
          float gv[E];
          if (E == 1) gv[0] = a.norm[iv];
          else ck::load_f32<E>(a.norm + static_cast<int64_t>(iv) * E, gv);
          CK_UNROLL for (int e = 0; e < E; ++e) xv[e] *= gv[e];
        }
        float s = 0.f, s2 = 0.f;
        CK_UNROLL for (int e = 0; e < E; ++e) {
          s += wv[e] * xv[e];
          if (Gate) s2 += uv[e] * xv[e];
        }
        acc[r] += s;
        if (Gate) acc2[r] += s2;
      }
    }
  }
  CK_UNROLL for (int r = 0; r < MR; ++r) {
    acc[r] = ck::warp_sum(acc[r]);
    if (Gate) acc2[r] = ck::warp_sum(acc2[r]);
  }
  if (KS > 1) {
    if (lane == 0)
      CK_UNROLL for (int r = 0; r < MR; ++r) {
        red[warp][r] = acc[r];
        if (Gate) red[warp][MR + r] = acc2[r];
      }
    __syncthreads();
    if (part == 0)
      CK_UNROLL for (int r = 0; r < MR; ++r) {
        float s = 0.f, s2 = 0.f;
        for (int p = 0; p < KS; ++p) {
          s += red[warp + p][r];
          if (Gate) s2 += red[warp + p][MR + r];
        }
        acc[r] = s;
        if (Gate) acc2[r] = s2;
      }
  }
  if (!live || part != 0) return;
  // Lane r writes row r (registers are indexed by constants only).
  CK_UNROLL for (int r = 0; r < MR; ++r) {
    if (r >= m || lane != r) continue;
    const float scale = a.norm ? inv[r < kMaxNormRows ? r : 0] : 1.f;
    float v = acc[r] * scale + (a.bias ? a.bias[j] : 0.f);
    if (Gate) {
      const float u = acc2[r] * scale + (a.bias2 ? a.bias2[j] : 0.f);
      v = v / (1.f + expf(-v)) * u;
    }
    store_col(a, r, j, v);
  }
}

template <class T, int MR, int E, bool Gate>
void launch_ks(const GemvArgs& a, void* s) {
  // Enough warps in flight to cover the chip's memory latency (132 SMs x 16 warps on an H100).
  const int ks = a.n >= 2048 ? 1 : a.n >= 1024 ? 2 : 4;
  if (ks == 1) CK_LAUNCH((gemv_kernel<T, MR, 1, E, Gate>), (a.n + kWarps - 1) / kWarps, 32 * kWarps, 0, s, a);
  else if (ks == 2) CK_LAUNCH((gemv_kernel<T, MR, 2, E, Gate>), (a.n + 1) / 2, 32 * kWarps, 0, s, a);
  else CK_LAUNCH((gemv_kernel<T, MR, 4, E, Gate>), a.n, 32 * kWarps, 0, s, a);
}

template <class T, int E, bool Gate>
void launch_rows(const GemvArgs& a, void* s) {
  if (a.m <= 1) launch_ks<T, 1, E, Gate>(a, s);
  else if (a.m <= 2) launch_ks<T, 2, E, Gate>(a, s);
  else if (a.m <= 4) launch_ks<T, 4, E, Gate>(a, s);
  else if (a.m <= 8) launch_ks<T, 8, E, Gate>(a, s);
  else launch_ks<T, 16, E, Gate>(a, s);
}

template <class T>
void launch_typed(const GemvArgs& a, void* s) {
  constexpr int E = ck::Vec<T>::E;
  const bool aligned = a.k % E == 0 && reinterpret_cast<uintptr_t>(a.w) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
                       (a.norm == nullptr || reinterpret_cast<uintptr_t>(a.norm) % 16 == 0) &&
                       (a.w2 == nullptr || reinterpret_cast<uintptr_t>(a.w2) % 16 == 0);
  const bool gate = a.mode == SKV_GEMV_SILU_GATE;
  if (aligned) gate ? launch_rows<T, E, true>(a, s) : launch_rows<T, E, false>(a, s);
  else gate ? launch_rows<T, 1, true>(a, s) : launch_rows<T, 1, false>(a, s);
}

}  // namespace

extern "C" int skv_k_gemv(float* y0, float* y1, float* y2, int n0, int n1, const float* x, const void* w,
                          const void* w2, int dtype, const float* bias, const float* bias2, const float* norm,
                          float eps, int m, int n, int k, int mode, int stream) {
  if (m <= 0 || n <= 0) return SKV_OK;
  if (m > kMaxRows) return skv_arg_error("gemv: at most 16 rows");
  if (norm && m > kMaxNormRows) return skv_arg_error("gemv: the folded RMSNorm takes at most 4 rows");
  if (k <= 0) return skv_arg_error("gemv: k must be positive");
  if (mode < SKV_GEMV_STORE || mode > SKV_GEMV_SILU_GATE) return skv_arg_error("gemv: unknown mode");
  if (mode == SKV_GEMV_SILU_GATE && (w2 == nullptr || y1 != nullptr))
    return skv_arg_error("gemv: the gate mode needs the up matrix and one output");
  GemvArgs a{};
  a.y[0] = y0;
  a.y[1] = y1;
  a.y[2] = y2;
  if (y1 == nullptr) {
    a.nseg[0] = n;
  } else {
    if (y2 == nullptr || n0 <= 0 || n1 <= 0 || n0 + n1 >= n) return skv_arg_error("gemv: bad output segments");
    a.nseg[0] = n0;
    a.nseg[1] = n1;
    a.nseg[2] = n - n0 - n1;
  }
  a.x = x;
  a.w = w;
  a.w2 = w2;
  a.bias = bias;
  a.bias2 = bias2;
  a.norm = norm;
  a.eps = eps;
  a.m = m;
  a.n = n;
  a.k = k;
  a.mode = mode;
  void* s = skv_stream(stream);
  if (dtype == SKV_F32) launch_typed<float>(a, s);
  else if (dtype == SKV_F16) launch_typed<ck::half_t>(a, s);
  else if (dtype == SKV_BF16) launch_typed<ck::bf16_t>(a, s);
  else return skv_arg_error("gemv: unknown dtype");
  return skv_check_launch("gemv");
}
