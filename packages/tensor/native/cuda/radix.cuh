// Radix selection over a block's candidates, shared by the policies' ranking (policy.cu) and
// the device sampler (decode.cu). A source gives `lo` (positions [0, lo)), `candidate(p)` and
// `score(p)` (a float; NaN must come as -inf); ranks are score descending, ties to the earlier
// position. Keys are the scores' order-preserving bits: 4 passes of 8-bit histograms select the
// K-th, and a descent with per-bin sums finds where a running sum crosses a value.
#pragma once
#include "ck.h"

namespace radix {

constexpr int kRankThreads = 256;
constexpr int kRankWarps = kRankThreads / 32;
constexpr unsigned kNone = 0xffffffffu;  // a threshold no key reaches: nothing selected

struct Shared {
  int hist[256];
  double hsum[256];
  int scan[kRankWarps + 1];
  unsigned key;
  int need, count;
  double sum, dsum;
};

// Order-preserving unsigned key of a float (larger float, larger key).
__device__ inline unsigned key_of(float f) {
  unsigned u;
#ifdef SKV_EMU
  std::memcpy(&u, &f, 4);
#else
  u = __float_as_uint(f);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ inline float value_of(unsigned k) {
  const unsigned u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
#ifdef SKV_EMU
  std::memcpy(&f, &u, 4);
#else
  f = __uint_as_float(u);
#endif
  return f;
}

// Exclusive prefix sum of x over the block (position order = thread order); total in `total`.
__device__ inline int block_scan(int x, Shared& sh, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int v = x;
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(ck::kFull, v, o);
    if (lane >= o) v += y;
  }
  if (lane == 31) sh.scan[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int w = 0; w < kRankWarps; ++w) {
      const int t = sh.scan[w];
      sh.scan[w] = s;
      s += t;
    }
    sh.scan[kRankWarps] = s;
  }
  __syncthreads();
  const int r = v - x + sh.scan[warp];
  total = sh.scan[kRankWarps];
  __syncthreads();
  return r;
}

// One radix pass: per bin of the key's byte at `shift`, among the candidates whose higher
// bytes equal `prefix`, their count and the sum of weight(score) (finite scores).
template <class Src, class W>
__device__ inline void histogram(const Src& L, unsigned prefix, unsigned mask, int shift, Shared& sh, W weight) {
  for (int i = threadIdx.x; i < 256; i += kRankThreads) {
    sh.hist[i] = 0;
    sh.hsum[i] = 0;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < L.lo; p += kRankThreads) {
    if (!L.candidate(p)) continue;
    const float f = L.score(p);
    const unsigned k = key_of(f);
    if ((k & mask) != prefix) continue;
    atomicAdd(&sh.hist[(k >> shift) & 255], 1);
    const double w = f > -INFINITY ? weight(f) : 0.0;
    if (w != 0) atomicAdd(&sh.hsum[(k >> shift) & 255], w);
  }
  __syncthreads();
}

// Warp 0 walks the 256 bins from the top, 8 a lane: the first lane whose running total
// `crosses` holds finds its bin (running totals of counts and of sums; bins with no count are
// never chosen). Returns through sh: key (prefix | bin << shift, or kNone when no bin crosses),
// count and sum of the bins above it. Called by every thread; only warp 0 works.
template <class Cross>
__device__ inline void find_bin(Shared& sh, unsigned prefix, int shift, int countBase, double sumBase,
                                Cross crosses) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  int c[8];
  double w[8];
  int ct = 0;
  double st = 0;
  for (int i = 0; i < 8; ++i) {
    const int b = 255 - (lane * 8 + i);
    c[i] = sh.hist[b];
    w[i] = sh.hsum[b];
    ct += c[i];
    st += w[i];
  }
  int ci = ct;
  double si = st;
  for (int o = 1; o < 32; o <<= 1) {
    const int cy = __shfl_up_sync(ck::kFull, ci, o);
    const double sy = __shfl_up_sync(ck::kFull, si, o);
    if (lane >= o) {
      ci += cy;
      si += sy;
    }
  }
  const int cb = countBase + ci - ct;
  const double sb = sumBase + si - st;
  int first = ct > 0 && crosses(cb + ct, sb + st) ? lane : 32;
  for (int o = 16; o > 0; o >>= 1) {
    const int y = __shfl_xor_sync(ck::kFull, first, o);
    first = y < first ? y : first;
  }
  if (first == 32) {
    if (lane == 31) {
      sh.key = kNone;
      sh.count = countBase + ci;
      sh.sum = sumBase + si;
    }
    return;
  }
  if (lane != first) return;
  int cnt = cb;
  double sum = sb;
  for (int i = 0; i < 8; ++i) {
    if (c[i] > 0 && crosses(cnt + c[i], sum + w[i])) {
      sh.key = prefix | (static_cast<unsigned>(255 - (lane * 8 + i)) << shift);
      sh.count = cnt;
      sh.sum = sum;
      return;
    }
    cnt += c[i];
    sum += w[i];
  }
}

