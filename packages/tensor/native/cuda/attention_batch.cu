// Batched decode attention, flash-decoding style: one launch per layer for every sequence
// of the step, ragged lengths (two when a list spans more than one chunk). A block takes one chunk of one kv head's key list and every
// query of that head's GQA group (T rows x G heads, up to kQ at a time), so each K/V row is
// read once for the whole group. Keys come from the store in place: rows 0..n-1, or the rows
// a policy's index list names. A second kernel merges the chunks (their maxima, normalisers
// and partial outputs) and adds SmallKV's V-only rows.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"
#include "attn_seq.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kQ = 8;         // queries (rows x heads of one group) per block
constexpr int kMaxD = 256;
constexpr int kChunk = 256;   // keys per block

struct BatchArgs {
  const SkvAttnSeq* seqs;
  int B, maxT, Hq, Hkv, D, G, nsub, S;
  float scale;
  const float* q;
  float* out;
  float* po;  // partial outputs [B][maxT][Hq][S][D]
  float* ml;  // their (max, sum) [B][maxT][Hq][S][2]
  float* lse;  // log-sum-exp per q row and head (null: not asked)
  int skip;    // > 0: contiguous records of at least this many rows are the prefill kernel's
};

using attn::as_ptr;
using attn::list_len;
using attn::list_row;

// One query's V-only rows (SmallKV): weights w[j] of rows rows[j] of its kv head's V plane.
struct VOnlyRows {
  const float* w;
  const int32_t* rows;
  int n;
};
__device__ inline VOnlyRows vonly_of(const SkvAttnSeq& s, int g, int h, int t) {
  if (!s.vidx) return {nullptr, nullptr, 0};
  return {as_ptr<float>(s.w) + (static_cast<int64_t>(h) * s.T + t) * s.vmax,
          as_ptr<int32_t>(s.vidx) + static_cast<int64_t>(g) * s.vcap, as_ptr<int32_t>(s.vcnt)[g]};
}
// o plus the V-only rows' weighted values at dim d (added one by one, in row order).
template <class KT>
__device__ inline float vonly_add(float o, const VOnlyRows& vo, const KT* vh, int D, int d) {
  for (int j = 0; j < vo.n; ++j) o += vo.w[j] * ck::to_float(vh[static_cast<int64_t>(vo.rows[j]) * D + d]);
  return o;
}

