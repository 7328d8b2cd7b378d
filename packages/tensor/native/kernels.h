// Flat CPU kernels of @smallkv/tensor. Plain C ABI, float32, row-major, no allocation
// visible to callers: each kernel is testable on its own against src/reference.ts.
//
// Layout conventions (shared with the TypeScript side):
//   activations  x[T][H][D]       T tokens, H heads, D head dim
//   KV store     k[Hkv][cap][D]   head-major so one head's keys are contiguous
#pragma once
#include <cstdint>

namespace skv {

// HF rotate-half RoPE, in place: x' = x*cos + rotate_half(x)*sin, angle = pos * theta^(-2i/D).
void rope_f32(float* x, const int32_t* pos, int T, int H, int D, double theta, const float* inv_freq = nullptr,
              double scale = 1.0);

// Causal grouped-query attention of T new queries over a KV store.
// Query t of kv head g sees keys [0, past[g] + t] (past[g] keys precede the new ones).
//   q[T][Hq][D], k/v[Hkv][cap][D], out[T][Hq][D]
//   probs  (optional) [Hq][T][Lmax], Lmax = max(past)+T, zero beyond each row's length
//   scores (optional) [Hq][Lmax], += column sums of the probabilities of query rows
//          t >= scoreStart (fused H2O/SnapKV-style accumulation: no materialised matrix)
// window > 0: query t sees only its last `window` keys, [max(0, past+t+1-window), past+t] (sliding window).
//
// The mixed step shared by SmallKV and PoD: exact attention as above over the K+V rows,
// plus V-only rows whose attention weights come from elsewhere (the small model, or the
// first layer of a PoD block):
//   vo[Hkv][vcap][D]   V-only rows, nV[g] of them for kv head g
//   w[Hq][T][vmax]     their weights per query head and query row (vmax = max nV)
//   mode 0 "literal":  o = O_exact + sum_k w_k v_k
//   mode 1 "mass":     o = (1 - sum_k w_k) O_exact + sum_k w_k v_k

// One attention as described above (vo = nullptr: no V-only rows); the unit of attention_batch_f32.
struct AttentionJob {
  const float* q;
  const float* k;
  const float* v;
  int cap, T;
  const int32_t* past;
  int Hq, Hkv, D;
  float scale;
  const float* vo;
  int vcap;
  const int32_t* nV;
  const float* w;
  int mode;
  float* out;
  float* probs;
  float* scores;
  int scoreStart, window;
  // Indexed job (idx non-null): Hkv counts lists (kv heads, or query heads), list g reads store
  // head g * storeHeads / Hkv: K/V rows idx[off[g] .. off[g] + past[g]) and then the step's own
  // rows [newAt, newAt + T); V-only rows are vo's rows vidx[voff[g] .. voff[g] + nV[g]) of the
  // same store head (vcap = cap). Probability columns follow that order.
  const int32_t* idx = nullptr;
  const int32_t* off = nullptr;
  int newAt = 0;
  const int32_t* vidx = nullptr;
  const int32_t* voff = nullptr;
  int storeHeads = 0;
  // An int8 store (k8 non-null; k/v unused): row r of head g is k8[(g*cap + r)*D ..] times
  // kS[g*cap + r] (a scale per token and head), likewise V; V-only rows (indexed) from v8.
  const int8_t* k8 = nullptr;
  const int8_t* v8 = nullptr;
  const float* kS = nullptr;
  const float* vS = nullptr;
  // Derived by finish(): max(past), max(nV), max(past) + T.
  int maxPast = 0, vmax = 0, Lmax = 0;
  void finish();
};

// Several independent attentions (e.g. every sequence of a batch at one layer) in one
// parallel region. Each job's result is what it would be alone.
void attention_batch_f32(AttentionJob* jobs, int n);

// Write T rows src[T][Hkv][D] into store[Hkv][cap][D] at slots dst[T].
void kv_write_f32(float* store, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst);

// kv_write_f32 into an int8 store: each row (token, head) is scaled by max|x| / 127 and
// rounded; its scale goes to scales[g*cap + slot].
void kv_write_q8(int8_t* store, float* scales, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst);

// Per kv head g, copy rows idx[off[g] .. off[g+1]) of src[Hkv][scap][D] into
// dst[Hkv][dcap][D] starting at row dstStart[g].
void kv_gather_f32(const float* src, int scap, float* dst, int dcap, int Hkv, int D, const int32_t* idx,
                   const int32_t* off, const int32_t* dstStart);

// Row copies between two stores: for each quad (dstHead, dstRow, srcHead, srcRow) of moves,
// dst[dstHead][dstRow] = src[srcHead][srcRow] (src [.][scap][D], dst [.][dcap][D]); with src8,
// the source is an int8 store (row times its scale in scales[srcHead][srcRow]).
void kv_copy_rows(const float* src, const int8_t* src8, const float* scales, int scap, float* dst, int dcap, int D,
                  const int32_t* moves, int count);

// Indices of the k largest values of each of `rows` rows x[rows][n], by descending value (NaN lowest),
// ties to the lower index. out[rows][k].
void topk_f32(const float* x, int rows, int n, int k, int32_t* out);

// The k highest-scoring positions of [0, n) whose exclude[i] is 0 (exclude may be null), in
// ascending position order (byScore: highest score first, in the scores' own precision, ties to
// the lower position); fewer when fewer are left. Chosen by float32 rank, ties to the lower
// position, NaN last; O(n) selection plus a sort of the k chosen. work holds n keys.
// Returns the count.
int top_positions_f64(const double* x, int n, int k, const uint8_t* exclude, int32_t* out, uint64_t* work,
                      bool byScore = false);
int top_positions_f32(const float* x, int n, int k, const uint8_t* exclude, int32_t* out, uint64_t* work,
                      bool byScore = false);

// topk_f32 of ragged rows: row r is x[r*stride .. r*stride + lens[r]) and keeps its ks[r] largest
// (ks[r] <= lens[r] <= stride), written to out[off[r] ..].
void topk_ragged_f32(const float* x, int rows, int stride, const int32_t* lens, const int32_t* ks, const int32_t* off,
                     int32_t* out);

// One layer's ranked selection (see select.cc and rankSplitRef): per list g a score over
// positions [0, n) = sum of weights[t] * src[terms[3t+1]][terms[3t+2] + p] over the terms
// with terms[3t] == g, optionally blended with the LLM's own mean attention; the newest
// `recent` positions are kept exact, the others ranked (excluded ones skipped) and split into
// exact and V-only tokens. full/vOnlyOut get each list's positions ascending (exact ones,
// then the recent window), fullOff/vOff the list offsets; each list needs at most n slots.
struct RankSplitArgs {
  int n = 0, lists = 0;
  const void* const* src = nullptr;
  const uint8_t* srcF64 = nullptr;
  int nterms = 0;
  const int32_t* terms = nullptr;
  const double* weights = nullptr;
  // Blend per list when assistantWeight[g] >= 0 (null: never).
  const double* assistantWeight = nullptr;
  const double* const* ownSums = nullptr;
  const double* const* ownCounts = nullptr;
  const int* ownCountLen = nullptr;
  int recent = 0;
  // Writable when `evict`: positions below the recent window that are not chosen get 1.
  uint8_t* const* exclude = nullptr;
  // Excluded positions of the recent window are not kept (fixed rule: their count is added to k and exact).
  bool skipExcludedRecent = false;
  bool evict = false;
  bool adaptive = false;
  // Adaptive: units and vOnly per list. Fixed: k (ranked) and exact per list.
  const double* units = nullptr;
  const uint8_t* vOnly = nullptr;
  const int32_t* k = nullptr;
  const int32_t* exact = nullptr;
  double exactShare = 0, negligible = 0;
  int32_t* full = nullptr;
  int32_t* fullOff = nullptr;
  int32_t* vOnlyOut = nullptr;
  int32_t* vOff = nullptr;
};
void rank_split(const RankSplitArgs& a);
// Several selections (a step's layers) in one call: every list of every selection shares one
// team of threads (one wake-up for the step instead of one per layer).
void rank_split_many(const RankSplitArgs* a, int count);
// acc[pos[j]] += weight * src[offset + h * stride + j] for rows h < rows, j < n, in that
// order (h outer, as the TypeScript loop it replaces): column sums of attention rows scattered
// to their token positions.
void scatter_add(double* acc, const int32_t* pos, int n, const float* src, int64_t offset, int rows, int64_t stride,
                 double weight);

// Sum of n floats (double accumulation per thread). Also the read-bandwidth probe of the
// benchmarks: it streams the array once.
double sum_f32(const float* x, int64_t n);

// Per row u (1..T-1) of a causal attention matrix probs[T][T], the top positions (descending,
// ties to the lower position) of: mode 0 the row (positions 0..u), mode 1 its old tokens
// (0..u-1), mode 2 the head's own past mean attention over old tokens (column sums of rows < u
// over the rows that could attend each token). Row u's k = off[u+1] - off[u] go to out[off[u]..].
void attention_row_tops(const float* probs, int T, int mode, const int32_t* off, int32_t* out);

// A small Llama-family decoder's whole step (see decoder.cc): L layers, hidden d, Hq/Hkv heads
// of D, MLP width I, vocabulary V; optional biases (qkv, o, mlp) and per-head q/k RMSNorm.
struct DecoderShape {
  int L, d, Hq, Hkv, D, I, V;
  float eps;
  bool qkvBias, oBias, mlpBias, qkNorm;
};
int64_t decoder_layer_floats(const DecoderShape& s);
// Floats of the packed weights: L layers, the final norm, the LM head, the embedding.
int64_t decoder_weight_floats(const DecoderShape& s);
// Feed T tokens at positions past..past+T-1: their K/V rows go into kv ([L][K|V][Hkv][cap][D]),
// the last row's logits [V] into `logits`.
void decoder_step_f32(const DecoderShape& s, const float* weights, float* kv, int cap, int past, const int32_t* tokens,
                      int T, const float* inv_freq, double theta, double rope_scale, float* logits);

// body(i) for i in [0, n): on the OpenMP team when `parallel`, otherwise on the calling thread
// without entering a region at all (even a one-thread region costs microseconds in libgomp,
// as much as a decode step's small kernel).
template <typename F>
inline void for_each_index(int n, bool parallel, F&& body) {
  if (!parallel || n < 2) {
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) body(i);
}

// Matrices kept in llama.cpp's blocks (ggml type ids): y[M][N] = x[M][K] · Wᵀ. `qgemm_pack`
// repacks N rows of Q8_0/Q4_0 blocks (or float32 rows) into the layout `qgemm` reads: groups of
// 8 rows, per block their 8 float scales then the quants chunk-interleaved (see qgemm.cc).
enum { QGEMM_F32 = 0, QGEMM_Q4_0 = 2, QGEMM_Q8_0 = 8 };
int64_t qgemm_packed_bytes(int type, int N, int K);
int qgemm_pack(int type, const uint8_t* src, int N, int K, uint8_t* dst);
// add: y += x · Wᵀ (a residual stream), else y = x · Wᵀ.
void qgemm(int type, const uint8_t* packed, int N, int K, const float* x, int M, float* y, int threads, bool add = false);

// SwiGLU of stacked gate/up rows: out[m][i] = silu(gu[m][i]) · gu[m][I + i].
void swiglu_f32(const float* gu, int M, int I, float* out);

}  // namespace skv
