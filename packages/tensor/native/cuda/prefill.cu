// Prefill attention on tensor cores, FlashAttention-2 style: a block takes 64 query rows of one
// head and walks the key list in tiles of 64 (S = Q K^T and O += P V on WMMA fragments, an
// online softmax between them), so memory stays O(T) and K/V are read once per query tile.
// Contiguous f16/bf16 lists of records with at least `minRows` rows; the batched attention
// launch hands these records here and runs the rest itself.
#include <type_traits>

#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"
#include "attn_seq.cuh"

namespace {

constexpr int kBR = 64;  // query rows a block
constexpr int kBC = 64;  // keys a tile
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

using attn::as_ptr;

struct PrefillArgs {
  const SkvAttnSeq* seqs;
  int Hq, G, D, minRows;
  float scale;
  const float* q;
  float* out;
  float* lse;
};

// Shared memory: Q, K, V tiles (KT, [64][D]), S (f32 [64][64]), P (KT [64][64]), O (f32 [64][D]),
// and per row its running max, normaliser and rescale factor.
inline size_t smem_bytes(int D, size_t kt) {
  return 3 * kBR * D * kt + kBR * kBC * 4 + kBR * kBC * kt + kBR * D * 4 + 3 * kBR * 4;
}

// S[64][64] = Q K^T of a 64-row query tile and a 64-key tile ([64][D] each, in shared memory):
// warp w computes rows 16w..16w+15 (stores are the same whatever the lanes' order).
template <class KT, int ND>
__device__ inline void qk_tile(const KT* Qs, const KT* Ks, float* S, int warp) {
  namespace wmma = ck::wmma;
  constexpr int D = ND * 16;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kBC / 16];
  for (int c = 0; c < kBC / 16; ++c) wmma::fill_fragment(acc[c], 0.f);
  CK_UNROLL for (int kk = 0; kk < D; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, KT, wmma::row_major> qa;
    wmma::load_matrix_sync(qa, Qs + warp * 16 * D + kk, D);
    for (int c = 0; c < kBC / 16; ++c) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, KT, wmma::col_major> kb;
      wmma::load_matrix_sync(kb, Ks + c * 16 * D + kk, D);
      wmma::mma_sync(acc[c], qa, kb, acc[c]);
    }
  }
  for (int c = 0; c < kBC / 16; ++c)
    wmma::store_matrix_sync(S + warp * 16 * kBC + c * 16, acc[c], kBC, wmma::mem_row_major);
}

// Lets a kernel use `bytes` of dynamic shared memory (above 48 KiB it is an opt-in), once per size.
template <class K>
int allow_smem(K kernel, size_t bytes, size_t& optedIn, const char* what) {
#ifndef SKV_EMU
  if (bytes > optedIn) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      return skv_arg_error(what);
    }
    optedIn = bytes;
  }
#else
  (void)kernel, (void)bytes, (void)optedIn, (void)what;
#endif
  return SKV_OK;
}

// Calls f with the head dim's 16-column blocks as a compile-time constant (1..8).
template <class F>
int by_blocks(int D, F f) {
  switch (D / 16) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: return skv_arg_error("attention tiles: head dim must be a multiple of 16 up to 128");
  }
}

