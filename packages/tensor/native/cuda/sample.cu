// Sampling on the device: one block per logits row picks its token the way the host's Sampler
// does (tokens ranked by logit, ties to the lower id; the top k; softmax with temperature in
// double; the smallest prefix holding topP; then the token where the running sum passes
// u * sum, u drawn by the host's seeded stream), so that B integers come back instead of B
// rows of logits. Temperature 0: the argmax (the lowest id among equals).
#include "ck.h"
#include "dev_api.h"
#include "launch_check.h"
#include "radix.cuh"

namespace {

using namespace radix;

struct Row {
  const float* x;
  int lo;
  __device__ bool candidate(int) const { return true; }
  __device__ float score(int p) const {
    const float f = x[p];
    return f != f ? -INFINITY : f;
  }
};

// Sum of w(score) over the top K (keys above `key`, plus `ties` of it).
template <class W>
__device__ double top_sum(const Row& L, unsigned key, int ties, W w, Shared& sh) {
  if (threadIdx.x == 0) sh.dsum = 0;
  __syncthreads();
  double part = 0;
  if (key != kNone)
    for (int p = threadIdx.x; p < L.lo; p += kRankThreads) {
      const float f = L.score(p);
      if (key_of(f) > key && f > -INFINITY) part += w(f);
    }
  if (part != 0) atomicAdd(&sh.dsum, part);
  __syncthreads();
  const float v = key == kNone ? -INFINITY : value_of(key);
  const double s = sh.dsum + (v > -INFINITY ? ties * w(v) : 0.0);
  __syncthreads();
  return s;
}

__global__ void sample_kernel(int32_t* out, const float* x, const SkvSample* params, int n) {
  CK_SHARED Shared sh;
  const int r = blockIdx.x;
  const SkvSample pr = params[r];
  const Row L{x + static_cast<int64_t>(r) * n, n};
  unsigned k1;
  int t1;
  select_kth(L, 1, sh, &k1, &t1);
  int c = 1;  // the rank of the token drawn (1: the best)
  unsigned kc = k1;
  int tc = 1;
  if (pr.temperature > 0) {
    const double m = value_of(k1), temp = pr.temperature;
    const auto w = [&](float f) { return exp((static_cast<double>(f) - m) / temp); };
    const int k = pr.topK > 0 && pr.topK < n ? pr.topK : n;
    unsigned kk;
    int tk;
    select_kth(L, k, sh, &kk, &tk);
    double sum = top_sum(L, kk, tk, w, sh);
    int keep = k;
    if (pr.topP < 1) {
      const int reach = ranks_to_reach(L, pr.topP * sum, sh, w);
      keep = reach < k ? reach : k;
      if (keep < 1) keep = 1;
      unsigned kp;
      int tp;
      select_kth(L, keep, sh, &kp, &tp);
      sum = top_sum(L, kp, tp, w, sh);
    }
    // The first rank whose running sum passes u * sum (the host's `u -= p; if (u < 0)`).
    c = ranks_to_reach(L, static_cast<double>(pr.u) * sum, sh, w, true);
    if (c < 1) c = 1;
    if (c > keep) c = keep;
    select_kth(L, c, sh, &kc, &tc);
  }
  // The token of rank c: key kc, the tc-th of its ties by id.
  int seen = 0;
  for (int base = 0; base < n; base += kRankThreads) {
    const int p = base + threadIdx.x;
    const bool eq = p < n && key_of(L.score(p)) == kc;
    int tot;
    const int before = block_scan(eq ? 1 : 0, sh, tot);
    if (eq && seen + before == tc - 1) out[r] = p;
    seen += tot;
    if (seen >= tc) break;  // uniform across the block: every thread has the same `seen`
  }
}

}  // namespace

extern "C" int skv_k_sample(int32_t* out, const float* x, const SkvSample* params, int rows, int n, int stream) {
  if (rows <= 0) return SKV_OK;
  if (n <= 0) return skv_arg_error("sample: empty rows");
  CK_LAUNCH(sample_kernel, rows, kRankThreads, 0, skv_stream(stream), out, x, params, n);
  return skv_check_launch("sample");
}
