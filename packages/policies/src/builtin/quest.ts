import { PolicyOptionError } from "../errors.js";
import { optionChecks } from "../option-checks.js";
import { definePolicy } from "../sdk.js";

interface QuestState {
  /** Per layer and kv head: per-page channel minima and maxima of the keys, [pages][D] each. */
  pages: { min: Float32Array; max: Float32Array; full: number; count: number; D: number }[][];
}

/**
 * Quest (Tang et al. 2024, arXiv 2406.10774): keys are grouped in pages; each page keeps the
 * per-channel min and max of its keys, and at every step the current query bounds each
 * page's highest attention logit by sum_d max(q_d min_d, q_d max_d). The pages with the
 * highest bounds (summed over the kv head's query heads) are read, up to the budget in
 * tokens (the last page taken may be cut); nothing is evicted, so it is reversible.
 * Metadata: 2 x D floats per page and kv head (1/pageSize of the K cache, counted as resident in the eval).
 */
export const quest = definePolicy<QuestState, { pageSize: number }>({
  name: "quest",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["pages"],
  description: "query-aware page selection from per-page key min/max bounds, every step (reversible)",
  options: { pageSize: 16 },
  wantsQuery: true,
  validate: (o) => optionChecks("quest", o).number("pageSize", 1, 4096, true),
  init(seq) {
    return {
      pages: Array.from({ length: seq.config.numLayers }, () =>
        Array.from({ length: seq.config.numKvHeads }, () => ({
          min: new Float32Array(0),
          max: new Float32Array(0),
          full: 0,
          count: 0,
          D: seq.config.headDim,
        })),
      ),
    };
  },
  // Per layer and kv head: a min and a max of D floats for every page summarised so far.
  residentBytes: (st) =>
    st.pages.reduce((a, layer) => a + layer.reduce((b, m) => b + 2 * m.count * m.D * 4, 0), 0),
  select(ctx) {
    const { start, T, query } = ctx.step;
    if (!query) throw new PolicyOptionError("quest", "the runner gave no queries (wantsQuery)");
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = ctx.config;
    const kv = ctx.seq.kv;
    const P = ctx.options.pageSize;
    const group = Hq / Hkv;
    const nPages = Math.ceil(start / P);
    const full: Int32Array[] = [];
    for (let g = 0; g < Hkv; g++) {
      const meta = ctx.state.pages[ctx.layer][g];
      if (meta.min.length < nPages * D) {
        const grow = (a: Float32Array) => {
          const b = new Float32Array(Math.max(nPages, 2 * (a.length / D)) * D);
          b.set(a);
          return b;
        };
        meta.min = grow(meta.min);
        meta.max = grow(meta.max);
      }
      // Complete pages are summarised once; the last, partial page again each step.
      // A sliding layer's store starts at position `base`: older rows are gone (and outside the window).
      const base = kv.base[ctx.layer];
      for (let pg = meta.full; pg < nPages; pg++) {
        const from = Math.max(pg * P, base);
        const to = Math.min(start, pg * P + P);
        // Float rows of the page (an int8 store dequantizes them).
        const keys = kv.keyRows(ctx.layer, g, Math.max(0, from - base), Math.max(0, to - base));
        for (let d = 0; d < D; d++) {
          let lo = from < to ? Number.POSITIVE_INFINITY : 0;
          let hi = from < to ? Number.NEGATIVE_INFINITY : 0;
          for (let p = from; p < to; p++) {
            const x = keys[(p - from) * D + d];
            if (x < lo) lo = x;
            if (x > hi) hi = x;
          }
          meta.min[pg * D + d] = lo;
          meta.max[pg * D + d] = hi;
        }
        if (to - pg * P === P) meta.full = pg + 1;
      }
      meta.count = nPages;
      const bound = new Float64Array(nPages);
      for (let pg = 0; pg < nPages; pg++) {
        let s = 0;
        for (let h = g * group; h < (g + 1) * group; h++) {
          for (let t = 0; t < T; t++) {
            const qo = (t * Hq + h) * D;
            for (let d = 0; d < D; d++) {
              const qd = query[qo + d];
              s += Math.max(qd * meta.min[pg * D + d], qd * meta.max[pg * D + d]);
            }
          }
        }
        bound[pg] = s;
      }
      const order = Array.from({ length: nPages }, (_, i) => i).sort((a, b) => bound[b] - bound[a] || b - a);
      const picked: number[] = [];
      let left = ctx.oldBudget;
      for (const pg of order) {
        if (left <= 0) break;
        const from = pg * P;
        const to = Math.min(start, from + P);
        // A cut page keeps its newest tokens.
        for (let p = Math.max(from, to - left); p < to; p++) picked.push(p);
        left -= Math.min(left, to - from);
      }
      full.push(Int32Array.from(picked).sort());
    }
    return { full };
  },
});
