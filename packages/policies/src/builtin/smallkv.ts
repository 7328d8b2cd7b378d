import {
  collectAttention,
  DEFAULT_WINDOW,
  HeadMatching,
  identityOf,
  type MatchMetric,
  matchingWindow,
} from "@smallkv/matching";
import type { AssistantState, LayerSelection } from "@smallkv/runner";
import { PolicyOptionError } from "../errors.js";
import { definePolicy, type PolicyContext } from "../sdk.js";
import { Evictions, maskOf, range, topPositions, union } from "../select.js";

export interface SmallKvOptions {
  [k: string]: string | number | boolean;
  /** "mass": (1 - m_M) O_c + O_m; "literal": O_c + O_m (as the paper writes it). */
  mode: string;
  /** Critical : recent : marginal split in tokens (a marginal token costs half). */
  split: string;
  /** "kv": select per kv head with the mean of the matched SLM scores of its query heads; "query": per query head. */
  gqa: string;
  /** Ablation switch: false = no marginal compensation (M empty, the budget all to critical + recent). */
  marginal: boolean;
  /** Ablation switch: false = no saliency-shift compensation (irreversible eviction). */
  saliency: boolean;
  metric: string;
  /** Jaccard TopK as a fraction of the matching window. */
  topk: number;
  minContext: number;
  maxContext: number;
  window: number;
  windowFrom: string;
  /** A saved head matching (smallkv match --out); empty: match each sequence on its own tokens. */
  mapping: string;
  /**
   * How accumulated SLM attention ranks tokens: "sum" (column sums, as the paper) or "mean"
   * (column sums divided by the number of queries that could attend: no positional bias).
   */
  scores: string;
}

interface SmallKvState {
  matching: HeadMatching | null;
  evicted: Evictions;
  counts: { critical: number; recent: number; marginal: number };
  layers: number;
  /** Positions in the recent window at the last step (for traces). */
  lastRecent: number;
}

/** Sizes (tokens) of the three classes for a budget of `total` cost units, `T` of them the step's own tokens. */
export function splitBudget(
  total: number,
  T: number,
  split: [number, number, number],
  marginal: boolean,
): { critical: number; recent: number; marginal: number } {
  const [c, r, m] = split;
  // Cost weights: a marginal token is V only, half a token.
  const costC = c;
  const costR = r;
  const costM = marginal ? m / 2 : 0;
  const unit = total / (costC + costR + costM);
  let critical = Math.floor(unit * costC + 1e-9);
  let recent = Math.max(T, Math.floor(unit * costR + 1e-9));
  let marg = marginal ? Math.floor(2 * (total - critical - recent) + 1e-9) : 0;
  if (!marginal) recent = Math.max(T, total - critical);
  // Too small a budget: recent and marginal shrink first (proportionally), critical keeps its share.
  if (critical + recent + marg / 2 > total) {
    const rest = Math.max(0, total - critical);
    const want = recent + marg / 2;
    recent = Math.max(T, Math.floor((recent * rest) / Math.max(want, 1e-9)));
    marg = Math.max(0, Math.floor(2 * (total - critical - recent)));
    if (critical + recent > total) critical = Math.max(0, total - recent);
  }
  return { critical, recent, marginal: marg };
}

function parseSplit(s: string): [number, number, number] {
  const parts = s.split(":").map(Number);
  if (parts.length !== 3 || parts.some((x) => !(x >= 0)) || parts[0] + parts[1] === 0) {
    throw new PolicyOptionError(
      "smallkv",
      `split must be three non-negative numbers like 2:1:2, got ${JSON.stringify(s)}`,
    );
  }
  return parts as [number, number, number];
}

function assistantOf(ctx: PolicyContext<SmallKvState, SmallKvOptions>): AssistantState {
  const a = ctx.seq.assistant;
  if (!a)
    throw new PolicyOptionError(
      "smallkv",
      "needs an assistant model: run it through an AssistedModel (CLI: --assistant <dir>)",
    );
  return a;
}