template <class KT, int ND>
__global__ void prefill_kernel(PrefillArgs a) {
  namespace wmma = ck::wmma;
  CK_DYN_SHARED(unsigned char, smem);
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, warp = tid >> 5;
  const SkvAttnSeq s = a.seqs[b];
  const int T = static_cast<int>(s.T), n = static_cast<int>(s.n), D = ND * 16;
  const int t0 = tile * kBR;
  if (!attn::tile_record(s, a.minRows) || t0 >= T) return;  // not this kernel's record, or past its rows
  const int rows = T - t0 < kBR ? T - t0 : kBR, g = h / a.G;
  KT* Qs = reinterpret_cast<KT*>(smem);
  KT* Ks = Qs + kBR * D;
  KT* Vs = Ks + kBC * D;
  float* S = reinterpret_cast<float*>(Vs + kBC * D);
  KT* P = reinterpret_cast<KT*>(S + kBR * kBC);
  float* O = reinterpret_cast<float*>(P + kBR * kBC);
  float* mrow = O + kBR * D;
  float* lrow = mrow + kBR;
  float* alpha = lrow + kBR;
  for (int e = tid; e < kBR * D; e += kThreads) {
    const int r = e / D, d = e % D;
    Qs[e] = ck::from_float<KT>(r < rows ? a.q[((s.qRow + t0 + r) * a.Hq + h) * D + d] : 0.f);
    O[e] = 0.f;
  }
  if (tid < kBR) {
    mrow[tid] = -INFINITY;
    lrow[tid] = 0.f;
  }
  // Keys this tile's rows can see: up to the last row's causal limit; from the first row's window.
  const int past = n - T;
  const int kEnd = past + t0 + rows;
  const int win = static_cast<int>(s.window);
  const int kBegin = win > 0 && past + t0 + 1 > win ? (past + t0 + 1 - win) / kBC * kBC : 0;
  const KT* kh = as_ptr<const KT>(s.k) + static_cast<int64_t>(g) * s.cap * D;
  const KT* vh = as_ptr<const KT>(s.v) + static_cast<int64_t>(g) * s.cap * D;
  for (int j0 = kBegin; j0 < kEnd; j0 += kBC) {
    __syncthreads();  // the previous tile's reads of Ks, Vs and P are done
    const int cnt = kEnd - j0 < kBC ? kEnd - j0 : kBC;
    // 16-byte copies (cp.async), rows past the list zero-filled.
    for (int e = tid * 8; e < kBC * D; e += kThreads * 8) {
      const bool valid = e / D < cnt;
      const int64_t at = static_cast<int64_t>(j0) * D + e;
      ck::cp_async16(Ks + e, valid ? kh + at : kh, valid);
      ck::cp_async16(Vs + e, valid ? vh + at : vh, valid);
    }
    ck::cp_async_commit();
    ck::cp_async_wait<0>();
    __syncthreads();
    // S = Q K^T: each warp a 16-row strip of the 64 x 64 tile.
    qk_tile<KT, ND>(Qs, Ks, S, warp);
    __syncthreads();
    // Online softmax: two threads a row, 32 keys each.
    {
      const int r = tid >> 1, half = tid & 1;
      const int lim = past + t0 + r + 1, lo = win > 0 && lim > win ? lim - win : 0;
      float mx = -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const int j = j0 + c;
        const float x = r < rows && c < cnt && j < lim && j >= lo ? S[r * kBC + c] * a.scale : -INFINITY;
        S[r * kBC + c] = x;
        mx = fmaxf(mx, x);
      }
      mx = fmaxf(mx, __shfl_xor_sync(ck::kFull, mx, 1));
      const float mold = mrow[r], mnew = fmaxf(mold, mx);
      float sum = 0.f;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const float p = mnew == -INFINITY ? 0.f : __expf(S[r * kBC + c] - mnew);
        P[r * kBC + c] = ck::from_float<KT>(p);
        sum += p;
      }
      sum += __shfl_xor_sync(ck::kFull, sum, 1);
      __syncthreads();  // every lane has read mrow before it moves
      if (half == 0) {
        const float f = mold == -INFINITY ? 0.f : __expf(mold - mnew);
        alpha[r] = f;
        lrow[r] = lrow[r] * f + sum;
        mrow[r] = mnew;
      }
    }
    __syncthreads();
    for (int e = tid; e < kBR * D; e += kThreads) O[e] *= alpha[e / D];
    __syncthreads();
    // O += P V: each warp its 16-row strip, all ND column blocks of D held as fragments. Every
    // lane loads before any lane stores (the barrier): a fragment's load-add-store is then the
    // same whatever the lanes' order.
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[ND];
      CK_UNROLL for (int c = 0; c < ND; ++c)
        wmma::load_matrix_sync(o[c], O + warp * 16 * D + c * 16, D, wmma::mem_row_major);
      for (int kk = 0; kk < kBC; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, KT, wmma::row_major> pa;
        wmma::load_matrix_sync(pa, P + warp * 16 * kBC + kk, kBC);
        CK_UNROLL for (int c = 0; c < ND; ++c) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, KT, wmma::row_major> vb;
          wmma::load_matrix_sync(vb, Vs + kk * D + c * 16, D);
          wmma::mma_sync(o[c], pa, vb, o[c]);
        }
      }
      __syncthreads();
      CK_UNROLL for (int c = 0; c < ND; ++c)
        wmma::store_matrix_sync(O + warp * 16 * D + c * 16, o[c], D, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = tid; e < rows * D; e += kThreads) {
    const int r = e / D, d = e % D;
    const float l = lrow[r];
    a.out[((s.qRow + t0 + r) * a.Hq + h) * D + d] = l > 0.f ? O[e] / l : 0.f;
  }
  if (a.lse && tid < rows)
    a.lse[(s.qRow + t0 + tid) * a.Hq + h] = lrow[tid] > 0.f ? mrow[tid] + logf(lrow[tid]) : -INFINITY;
}

