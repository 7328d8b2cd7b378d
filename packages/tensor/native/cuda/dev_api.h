// C ABI of the device half of @smallkv/tensor. Implemented by the CUDA runtime (dev_runtime.cu,
// kernels *.cu compiled by nvcc) and, for GPU-less test machines, by the emulator
// (dev_runtime_emu.cc with the same *.cu compiled as C++). Device pointers are opaque
// addresses; every call returns 0 or an error code, with text in skv_dev_last_error().
// Streams: 0 = compute, 1 = copy (cold -> hot moves), ordered by skv_dev_stream_wait.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {

enum SkvDevStatus { SKV_OK = 0, SKV_ENODEV = 1, SKV_EOOM = 2, SKV_EKERNEL = 3, SKV_EARG = 4 };
enum SkvDtype { SKV_F32 = 0, SKV_F16 = 1, SKV_BF16 = 2 };
enum SkvGemvMode { SKV_GEMV_STORE = 0, SKV_GEMV_ACCUMULATE = 1, SKV_GEMV_SILU_GATE = 2 };

const char* skv_dev_last_error();
// Selects the device, creates the two streams. `info` gets a one-line description.
int skv_dev_open(int device, char* info, int info_len);
int skv_dev_mem_info(size_t* free_bytes, size_t* total_bytes);
int skv_dev_malloc(void** p, size_t bytes);
int skv_dev_free(void* p);
// Pinned host memory mapped into the device address space (the cold store).
int skv_dev_host_alloc(void** host, void** dev, size_t bytes);
int skv_dev_host_free(void* host);
int skv_dev_upload(void* dst, const void* src, size_t bytes);
int skv_dev_download(void* dst, const void* src, size_t bytes);
int skv_dev_memset(void* dst, int value, size_t bytes, int stream);
int skv_dev_copy(void* dst, const void* src, size_t bytes, int stream);
int skv_dev_sync(int stream);
// Work queued on `waiter` after this call starts only when `waitee`'s queued work is done.
int skv_dev_stream_wait(int waiter, int waitee);
// CUDA graphs: work queued on `stream` between begin and end is recorded instead of run (no sync,
// read or free may happen in between); launch replays it with the same arguments.
int skv_dev_capture_begin(int stream);
int skv_dev_capture_end(int stream, void** graph);
int skv_dev_graph_launch(void* graph, int stream);
int skv_dev_graph_free(void* graph);

// ---- kernels (all on a stream, all float32 activations) ----
// out[n][d] = table[ids[n]] (table dtype any)
int skv_k_embedding(float* out, const void* table, int dtype, const int32_t* ids, int n, int d, int stream);
// out[n][d] = x * rsqrt(mean(x^2) + eps) * w
int skv_k_rmsnorm(float* out, const float* x, const float* w, int n, int d, float eps, int stream);
// y[m][n] (+)= x[m][k] . W[n][k]^T (+ bias[n]); W dtype any; F16/BF16 use tensor cores for m > 8.
int skv_k_gemm(float* y, const float* x, const void* w, int dtype, const float* bias, int m, int n, int k,
               int accumulate, int stream);
// HF rotate-half RoPE in place on x[T][H][D] (and, when x2 is set, on x2[T][H2][D]: q and k in
// one launch) at positions pos[T]. inv_freq: D/2 frequencies replacing theta^(-2i/D) (null: none);
// scale multiplies cos and sin.
int skv_k_rope(float* x, const int32_t* pos, int T, int H, int D, float theta, const float* inv_freq, float scale,
               float* x2, int H2, int stream);
// out[i] = silu(gate[i]) * up[i]   (out may alias gate)
int skv_k_silu_gate(float* out, const float* gate, const float* up, int64_t n, int stream);
// y[i] += x[i]
int skv_k_add(float* y, const float* x, int64_t n, int stream);
// Mixed causal GQA attention with the semantics of the CPU AttentionJob (kernels.h);
// `past` and `nV` are device arrays, `probs`/`scores`/`vo` may be null.
int skv_k_attention(const float* q, const float* k, const float* v, int cap, int T, const int32_t* past,
                    int maxPast, int Hq, int Hkv, int D, float scale, const float* vo, int vcap,
                    const int32_t* nV, int vmax, const float* w, int mode, float* out, float* probs,
                    float* scores, int scoreStart, int window, int stream);
// store[Hkv][cap][D] rows dst[t] = src[T][Hkv][D] rows t.
int skv_k_kv_write(float* store, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst,
                   int stream);
// n moves: dst[head dh[i]][row dr[i]] = src[head sh[i]][row sr[i]] (rows of D floats). `src` may be
// mapped pinned host memory: the cold -> hot difference travels over the bus, nothing else does.
// dst2/src2 (both or neither): a second plane pair moved alike in the same launch (K and V).
int skv_k_kv_move(float* dst, int dcap, const float* src, int scap, int D, const int32_t* moves, int n, float* dst2,
                  const float* src2, int stream);