const savedMatchings = new Map<string, HeadMatching>();

/**
 * SmallKV (Zhao, Peng et al. 2025, arXiv 2508.02751): an assistant SLM with a full cache
 * decides, every step and for every head, which tokens the LLM attends to exactly
 * (critical by the matched SLM head's accumulated attention, plus a recent window),
 * which it approximates with the SLM's current attention weights (marginal, V only),
 * and which it skips; dropped tokens come back from the cold store when they matter again.
 */
export const smallKv = definePolicy<SmallKvState, SmallKvOptions>({
  name: "smallkv",
  description:
    "assistant-SLM-guided critical (K+V) / recent / marginal (V-only, SLM weights) selection, re-chosen every step",
  options: {
    mode: "mass",
    split: "2:1:2",
    gqa: "kv",
    marginal: true,
    saliency: true,
    metric: "jaccard",
    topk: 0.2,
    minContext: DEFAULT_WINDOW.minTokens,
    maxContext: DEFAULT_WINDOW.maxTokens,
    window: DEFAULT_WINDOW.size,
    windowFrom: DEFAULT_WINDOW.from,
    mapping: "",
    scores: "sum",
  },
  usesAssistant: true,
  warmupTokens: (o) => o.minContext,

  init(seq, o) {
    if (o.mode !== "mass" && o.mode !== "literal")
      throw new PolicyOptionError("smallkv", `mode must be mass or literal, got ${o.mode}`);
    if (o.gqa !== "kv" && o.gqa !== "query")
      throw new PolicyOptionError("smallkv", `gqa must be kv or query, got ${o.gqa}`);
    if (o.metric !== "jaccard" && o.metric !== "cosine")
      throw new PolicyOptionError("smallkv", `metric must be jaccard or cosine, got ${o.metric}`);
    if (o.windowFrom !== "first" && o.windowFrom !== "last")
      throw new PolicyOptionError("smallkv", `windowFrom must be first or last`);
    if (o.scores !== "sum" && o.scores !== "mean")
      throw new PolicyOptionError("smallkv", `scores must be sum or mean, got ${o.scores}`);
    parseSplit(o.split);
    const c = seq.config;
    return {
      matching: null,
      evicted: new Evictions(c.numLayers, o.gqa === "query" ? c.numHeads : c.numKvHeads),
      counts: { critical: 0, recent: 0, marginal: 0 },
      layers: c.numLayers,
      lastRecent: 0,
    };
  },
  async prepare(ctx) {
    if (ctx.state.matching) return;
    const a = assistantOf(ctx);
    const o = ctx.options;
    if (o.mapping) {
      let m = savedMatchings.get(o.mapping);
      if (!m) {
        m = HeadMatching.load(o.mapping, { llm: ctx.seq.model ?? undefined, slm: a.model });
        savedMatchings.set(o.mapping, m);
      }
      ctx.state.matching = m;
      return;
    }
    // Match on the sequence's own tokens once the context reaches the window (even mid-decoding).
    const win = matchingWindow(ctx.step.start, {
      minTokens: o.minContext,
      maxTokens: o.maxContext,
      size: o.window,
      from: o.windowFrom as "first" | "last",
    });
    if (!win || !ctx.seq.model) return;
    const ids = ctx.seq.tokens.slice(win[0], win[1]);
    const [la, sa] = [await collectAttention(ctx.seq.model, ids), await collectAttention(a.model, ids)];
    ctx.state.matching = HeadMatching.compute(
      la,
      sa,
      { llm: identityOf(ctx.seq.model), slm: identityOf(a.model), window: win },
      { metric: o.metric as MatchMetric, topkRatio: o.topk },
    );
  },
  describe: (s) => ({
    matched: s.matching !== null,
    // matching[layer][head] = [slmLayer, slmHead]
    matching: s.matching
      ? Array.from({ length: s.matching.llm.numLayers }, (_, l) =>
          Array.from({ length: s.matching!.llm.numHeads }, (_, h) => {
            const m = s.matching!.slmHeadOf(l, h);
            return [m.layer, m.head];
          }),
        )
      : null,
    recent: s.lastRecent,
  }),
  // Per layer and kv head (or query head), averaged over layers.
  classCounts: (s) => ({
    critical: s.counts.critical / s.layers,
    recent: s.counts.recent / s.layers,
    marginal: s.counts.marginal / s.layers,
  }),
  select(ctx): LayerSelection | null {
    const m = ctx.state.matching;
    if (!m) return null;
    const a = assistantOf(ctx);
    const o = ctx.options;
    const { start, T } = ctx.step;
    const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
    const perQuery = o.gqa === "query";
    const lists = perQuery ? Hq : Hkv;
    const group = Hq / lists;
    const sizes = splitBudget(ctx.budget, T, parseSplit(o.split), o.marginal);
    const recentOld = Math.min(start, Math.max(0, sizes.recent - T));
    const recent = range(start - recentOld, start);
    ctx.state.lastRecent = recentOld;
    const full: Int32Array[] = [];
    const vOnly: Int32Array[] = [];
    for (let g = 0; g < lists; g++) {
      // Rank by the matched SLM heads' accumulated attention (mean over the group's query heads).
      const score = new Float64Array(start);
      // Rows the assistant has seen (this step's included): position p had rows - p queries.
      const rows = a.seq.length;
      const mean = o.scores === "mean";
      for (let h = g * group; h < (g + 1) * group; h++) {
        const sh = m.slmHeadOf(ctx.layer, h);
        const s = a.score(sh.layer, sh.head, start);
        for (let p = 0; p < start; p++) score[p] += (mean ? s[p] / (rows - p) : s[p]) / group;
      }
      const exclude = maskOf(start, recent);
      if (!o.saliency) ctx.state.evicted.excludeInto(ctx.layer, g, exclude, start);
      const ranked = topPositions(score, start, sizes.critical + sizes.marginal, exclude);
      // topPositions returns positions in order; re-rank to split critical from marginal.
      const byScore = Array.from(ranked).sort((x, y) => score[y] - score[x] || x - y);
      const critical = Int32Array.from(byScore.slice(0, sizes.critical)).sort();
      const marginal = Int32Array.from(byScore.slice(sizes.critical, sizes.critical + sizes.marginal)).sort();
      const keep = union(critical, recent);
      if (!o.saliency) ctx.state.evicted.keepOnly(ctx.layer, g, start, keep, marginal);
      full.push(keep);
      vOnly.push(marginal);
    }
    if (ctx.layer === 0) ctx.state.counts = { critical: 0, recent: 0, marginal: 0 };
    const per = lists;
    ctx.state.counts.critical += (full.reduce((x, l) => x + l.length, 0) - recent.length * per) / per;
    ctx.state.counts.recent += recent.length + T;
    ctx.state.counts.marginal += vOnly.reduce((x, l) => x + l.length, 0) / per;
    const hasMarginal = vOnly.some((l) => l.length > 0);
    return {
      full,
      vOnly: hasMarginal ? vOnly : undefined,
      combine: o.mode as "mass" | "literal",
      perQueryHead: perQuery,
    };
  },
  vOnlyWeights(ctx, sel) {
    const m = ctx.state.matching!;
    const a = assistantOf(ctx);
    const { numHeads: Hq } = ctx.config;
    const T = ctx.step.T;
    const lists = sel.vOnly!;
    const group = Hq / lists.length;
    const vmax = Math.max(...lists.map((l) => l.length));
    const w = new Float32Array(Hq * T * vmax);
    for (let h = 0; h < Hq; h++) {
      const sh = m.slmHeadOf(ctx.layer, h);
      const list = lists[Math.floor(h / group)];
      for (let t = 0; t < T; t++) {
        // The matched SLM head's softmax row at this step (it ran on the same token first).
        const row = a.row(sh.layer, sh.head, t);
        for (let i = 0; i < list.length; i++) w[(h * T + t) * vmax + i] = row[list[i]];
      }
    }
    return w;
  },
});
