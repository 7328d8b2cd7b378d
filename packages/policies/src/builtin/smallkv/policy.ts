import {
  collectAttention,
  DEFAULT_WINDOW,
  HeadMatching,
  identityOf,
  MATCH_METRICS,
  type MatchMetric,
  matchingWindow,
} from "@smallkv/matching";
import type { AssistantState, LayerSelection } from "@smallkv/runner";
import { type RankSplitArgs, type RankSplitRule, rankSplit, scoresAsGiven } from "@smallkv/tensor";
import { PolicyOptionError } from "../../errors.js";
import { MeanAttention } from "../../scores.js";
import { definePolicy, type PolicyContext, type PolicyFactory } from "../../sdk.js";
import { Evictions, range, topPositions } from "../../select.js";
import { copyState } from "../../state-copy.js";
import {
  accumulated,
  currentRow,
  DecayedScores,
  fittedRow,
  hasRows,
  SCORE_MODES,
  type ScoreMode,
} from "./scoring.js";
import { type ClassSizes, parseRatio, splitBudget } from "./split.js";

export interface SmallKvOptions {
  [k: string]: string | number | boolean;
  /** "mass": (1 - m_M) O_c + O_m; "literal": O_c + O_m (as the paper writes it). */
  mode: string;
  /** "adaptive" (per head, from the predicted masses), or a fixed critical:recent:marginal ratio like 2:1:2. */
  split: string;
  /** At least this many of the newest old tokens are read exactly (0: none). */
  recent: number;
  /** How the assistant ranks tokens: sum (the paper), mean, current or decay. */
  scores: string;
  /** Half-life in steps of `scores=decay`. */
  halfLife: number;
  /** "kv": select per kv head with the mean of the matched SLM scores of its query heads; "query": per query head (same memory). */
  gqa: string;
  /** Ablation switch: false = no marginal compensation (M empty, the budget all to critical + recent). */
  marginal: boolean;
  /** Marginal (V-only) tokens only for LLM heads whose matched SLM head covers at least this share of their attention. */
  gate: number;
  /** Heads whose matched SLM head covers less than this share rank by the LLM's own mean attention instead (0: never). */
  trust: number;
  /**
   * Heads whose matched SLM head predicted their attention worse than their own past mean
   * attention did (measured on the matching window) rank by the LLM's own mean attention:
   * a weak assistant degrades to the assistant-free reversible selection.
   */
  fallback: boolean;
  /**
   * "match": each LLM head reads its matched SLM head's row; "fit": a non-negative mixture of
   * every SLM head's row and the head's own past attention, fitted on the matching window.
   */
  heads: string;
  /** "head": every kv head gets the same slots; "layer": a layer's slots go where the predicted mass is (adaptive split). */
  allocate: string;
  /** Current-row ranking pools the rows of this many best-matched SLM heads per LLM head. */
  pool: number;
  /** Weight of the LLM's own mean attention blended into the assistant's ranking (0: assistant only). */
  own: number;
  /** Adaptive split: exact slots until they hold this share of the predicted mass, then V-only. */
  exactShare: number;
  /** Adaptive split: V-only only for tokens with at least this predicted mass. */
  negligible: number;
  /** Ablation switch: false = no saliency-shift compensation (irreversible eviction). */
  saliency: boolean;
  metric: string;
  /** TopK (Jaccard) and per-row top share (coverage) as a fraction of the window or row. */
  topk: number;
  minContext: number;
  maxContext: number;
  window: number;
  windowFrom: string;
  /** A saved head matching (smallkv match --out); empty: match each sequence on its own tokens. */
  mapping: string;
  /**
   * Re-rank every this many decode steps (1: every step, as the paper). In between, a layer
   * keeps its last lists: the token that became old joins them, and over budget the held
   * token the assistant's current rows score lowest leaves (no ranking of the whole context).
   */
  refresh: number;
  /**
   * With refresh > 1: keep a held selection only while the assistant's current rows put at
   * least this share of the mass on it that they put there when it was chosen (0: keep it
   * for the whole interval). Default ranking only (scores=current, heads=match).
   */
  hold: number;
}

/** A layer's lists between re-rankings (frozen: shared by copies, replaced every step). */
interface HeldSelection {
  /** The start of the step that last re-ranked. */
  at: number;
  /** The start of the last step served (the lists hold old tokens before it). */
  last: number;
  full: Int32Array[];
  vOnly: Int32Array[];
  hasMarginal: boolean;
  perQueryHead: boolean;
  /** Exact tokens of the newest old positions, never evicted between re-rankings. */
  recent: number;
  /** Per list: the share of the assistant's mass on the exact tokens when ranked (hold > 0). */
  mass: Float64Array | null;
}

