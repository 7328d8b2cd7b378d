// Selecting policies on the device. Two kernels, both over the batched path's records:
//  - attention_probs: a pass over a step's keys after the batched attention, with each query
//    row's log-sum-exp from it, that writes probability rows (the assistant's current rows) or
//    adds the group's column sums into a score table at the keys' positions (H2O), so no
//    attention matrix is read back;
//  - rank_select: one list (a kv head of a sequence at a layer) per block: its scores mixed from
//    device rows, the newest positions kept, the rest ranked (score descending, ties to the
//    earlier position) and split into exact and V-only positions by a fixed or an adaptive rule,
//    written in ascending order as the attention's index lists, with the V-only weights. Its
//    host twin is rankSplit (select.cc): ranks and counts agree; sums run in another order.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"
#include "attn_seq.cuh"
#include "radix.cuh"
#include "../split_rule.h"

namespace {

constexpr int kProbThreads = 128;
constexpr int kProbWarps = kProbThreads / 32;
constexpr int kQ = 8;  // queries (rows x heads of a group) per pass
constexpr int kMaxD = 256;
constexpr int kChunk = 256;  // keys per block

using attn::as_ptr;
using attn::list_len;
using attn::list_row;

struct ProbArgs {
  const SkvAttnSeq* seqs;
  const SkvProbOut* outs;
  int Hq, G, D;
  float scale;
  const float* q;
  const float* lse;
  int skip;  // > 0: the column sums of contiguous records of at least this many rows are the tiles'
};

// Block (key chunk, kv head, sequence): the probabilities of the chunk's keys for every query
// row t >= rowFrom of the group's heads, kQ queries at a time; a warp per key.
template <class KT>
__global__ void probs_kernel(ProbArgs a) {
  CK_SHARED float qs[kQ][kMaxD];
  CK_SHARED float ls[kQ];
  CK_SHARED int lim[kQ], lo[kQ];
  const int chunk = blockIdx.x, g = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  const SkvAttnSeq s = a.seqs[b];
  const SkvProbOut o = a.outs[b];
  const int n = list_len(s, g), j0 = chunk * kChunk;
  if (!o.dst || j0 >= n) return;
  if (o.mode == 1 && attn::tile_record(s, a.skip)) return;
  const int T = static_cast<int>(s.T), G = a.G, D = a.D, from = static_cast<int>(o.rowFrom);
  const int rows = T - from, nq = rows * G, cnt = n - j0 < kChunk ? n - j0 : kChunk;
  const KT* kh = as_ptr<const KT>(s.k) + static_cast<int64_t>(g) * s.cap * D;
  float* dst = as_ptr<float>(o.dst);
  const int warp = tid >> 5, lane = tid & 31;
  for (int v0 = 0; v0 < nq; v0 += kQ) {
    const int vn = nq - v0 < kQ ? nq - v0 : kQ;
    __syncthreads();  // the previous pass is done with qs
    for (int e = tid; e < vn * D; e += kProbThreads) {
      const int v = e / D, d = e % D;
      const int t = from + (v0 + v) / G, h = g * G + (v0 + v) % G;
      qs[v][d] = a.q[((s.qRow + t) * a.Hq + h) * D + d] * a.scale;
    }
    if (tid < vn) {
      const int t = from + (v0 + tid) / G, h = g * G + (v0 + tid) % G;
      ls[tid] = a.lse[(s.qRow + t) * a.Hq + h];
      lim[tid] = n - T + t + 1;
      lo[tid] = s.window > 0 && !s.idx && lim[tid] > s.window ? lim[tid] - static_cast<int>(s.window) : 0;
    }
    __syncthreads();
    for (int i = warp; i < cnt; i += kProbWarps) {
      const int j = j0 + i, row = list_row(s, g, j);
      const KT* kr = kh + static_cast<int64_t>(row) * D;
      float dot[kQ];
      for (int v = 0; v < kQ; ++v) dot[v] = 0.f;
      for (int d = lane; d < D; d += 32) {
        const float x = ck::to_float(kr[d]);
        for (int v = 0; v < vn; ++v) dot[v] += qs[v][d] * x;
      }
      for (int v = 0; v < vn; ++v) dot[v] = ck::warp_sum(dot[v]);
      if (lane != 0) continue;
      float sum = 0.f;
      for (int v = 0; v < vn; ++v) {
        const bool seen = j < lim[v] && j >= lo[v] && ls[v] != -INFINITY;
        const float p = seen ? __expf(dot[v] - ls[v]) : 0.f;
        if (o.mode == 0) {
          const int t = (v0 + v) / G, h = g * G + (v0 + v) % G;
          dst[(static_cast<int64_t>(h) * rows + t) * o.stride + j] = p;
        } else {
          sum += p;
        }
      }
      if (o.mode == 1 && sum != 0.f) atomicAdd(dst + static_cast<int64_t>(g) * o.stride + row, sum);
      // mode 2: this block alone owns the key's entry: the first pass writes, later ones add.
      if (o.mode == 2) {
        float* e = dst + static_cast<int64_t>(g) * o.stride + row;
        *e = v0 == 0 ? sum : *e + sum;
      }
      // Rows t >= from that see key j (t >= j - (n - T)), counted once per key.
      if (o.mode != 0 && o.counts && v0 == 0) {
        const int first = j - (n - T) > from ? j - (n - T) : from;
        if (T > first) atomicAdd(as_ptr<float>(o.counts) + static_cast<int64_t>(g) * o.stride + row, static_cast<float>(T - first));
      }
    }
  }
}

// ---- rank_select ----

using namespace radix;

// A list's view: its candidates are positions p < lo not excluded; a score is the terms' sum
// (in the host's order, in double) rounded to float, NaN ranking last.
struct List {
  const SkvRankList* r;
  int n, lo;
  const uint8_t* ex;
  const float* cache;  // the scores of [0, lo) in shared memory (null: computed at each read)
  double sumA = 0, sumO = 0;  // the blend's normalisers (> 0 divides)
  __device__ bool candidate(int p) const { return p < lo && (ex == nullptr || ex[p] == 0); }
  __device__ float score(int p) const { return cache ? cache[p] : compute(p); }
  __device__ double terms(int p) const {
    double s = 0;
    for (int t = 0; t < r->nterms; ++t) s += static_cast<double>(as_ptr<const float>(r->term[t])[p]) * r->weight[t];
    return s;
  }
  __device__ double own(int p) const {
    const float c = as_ptr<const float>(r->ownCounts)[p];
    return c > 0 ? static_cast<double>(as_ptr<const float>(r->ownSums)[p]) / c : 0.0;
  }
  __device__ float compute(int p) const {
    double s = terms(p);
    if (r->pool > 0) {
      const int w = static_cast<int>(r->pool), hi = static_cast<int>(r->poolLimit) - 1;
      s = 0;
      for (int j = p - w < 0 ? 0 : p - w; j <= (p + w < hi ? p + w : hi); ++j) s += terms(j);
      s /= 2 * w + 1;
    }
    if (r->blend >= 0) {
      const double a = sumA > 0 ? s / sumA : s, o = sumO > 0 ? own(p) / sumO : own(p);
      s = r->blend * a + (1 - r->blend) * o;
    }
    const float f = static_cast<float>(s);
    return f != f ? -INFINITY : f;
  }
};

// cacheN: floats of dynamic shared memory; a list of at most that many positions ranks from a
// copy of its scores there (the selection reads them some twenty times).
__global__ void rank_select_kernel(const SkvRankList* lists, int cacheN) {
  CK_SHARED Shared sh;
  CK_DYN_SHARED(float, cache);
  const SkvRankList& r = lists[blockIdx.x];
  const int tid = threadIdx.x;
  const int n = static_cast<int>(r.n), T = static_cast<int>(r.T);
  const bool adaptive = r.flags & SKV_RANK_ADAPTIVE, vOnlyOk = r.flags & SKV_RANK_VONLY;
  const bool skipRecent = r.flags & SKV_RANK_SKIP_EXCLUDED_RECENT, evict = r.flags & SKV_RANK_EVICT;
  List L{&r, n, n - static_cast<int>(r.recent) > 0 ? n - static_cast<int>(r.recent) : 0,
         r.exclude ? as_ptr<const uint8_t>(r.exclude) : nullptr, nullptr};
  if (r.blend >= 0) {
    // Both views as distributions over [0, n): their sums first.
    if (tid == 0) sh.sum = sh.dsum = 0;
    __syncthreads();
    double a = 0, o = 0;
    for (int p = tid; p < n; p += kRankThreads) {
      a += L.terms(p);
      o += L.own(p);
    }
    atomicAdd(&sh.sum, a);
    atomicAdd(&sh.dsum, o);
    __syncthreads();
    L.sumA = sh.sum;
    L.sumO = sh.dsum;
    __syncthreads();
  }
  if (L.lo <= cacheN) {
    for (int p = tid; p < L.lo; p += kRankThreads) cache[p] = L.compute(p);
    __syncthreads();
    L.cache = cache;
  }
  uint8_t* ex = r.exclude ? as_ptr<uint8_t>(r.exclude) : nullptr;
  // Excluded positions of the recent window are not kept: their slots go to ranked tokens.
  int freed = 0;
  if (skipRecent && ex) {
    if (tid == 0) sh.count = 0;
    __syncthreads();
    int c = 0;
    for (int p = L.lo + tid; p < n; p += kRankThreads) c += ex[p] != 0;
    if (c) atomicAdd(&sh.count, c);
    __syncthreads();
    freed = sh.count;
    __syncthreads();
  }
  int all;
  count_where(L, [](int) { return true; }, sh, &all);
  const double units = r.units;
  const int whole = units > 0 ? static_cast<int>(floor(units + 1e-9)) : 0;
  int64_t K = adaptive ? 2 * static_cast<int64_t>(ceil(units)) + 1 : r.k + freed;
  if (adaptive && !vOnlyOk) K = K < whole ? K : whole;
  const int m = K < all ? static_cast<int>(K) : all;
  int exact = 0, v = 0;
  if (!adaptive) {
    exact = r.exact + freed < m ? static_cast<int>(r.exact) + freed : m;
    v = m - exact;
  } else if (!vOnlyOk) {
    exact = m < whole ? m : whole;
  } else {
    // The candidates' (top m) predicted mass; exact slots in rank order until they hold
    // exactShare of it, then V-only ones while not negligible; leftovers back to exact.
    unsigned km;
    int tm;
    select_kth(L, m, sh, &km, &tm);
    if (tid == 0) sh.dsum = 0;
    __syncthreads();
    // Keys above km, then tm of its ties (all of one score).
    double part = 0;
    for (int p = tid; p < L.lo; p += kRankThreads) {
      if (km == kNone || !L.candidate(p)) continue;
      const float f = L.score(p);
      if (key_of(f) > km && f > -INFINITY) part += f;
    }
    if (part != 0) atomicAdd(&sh.dsum, part);
    __syncthreads();
    const float kmv = km == kNone ? 0.f : value_of(km);
    const double total = sh.dsum + (kmv > -INFINITY ? static_cast<double>(tm) * kmv : 0.0);
    __syncthreads();
    const int lim = m < whole ? m : whole;
    const int reach = ranks_to_reach(L, r.exactShare * total, sh, [](float f) { return static_cast<double>(f); });
    exact = reach < lim ? reach : lim;
    int notNegligible;
    const double neg = r.negligible;
    count_where(L, [&](int p) { return static_cast<double>(L.score(p)) >= neg; }, sh, &notNegligible);
    skv::adaptive_leftovers(m, notNegligible, units, exact, v);
  }
  unsigned k1, k2;
  int t1, t2;
  select_kth(L, exact, sh, &k1, &t1);
  select_kth(L, exact + v, sh, &k2, &t2);
  // Positions in ascending order: exact ones (ranked, then the window, then the step's rows),
  // and V-only ones; ties to a threshold are taken by position.
  int32_t* full = as_ptr<int32_t>(r.full);
  int32_t* vout = r.vidx ? as_ptr<int32_t>(r.vidx) : nullptr;
  int nf = 0, nv = 0, e1 = 0, e2 = 0;
  for (int base = 0; base < L.lo; base += kRankThreads) {
    const int p = base + tid;
    const bool cand = p < L.lo && L.candidate(p);
    const unsigned k = cand ? key_of(L.score(p)) : 0;
    const bool eq1 = cand && k1 != kNone && k == k1, eq2 = cand && k2 != kNone && k == k2;
    int tot;
    const int ties = block_scan(static_cast<int>(eq1) | (static_cast<int>(eq2) << 16), sh, tot);
    const int r1 = e1 + (ties & 0xffff), r2 = e2 + (ties >> 16);
    e1 += tot & 0xffff;
    e2 += tot >> 16;
    const bool in1 = cand && k1 != kNone && (k > k1 || (eq1 && r1 < t1));
    const bool in2 = cand && k2 != kNone && (k > k2 || (eq2 && r2 < t2));
    const int cls = in1 ? 1 : in2 ? 2 : 0;
    const int at = block_scan(static_cast<int>(cls == 1) | (static_cast<int>(cls == 2) << 16), sh, tot);
    if (cls == 1) full[nf + (at & 0xffff)] = p;
    if (cls == 2 && vout) vout[nv + (at >> 16)] = p;
    if (evict && ex && p < L.lo && cls == 0) ex[p] = 1;
    nf += tot & 0xffff;
    nv += tot >> 16;
  }
  // The recent window (without its excluded positions when asked), then the step's rows.
  int kept = 0;
  for (int base = L.lo; base < n + T; base += kRankThreads) {
    const int p = base + tid;
    const bool keep = p < n + T && (p >= n || !(skipRecent && ex && ex[p] != 0));
    int tot;
    const int at = block_scan(keep ? 1 : 0, sh, tot);
    if (keep) full[nf + kept + at] = p;
    kept += tot;
  }
  if (tid == 0) {
    as_ptr<int32_t>(r.fullCnt)[0] = nf + kept;
    if (r.vCnt) as_ptr<int32_t>(r.vCnt)[0] = r.vidx ? nv : 0;
  }
  // V-only weights: term t (a query head's matched row) gives its row's value at each V-only position.
  if (r.w && vout) {
    __syncthreads();
    for (int t = 0; t < r.nterms; ++t) {
      float* w = as_ptr<float>(r.w) + t * r.wstride;
      const float* row = as_ptr<const float>(r.term[t]);
      const bool gated = (r.gate >> t) & 1;
      for (int i = tid; i < nv; i += kRankThreads) w[i] = gated ? row[vout[i]] : 0.f;
    }
  }
}

}  // namespace