template <class KT>
int launch(const PrefillArgs& a, int B, int maxT, void* stream) {
  return by_blocks(a.D, [&](auto nd) {
    constexpr int ND = decltype(nd)::value;
    static size_t optedIn = 48 * 1024;
    const size_t bytes = smem_bytes(a.D, sizeof(KT));
    const int rc = allow_smem(prefill_kernel<KT, ND>, bytes, optedIn,
                              "attention_prefill: the device refuses the shared memory for this head dim");
    if (rc != SKV_OK) return rc;
    const dim3 grid((maxT + kBR - 1) / kBR, a.Hq, B);
    CK_LAUNCH((prefill_kernel<KT, ND>), grid, kThreads, bytes, stream, a);
    return skv_check_launch("attention_prefill");
  });
}

// The probability pass of long records on tensor cores (H2O's and SnapKV's prefill sums): a block
// per (64-key tile, kv head, record) walks the group's heads and the query tiles from rowFrom,
// S = Q K^T on WMMA, p = exp(S * scale - lse) per row, and adds each key's column sum (and,
// with counts, the rows that see it) at its position. The CUDA-core pass takes the rest.
struct ColsumArgs {
  const SkvAttnSeq* seqs;
  const SkvProbOut* outs;
  int Hq, G, minRows;
  float scale;
  const float* q;
  const float* lse;
};

inline size_t colsum_smem(int D, size_t kt) { return 2 * kBR * D * kt + kBR * kBC * 4 + kBR * 4 + kBC * 4; }