// LPK lanes share one key (16-byte loads each), 32 / LPK keys per warp at a time.
template <class KT, int LPK>
__global__ void split_kernel(BatchArgs a) {
  constexpr int E = ck::Vec<KT>::E;
  CK_SHARED CK_ALIGN(16) float qs[kQ][kMaxD];
  CK_SHARED float sc[kQ][kChunk];
  CK_SHARED float red[kThreads * 2 * kQ];
  CK_SHARED int lim[kQ], lo[kQ];
  CK_SHARED float mloc[kQ], lloc[kQ];
  const int split = blockIdx.x, g = blockIdx.y / a.nsub, sub = blockIdx.y % a.nsub, b = blockIdx.z;
  const SkvAttnSeq s = a.seqs[b];
  const int T = static_cast<int>(s.T), G = a.G, D = a.D, tid = threadIdx.x;
  const int v0 = sub * kQ, vn = T * G - v0 < kQ ? T * G - v0 : kQ;
  if (vn <= 0) return;  // the whole block: this sequence has fewer rows than the launch's widest
  if (attn::tile_record(s, a.skip)) return;
  const int n = list_len(s, g), j0 = split * kChunk;
  auto slot = [&](int v) {  // partial index of query v of this block
    const int t = (v0 + v) / G, h = g * G + (v0 + v) % G;
    return ((static_cast<int64_t>(b) * a.maxT + t) * a.Hq + h) * a.S + split;
  };
  // Past this list's end, or past every causal limit of this block's queries (the upper
  // triangle of a multi-row step): an empty partial.
  const int limMax = n - T + (v0 + vn - 1) / G + 1;
  if (j0 >= n || j0 >= limMax) {
    if (tid < vn) {
      a.ml[slot(tid) * 2] = -INFINITY;
      a.ml[slot(tid) * 2 + 1] = 0.f;
    }
    return;
  }
  const int cnt = n - j0 < kChunk ? n - j0 : kChunk;
  for (int e = tid; e < vn * D; e += kThreads) {
    const int v = e / D, d = e % D;
    const int t = (v0 + v) / G, h = g * G + (v0 + v) % G;
    qs[v][d] = a.q[((s.qRow + t) * a.Hq + h) * D + d] * a.scale;
  }
  if (tid < vn) {
    const int t = (v0 + tid) / G;
    lim[tid] = n - T + t + 1;
    lo[tid] = s.window > 0 && !s.idx && lim[tid] > s.window ? lim[tid] - static_cast<int>(s.window) : 0;
  }
  __syncthreads();

  const KT* kh = as_ptr<KT>(s.k) + static_cast<int64_t>(g) * s.cap * D;
  const KT* vh = as_ptr<KT>(s.v) + static_cast<int64_t>(g) * s.cap * D;
  // Logits of the chunk's keys.
  const int warp = tid >> 5, lane = tid & 31, sl = lane % LPK;
  constexpr int KPW = 32 / LPK;
  for (int base = warp * KPW; base < cnt; base += kWarps * KPW) {
    const int i = base + lane / LPK;
    const bool valid = i < cnt;
    float dot[kQ];
    for (int v = 0; v < kQ; ++v) dot[v] = 0.f;
    if (valid) {
      const KT* kr = kh + static_cast<int64_t>(list_row(s, g, j0 + i)) * D;
      for (int c = sl * E; c < D; c += LPK * E) {
        float kv[E];
        ck::load16(kr + c, kv);
        for (int v = 0; v < kQ; ++v) {
          if (v >= vn) break;
          float p = 0.f;
          for (int e = 0; e < E; ++e) p += qs[v][c + e] * kv[e];
          dot[v] += p;
        }
      }
    }
    for (int o = LPK / 2; o > 0; o >>= 1)
      for (int v = 0; v < kQ; ++v) dot[v] += __shfl_xor_sync(ck::kFull, dot[v], o);
    if (valid && sl == 0)
      for (int v = 0; v < vn; ++v) {
        const int jj = j0 + i;
        sc[v][i] = jj >= lo[v] && jj < lim[v] ? dot[v] : -INFINITY;
      }
  }
  __syncthreads();
  // Each query's chunk maximum and normaliser; sc becomes exp(logit - max).
  for (int v = warp; v < vn; v += kWarps) {
    float m = -INFINITY;
    for (int i = lane; i < cnt; i += 32) m = fmaxf(m, sc[v][i]);
    m = ck::warp_max(m);
    float l = 0.f;
    for (int i = lane; i < cnt; i += 32) {
      const float p = m == -INFINITY ? 0.f : __expf(sc[v][i] - m);
      sc[v][i] = p;
      l += p;
    }
    l = ck::warp_sum(l);
    if (lane == 0) {
      mloc[v] = m;
      lloc[v] = l;
    }
  }
  __syncthreads();
  // Values: P threads per key cover the head dim in pairs; KG key groups take every KG-th key.
  const int P = D / 2, KG = kThreads / P;
  const int kg = tid / P, pd = tid % P;
  float acc[kQ][2];
  for (int v = 0; v < kQ; ++v) acc[v][0] = acc[v][1] = 0.f;
  if (kg < KG) {
    for (int i = kg; i < cnt; i += KG) {
      const KT* vr = vh + static_cast<int64_t>(list_row(s, g, j0 + i)) * D + 2 * pd;
      const float x0 = ck::to_float(vr[0]), x1 = ck::to_float(vr[1]);
      for (int v = 0; v < kQ; ++v) {
        if (v >= vn) break;
        const float p = sc[v][i];
        acc[v][0] += p * x0;
        acc[v][1] += p * x1;
      }
    }
    for (int v = 0; v < vn; ++v) {
      red[(kg * kQ + v) * D + 2 * pd] = acc[v][0];
      red[(kg * kQ + v) * D + 2 * pd + 1] = acc[v][1];
    }
  }
  __syncthreads();
  if (a.S == 1) {
    // The only chunk (every list fits one): normalise, add the V-only rows and write the
    // output here; the launch has no reduce.
    CK_SHARED float keep[kQ];
    if (tid < vn) {
      const int t = (v0 + tid) / G, h = g * G + (v0 + tid) % G;
      const VOnlyRows vo = vonly_of(s, g, h, t);
      float k1 = 1.f;
      if (s.mode == 1)
        for (int j = 0; j < vo.n; ++j) k1 -= vo.w[j];
      keep[tid] = k1 / lloc[tid];
      if (a.lse) a.lse[(s.qRow + t) * a.Hq + h] = lloc[tid] > 0.f ? mloc[tid] + logf(lloc[tid]) : -INFINITY;
    }
    __syncthreads();
    for (int e = tid; e < vn * D; e += kThreads) {
      const int v = e / D, d = e % D;
      const int t = (v0 + v) / G, h = g * G + (v0 + v) % G;
      float o = 0.f;
      for (int r = 0; r < KG; ++r) o += red[(r * kQ + v) * D + d];
      a.out[((s.qRow + t) * a.Hq + h) * D + d] = vonly_add(o * keep[v], vonly_of(s, g, h, t), vh, D, d);
    }
    return;
  }
  for (int e = tid; e < vn * D; e += kThreads) {
    const int v = e / D, d = e % D;
    float o = 0.f;
    for (int r = 0; r < KG; ++r) o += red[(r * kQ + v) * D + d];
    a.po[slot(v) * D + d] = o;
  }
  if (tid < vn) {
    a.ml[slot(tid) * 2] = mloc[tid];
    a.ml[slot(tid) * 2 + 1] = lloc[tid];
  }
}

