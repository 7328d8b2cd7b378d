// Dense kernels of the device backend: embedding, RMSNorm, GEMM (the GEMV of gemv.cu for
// decode-sized m, tensor cores for F16/BF16 weights, tiled SIMT for F32), RoPE, SiLU-gate, add.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"

namespace {

template <class T>
__global__ void embedding_kernel(float* out, const T* table, const int32_t* ids, int d) {
  const int r = blockIdx.x;
  const T* src = table + static_cast<int64_t>(ids[r]) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[static_cast<int64_t>(r) * d + i] = ck::to_float(src[i]);
}

__global__ void rmsnorm_kernel(float* out, const float* x, const float* w, int d, float eps) {
  CK_SHARED float red[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * d;
  float* o = out + static_cast<int64_t>(blockIdx.x) * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = ck::block_reduce<false>(ss, red);
  const float inv = 1.f / sqrtf(ss / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

// 64x64 output tile per block, 4 warps of 32x32 (2x2 WMMA 16x16x16 fragments), BK = 32.
// x is converted to the weight type while staged in shared memory; accumulation is float.
template <class T>
__global__ void gemm_wmma_kernel(float* y, const float* x, const T* w, const float* bias, int m, int n, int k,
                                 int accumulate) {
  constexpr int BM = 64, BN = 64, BK = 32;
  CK_SHARED CK_ALIGN(32) T As[BM * BK];
  CK_SHARED CK_ALIGN(32) T Bs[BN * BK];
  CK_SHARED CK_ALIGN(32) float Cs[BM * BN];
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int warp = threadIdx.x >> 5;
  const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
  ck::wmma::fragment<ck::wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) ck::wmma::fill_fragment(acc[i][j], 0.f);
  for (int k0 = 0; k0 < k; k0 += BK) {
    for (int e = threadIdx.x; e < BM * BK; e += blockDim.x) {
      const int r = e / BK, c = e % BK;
      const int gr = row0 + r, gc = k0 + c;
      As[e] = ck::from_float<T>(gr < m && gc < k ? x[static_cast<int64_t>(gr) * k + gc] : 0.f);
      const int gn = col0 + r;
      Bs[e] = gn < n && gc < k ? w[static_cast<int64_t>(gn) * k + gc] : ck::from_float<T>(0.f);
    }
    __syncthreads();
    for (int kk = 0; kk < BK; kk += 16) {
      ck::wmma::fragment<ck::wmma::matrix_a, 16, 16, 16, T, ck::wmma::row_major> a[2];
      ck::wmma::fragment<ck::wmma::matrix_b, 16, 16, 16, T, ck::wmma::col_major> b[2];
      for (int i = 0; i < 2; ++i) ck::wmma::load_matrix_sync(a[i], As + (wr + i * 16) * BK + kk, BK);
      // B[k][n] = W[n][k]: W rows staged as Bs[n][k] are B in column-major order.
      for (int j = 0; j < 2; ++j) ck::wmma::load_matrix_sync(b[j], Bs + (wc + j * 16) * BK + kk, BK);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) ck::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      ck::wmma::store_matrix_sync(Cs + (wr + i * 16) * BN + wc + j * 16, acc[i][j], BN, ck::wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < BM * BN; e += blockDim.x) {
    const int r = row0 + e / BN, c = col0 + e % BN;
    if (r >= m || c >= n) continue;
    float* yp = y + static_cast<int64_t>(r) * n + c;
    *yp = (accumulate ? *yp : 0.f) + Cs[e] + (bias ? bias[c] : 0.f);
  }
}

// Tensor-core GEMM for 16-byte aligned rows (k % 8 == 0): BM x 64 output tiles (BM = 32, 64
// or 128 by m), 4 warps in 2 x 2, BK = 32 with two stages: the weight tile of step k+1 arrives
// by cp.async while step k multiplies; activations are converted to T as they are staged.
// When the tile grid leaves SMs idle, K is split over `splits` blocks that add their partial
// sums into y (zeroed first in store mode; the bias comes from split 0).
template <class T, int BM>
__global__ void gemm_tc_kernel(float* y, const float* x, const T* w, const float* bias, int m, int n, int k,
                               int accumulate, int splits) {
  constexpr int BN = 64, BK = 32, LDS = BK + 8, LDC = BN + 8;
  constexpr int FM = BM / 32;  // 16-row fragments per warp
  constexpr int STAGE = (BM + BN) * LDS;  // elements of T per stage
  constexpr int SMEM_AB = 2 * STAGE * static_cast<int>(sizeof(T));
  constexpr int SMEM_C = BM * LDC * 4;
  CK_SHARED CK_ALIGN(128) unsigned char smem[SMEM_AB > SMEM_C ? SMEM_AB : SMEM_C];
  T* st = reinterpret_cast<T*>(smem);
  float* Cs = reinterpret_cast<float*>(smem);
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN, tid = threadIdx.x;
  const int warp = tid >> 5, wr = (warp >> 1) * (BM / 2), wc = (warp & 1) * 32;
  // This block's slice of K (whole BK steps).
  const int steps = (k + BK - 1) / BK, per = (steps + splits - 1) / splits;
  const int s0 = blockIdx.z * per, s1 = s0 + per < steps ? s0 + per : steps;
  ck::wmma::fragment<ck::wmma::accumulator, 16, 16, 16, float> acc[FM][2];
  for (int i = 0; i < FM; ++i)
    for (int j = 0; j < 2; ++j) ck::wmma::fill_fragment(acc[i][j], 0.f);
  auto stage_in = [&](int step, int buf) {
    T* As = st + buf * STAGE;
    T* Bs = As + BM * LDS;
    const int k0 = step * BK;
    // Weights: BN rows x 4 chunks of 8 elements (16 bytes), by cp.async.
    for (int e = tid; e < BN * (BK / 8); e += blockDim.x) {
      const int r = e / (BK / 8), c = (e % (BK / 8)) * 8;
      const bool ok = col0 + r < n && k0 + c < k;
      ck::cp_async16(Bs + r * LDS + c, ok ? w + static_cast<int64_t>(col0 + r) * k + k0 + c : w, ok);
    }
    ck::cp_async_commit();
    // Activations: float4 loads converted to T.
    for (int e = tid; e < BM * (BK / 4); e += blockDim.x) {
      const int r = e / (BK / 4), c = (e % (BK / 4)) * 4;
      float v[4] = {0.f, 0.f, 0.f, 0.f};
      if (row0 + r < m && k0 + c < k) ck::load_f32<4>(x + static_cast<int64_t>(row0 + r) * k + k0 + c, v);
      for (int i = 0; i < 4; ++i) As[r * LDS + c + i] = ck::from_float<T>(v[i]);
    }
  };
  if (s0 < s1) stage_in(s0, 0);
  for (int step = s0; step < s1; ++step) {
    const int buf = (step - s0) & 1;
    if (step + 1 < s1) {
      stage_in(step + 1, buf ^ 1);
      ck::cp_async_wait<1>();  // this step's weights have landed; the next step's may still fly
    } else {
      ck::cp_async_wait<0>();
    }
    __syncthreads();
    const T* As = st + buf * STAGE;
    const T* Bs = As + BM * LDS;
    for (int kk = 0; kk < BK; kk += 16) {
      ck::wmma::fragment<ck::wmma::matrix_a, 16, 16, 16, T, ck::wmma::row_major> a[FM];
      ck::wmma::fragment<ck::wmma::matrix_b, 16, 16, 16, T, ck::wmma::col_major> b[2];
      for (int i = 0; i < FM; ++i) ck::wmma::load_matrix_sync(a[i], As + (wr + i * 16) * LDS + kk, LDS);
      for (int j = 0; j < 2; ++j) ck::wmma::load_matrix_sync(b[j], Bs + (wc + j * 16) * LDS + kk, LDS);
      for (int i = 0; i < FM; ++i)
        for (int j = 0; j < 2; ++j) ck::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();  // the buffer is restaged two steps on
  }
  for (int i = 0; i < FM; ++i)
    for (int j = 0; j < 2; ++j)
      ck::wmma::store_matrix_sync(Cs + (wr + i * 16) * LDC + wc + j * 16, acc[i][j], LDC, ck::wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < BM * BN; e += blockDim.x) {
    const int r = row0 + e / BN, c = col0 + e % BN;
    if (r >= m || c >= n) continue;
    float* yp = y + static_cast<int64_t>(r) * n + c;
    const float v = Cs[(e / BN) * LDC + e % BN] + (bias && blockIdx.z == 0 ? bias[c] : 0.f);
    if (splits > 1) atomicAdd(yp, v);
    else *yp = (accumulate ? *yp : 0.f) + v;
  }
}

// F32 weights: 64x64 tile, 256 threads with 4x4 outputs each, BK = 16.
__global__ void gemm_simt_kernel(float* y, const float* x, const float* w, const float* bias, int m, int n, int k,
                                 int accumulate) {
  constexpr int BM = 64, BN = 64, BK = 16;
  CK_SHARED float As[BK][BM + 1];
  CK_SHARED float Bs[BK][BN + 1];
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < k; k0 += BK) {
    for (int e = threadIdx.x; e < BM * BK; e += blockDim.x) {
      const int r = e / BK, c = e % BK;
      const int gc = k0 + c;
      As[c][r] = row0 + r < m && gc < k ? x[static_cast<int64_t>(row0 + r) * k + gc] : 0.f;
      Bs[c][r] = col0 + r < n && gc < k ? w[static_cast<int64_t>(col0 + r) * k + gc] : 0.f;
    }
    __syncthreads();
    for (int kk = 0; kk < BK; ++kk)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += As[kk][tr * 4 + i] * Bs[kk][tc * 4 + j];
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int r = row0 + tr * 4 + i, c = col0 + tc * 4 + j;
      if (r >= m || c >= n) continue;
      float* yp = y + static_cast<int64_t>(r) * n + c;
      *yp = (accumulate ? *yp : 0.f) + acc[i][j] + (bias ? bias[c] : 0.f);
    }
}

// Blocks [0, T*H) rotate x's heads, the rest x2's (q and k in one launch).
__global__ void rope_kernel(float* x, const int32_t* pos, int T, int H, int D, float theta, const float* inv_freq,
                            float scale, float* x2, int H2) {
  const bool second = static_cast<int>(blockIdx.x) >= T * H;
  const int b = second ? blockIdx.x - T * H : blockIdx.x, Hs = second ? H2 : H;
  const int t = b / Hs, h = b % Hs;
  ck::rope_rotate((second ? x2 : x) + (static_cast<int64_t>(t) * Hs + h) * D, pos[t], D, theta, inv_freq, scale);
}

__global__ void silu_gate_kernel(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.f + expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

unsigned grid_for(int64_t n, int block) {
  const int64_t g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 65535 ? (g > 0 ? g : 1) : 65535);
}

template <class T>
void launch_gemm(float* y, const float* x, const T* w, const float* bias, int m, int n, int k, int acc, int sid,
                 bool tensor_cores) {
  void* s = skv_stream(sid);
  const dim3 grid((n + 63) / 64, (m + 63) / 64);
  if constexpr (std::is_same<T, float>::value) {
    (void)tensor_cores;
    CK_LAUNCH(gemm_simt_kernel, grid, 256, 0, s, y, x, w, bias, m, n, k, acc);
  } else {
    const bool aligned = k % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(x) % 16 == 0;
    if (!aligned) {
      CK_LAUNCH(gemm_wmma_kernel<T>, grid, 128, 0, s, y, x, w, bias, m, n, k, acc);
      return;
    }
    // Batch-sized m (decode of up to 64 sequences) takes 32-row tiles: twice the blocks, and the
    // weights, not the activations, are what each block streams.
    const int bm = m <= 64 ? 32 : m <= 128 ? 64 : 128;
    const int tiles = ((n + 63) / 64) * ((m + bm - 1) / bm);
    // Split K until the grid covers the chip twice over (132 SMs on an H100), keeping at
    // least 2 BK steps per block.
    const int steps = (k + 31) / 32;
    int splits = 1;
    while (tiles * splits < 264 && steps / (splits * 2) >= 2) splits *= 2;
    if (splits > 1 && !acc) skv_dev_memset(y, 0, sizeof(float) * static_cast<size_t>(m) * n, sid);
    const dim3 g((n + 63) / 64, (m + bm - 1) / bm, splits);
    const int a2 = splits > 1 ? 1 : acc;
    if (bm == 32) CK_LAUNCH((gemm_tc_kernel<T, 32>), g, 128, 0, s, y, x, w, bias, m, n, k, a2, splits);
    else if (bm == 64) CK_LAUNCH((gemm_tc_kernel<T, 64>), g, 128, 0, s, y, x, w, bias, m, n, k, a2, splits);
    else CK_LAUNCH((gemm_tc_kernel<T, 128>), g, 128, 0, s, y, x, w, bias, m, n, k, a2, splits);
  }
}

}  // namespace

extern "C" {

int skv_k_embedding(float* out, const void* table, int dtype, const int32_t* ids, int n, int d, int stream) {
  if (n <= 0) return SKV_OK;
  void* s = skv_stream(stream);
  const int threads = d < 256 ? ((d + 31) / 32) * 32 : 256;
  if (dtype == SKV_F32) CK_LAUNCH(embedding_kernel<float>, n, threads, 0, s, out, static_cast<const float*>(table), ids, d);
  else if (dtype == SKV_F16) CK_LAUNCH(embedding_kernel<ck::half_t>, n, threads, 0, s, out, static_cast<const ck::half_t*>(table), ids, d);
  else if (dtype == SKV_BF16) CK_LAUNCH(embedding_kernel<ck::bf16_t>, n, threads, 0, s, out, static_cast<const ck::bf16_t*>(table), ids, d);
  else return skv_arg_error("embedding: unknown dtype");
  return skv_check_launch("embedding");
}

int skv_k_rmsnorm(float* out, const float* x, const float* w, int n, int d, float eps, int stream) {
  if (n <= 0) return SKV_OK;
  CK_LAUNCH(rmsnorm_kernel, n, 256, 0, skv_stream(stream), out, x, w, d, eps);
  return skv_check_launch("rmsnorm");
}

int skv_k_gemm(float* y, const float* x, const void* w, int dtype, const float* bias, int m, int n, int k,
               int accumulate, int stream) {
  if (m <= 0 || n <= 0) return SKV_OK;
  if (dtype != SKV_F32 && dtype != SKV_F16 && dtype != SKV_BF16) return skv_arg_error("gemm: unknown dtype");
  // Decode-sized m: the GEMV kernel (gemv.cu), x used as is.
  if (m <= 8 && k > 0)
    return skv_k_gemv(y, nullptr, nullptr, 0, 0, x, w, nullptr, dtype, bias, nullptr, nullptr, 0.f, m, n, k,
                      accumulate ? SKV_GEMV_ACCUMULATE : SKV_GEMV_STORE, stream);
  if (dtype == SKV_F32) launch_gemm(y, x, static_cast<const float*>(w), bias, m, n, k, accumulate, stream, false);
  else if (dtype == SKV_F16) launch_gemm(y, x, static_cast<const ck::half_t*>(w), bias, m, n, k, accumulate, stream, true);
  else if (dtype == SKV_BF16) launch_gemm(y, x, static_cast<const ck::bf16_t*>(w), bias, m, n, k, accumulate, stream, true);
  else return skv_arg_error("gemm: unknown dtype");
  return skv_check_launch("gemm");
}

int skv_k_rope(float* x, const int32_t* pos, int T, int H, int D, float theta, const float* inv_freq, float scale,
               float* x2, int H2, int stream) {
  if (T <= 0) return SKV_OK;
  if (D % 2 != 0) return skv_arg_error("rope: head dim must be even");
  const int threads = D / 2 < 128 ? ((D / 2 + 31) / 32) * 32 : 128;
  const int blocks = T * H + (x2 ? T * H2 : 0);
  CK_LAUNCH(rope_kernel, blocks, threads, 0, skv_stream(stream), x, pos, T, H, D, theta, inv_freq, scale, x2, H2);
  return skv_check_launch("rope");
}

int skv_k_silu_gate(float* out, const float* gate, const float* up, int64_t n, int stream) {
  if (n <= 0) return SKV_OK;
  CK_LAUNCH(silu_gate_kernel, grid_for(n, 256), 256, 0, skv_stream(stream), out, gate, up, n);
  return skv_check_launch("silu_gate");
}

int skv_k_add(float* y, const float* x, int64_t n, int stream) {
  if (n <= 0) return SKV_OK;
  CK_LAUNCH(add_kernel, grid_for(n, 256), 256, 0, skv_stream(stream), y, x, n);
  return skv_check_launch("add");
}

}  // extern "C"