// ---- the batched decode path ----
// Decode-sized product, m <= 16 rows: y = x . W^T + bias (mode STORE), y += ... (ACCUMULATE), or
// y0 = silu(x . W^T + bias) * (x . W2^T + bias2) (SILU_GATE: W = gate, W2 = up). With y1 and y2 set,
// columns [0, n0) go to y0 (rows of n0), [n0, n0 + n1) to y1 and the rest to y2: a fused QKV matrix
// written as three tensors.
// norm (m <= 4): RMSNorm weights applied to x first (x * rsqrt(mean(x^2) + eps) * norm), folded in.
int skv_k_gemv(float* y0, float* y1, float* y2, int n0, int n1, const float* x, const void* w, const void* w2,
               int dtype, const float* bias, const float* bias2, const float* norm, float eps, int m, int n, int k,
               int mode, int stream);
// RoPE of q[T][Hq][D] and k[T][Hkv][D] in place (as skv_k_rope), and for each row t with
// entry[t] >= 0 its rotated K row and its V row (v[T][Hkv][D]) appended as skv_k_kv_append's
// entry entry[t] would: row dst[e] of the stores kStore[e]/vStore[e] (cap[e] rows a head).
int skv_k_rope_append(float* q, float* k, const float* v, const int32_t* pos, int T, int Hq, int Hkv, int D,
                      float theta, const float* inv_freq, float scale, const int64_t* kStore, const int64_t* vStore,
                      const int32_t* cap, const int32_t* dst, const int32_t* entry, int kvDtype, int stream);
// out[r] = the index of row r's largest value (the lowest index among equals; NaN never wins).
int skv_k_argmax(int32_t* out, const float* x, int rows, int n, int stream);
// One row's sampling: temperature (0: argmax), top-k (0: off), top-p (1: off) and the uniform draw
// u in [0, 1) the host's seeded stream gave for this token.
struct SkvSample {
  float temperature, topP;
  int32_t topK;
  float u;
};
// out[r] = the token the host's Sampler.next would pick from row r of x[rows][n] with params[r].
int skv_k_sample(int32_t* out, const float* x, const SkvSample* params, int rows, int n, int stream);

// One sequence of a batched attention launch (one layer). Addresses are device pointers as
// 64-bit integers; 0 means absent. Keys are a list of `n` rows of the store: rows 0..n-1, or the
// rows idx[g * icap + i] (i < cnt[g]) of kv head g. The last T keys of the list are this step's;
// query row t sees the list's first n - T + t + 1 keys (its window's last `window` when window > 0,
// contiguous lists only). V-only rows (SmallKV): vcnt[g] rows vidx[g * vcap + j] of the V store,
// weighted by w[(h * T + t) * vmax + j]; `mode` 0 adds them, 1 scales the exact part by 1 - their mass.
struct SkvAttnSeq {
  int64_t k, v;       // stores [Hkv][cap][D] of dtype kvDtype
  int64_t cap;        // rows per kv head in the stores
  int64_t n;          // keys of a contiguous list
  int64_t T;          // query rows (1 at decode)
  int64_t qRow;       // first row of q/out [.][Hq][D]
  int64_t idx, cnt;   // selection: int32 [Hkv][icap] rows and int32 [Hkv] counts
  int64_t icap;
  int64_t vidx, vcnt;  // V-only rows: int32 [Hkv][vcap] and counts
  int64_t vcap;
  int64_t w;          // V-only weights, float [Hq][T][vmax]
  int64_t vmax;
  int64_t mode;
  int64_t window;
};
// Flash-decoding: the key lists are cut in chunks of `chunk` keys (one block per chunk, kv head and
// sequence; the query heads of a GQA group share each K/V read), then a reduce merges the chunks.
// `part` is workspace of skv_attn_part_floats(...) floats. q and out are float32.
// lse (may be null): each query row's log-sum-exp of its scaled logits, float [.][Hq] by q row (what
// skv_k_attention_probs normalises by).
// prefillRows > 0: records of at least that many rows with contiguous lists run as tensor-core
// tiles (FlashAttention-2 style) when the store is f16/bf16 and D a multiple of 16 up to 128.
int skv_k_attention_batch(const SkvAttnSeq* seqs, int B, int maxT, int maxKeys, int Hq, int Hkv, int D,
                          float scale, int kvDtype, const float* q, float* out, float* part, int chunk, float* lse,
                          int prefillRows, int stream);
// Internal (prefill.cu): whether the tensor-core prefill serves this head dim and dtype, and its launch.
int skv_prefill_fits(int D, int kvDtype);
int skv_prefill_attention(const SkvAttnSeq* seqs, int B, int maxT, int Hq, int Hkv, int D, float scale, int kvDtype,
                          const float* q, float* out, float* lse, int minRows, void* stream);