extern "C" int skv_k_attention_probs(const SkvAttnSeq* seqs, const SkvProbOut* outs, int B, int maxKeys, int Hq,
                                     int Hkv, int D, float scale, int kvDtype, const float* q, const float* lse,
                                     int prefillRows, int stream) {
  if (B <= 0 || maxKeys <= 0) return SKV_OK;
  if (Hkv <= 0 || Hq % Hkv != 0) return skv_arg_error("attention_probs: query heads must be a multiple of kv heads");
  if (D <= 0 || D > kMaxD) return skv_arg_error("attention_probs: head dim must be 1..256");
  if (maxKeys > (1 << 30)) return skv_arg_error("attention_probs: bad key count");
  ProbArgs a{seqs, outs, Hq, Hq / Hkv, D, scale, q, lse, 0};
  const dim3 grid((maxKeys + kChunk - 1) / kChunk, Hkv, B);
  void* s = skv_stream(stream);
  // Long contiguous records of 16-bit stores: their column sums on tensor cores (prefill.cu).
  if (prefillRows > 0 && skv_prefill_fits(D, kvDtype)) {
    const int rc = skv_prefill_colsums(seqs, outs, B, maxKeys, Hq, Hkv, D, scale, kvDtype, q, lse, prefillRows, s);
    if (rc != SKV_OK) return rc;
    a.skip = prefillRows;
  }
  if (kvDtype == SKV_F32) CK_LAUNCH(probs_kernel<float>, grid, kProbThreads, 0, s, a);
  else if (kvDtype == SKV_F16) CK_LAUNCH(probs_kernel<ck::half_t>, grid, kProbThreads, 0, s, a);
  else if (kvDtype == SKV_BF16) CK_LAUNCH(probs_kernel<ck::bf16_t>, grid, kProbThreads, 0, s, a);
  else return skv_arg_error("attention_probs: unknown kv dtype");
  return skv_check_launch("attention_probs");
}

// Scores cached in shared memory up to this many positions a list (the rest computed per read).
constexpr int kCacheMax = 48 * 1024;

extern "C" int skv_k_rank_select(const SkvRankList* lists, int count, int maxN, int stream) {
  if (count <= 0) return SKV_OK;
  if (maxN < 0) return skv_arg_error("rank_select: maxN must be >= 0");
  const int cacheN = maxN < kCacheMax ? maxN : 0;
  const size_t bytes = static_cast<size_t>(cacheN) * sizeof(float);
#ifndef SKV_EMU
  // Over 48 KiB of dynamic shared memory is an opt-in, once per size reached.
  static size_t optedIn = 48 * 1024;
  if (bytes > optedIn) {
    if (cudaFuncSetAttribute(rank_select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes)) != cudaSuccess) {
      (void)cudaGetLastError();
      return skv_arg_error("rank_select: the device refuses the shared memory for this length");
    }
    optedIn = bytes;
  }
#endif
  CK_LAUNCH(rank_select_kernel, count, kRankThreads, bytes, skv_stream(stream), lists, cacheN);
  return skv_check_launch("rank_select");
}
