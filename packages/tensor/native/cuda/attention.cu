// Mixed causal GQA attention on the device: one block per (query head, query row), keys in
// tiles of kTile held in shared memory as logits, never a full matrix. Without probability
// outputs it is flash-style (online softmax over tiles); when the caller wants probabilities
// or accumulated scores, a first pass finds each row's max and normaliser so that the second
// pass can emit exact probabilities tile by tile.
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"

namespace {

constexpr int kThreads = 128;
constexpr int kTile = 128;
constexpr int kMaxD = 256;

struct AttnArgs {
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
  int vmax;
  const float* w;
  int mode;
  float* out;
  float* probs;
  float* scores;
  int scoreStart, Lmax;
  int t0;  // first query row of this launch (grid.y is limited to 65535 rows)
  int window;  // > 0: each query sees only its last `window` keys (sliding window)
};

// Logits of keys [j0, j0 + cnt) into s[]: one warp per key, lanes across the head dim.
__device__ inline void tile_logits(const float* qs, const float* kh, int j0, int cnt, int D, float* s) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int i = warp; i < cnt; i += nw) {
    const float* kr = kh + static_cast<int64_t>(j0 + i) * D;
    float p = 0.f;
    for (int d = lane; d < D; d += 32) p += qs[d] * kr[d];
    p = ck::warp_sum(p);
    if (lane == 0) s[i] = p;
  }
}

__global__ void attention_kernel(AttnArgs a) {
  CK_SHARED float qs[kMaxD];
  CK_SHARED float s[kTile];
  CK_SHARED float red[32];
  const int h = blockIdx.x, t = a.t0 + static_cast<int>(blockIdx.y), tid = threadIdx.x;
  const int g = h / (a.Hq / a.Hkv), D = a.D;
  const int n = a.past[g] + t + 1;
  const int lo = a.window > 0 && n > a.window ? n - a.window : 0;
  const float* kh = a.k + static_cast<int64_t>(g) * a.cap * D;
  const float* vh = a.v + static_cast<int64_t>(g) * a.cap * D;
  const float* qr = a.q + (static_cast<int64_t>(t) * a.Hq + h) * D;
  for (int d = tid; d < D; d += blockDim.x) qs[d] = qr[d] * a.scale;
  __syncthreads();

  const bool wantScores = a.scores != nullptr && t >= a.scoreStart;
  const bool exact = a.probs != nullptr || wantScores;
  float m = -INFINITY, l = 0.f;
  if (exact) {  // pass 1: row max and normaliser
    for (int j0 = lo; j0 < n; j0 += kTile) {
      const int cnt = n - j0 < kTile ? n - j0 : kTile;
      tile_logits(qs, kh, j0, cnt, D, s);
      __syncthreads();
      const float x = tid < cnt ? s[tid] : -INFINITY;
      const float mt = ck::block_reduce<true>(x, red);
      const float mn = fmaxf(m, mt);
      const float e = tid < cnt ? expf(x - mn) : 0.f;
      const float st = ck::block_reduce<false>(e, red);
      l = l * expf(m - mn) + st;
      m = mn;
    }
  }
  float acc[kMaxD / kThreads] = {0.f, 0.f};
  float* pr = a.probs ? a.probs + (static_cast<int64_t>(h) * a.T + t) * a.Lmax : nullptr;
  float* sr = wantScores ? a.scores + static_cast<int64_t>(h) * a.Lmax : nullptr;
  for (int j0 = lo; j0 < n; j0 += kTile) {
    const int cnt = n - j0 < kTile ? n - j0 : kTile;
    tile_logits(qs, kh, j0, cnt, D, s);
    __syncthreads();
    const float x = tid < cnt ? s[tid] : -INFINITY;
    float alpha = 1.f;
    if (exact) {
      if (tid < cnt) {
        const float p = expf(x - m) / l;
        s[tid] = p;
        if (pr) pr[j0 + tid] = p;
        if (sr) atomicAdd(sr + j0 + tid, p);
      }
    } else {
      const float mt = ck::block_reduce<true>(x, red);
      const float mn = fmaxf(m, mt);
      const float e = tid < cnt ? expf(x - mn) : 0.f;
      const float st = ck::block_reduce<false>(e, red);
      alpha = expf(m - mn);  // exp(-inf) = 0 on the first tile
      l = l * alpha + st;
      m = mn;
      if (tid < cnt) s[tid] = e;
    }
    __syncthreads();
    for (int c = 0; c * kThreads < D; ++c) {
      const int d = tid + c * kThreads;
      if (d >= D) break;
      float o = acc[c] * alpha;
      const float* vr = vh + static_cast<int64_t>(j0) * D + d;
      for (int i = 0; i < cnt; ++i) o += s[i] * vr[static_cast<int64_t>(i) * D];
      acc[c] = o;
    }
    __syncthreads();  // s[] is rewritten by the next tile
  }
  if (pr) {
    for (int j = tid; j < lo; j += blockDim.x) pr[j] = 0.f;
    for (int j = n + tid; j < a.Lmax; j += blockDim.x) pr[j] = 0.f;
  }

  const float norm = exact ? 1.f : 1.f / l;
  float* o = a.out + (static_cast<int64_t>(t) * a.Hq + h) * D;
  const int nv = a.vo ? a.nV[g] : 0;
  const float* wr = a.vo ? a.w + (static_cast<int64_t>(h) * a.T + t) * a.vmax : nullptr;
  float keep = 1.f;
  if (a.vo && a.mode == 1) {
    float mass = 0.f;
    for (int j = 0; j < nv; ++j) mass += wr[j];
    keep = 1.f - mass;
  }
  const float* voh = a.vo ? a.vo + static_cast<int64_t>(g) * a.vcap * D : nullptr;
  for (int c = 0; c * kThreads < D; ++c) {
    const int d = tid + c * kThreads;
    if (d >= D) break;
    float r = acc[c] * norm * keep;
    for (int j = 0; j < nv; ++j) r += wr[j] * voh[static_cast<int64_t>(j) * D + d];
    o[d] = r;
  }
}

}  // namespace

extern "C" int skv_k_attention(const float* q, const float* k, const float* v, int cap, int T, const int32_t* past,
                               int maxPast, int Hq, int Hkv, int D, float scale, const float* vo, int vcap,
                               const int32_t* nV, int vmax, const float* w, int mode, float* out, float* probs,
                               float* scores, int scoreStart, int window, int stream) {
  if (T <= 0) return SKV_OK;
  if (D <= 0 || D > kMaxD) return skv_arg_error("attention: head dim must be in [1, 256]");
  if (Hkv <= 0 || Hq % Hkv != 0) return skv_arg_error("attention: query heads must be a multiple of kv heads");
  if (vo != nullptr && (nV == nullptr || w == nullptr)) return skv_arg_error("attention: V-only rows need counts and weights");
  AttnArgs a{q, k, v, cap, T, past, Hq, Hkv, D, scale, vo, vcap, nV, vmax, w, mode, out, probs, scores, scoreStart,
             maxPast + T, 0, window};
  for (int t0 = 0; t0 < T; t0 += 65535) {
    a.t0 = t0;
    const unsigned rows = static_cast<unsigned>(T - t0 < 65535 ? T - t0 : 65535);
    CK_LAUNCH(attention_kernel, dim3(Hq, rows), kThreads, 0, skv_stream(stream), a);
    const int rc = skv_check_launch("attention");
    if (rc != SKV_OK) return rc;
  }
  return SKV_OK;
}