// One block per (query head, row, sequence): merge the chunks, add the V-only rows.
template <class KT>
__global__ void reduce_kernel(BatchArgs a) {
  CK_SHARED float wgt[1024];
  CK_SHARED float red[32];
  const int h = blockIdx.x, t = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  const SkvAttnSeq s = a.seqs[b];
  const int T = static_cast<int>(s.T);
  if (t >= T || attn::tile_record(s, a.skip)) return;
  const int g = h / a.G, D = a.D;
  const int ns = (list_len(s, g) + kChunk - 1) / kChunk;
  const int64_t base = ((static_cast<int64_t>(b) * a.maxT + t) * a.Hq + h) * a.S;
  float m = -INFINITY;
  for (int i = tid; i < ns; i += blockDim.x) m = fmaxf(m, a.ml[(base + i) * 2]);
  m = ck::block_reduce<true>(m, red);
  float l = 0.f;
  for (int i = tid; i < ns; i += blockDim.x) {
    const float mi = a.ml[(base + i) * 2];
    const float e = mi == -INFINITY ? 0.f : __expf(mi - m);
    l += a.ml[(base + i) * 2 + 1] * e;
  }
  l = ck::block_reduce<false>(l, red);
  if (a.lse && tid == 0) a.lse[(s.qRow + t) * a.Hq + h] = l > 0.f ? m + logf(l) : -INFINITY;
  const VOnlyRows vo = vonly_of(s, g, h, t);
  float keep = 1.f;
  if (vo.n > 0 && s.mode == 1) {
    float mass = 0.f;
    for (int j = tid; j < vo.n; j += blockDim.x) mass += vo.w[j];
    keep = 1.f - ck::block_reduce<false>(mass, red);
  }
  const float scale = keep / l;
  float* o = a.out + ((s.qRow + t) * a.Hq + h) * D;
  const KT* vh = as_ptr<KT>(s.v) + static_cast<int64_t>(g) * s.cap * D;
  for (int i0 = 0; i0 < ns; i0 += 1024) {  // chunk weights through shared memory, 1024 at a time
    const int cntc = ns - i0 < 1024 ? ns - i0 : 1024;
    __syncthreads();
    for (int i = tid; i < cntc; i += blockDim.x) {
      const float mi = a.ml[(base + i0 + i) * 2];
      wgt[i] = mi == -INFINITY ? 0.f : __expf(mi - m) * scale;
    }
    __syncthreads();
    for (int d = tid; d < D; d += blockDim.x) {
      float r = i0 == 0 ? 0.f : o[d];
      for (int i = 0; i < cntc; ++i) r += wgt[i] * a.po[(base + i0 + i) * D + d];
      o[d] = r;
    }
  }
  for (int d = tid; d < D; d += blockDim.x) o[d] = vonly_add(o[d], vo, vh, D, d);
}

