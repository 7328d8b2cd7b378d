// A layer's ranked selection in one call: per list (a kv head, or a query head), a score
// over positions [0, n) mixed from rows of the assistant (or given as they are), optionally
// blended with the LLM's own mean attention, then the newest `recent` positions kept exact
// and the rest split by rank into exact and V-only tokens. No JavaScript allocation per list,
// no sort of the whole candidate set. The plain TypeScript twin is rankSplitRef.
//
// Sums run in the reference's order, without fused multiply-adds, so the two agree bit for bit.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "kernels.h"
#include "split_rule.h"

namespace skv {

namespace {

struct Cand {
  double s;  // score (NaN ranks as -infinity)
  int32_t p;
};

// Highest score first, ties to the lower position (a functor, so the selections inline it).
struct Before {
  bool operator()(const Cand& a, const Cand& b) const { return a.s > b.s || (a.s == b.s && a.p < b.p); }
};
constexpr Before before{};

struct Scratch {
  std::vector<double> score, own;
  std::vector<Cand> cand, inside, below;
  std::vector<uint8_t> mark;
};

// From this many candidates a selection brackets its rank with a sample first.
constexpr int kSampleFrom = 1024;
constexpr int kSample = 128;

// What std::nth_element(c, c + k, c + m, before) guarantees (c[k] is the (k+1)-th in rank
// order, none before it ranks after it, none after it ranks before it), which is all the
// callers use. On fresh scores nth_element's comparisons are unpredictable branches, so a
// strided sample of the scores brackets the k-th first, one branch-free pass splits the
// candidates into those above the bracket, inside it and below it, and only the inside is
// selected (SmallKV at 4 x 4096 in decode: 226-262 -> 185-191 us per layer call). A bracket
// that misses falls back to nth_element over everything.
void select_nth(Cand* c, int k, int m, Scratch& ws) {
  if (k < 0 || k >= m) return;
  if (m < kSampleFrom) {
    std::nth_element(c, c + k, c + m, before);
    return;
  }
  double smp[kSample];
  for (int i = 0; i < kSample; ++i) smp[i] = c[static_cast<int64_t>(i) * m / kSample].s;
  // The k-th of m sits near sample rank q; +-2.5 standard deviations of that rank (plus slack).
  const double q = static_cast<double>(k) * kSample / m;
  const int d = static_cast<int>(2.5 * std::sqrt(q * (1 - q / kSample))) + 2;
  const int hiAt = std::max(0, static_cast<int>(q) - d);
  const int loAt = std::min(kSample - 1, static_cast<int>(q) + d);
  const auto desc = [](double x, double y) { return x > y; };
  std::nth_element(smp, smp + hiAt, smp + kSample, desc);
  if (loAt > hiAt) std::nth_element(smp + hiAt + 1, smp + loAt, smp + kSample, desc);
  const double hi = hiAt > 0 ? smp[hiAt] : INFINITY;
  const double lo = loAt < kSample - 1 ? smp[loAt] : -INFINITY;
  if (ws.inside.size() < size_t(m)) {
    ws.inside.resize(m);
    ws.below.resize(m);
  }
  Cand* in = ws.inside.data();
  Cand* out = ws.below.data();
  // Above the bracket compacts in place (its writes trail the reads); the rest goes aside.
  int na = 0, ni = 0, nb = 0;
  for (int i = 0; i < m; ++i) {
    const Cand x = c[i];
    const int up = x.s > hi, down = x.s < lo;
    c[na] = x;
    in[ni] = x;
    out[nb] = x;
    na += up;
    nb += down;
    ni += 1 - up - down;
  }
  std::memcpy(c + na, in, sizeof(Cand) * ni);
  std::memcpy(c + na + ni, out, sizeof(Cand) * nb);
  // Everything above ranks before everything inside, which ranks before everything below.
  if (k >= na && k < na + ni) std::nth_element(c + na, c + k, c + na + ni, before);
  else std::nth_element(c, c + k, c + m, before);
}

// One list: its score, its ranking and split. Exact positions go to full[0..), V-only ones
// to vOut[0..) (each at most n); the counts come back in nf and nv.
void split_list(const RankSplitArgs& a, int g, Scratch& ws, int32_t* full, int32_t* vOut, int& nf, int& nv) {
  const int n = a.n;
  double* const score = ws.score.data();
  double* const own = ws.own.data();
  uint8_t* const mark = ws.mark.data();
  Cand* const c = ws.cand.data();
  const int lo = std::max(0, n - a.recent);
  int fullAt = 0, vAt = 0;
  double* s = score;
  std::fill(s, s + n, 0.0);
  for (int t = 0; t < a.nterms; ++t) {
    if (a.terms[3 * t] != g) continue;
    const int src = a.terms[3 * t + 1];
    const int64_t off = a.terms[3 * t + 2];
    const double w = a.weights[t];
    if (a.srcF64[src]) {
      const double* x = static_cast<const double*>(a.src[src]) + off;
      for (int p = 0; p < n; ++p) s[p] += x[p] * w;
    } else {
      const float* x = static_cast<const float*>(a.src[src]) + off;
      for (int p = 0; p < n; ++p) s[p] += static_cast<double>(x[p]) * w;
    }
  }
  if (a.assistantWeight != nullptr && a.assistantWeight[g] >= 0) {
    // Both views as distributions, then w * assistant + (1 - w) * own.
    double sum = 0;
    for (int p = 0; p < n; ++p) sum += s[p];
    if (sum > 0)
      for (int p = 0; p < n; ++p) s[p] /= sum;
    const double* sums = a.ownSums[g];
    const double* counts = a.ownCounts[g];
    const int cl = a.ownCountLen[g];
    double osum = 0;
    for (int p = 0; p < n; ++p) {
      own[p] = p < cl && counts[p] > 0 ? sums[p] / counts[p] : 0;
      osum += own[p];
    }
    if (osum > 0)
      for (int p = 0; p < n; ++p) own[p] /= osum;
    const double wa = a.assistantWeight[g];
    for (int p = 0; p < n; ++p) s[p] = wa * s[p] + (1 - wa) * own[p];
  }
  // Candidates: positions before the recent window that are not excluded.
  uint8_t* ex = a.exclude != nullptr ? a.exclude[g] : nullptr;
  const double units = a.adaptive ? a.units[g] : 0;
  int64_t K = a.adaptive ? 2 * static_cast<int64_t>(std::ceil(units)) + 1 : a.k[g];
  // Excluded positions of the recent window are not kept: their slots go to ranked tokens.
  int freed = 0;
  if (a.skipExcludedRecent && ex != nullptr)
    for (int p = lo; p < n; ++p) freed += ex[p] != 0 ? 1 : 0;
  if (!a.adaptive) K += freed;
  // All exact (no V-only split): only the top `whole` matter, so select them directly.
  if (a.adaptive && !a.vOnly[g]) K = std::min<int64_t>(K, std::max(0, static_cast<int>(std::floor(units + 1e-9))));
  int m = 0;
  for (int p = 0; p < lo; ++p)
    if (ex == nullptr || ex[p] == 0) c[m++] = Cand{std::isnan(s[p]) ? -INFINITY : s[p], p};
  if (K < m) {
    select_nth(c, static_cast<int>(K), m, ws);
    m = static_cast<int>(std::max<int64_t>(0, K));
  }
  int exact = 0, v = 0;
  // c[0..ready) holds exactly the top `ready` candidates (no selection needed to cut there).
  int ready = m;
  if (!a.adaptive) {
    exact = std::min(a.exact[g] + freed, m);
    v = m - exact;
  } else {
    const int whole = std::max(0, static_cast<int>(std::floor(units + 1e-9)));
    if (!a.vOnly[g]) {
      exact = std::min(m, whole);
    } else {
      // The candidates' predicted mass, summed in ascending position order.
      for (int i = 0; i < m; ++i) mark[c[i].p] = 1;
      double total = 0;
      // Adding 0.0 for the others leaves the sum as it is, and keeps the loop branch-free.
      for (int p = 0; p < lo; ++p) total += mark[p] ? s[p] : 0.0;
      std::memset(mark, 0, lo);
      const double want = a.exactShare * total;
      const int lim = std::min(m, whole);
      // Exact slots in rank order until they hold `want`. When the top lim - 1 (non-negative
      // masses) clearly hold less, every slot is exact and the ranks need no sorting.
      bool all = false;
      if (lim > 0) {
        if (lim - 1 < m) select_nth(c, lim - 1, m, ws);
        double held = 0, least = INFINITY;
        for (int i = 0; i < lim - 1; ++i) {
          held += s[c[i].p];
          least = std::min(least, s[c[i].p]);
        }
        all = (lim == 1 || least >= 0) && held < want * (1 - 1e-9);
      }
      if (all) {
        exact = lim;
        ready = lim;
      } else if (lim > 0) {
        // Rank order a chunk at a time (doubling): a peaked list stops after a few ranks.
        double held = 0;
        for (int at = 0, chunk = 32; exact < lim && held < want; chunk *= 2) {
          const int to = std::min(lim, at + chunk);
          if (to < lim) std::nth_element(c + at, c + to, c + lim, before);
          std::sort(c + at, c + to, before);
          while (exact < to && held < want) held += s[c[exact++].p];
          at = to;
        }
        ready = exact;
      }
      // V-only tokens follow in rank order while their mass is not negligible: those ranks
      // come first among the rest (sorted by score), so count them instead of sorting.
      int notNegligible = 0;
      for (int i = 0; i < m; ++i) notNegligible += s[c[i].p] >= a.negligible ? 1 : 0;
      adaptive_leftovers(m, notNegligible, units, exact, v);
    }
  }
  // The top `exact` ranks, then the next v, each written in ascending position order.
  if (exact < m && exact != ready) select_nth(c, exact, m, ws);
  if (v > 0 && exact + v < m) select_nth(c + exact, v, m - exact, ws);
  for (int i = 0; i < exact; ++i) mark[c[i].p] = 1;
  for (int i = exact; i < exact + v; ++i) mark[c[i].p] = 2;
  // Branch-free: each position is written to both lists and kept where its mark says (the
  // writes past a list's end stay inside its n-sized region and are overwritten or unused).
  // Evicting, a position not chosen is masked for good.
  const auto place = [&](auto evicting) {
    for (int p = 0; p < lo; ++p) {
      const uint8_t mk = mark[p];
      full[fullAt] = p;
      vOut[vAt] = p;
      fullAt += mk == 1;
      vAt += mk == 2;
      if constexpr (decltype(evicting)::value) ex[p] |= mk == 0;
      mark[p] = 0;
    }
  };
  if (a.evict && ex != nullptr) place(std::true_type{});
  else place(std::false_type{});
  for (int p = lo; p < n; ++p)
    if (!(a.skipExcludedRecent && ex != nullptr && ex[p] != 0)) full[fullAt++] = p;
  nf = fullAt;
  nv = vAt;
}

// Lists are independent: above this much work they run on the threads, each writing into its
// own n-sized region of the outputs, which are then packed in list order. Waking the team in a
// decode step (after onnxruntime's calls, the threads asleep) costs more than it saves at the
// shapes measured here: SmallKV at 4 x 4096 took 260-290 us per call on two threads against
// 155-190 on one, and at 1 x 16384 (4 lists of 16384) 567 against 535. So only far larger
// layers use them.
constexpr int64_t kParallelPositions = 1 << 17;

// Positions a selection ranks: every position of every list, or with masks only those they
// leave below the recent window.
int64_t ranked_positions(const RankSplitArgs& a) {
  if (a.exclude == nullptr) return static_cast<int64_t>(a.n) * a.lists;
  const int lo = std::max(0, a.n - a.recent);
  int64_t ranked = 0;
  for (int g = 0; g < a.lists; ++g) {
    const uint8_t* ex = a.exclude[g];
    for (int p = 0; p < lo; ++p) ranked += ex[p] == 0 ? 1 : 0;
  }
  return ranked;
}

bool worth_threads(const RankSplitArgs* a, int count) {
  if (omp_get_max_threads() < 2) return false;
  int64_t lists = 0, all = 0;
  for (int c = 0; c < count; ++c) {
    lists += a[c].lists;
    all += static_cast<int64_t>(a[c].n) * a[c].lists;
  }
  if (lists < 2 || all < kParallelPositions) return false;
  int64_t ranked = 0;
  for (int c = 0; c < count && ranked < kParallelPositions; ++c) ranked += ranked_positions(a[c]);
  return ranked >= kParallelPositions;
}

Scratch& scratch_for(int n) {
  // Per-thread scratch, fetched once per call or per threaded list (a thread_local in a
  // shared library costs a lookup on every access).
  thread_local Scratch scratch;
  Scratch& w = scratch;
  if (w.score.size() < size_t(n)) {
    w.score.resize(n);
    w.cand.resize(n);
    w.own.resize(n);
  }
  if (w.mark.size() < size_t(n)) w.mark.assign(n, 0);
  return w;
}

}  // namespace

void rank_split(const RankSplitArgs& a) { rank_split_many(&a, 1); }

void rank_split_many(const RankSplitArgs* a, int count) {
  for (int c = 0; c < count; ++c) {
    a[c].fullOff[0] = 0;
    a[c].vOff[0] = 0;
  }
  if (!worth_threads(a, count)) {
    for (int c = 0; c < count; ++c) {
      const RankSplitArgs& r = a[c];
      Scratch& ws = scratch_for(r.n);
      int nf = 0, nv = 0;
      for (int g = 0; g < r.lists; ++g) {
        split_list(r, g, ws, r.full + r.fullOff[g], r.vOnlyOut + r.vOff[g], nf, nv);
        r.fullOff[g + 1] = r.fullOff[g] + nf;
        r.vOff[g + 1] = r.vOff[g] + nv;
      }
    }
    return;
  }
  // Every list of every selection on the threads, each into its own n-sized region of its
  // selection's outputs, its counts in the offsets' next slots.
  std::vector<std::pair<int, int>> cells;
  for (int c = 0; c < count; ++c)
    for (int g = 0; g < a[c].lists; ++g) cells.emplace_back(c, g);
  const int cellCount = static_cast<int>(cells.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < cellCount; ++i) {
    const RankSplitArgs& r = a[cells[i].first];
    const int g = cells[i].second;
    int nf = 0, nv = 0;
    split_list(r, g, scratch_for(r.n), r.full + int64_t(g) * r.n, r.vOnlyOut + int64_t(g) * r.n, nf, nv);
    r.fullOff[g + 1] = nf;
    r.vOff[g + 1] = nv;
  }
  // Pack: list g's region starts at g * n, at or after its packed offset, so moving in list
  // order never overwrites a region not yet moved.
  for (int c = 0; c < count; ++c) {
    const RankSplitArgs& r = a[c];
    for (int g = 0; g < r.lists; ++g) {
      const int nf = r.fullOff[g + 1], nv = r.vOff[g + 1];
      r.fullOff[g + 1] = r.fullOff[g] + nf;
      r.vOff[g + 1] = r.vOff[g] + nv;
      std::memmove(r.full + r.fullOff[g], r.full + int64_t(g) * r.n, sizeof(int32_t) * nf);
      std::memmove(r.vOnlyOut + r.vOff[g], r.vOnlyOut + int64_t(g) * r.n, sizeof(int32_t) * nv);
    }
  }
}

void scatter_add(double* acc, const int32_t* pos, int n, const float* src, int64_t offset, int rows, int64_t stride,
                 double weight) {
  for (int h = 0; h < rows; ++h) {
    const float* x = src + offset + h * stride;
    for (int j = 0; j < n; ++j) acc[pos[j]] += weight * static_cast<double>(x[j]);
  }
}

}  // namespace skv