interface SmallKvState {
  matching: HeadMatching | null;
  evicted: Evictions;
  decayed: DecayedScores;
  /** The LLM's own mean attention (kept when `trust` > 0). */
  own: MeanAttention | null;
  /** Per layer: token counts by class at its last step (per kv head or query head list). */
  counts: { critical: number; recent: number; marginal: number }[];
  layers: number;
  /** Positions in the recent window at the last step (for traces). */
  lastRecent: number;
  /** Per LLM layer and query head: may use V-only tokens / trusts its matched SLM head. */
  gated: boolean[][] | null;
  trusted: boolean[][] | null;
  /** Per layer: the native score terms of the default ranking (made on first use). */
  plans: (TermPlan | undefined)[];
  /** Per layer: lists that may hold V-only tokens (some query head passes the gate). */
  marginalLists: (Uint8Array | undefined)[];
  /** Per layer: the selection kept between re-rankings (refresh > 1). */
  held: (HeldSelection | undefined)[];
  /** Layer selections made by a full ranking, and by keeping the held lists (refresh > 1). */
  ranked: number;
  kept: number;
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

function validate(name: string, o: SmallKvOptions): void {
  const bad = (msg: string) => {
    throw new PolicyOptionError(name, msg);
  };
  if (o.mode !== "mass" && o.mode !== "literal") bad(`mode must be mass or literal, got ${o.mode}`);
  if (o.gqa !== "kv" && o.gqa !== "query") bad(`gqa must be kv or query, got ${o.gqa}`);
  if (!MATCH_METRICS.includes(o.metric as MatchMetric))
    bad(`metric must be one of ${MATCH_METRICS.join(", ")}, got ${o.metric}`);
  if (o.windowFrom !== "first" && o.windowFrom !== "last") bad("windowFrom must be first or last");
  if (!SCORE_MODES.includes(o.scores as ScoreMode))
    bad(`scores must be one of ${SCORE_MODES.join(", ")}, got ${o.scores}`);
  if (o.split !== "adaptive" && !parseRatio(o.split))
    bad(`split must be adaptive or three non-negative numbers like 2:1:2, got ${JSON.stringify(o.split)}`);
  if (o.heads !== "match" && o.heads !== "fit" && o.heads !== "auto")
    bad(`heads must be match, fit or auto, got ${o.heads}`);
  if (o.allocate !== "head" && o.allocate !== "layer")
    bad(`allocate must be head or layer, got ${o.allocate}`);
  if (!(o.halfLife > 0)) bad(`halfLife must be > 0, got ${o.halfLife}`);
  if (!(o.recent >= 0)) bad(`recent must be >= 0, got ${o.recent}`);
  for (const k of ["gate", "trust", "own", "exactShare", "topk", "hold"] as const)
    if (!(o[k] >= 0 && o[k] <= 1)) bad(`${k} must be in [0, 1], got ${o[k]}`);
  if (!(Number.isInteger(o.pool) && o.pool >= 1 && o.pool <= 4)) bad(`pool must be 1 to 4, got ${o.pool}`);
  if (!(o.negligible >= 0)) bad(`negligible must be >= 0, got ${o.negligible}`);
  if (!(Number.isInteger(o.refresh) && o.refresh >= 1 && o.refresh <= 64))
    bad(`refresh must be an integer from 1 to 64, got ${o.refresh}`);
  if (!(o.minContext >= 1 && o.window >= 1 && o.maxContext >= o.minContext))
    bad("minContext and window must be >= 1 and maxContext >= minContext");
}

const savedMatchings = new Map<string, HeadMatching>();

/** Per LLM (layer, head): whether the matched SLM head's measured coverage reaches `threshold`. */
function headsAbove(m: HeadMatching, threshold: number): boolean[][] {
  return Array.from({ length: m.llm.numLayers }, (_, l) =>
    Array.from({ length: m.llm.numHeads }, (_, h) => {
      if (threshold <= 0) return true;
      const c = m.coverageOf(l, h);
      return Number.isFinite(c) ? c >= threshold : true;
    }),
  );
}

/**
 * Share `perList` × lists old-token units among the lists of a layer by predicted mass:
 * the highest normalised scores over all lists win (memory per layer unchanged, a head
 * with spread attention gets more slots than a head that looks at few tokens).
 */
function shareByMass(scores: Float64Array[], recent: Int32Array, perList: number, start: number): number[] {
  const total = Math.floor(perList * scores.length + 1e-9);
  const lo = recent.length ? recent[0] : start;
  const cand: { g: number; m: number }[] = [];
  scores.forEach((s, g) => {
    let sum = 0;
    for (let p = 0; p < lo; p++) sum += s[p];
    const k = Math.min(lo, total);
    const top = topPositions(s, lo, k);
    for (const p of top) cand.push({ g, m: sum > 0 ? s[p] / sum : 0 });
  });
  cand.sort((x, y) => y.m - x.m || x.g - y.g);
  const out = scores.map(() => 0);
  for (let i = 0; i < Math.min(total, cand.length); i++) out[cand[i].g]++;
  return out;
}

/** Normalise to a distribution over [0, n) (all zero stays zero). */
function normalised(x: Float64Array): Float64Array {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  if (s > 0) for (let i = 0; i < x.length; i++) x[i] /= s;
  return x;
}

type ScoreInput = Pick<RankSplitArgs, "sources" | "terms" | "weights" | "own">;

/**
 * What `currentTerms` reads of a layer, fixed once the matching is made: per term its list,
 * SLM layer and head and step row, and its weight; and each list's assistant weight in the
 * blend with the LLM's own attention (undefined: no list blends). Only the offsets into the
 * assistant's rows move from step to step (their length grows by one).
 */
interface TermPlan {
  T: number;
  /** [list, slm layer, slm head, row t] per term. */
  spec: Int32Array;
  weights: Float64Array;
  blend: Float64Array | undefined;
  /** Reused output: [list, source, offset] per term. */
  terms: Int32Array;
}

/** Where term i of a plan reads: its offset into its SLM layer's rows [h][rowsT][rowsN]. */
function termOffset(spec: Int32Array, i: number, a: AssistantState): number {
  return (spec[i + 2] * a.rowsT + spec[i + 3]) * a.rowsN;
}

function termPlan(
  ctx: PolicyContext<SmallKvState, SmallKvOptions>,
  m: HeadMatching,
  lists: number,
  group: number,
  T: number,
): TermPlan {
  const st = ctx.state;
  const o = ctx.options;
  const spec: number[] = [];
  const weights: number[] = [];
  let blend: Float64Array | undefined;
  for (let g = 0; g < lists; g++) {
    let trusted = 0;
    for (let i = 0; i < group; i++) {
      const h = g * group + i;
      if (st.trusted![ctx.layer][h]) trusted++;
      const shs = m.slmHeadsOf(ctx.layer, h, o.pool);
      for (const sh of shs)
        for (let t = 0; t < T; t++) {
          spec.push(g, sh.layer, sh.head, t);
          weights.push(1 / (group * shs.length));
        }
    }
    // A weak match: rank by the LLM's own mean attention (the reversible control's rule).
    if (st.own && (trusted < group || o.own > 0)) {
      blend ??= new Float64Array(lists).fill(-1);
      blend[g] = (trusted / group) * (1 - o.own);
    }
  }
  return {
    T,
    spec: Int32Array.from(spec),
    weights: Float64Array.from(weights),
    blend,
    terms: new Int32Array((spec.length / 4) * 3),
  };
}

/**
 * The default scores as native terms: list g's score is the mean of its query heads'
 * matched assistant rows at this step (summed over the step's rows), the same sum
 * `currentRow` makes; lists of weakly matched heads blend in the LLM's own mean attention.
 */
function currentTerms(
  ctx: PolicyContext<SmallKvState, SmallKvOptions>,
  a: AssistantState,
  m: HeadMatching,
  lists: number,
  group: number,
  T: number,
): ScoreInput {
  const st = ctx.state;
  let plan = st.plans[ctx.layer];
  if (!plan || plan.T !== T) plan = st.plans[ctx.layer] = termPlan(ctx, m, lists, group, T);
  const { spec, terms } = plan;
  for (let i = 0, j = 0; i < spec.length; i += 4, j += 3) {
    terms[j] = spec[i];
    terms[j + 1] = spec[i + 1];
    terms[j + 2] = termOffset(spec, i, a);
  }
  const own = st.own;
  const kvOf = (g: number) => kvHeadOf(ctx, g);
  return {
    sources: a.rows as Float32Array[],
    terms,
    weights: plan.weights,
    own: plan.blend && own ? ownViews(own, ctx.layer, lists, kvOf, ctx.step.start, plan.blend) : undefined,
  };
}

/**
 * Per list, the share of the assistant's mass on old tokens [0, start) that falls on the
 * list's exact tokens plus the positions [from, start) (one-row steps: each row sums to 1
 * over [0, start], so the old mass is 1 minus the row's own entry).
 */
function exactShareOf(
  a: AssistantState,
  plan: TermPlan,
  lists: number,
  full: Int32Array[],
  from: number,
  start: number,
): Float64Array {
  const on = new Float64Array(lists);
  const old = new Float64Array(lists);
  const { spec, weights } = plan;
  for (let i = 0, t = 0; i < spec.length; i += 4, t++) {
    const g = spec[i];
    const row = a.rows[spec[i + 1]]!;
    const off = termOffset(spec, i, a);
    const list = full[g];
    let m = 0;
    for (let j = 0; j < list.length; j++) m += row[off + list[j]];
    for (let p = from; p < start; p++) m += row[off + p];
    on[g] += weights[t] * m;
    old[g] += weights[t] * (1 - row[off + start]);
  }
  for (let g = 0; g < lists; g++) on[g] = old[g] > 0 ? on[g] / old[g] : 1;
  return on;
}

/** The kv head behind list g (a list is a kv head, or with gqa=query one of its query heads). */
function kvHeadOf(ctx: PolicyContext<SmallKvState, SmallKvOptions>, g: number): number {
  return ctx.options.gqa === "query" ? Math.floor(g / (ctx.config.numHeads / ctx.config.numKvHeads)) : g;
}

/** The LLM's own mean attention behind each list (uncopied), for the native blend. */
function ownViews(
  own: MeanAttention,
  layer: number,
  lists: number,
  kvOf: (g: number) => number,
  start: number,
  assistantWeight: Float64Array,
): NonNullable<RankSplitArgs["own"]> {
  const raw = Array.from({ length: lists }, (_, g) => own.raw(layer, kvOf(g), start));
  return { assistantWeight, sums: raw.map((r) => r.sums), counts: raw.map((r) => r.counts) };
}

/** Scores made here (accumulated, decayed or fitted modes; allocate=layer), one source per list. */
function madeScores(
  ctx: PolicyContext<SmallKvState, SmallKvOptions>,
  a: AssistantState,
  m: HeadMatching,
  lists: number,
  group: number,
  mode: ScoreMode,
): ScoreInput {
  const st = ctx.state;
  const o = ctx.options;
  const { start, T } = ctx.step;
  const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
  const perQuery = o.gqa === "query";
  const factor = 0.5 ** (1 / o.halfLife);
  const fit = o.heads !== "match" && mode === "current";
  const scores: Float64Array[] = [];
  for (let g = 0; g < lists; g++) {
    const heads = Array.from({ length: group }, (_, i) => g * group + i);
    const trusted = heads.filter((h) => st.trusted![ctx.layer][h]);
    const kv = perQuery ? Math.floor(g / (Hq / Hkv)) : g;
    let score: Float64Array;
    if (fit) {
      const own = normalised(st.own!.get(ctx.layer, kv, start));
      score = new Float64Array(start);
      // "auto": heads the matched SLM head predicts well read it; the others their fitted mixture.
      for (const h of heads) {
        const r =
          o.heads === "auto" && st.trusted![ctx.layer][h]
            ? currentRow(a, m, ctx.layer, [h], start, T, o.pool)
            : fittedRow(a, m, ctx.layer, [h], start, T, own);
        const rn = normalised(r);
        for (let p = 0; p < start; p++) score[p] += rn[p] / heads.length;
      }
    } else if (mode === "current") score = currentRow(a, m, ctx.layer, heads, start, T, o.pool);
    else if (mode === "decay")
      score = st.decayed.update(
        ctx.layer,
        g,
        start,
        start,
        currentRow(a, m, ctx.layer, heads, start, T, o.pool),
        factor,
      );
    else score = accumulated(a, m, ctx.layer, heads, start, mode === "mean");
    // A weak match: rank by the LLM's own mean attention (the reversible control's rule).
    if (!fit && st.own && (trusted.length < heads.length || o.own > 0)) {
      const own = normalised(st.own.get(ctx.layer, kv, start));
      const mine = normalised(Float64Array.from(score));
      const w = (trusted.length / heads.length) * (1 - o.own);
      for (let p = 0; p < mine.length; p++) mine[p] = w * mine[p] + (1 - w) * own[p];
      score = mine;
    }
    scores.push(score);
  }
  return scoresAsGiven(scores);
}

/** Whether the held lists (with the tokens since) still hold `hold` of the assistant's mass they held when ranked. */
function stillHolds(
  ctx: PolicyContext<SmallKvState, SmallKvOptions>,
  a: AssistantState,
  plan: TermPlan,
  held: HeldSelection,
  lists: number,
): boolean {
  const hold = ctx.options.hold;
  if (hold === 0 || !held.mass) return true;
  const now = exactShareOf(a, plan, lists, held.full, held.last, ctx.step.start);
  for (let g = 0; g < lists; g++) if (now[g] < hold * held.mass[g]) return false;
  return true;
}

/**
 * A one-row step between re-rankings, or null when it must re-rank: each list takes the
 * tokens that became old since the last step (exact); over its budget, the held tokens the
 * assistant's current rows score lowest leave (the newest `recent` never). V-only tokens stay,
 * weighted by the current rows.
 */
function keepHeld(
  ctx: PolicyContext<SmallKvState, SmallKvOptions>,
  a: AssistantState,
  held: HeldSelection,
  lists: number,
  oldUnits: number,
): LayerSelection | null {
  const st = ctx.state;
  const { start } = ctx.step;
  const plan = st.plans[ctx.layer];
  if (plan?.T !== 1 || !hasRows(a, 1, start + 1)) return null;
  if (!stillHolds(ctx, a, plan, held, lists)) return null;
  const added = start - held.last;
  const full: Int32Array[] = [];
  for (let g = 0; g < lists; g++) {
    const prev = held.full[g];
    const cap = Math.floor(oldUnits - held.vOnly[g].length / 2 + 1e-9);
    const n = prev.length + added;
    const drop = Math.max(0, n - cap);
    // The newest `recent` old tokens stay; only older held ones can leave.
    const evictable = Math.max(0, n - held.recent);
    if (drop > evictable) return null;
    const all = new Int32Array(n);
    all.set(prev);
    for (let i = 0; i < added; i++) all[prev.length + i] = held.last + i;
    if (drop === 0) {
      full.push(all);
      continue;
    }
    // The current scores of the evictable tokens (the ranking's formula, own blend included).
    const sc = listScores(ctx, a, plan, g, start, all, evictable);
    // The `drop` lowest leave, ties to the later position (the ranking keeps the earlier one).
    const gone = new Uint8Array(n);
    if (drop <= 8) {
      for (let d = 0; d < drop; d++) {
        let worst = -1;
        for (let i = 0; i < evictable; i++) if (!gone[i] && (worst < 0 || sc[i] <= sc[worst])) worst = i;
        gone[worst] = 1;
      }
    } else {
      const order = Array.from({ length: evictable }, (_, i) => i);
      order.sort((x, y) => sc[x] - sc[y] || all[y] - all[x]);
      for (let i = 0; i < drop; i++) gone[order[i]] = 1;
    }
    const out = new Int32Array(n - drop);
    for (let i = 0, k = 0; i < n; i++) if (!gone[i]) out[k++] = all[i];
    full.push(out);
  }
  const next: HeldSelection = Object.freeze({ ...held, last: start, full });
  st.held[ctx.layer] = next;
  const critical = full.reduce((x, l) => x + l.length, 0) / lists - held.recent;
  st.counts[ctx.layer] = {
    critical,
    recent: held.recent + 1,
    marginal: held.vOnly.reduce((x, l) => x + l.length, 0) / lists,
  };
  return {
    full,
    vOnly: held.hasMarginal ? held.vOnly : undefined,
    combine: ctx.options.mode as "mass" | "literal",
    perQueryHead: held.perQueryHead,
  };
}

/**
 * List g's scores of positions pos[0..count) (< start) at this one-row step, as the native
 * ranking forms them: the mean of its matched assistant rows, or (a weakly matched list) that
 * as a distribution blended with the LLM's own mean attention as a distribution.
 */
function listScores(
  ctx: PolicyContext<SmallKvState, SmallKvOptions>,
  a: AssistantState,
  plan: TermPlan,
  g: number,
  start: number,
  pos: Int32Array,
  count: number,
): Float64Array {
  const { spec, weights, blend } = plan;
  const sc = new Float64Array(count);
  let asum = 0;
  for (let i = 0, t = 0; i < spec.length; i += 4, t++) {
    if (spec[i] !== g) continue;
    const row = a.rows[spec[i + 1]]!;
    const off = termOffset(spec, i, a);
    const w = weights[t];
    for (let j = 0; j < count; j++) sc[j] += w * row[off + pos[j]];
    asum += w * (1 - row[off + start]);
  }
  const own = ctx.state.own;
  const wa = blend && own ? blend[g] : -1;
  if (wa < 0 || !own) return sc;
  const { sums, counts } = own.raw(ctx.layer, kvHeadOf(ctx, g), start);
  const cl = Math.min(counts.length, start);
  let osum = 0;
  for (let p = 0; p < cl; p++) if (counts[p] > 0) osum += sums[p] / counts[p];
  const fa = asum > 0 ? wa / asum : 0;
  const fo = osum > 0 ? (1 - wa) / osum : 0;
  for (let j = 0; j < count; j++) {
    const p = pos[j];
    const m = p < counts.length && counts[p] > 0 ? sums[p] / counts[p] : 0;
    sc[j] = fa * sc[j] + fo * m;
  }
  return sc;
}

/**
 * SmallKV (Zhao, Peng et al. 2025, arXiv 2508.02751): an assistant SLM with a full cache
 * decides, every step and for every head, which tokens the LLM attends to exactly, which it
 * approximates with the SLM's current attention weights (marginal, V only), and which it
 * skips; dropped tokens come back from the cold store when they matter again.
 * `smallkv` ranks by the matched SLM heads' attention at the current step with an adaptive
 * split (what the evaluation found best); `smallkv-paper` keeps the paper's rules.
 */
function makeSmallKv(
  name: string,
  description: string,
  defaults: SmallKvOptions,
): PolicyFactory<SmallKvOptions> {
  return definePolicy<SmallKvState, SmallKvOptions>({
    name,
    // Each layer reads only its own past and the assistant's view at the row's position: a
    // verify step interleaves its rows inside each layer.
    verify: "layerwise",
    layerFields: ["evicted", "decayed", "own", "counts", "held"],
    description,
    options: defaults,
    usesAssistant: true,
    warmupTokens: (o) => o.minContext,
    fileOptions: ["mapping"],
    validate: (o) => validate(name, o),
    preload(_option, path, models) {
      if (!models.assistant)
        throw new PolicyOptionError(name, "a saved matching needs the assistant model it was made for");
      savedMatchings.set(path, HeadMatching.load(path, { llm: models.llm, slm: models.assistant }));
    },

    init(seq, o) {
      const c = seq.config;
      const lists = o.gqa === "query" ? c.numHeads : c.numKvHeads;
      return {
        matching: null,
        evicted: new Evictions(c.numLayers, lists),
        decayed: new DecayedScores(c.numLayers, lists),
        own:
          o.trust > 0 || o.own > 0 || o.fallback || o.heads !== "match"
            ? new MeanAttention(c.numLayers, c.numKvHeads, c.numHeads / c.numKvHeads)
            : null,
        counts: Array.from({ length: c.numLayers }, () => ({ critical: 0, recent: 0, marginal: 0 })),
        layers: c.numLayers,
        lastRecent: 0,
        gated: null,
        trusted: null,
        plans: [],
        marginalLists: [],
        held: [],
        ranked: 0,
        kept: 0,
      };
    },
    // The matching and the gates are fixed once made: shared, not copied.
    copyState: (s) => ({
      ...s,
      evicted: copyState(s.evicted),
      decayed: copyState(s.decayed),
      own: s.own ? copyState(s.own) : null,
      counts: s.counts.map((c) => ({ ...c })),
      plans: [],
      marginalLists: [],
      held: s.held.slice(),
    }),
    // Nothing to prepare once matched, or while no step of these positions reaches the window.
    prepareIdle(ctx) {
      const o = ctx.options;
      if (ctx.state.matching) return true;
      if (o.mapping) return false;
      for (let p = ctx.step.start; p < ctx.step.start + ctx.step.T; p++)
        if (
          matchingWindow(p, {
            minTokens: o.minContext,
            maxTokens: o.maxContext,
            size: o.window,
            from: o.windowFrom as "first" | "last",
          })
        )
          return false;
      return true;
    },
    async prepare(ctx) {
      if (ctx.state.matching) return;
      const a = assistantOf(ctx);
      const o = ctx.options;
      let m: HeadMatching | undefined;
      if (o.mapping) {
        m = savedMatchings.get(o.mapping);
        if (!m) {
          m = HeadMatching.load(o.mapping, { llm: ctx.seq.model ?? undefined, slm: a.model });
          savedMatchings.set(o.mapping, m);
        }
      } else {
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
        m = HeadMatching.compute(
          la,
          sa,
          { llm: identityOf(ctx.seq.model), slm: identityOf(a.model), window: win },
          { metric: o.metric as MatchMetric, topkRatio: o.topk, fit: o.heads !== "match" },
        );
      }
      if (o.heads !== "match" && m.weightsOf(0, 0) === undefined)
        throw new PolicyOptionError(
          name,
          `heads=${o.heads} needs a matching with fitted weights (made on the sequence, not a saved mapping without them)`,
        );
      ctx.state.matching = m;
      ctx.state.gated = headsAbove(m, o.gate);
      const above = headsAbove(m, o.trust);
      ctx.state.trusted = above.map((row, l) =>
        row.map((t, h) => t && (!o.fallback || m!.assistantHelps(l, h))),
      );
      // Every head trusts its assistant and nothing blends or fits the LLM's own view: stop
      // collecting it (no fused scores on the decode path from here on).
      if (o.own === 0 && o.heads === "match" && ctx.state.trusted.every((row) => row.every(Boolean)))
        ctx.state.own = null;
    },
    wantsAttention: (ctx) => (ctx.state.own ? { scores: true } : false),
    observe: (ctx, obs) => ctx.state.own?.add(obs),
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
      // Share of layer selections made by a full ranking (1 unless refresh > 1).
      rankedShare: s.ranked + s.kept > 0 ? s.ranked / (s.ranked + s.kept) : 1,
    }),
    // Per layer and kv head (or query head), averaged over layers.
    classCounts: (s) => {
      const sum = (k: "critical" | "recent" | "marginal") =>
        s.counts.reduce((a, c) => a + c[k], 0) / s.layers;
      return { critical: sum("critical"), recent: sum("recent"), marginal: sum("marginal") };
    },
    select(ctx): LayerSelection | null {
      const st = ctx.state;
      const m = st.matching;
      if (!m) return null;
      const a = assistantOf(ctx);
      const o = ctx.options;
      const { start, T } = ctx.step;
      const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
      const perQuery = o.gqa === "query";
      const lists = perQuery ? Hq : Hkv;
      const group = Hq / lists;
      // Per-query-head lists share their kv head's memory: each gets 1/group of its old budget.
      // (each list also holds the step's own rows, so those are paid group times).
      const oldUnits = Math.max(
        0,
        perQuery ? (ctx.oldBudget - (Hq / Hkv - 1) * T) / (Hq / Hkv) : ctx.oldBudget,
      );
      // Between re-rankings: the held lists, kept within budget without a full ranking.
      const held = st.held[ctx.layer];
      if (T === 1 && held && start > held.last && start - held.at < o.refresh) {
        const kept = keepHeld(ctx, a, held, lists, oldUnits);
        if (kept) {
          st.kept++;
          return kept;
        }
      }
      // Without the assistant's rows (a long step), V-only weights are unknown and
      // current-row scores fall back to the position-normalised accumulation.
      const rows = hasRows(a, T, start + T);
      const mode =
        (o.scores as ScoreMode) === "sum" || (o.scores as ScoreMode) === "mean" || rows
          ? (o.scores as ScoreMode)
          : "mean";
      const adaptive = o.split === "adaptive";
      let sizes: ClassSizes;
      if (adaptive)
        sizes = {
          critical: 0,
          recent: Math.min(start, Math.floor(o.recent), Math.floor(oldUnits)),
          marginal: 0,
        };
      else {
        sizes = splitBudget(Math.floor(oldUnits) + T, T, parseRatio(o.split)!, o.marginal && rows);
        const recentOld = Math.max(sizes.recent - T, Math.min(start, Math.floor(o.recent)));
        sizes = { ...sizes, recent: Math.min(recentOld, Math.floor(oldUnits)) };
        sizes.critical = Math.max(0, Math.min(sizes.critical, Math.floor(oldUnits) - sizes.recent));
      }
      const recentOld = Math.min(start, sizes.recent);
      st.lastRecent = recentOld;
      const gatedLists = (st.marginalLists[ctx.layer] ??= Uint8Array.from({ length: lists }, (_, g) => {
        for (let i = 0; i < group; i++) if (st.gated![ctx.layer][g * group + i]) return 1;
        return 0;
      }));
      const marginalOk = o.marginal && rows;
      // The scores: the matched assistant rows mixed natively (the default), or made here for
      // the other modes and handed over as they are.
      const fit = o.heads !== "match" && mode === "current";
      const byLayer = adaptive && o.allocate === "layer";
      const input =
        mode === "current" && !fit && !byLayer
          ? currentTerms(ctx, a, m, lists, group, T)
          : madeScores(ctx, a, m, lists, group, mode);
      // Units per list: the same for every list, or (allocate=layer, adaptive split) the
      // layer's old-token units shared out by predicted mass, each list keeping its recent window.
      const base = Math.max(0, oldUnits - recentOld);
      const units = byLayer
        ? shareByMass(input.sources as Float64Array[], range(start - recentOld, start), base, start)
        : null;
      let rule: RankSplitRule;
      if (adaptive)
        rule = {
          kind: "adaptive",
          units: Float64Array.from({ length: lists }, (_, g) => (units ? units[g] : base)),
          vOnly: marginalOk ? gatedLists : new Uint8Array(lists),
          exactShare: o.exactShare,
          negligible: o.negligible,
        };
      else {
        const k = new Int32Array(lists);
        const exact = new Int32Array(lists);
        for (let g = 0; g < lists; g++) {
          const room = Math.max(0, Math.floor(2 * (oldUnits - recentOld - sizes.critical) + 1e-9));
          const ok = marginalOk && gatedLists[g] === 1;
          const nM = ok ? Math.min(sizes.marginal, room) : 0;
          exact[g] = Math.min(
            sizes.critical + (ok ? 0 : Math.floor(sizes.marginal / 2)),
            Math.max(0, Math.floor(oldUnits - recentOld - nM / 2 + 1e-9)),
          );
          k[g] = exact[g] + nM;
        }
        rule = { kind: "fixed", k, exact };
      }
      st.ranked++;
      // Held between re-rankings: only the default ranking's lists (their scores are the plan's).
      const holds = o.refresh > 1 && T === 1 && input.terms === st.plans[ctx.layer]?.terms && rows;
      // Fields written out, not spread: a spread followed by more fields is V8's slow path.
      const { full, vOnly } = rankSplit({
        n: start,
        lists,
        sources: input.sources,
        terms: input.terms,
        weights: input.weights,
        own: input.own,
        recent: recentOld,
        // The no-saliency ablation evicts for good what it does not keep (the masks update in place).
        exclude: o.saliency ? undefined : st.evicted.masksFor(ctx.layer, start),
        evict: !o.saliency,
        rule,
      });
      st.counts[ctx.layer] = {
        critical: (full.reduce((x, l) => x + l.length, 0) - recentOld * lists) / lists,
        recent: recentOld + T,
        marginal: vOnly.reduce((x, l) => x + l.length, 0) / lists,
      };
      const hasMarginal = vOnly.some((l) => l.length > 0);
      st.held[ctx.layer] = holds
        ? Object.freeze({
            at: start,
            last: start,
            full,
            vOnly,
            hasMarginal,
            perQueryHead: perQuery,
            recent: recentOld,
            mass: o.hold > 0 ? exactShareOf(a, st.plans[ctx.layer]!, lists, full, start, start) : null,
          })
        : undefined;
      return {
        full,
        vOnly: hasMarginal ? vOnly : undefined,
        combine: o.mode as "mass" | "literal",
        perQueryHead: perQuery,
      };
    },
    vOnlyWeights(ctx, sel) {
      const st = ctx.state;
      const m = st.matching!;
      const a = assistantOf(ctx);
      const { numHeads: Hq } = ctx.config;
      const T = ctx.step.T;
      const lists = sel.vOnly!;
      const group = Hq / lists.length;
      const vmax = Math.max(...lists.map((l) => l.length));
      const w = new Float32Array(Hq * T * vmax);
      for (let h = 0; h < Hq; h++) {
        // A head whose match does not cover its attention ignores the V-only tokens (weight 0).
        if (!st.gated![ctx.layer][h]) continue;
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
}

const COMMON = {
  mode: "mass",
  gqa: "kv",
  marginal: true,
  saliency: true,
  halfLife: 8,
  heads: "match",
  allocate: "head",
  fallback: true,
  pool: 1,
  exactShare: 0.9,
  negligible: 0.002,
  topk: 0.2,
  minContext: DEFAULT_WINDOW.minTokens,
  maxContext: DEFAULT_WINDOW.maxTokens,
  window: DEFAULT_WINDOW.size,
  windowFrom: DEFAULT_WINDOW.from,
  mapping: "",
  refresh: 1,
  hold: 0,
};

/** SmallKV with the rules the evaluation found best (see docs/results.md). */
export const smallKv = makeSmallKv(
  "smallkv",
  "assistant-guided selection re-chosen every step: the matched SLM heads' current attention ranks tokens, exact / V-only / dropped by predicted mass",
  {
    ...COMMON,
    split: "adaptive",
    recent: 2,
    scores: "current",
    gate: 0.5,
    trust: 0,
    own: 0,
    metric: "coverage",
  },
);

/** SmallKV exactly as the paper writes it: accumulated column sums, 2:1:2 split, Jaccard matching. */
export const smallKvPaper = makeSmallKv(
  "smallkv-paper",
  "SmallKV as the paper gives it: accumulated SLM column sums, critical:recent:marginal 2:1:2, Jaccard matching",
  {
    ...COMMON,
    split: "2:1:2",
    recent: 0,
    scores: "sum",
    fallback: false,
    gate: 0,
    trust: 0,
    own: 0,
    metric: "jaccard",
  },
);