// The K-th largest candidate key and how many candidates equal to it the top K take (the
// earliest positions): the top K are keys above *key plus that many ties. K <= 0: none.
template <class Src>
__device__ void select_kth(const Src& L, int K, Shared& sh, unsigned* key, int* ties) {
  if (K <= 0) {
    *key = kNone;
    *ties = 0;
    return;
  }
  unsigned prefix = 0, mask = 0;
  int need = K;
  for (int shift = 24; shift >= 0; shift -= 8) {
    histogram(L, prefix, mask, shift, sh, [](float) { return 0.0; });
    // The bin where the count from the top reaches `need` (none when fewer: the lowest bin).
    find_bin(sh, prefix, shift, 0, 0.0, [&](int count, double) { return count >= need; });
    __syncthreads();
    // No bin reaches it (fewer candidates than K; callers never ask): the prefix stays.
    if (sh.key != kNone) prefix = sh.key;
    need -= sh.count;
    mask |= 255u << shift;
    __syncthreads();
  }
  *key = prefix;
  *ties = need;
}

// How many of the best-ranked candidates it takes for the sum of weight(score) to reach `want`
// (the host's loop: add in rank order while the sum is below want; `strict`: while it is at
// most want). A descent over the key's bytes with per-bin counts and sums; within the last
// key's ties every weight is equal. More than every candidate when the sum never gets there.
template <class Src, class W>
__device__ int ranks_to_reach(const Src& L, double want, Shared& sh, W weight, bool strict = false) {
  if (strict ? !(want >= 0) : !(want > 0)) return 0;
  // The sum crosses want: reaches it, or (strict) passes it.
  const auto crosses = [&](double x) { return strict ? x > want : x >= want; };
  unsigned prefix = 0, mask = 0;
  double held = 0;
  int taken = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    histogram(L, prefix, mask, shift, sh, weight);
    find_bin(sh, prefix, shift, taken, held, [&](int, double sum) { return crosses(sum); });
    __syncthreads();
    if (sh.key == kNone) {
      const int all = sh.count;
      __syncthreads();
      return all + 1;  // never reached: more than every candidate (the caller caps it)
    }
    prefix = sh.key;
    held = sh.sum;
    taken = sh.count;
    mask |= 255u << shift;
    __syncthreads();
  }
  const float v = value_of(prefix);
  const double each = v > -INFINITY ? weight(v) : 0.0;
  if (!(each > 0)) return taken + 1;
  int j = static_cast<int>(ceil((want - held) / each));
  if (j < 1) j = 1;
  while (j > 1 && crosses(held + (j - 1) * each)) --j;
  while (!crosses(held + j * each)) ++j;
  return taken + j;
}

// A block-wide count of the candidates satisfying f.
template <class Src, class F>
__device__ void count_where(const Src& L, F f, Shared& sh, int* count) {
  if (threadIdx.x == 0) sh.count = 0;
  __syncthreads();
  int c = 0;
  for (int p = threadIdx.x; p < L.lo; p += kRankThreads)
    if (L.candidate(p) && f(p)) ++c;
  if (c) atomicAdd(&sh.count, c);
  __syncthreads();
  *count = sh.count;
  __syncthreads();
}


}  // namespace radix