template <class KT, int ND>
__global__ void colsum_kernel(ColsumArgs a) {
  namespace wmma = ck::wmma;
  CK_DYN_SHARED(unsigned char, smem);
  const int kt = blockIdx.x, g = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, warp = tid >> 5;
  const SkvAttnSeq s = a.seqs[b];
  const SkvProbOut o = a.outs[b];
  const int T = static_cast<int>(s.T), n = static_cast<int>(s.n), D = ND * 16, j0 = kt * kBC;
  if (!o.dst || o.mode != 1 || !attn::tile_record(s, a.minRows) || j0 >= n) return;
  const int past = n - T, from = static_cast<int>(o.rowFrom), cnt = n - j0 < kBC ? n - j0 : kBC;
  const int win = static_cast<int>(s.window);
  KT* Qs = reinterpret_cast<KT*>(smem);
  KT* Ks = Qs + kBR * D;
  float* S = reinterpret_cast<float*>(Ks + kBC * D);
  float* ls = S + kBR * kBC;
  float* col = ls + kBR;
  const KT* kh = as_ptr<const KT>(s.k) + static_cast<int64_t>(g) * s.cap * D;
  for (int e = tid * 8; e < kBC * D; e += kThreads * 8) {
    const bool valid = e / D < cnt;
    ck::cp_async16(Ks + e, valid ? kh + static_cast<int64_t>(j0) * D + e : kh, valid);
  }
  ck::cp_async_commit();
  ck::cp_async_wait<0>();
  if (tid < kBC) col[tid] = 0.f;
  // Rows that can see a key of this tile: t >= j0 - past (and from rowFrom on).
  const int tFirst = j0 - past > from ? j0 - past : from;
  for (int hh = 0; hh < a.G; ++hh) {
    const int h = g * a.G + hh;
    for (int t0 = tFirst / kBR * kBR; t0 < T; t0 += kBR) {
      const int rows = T - t0 < kBR ? T - t0 : kBR;
      __syncthreads();  // the previous tile is done with Qs and S
      for (int e = tid; e < kBR * D; e += kThreads) {
        const int r = e / D, d = e % D;
        Qs[e] = ck::from_float<KT>(r < rows ? a.q[((s.qRow + t0 + r) * a.Hq + h) * D + d] : 0.f);
      }
      if (tid < kBR) ls[tid] = tid < rows ? a.lse[(s.qRow + t0 + tid) * a.Hq + h] : -INFINITY;
      __syncthreads();
      qk_tile<KT, ND>(Qs, Ks, S, warp);
      __syncthreads();
      // Two threads a key column, 32 rows each.
      const int c = tid >> 1, half = tid & 1, j = j0 + c;
      float sum = 0.f;
      for (int r = half * 32; r < half * 32 + 32; ++r) {
        const int t = t0 + r, lim = past + t + 1, lo = win > 0 && lim > win ? lim - win : 0;
        if (r < rows && t >= from && j < lim && j >= lo && ls[r] != -INFINITY)
          sum += __expf(S[r * kBC + c] * a.scale - ls[r]);
      }
      sum += __shfl_xor_sync(ck::kFull, sum, 1);
      if (half == 0) col[c] += sum;
    }
  }
  __syncthreads();
  if (tid < cnt) {
    const int j = j0 + tid;
    float* dst = as_ptr<float>(o.dst) + static_cast<int64_t>(g) * o.stride + j;
    if (col[tid] != 0.f) atomicAdd(dst, col[tid]);
    if (o.counts) {
      const int first = j - past > from ? j - past : from;
      if (T > first) atomicAdd(as_ptr<float>(o.counts) + static_cast<int64_t>(g) * o.stride + j, static_cast<float>(T - first));
    }
  }
}

template <class KT>
int launch_colsum(const ColsumArgs& a, int D, int B, int maxKeys, int Hkv, void* stream) {
  return by_blocks(D, [&](auto nd) {
    constexpr int ND = decltype(nd)::value;
    static size_t optedIn = 48 * 1024;
    const size_t bytes = colsum_smem(D, sizeof(KT));
    const int rc = allow_smem(colsum_kernel<KT, ND>, bytes, optedIn,
                              "attention_probs: the device refuses the shared memory for this head dim");
    if (rc != SKV_OK) return rc;
    const dim3 grid((maxKeys + kBC - 1) / kBC, Hkv, B);
    CK_LAUNCH((colsum_kernel<KT, ND>), grid, kThreads, bytes, stream, a);
    return skv_check_launch("attention_probs_tiles");
  });
}

}  // namespace

extern "C" int skv_prefill_fits(int D, int kvDtype) {
  return (kvDtype == SKV_F16 || kvDtype == SKV_BF16) && D % 16 == 0 && D >= 16 && D <= 128;
}

extern "C" int skv_prefill_attention(const SkvAttnSeq* seqs, int B, int maxT, int Hq, int Hkv, int D, float scale,
                                     int kvDtype, const float* q, float* out, float* lse, int minRows, void* stream) {
  PrefillArgs a{seqs, Hq, Hq / Hkv, D, minRows, scale, q, out, lse};
  if (kvDtype == SKV_F16) return launch<ck::half_t>(a, B, maxT, stream);
  return launch<ck::bf16_t>(a, B, maxT, stream);
}

extern "C" int skv_prefill_colsums(const SkvAttnSeq* seqs, const SkvProbOut* outs, int B, int maxKeys, int Hq, int Hkv,
                                   int D, float scale, int kvDtype, const float* q, const float* lse, int minRows,
                                   void* stream) {
  ColsumArgs a{seqs, outs, Hq, Hq / Hkv, minRows, scale, q, lse};
  if (kvDtype == SKV_F16) return launch_colsum<ck::half_t>(a, D, B, maxKeys, Hkv, stream);
  return launch_colsum<ck::bf16_t>(a, D, B, maxKeys, Hkv, stream);
}