int64_t skv_attn_part_floats(int B, int maxT, int maxKeys, int Hq, int D, int chunk);
// Append rows: for each of the n entries i, the K/V rows r = rows[i] (i when rows is null) of
// k/v [.][Hkv][D] (float32) go to row dst[i] of the stores kStore[i]/vStore[i] (64-bit addresses,
// dtype kvDtype, cap[i] rows per head).
int skv_k_kv_append(const int64_t* kStore, const int64_t* vStore, const int32_t* cap, const int32_t* dst,
                    const int32_t* rows, const float* k, const float* v, int n, int Hkv, int D, int kvDtype,
                    int stream);

// ---- selecting policies on the device ----
// Where the probability pass puts one sequence's probabilities (paired with its SkvAttnSeq; dst 0:
// nothing). mode 0: rows t >= rowFrom as dst[(h * (T - rowFrom) + t - rowFrom) * stride + j] for key
// j of the list (keys a row does not see: 0). mode 1: per kv head g, the probabilities of the group's
// query heads and rows t >= rowFrom added to dst[g * stride + row(j)] (column sums at positions),
// and with counts set, the number of those rows that see key j added to counts[g * stride + row(j)]
// (what a mean over the queries that read a token divides by). mode 2: as mode 1, but the sums
// replace the entries of the list's keys (the last step's attention only, TOVA's).
struct SkvProbOut {
  int64_t dst, stride, rowFrom, mode, counts;
  int64_t pad;
};
// Probabilities exp(q.k * scale - lse) of the records' keys (lse from skv_k_attention_batch).
// prefillRows > 0: column sums (mode 1) of contiguous f16/bf16 records of at least that many rows
// run on tensor cores (D a multiple of 16 up to 128).
int skv_k_attention_probs(const SkvAttnSeq* seqs, const SkvProbOut* outs, int B, int maxKeys, int Hq, int Hkv,
                          int D, float scale, int kvDtype, const float* q, const float* lse, int prefillRows,
                          int stream);
// Internal (prefill.cu): the probability pass's column sums (mode 1) of records of >= minRows rows on tensor cores.
int skv_prefill_colsums(const SkvAttnSeq* seqs, const SkvProbOut* outs, int B, int maxKeys, int Hq, int Hkv, int D,
                        float scale, int kvDtype, const float* q, const float* lse, int minRows, void* stream);

enum SkvRankFlags {
  SKV_RANK_ADAPTIVE = 1,
  SKV_RANK_VONLY = 2,
  SKV_RANK_SKIP_EXCLUDED_RECENT = 4,
  SKV_RANK_EVICT = 8,
};
// One list's ranked selection (rankSplit's semantics, select.cc). Score of position p < n: the sum
// over terms t of weight[t] * term[t][p] (float rows). The newest `recent` positions are kept; the
// others (not excluded: uint8 exclude[p] = 1) are ranked, the best split by the rule: fixed (k, of
// them `exact` exact) or adaptive (units; V-only when SKV_RANK_VONLY; exactShare, negligible).
// Outputs: exact positions ascending, then the window's, then n..n+T-1 (full, count in fullCnt[0]);
// V-only positions ascending (vidx, vCnt[0]); with w, term t's row at each V-only position goes to
// w + t * wstride (0 where bit t of gate is clear). SKV_RANK_EVICT sets exclude for every ranked
// position not chosen; SKV_RANK_SKIP_EXCLUDED_RECENT drops excluded window positions, their slots
// going to ranked ones (fixed rule: added to k and exact). With blend >= 0, the score is
// blend * (the terms' score as a distribution over [0, n)) + (1 - blend) * (the mean attention
// ownSums / ownCounts as a distribution): the fallback of weakly matched heads. With pool > 0 a
// position's score is the terms' sum over positions [p - pool, p + pool] within [0, poolLimit),
// divided by 2 pool + 1 (zero padding: SnapKV's pooled votes).
struct SkvRankList {
  int64_t n, T, recent, flags, k, exact;
  double units, exactShare, negligible;
  int64_t exclude, full, fullCnt, vidx, vCnt;
  int64_t nterms;
  int64_t term[16];
  double weight[16];
  int64_t w, wstride, gate;
  double blend;
  int64_t ownSums, ownCounts;
  int64_t pool, poolLimit;  // pool > 0: the score of p is the mean of the terms over [p - pool, p + pool]
};
// maxN: the largest n among the lists (sizes the launch's shared-memory score cache).
int skv_k_rank_select(const SkvRankList* lists, int count, int maxN, int stream);
}

static_assert(sizeof(SkvAttnSeq) == 128, "SkvAttnSeq is ATTN_SEQ_BYTES");
static_assert(sizeof(SkvProbOut) == 48, "SkvProbOut is PROB_OUT_BYTES");
static_assert(sizeof(SkvRankList) == 440, "SkvRankList is RANK_LIST_BYTES");
static_assert(sizeof(SkvSample) == 16, "SkvSample is four 32-bit fields");