template <class KT>
int launch(const BatchArgs& a, void* stream) {
  constexpr int E = ck::Vec<KT>::E;
  const int lanes = a.D / E;
  const dim3 grid(a.S, a.Hkv * a.nsub, a.B);
  if (lanes >= 32) CK_LAUNCH((split_kernel<KT, 32>), grid, kThreads, 0, stream, a);
  else if (lanes >= 16) CK_LAUNCH((split_kernel<KT, 16>), grid, kThreads, 0, stream, a);
  else if (lanes >= 8) CK_LAUNCH((split_kernel<KT, 8>), grid, kThreads, 0, stream, a);
  else if (lanes >= 4) CK_LAUNCH((split_kernel<KT, 4>), grid, kThreads, 0, stream, a);
  else if (lanes >= 2) CK_LAUNCH((split_kernel<KT, 2>), grid, kThreads, 0, stream, a);
  else CK_LAUNCH((split_kernel<KT, 1>), grid, kThreads, 0, stream, a);
  const int rc = skv_check_launch("attention_batch");
  if (rc != SKV_OK || a.S == 1) return rc;  // one chunk: the split kernel wrote the output
  const int threads = a.D < 128 ? 64 : 128;
  CK_LAUNCH(reduce_kernel<KT>, dim3(a.Hq, a.maxT, a.B), threads, 0, stream, a);
  return skv_check_launch("attention_batch_reduce");
}

int splits(int maxKeys) { return (maxKeys + kChunk - 1) / kChunk > 0 ? (maxKeys + kChunk - 1) / kChunk : 1; }

}  // namespace

extern "C" int64_t skv_attn_part_floats(int B, int maxT, int maxKeys, int Hq, int D, int chunk) {
  (void)chunk;
  return static_cast<int64_t>(B) * maxT * Hq * splits(maxKeys) * (D + 2);
}

extern "C" int skv_k_attention_batch(const SkvAttnSeq* seqs, int B, int maxT, int maxKeys, int Hq, int Hkv, int D,
                                     float scale, int kvDtype, const float* q, float* out, float* part, int chunk,
                                     float* lse, int prefillRows, int stream) {
  if (B <= 0 || maxT <= 0) return SKV_OK;
  if (chunk != 0 && chunk != kChunk) return skv_arg_error("attention_batch: the chunk is 256 keys (pass 0)");
  if (Hkv <= 0 || Hq % Hkv != 0) return skv_arg_error("attention_batch: query heads must be a multiple of kv heads");
  const int E = kvDtype == SKV_F32 ? 4 : 8;
  if (D <= 0 || D > kMaxD || D % E != 0)
    return skv_arg_error("attention_batch: head dim must be a multiple of 16 bytes of the kv dtype, at most 256");
  if (maxKeys <= 0 || maxKeys > (1 << 30)) return skv_arg_error("attention_batch: bad key count");
  BatchArgs a{};
  a.seqs = seqs;
  a.B = B;
  a.maxT = maxT;
  a.Hq = Hq;
  a.Hkv = Hkv;
  a.D = D;
  a.G = Hq / Hkv;
  a.nsub = (maxT * a.G + kQ - 1) / kQ;
  a.S = splits(maxKeys);
  a.scale = scale;
  a.q = q;
  a.out = out;
  a.lse = lse;
  a.po = part;
  a.ml = part + static_cast<int64_t>(B) * maxT * Hq * a.S * D;
  void* s = skv_stream(stream);
  // Long contiguous records of 16-bit stores: tensor-core tiles (prefill.cu); the rest here.
  if (prefillRows > 0 && maxT >= prefillRows && skv_prefill_fits(D, kvDtype)) {
    const int rc = skv_prefill_attention(seqs, B, maxT, Hq, Hkv, D, scale, kvDtype, q, out, lse, prefillRows, s);
    if (rc != SKV_OK) return rc;
    a.skip = prefillRows;
  }
  if (kvDtype == SKV_F32) return launch<float>(a, s);
  if (kvDtype == SKV_F16) return launch<ck::half_t>(a, s);
  if (kvDtype == SKV_BF16) return launch<ck::bf16_t>(a, s);
  return skv_arg_error("attention_batch: unknown kv dtype");
}
