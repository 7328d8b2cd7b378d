import { PolicyOptionError } from "../errors.js";
import { definePolicy } from "../sdk.js";
import { everyHead, topPositions } from "../select.js";

interface OmniState {
  filters: Set<number>;
  first: number;
  /** The latest filter layer's attention at this step (last query row, summed over heads), by position. */
  scores: Float64Array;
  /** Step (start) the scores belong to. */
  scoresAt: number;
}

function parseFilters(s: string, L: number): number[] {
  const xs = s
    .split(",")
    .filter((x) => x.trim() !== "")
    .map(Number);
  if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 0 || x >= L))
    throw new PolicyOptionError(
      "omnikv",
      `filters must be comma-separated layer indices in [0, ${L}), got ${JSON.stringify(s)}`,
    );
  return xs;
}

/**
 * OmniKV (Hao et al., ICLR 2025): token selection without training or eviction. A few
 * "filter" layers of the LLM itself attend over the whole context; the tokens their
 * current attention ranks highest are the set that the following layers (until the next
 * filter layer) read at this step. Layers up to the first filter layer and the filter
 * layers read every token; nothing is evicted, so a token can return at the next step.
 *
 * Budget: with `budgeted` (default) the dense layers are paid out of the other layers'
 * budget (the summed budget over layers is the same as every other policy's). When the
 * budget cannot pay for them (below about (dense layers / layers) of the sequence), every
 * layer reads a budget-sized set ranked by the latest filter-layer attention instead.
 * `budgeted=false` is the paper's form: dense layers always full (more memory: the hot
 * bytes show it).
 */
export const omniKv = definePolicy<OmniState, { filters: string; budgeted: boolean }>({
  name: "omnikv",
  description:
    "filter layers of the LLM attend fully; their current attention picks the tokens the following layers read (reversible)",
  // The paper's filter layers sit early in the stack; for this 5-layer model, layer 1.
  options: { filters: "1", budgeted: true },
  validate(o, config) {
    parseFilters(o.filters, config?.numLayers ?? Number.POSITIVE_INFINITY);
  },
  init(seq, o) {
    const f = parseFilters(o.filters, seq.config.numLayers);
    return { filters: new Set(f), first: Math.min(...f), scores: new Float64Array(0), scoresAt: -1 };
  },
  wantsAttention: (ctx) =>
    ctx.state.filters.has(ctx.layer) ? { scores: true, fromRow: ctx.step.T - 1 } : false,
  observe(ctx, obs) {
    if (!ctx.state.filters.has(obs.layer)) return;
    const s = new Float64Array(obs.start + obs.T);
    const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
    const group = Hq / Hkv;
    for (let g = 0; g < Hkv; g++) {
      const pos = obs.keyPositions[g];
      for (let h = g * group; h < (g + 1) * group; h++)
        for (let j = 0; j < pos.length; j++) s[pos[j]] += obs.scores![h * obs.Lmax + j];
    }
    ctx.state.scores = s;
    ctx.state.scoresAt = obs.start;
  },
  select(ctx) {
    const st = ctx.state;
    const { start, T } = ctx.step;
    const L = ctx.config.numLayers;
    const n = start + T;
    const isDense = (l: number) => l <= st.first || st.filters.has(l);
    let dense = 0;
    for (let l = 0; l < L; l++) if (isDense(l)) dense++;
    // Summed budget of the step (cost units over layers, per kv head).
    const total = L * Math.max(ctx.budget, T);
    const affordable = !ctx.options.budgeted || dense === L || total >= dense * n + (L - dense) * T;
    let old = ctx.oldBudget;
    if (affordable) {
      if (isDense(ctx.layer)) return null;
      if (ctx.options.budgeted) old = Math.max(0, Math.floor((total - dense * n) / (L - dense)) - T);
    }
    // Scores not yet seen (before the first filter layer has run once): the newest tokens.
    const scores = st.scoresAt >= 0 ? st.scores : Float64Array.from({ length: start }, (_, p) => p);
    return {
      full: everyHead(ctx.config.numKvHeads, topPositions(scores, Math.min(start, scores.length), old)),
    };
  },
});
