// How SmallKV scores a layer's old tokens per list: the matched assistant rows at this step
// as native terms (the default), or accumulated sums made here (the paper's rule); lists
// whose heads fall back blend in the LLM's own mean attention.
import type { HeadMatching } from "@smallkv/matching";
import type { AssistantState } from "@smallkv/runner";
import { type RankSplitArgs, scoresAsGiven } from "@smallkv/tensor";
import type { MeanAttention } from "../../scores.js";
import { accumulated } from "./scoring.js";
import { kvHeadOf, type SmallKvContext } from "./state.js";

export type ScoreInput = Pick<RankSplitArgs, "sources" | "terms" | "weights" | "own">;

/**
 * What `currentTerms` reads of a layer, fixed once the matching is made: per term its list,
 * SLM layer and head and step row, and its weight; and each list's assistant weight in the
 * blend with the LLM's own attention (undefined: no list blends). Only the offsets into the
 * assistant's rows move from step to step (their length grows by one).
 */
export interface TermPlan {
  T: number;
  /** [list, slm layer, slm head, row t] per term. */
  spec: Int32Array;
  weights: Float64Array;
  blend: Float64Array | undefined;
  /** Reused output: [list, source, offset] per term. */
  terms: Int32Array;
}

/** The share of list g's query heads that trust their matched SLM head (1: no blend). */
function trustedShare(ctx: SmallKvContext, g: number, group: number): number {
  let trusted = 0;
  for (let i = 0; i < group; i++) if (ctx.state.trusted![ctx.layer][g * group + i]) trusted++;
  return trusted / group;
}

/** The layer's term plan for steps of T rows (made once per layer and T; the device form's too). */
export function termPlanOf(
  ctx: SmallKvContext,
  m: HeadMatching,
  lists: number,
  group: number,
  T: number,
): TermPlan {
  const st = ctx.state;
  const plan = st.plans[ctx.layer];
  return plan && plan.T === T ? plan : (st.plans[ctx.layer] = termPlan(ctx, m, lists, group, T));
}

function termPlan(ctx: SmallKvContext, m: HeadMatching, lists: number, group: number, T: number): TermPlan {
  const spec: number[] = [];
  const weights: number[] = [];
  let blend: Float64Array | undefined;
  for (let g = 0; g < lists; g++) {
    for (let i = 0; i < group; i++) {
      const sh = m.slmHeadOf(ctx.layer, g * group + i);
      for (let t = 0; t < T; t++) {
        spec.push(g, sh.layer, sh.head, t);
        weights.push(1 / group);
      }
    }
    // A weak match: rank by the LLM's own mean attention (the reversible control's rule).
    const share = trustedShare(ctx, g, group);
    if (ctx.state.own && share < 1) {
      blend ??= new Float64Array(lists).fill(-1);
      blend[g] = share;
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

/** The LLM's own mean attention behind each list (uncopied), for the native blend. */
function ownViews(
  ctx: SmallKvContext,
  own: MeanAttention,
  lists: number,
  assistantWeight: Float64Array,
): NonNullable<RankSplitArgs["own"]> {
  const raw = Array.from({ length: lists }, (_, g) => own.raw(ctx.layer, kvHeadOf(ctx, g), ctx.step.start));
  return { assistantWeight, sums: raw.map((r) => r.sums), counts: raw.map((r) => r.counts) };
}

/**
 * The default scores as native terms: list g's score is the mean of its query heads'
 * matched assistant rows at this step (summed over the step's rows); lists of weakly
 * matched heads blend in the LLM's own mean attention.
 */
export function currentTerms(
  ctx: SmallKvContext,
  a: AssistantState,
  m: HeadMatching,
  lists: number,
  group: number,
  T: number,
): ScoreInput {
  const st = ctx.state;
  const { spec, terms, weights, blend } = termPlanOf(ctx, m, lists, group, T);
  for (let i = 0, j = 0; i < spec.length; i += 4, j += 3) {
    terms[j] = spec[i];
    terms[j + 1] = spec[i + 1];
    // Row t of SLM head h in its layer's rows [h][rowsT][rowsN].
    terms[j + 2] = (spec[i + 2] * a.rowsT + spec[i + 3]) * a.rowsN;
  }
  return {
    sources: a.rows as Float32Array[],
    terms,
    weights,
    own: blend && st.own ? ownViews(ctx, st.own, lists, blend) : undefined,
  };
}

/** Normalise to a distribution over [0, n) (all zero stays zero). */
function normalised(x: Float64Array): Float64Array {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  if (s > 0) for (let i = 0; i < x.length; i++) x[i] /= s;
  return x;
}

/** Accumulated column sums (sum), or per query that could attend (mean), one source per list. */
export function accumulatedScores(
  ctx: SmallKvContext,
  a: AssistantState,
  m: HeadMatching,
  lists: number,
  group: number,
  mean: boolean,
): ScoreInput {
  const st = ctx.state;
  const start = ctx.step.start;
  const scores: Float64Array[] = [];
  for (let g = 0; g < lists; g++) {
    const heads = Array.from({ length: group }, (_, i) => g * group + i);
    let score = accumulated(a, m, ctx.layer, heads, start, mean);
    const w = trustedShare(ctx, g, group);
    if (st.own && w < 1) {
      const own = normalised(st.own.get(ctx.layer, kvHeadOf(ctx, g), start));
      score = normalised(Float64Array.from(score));
      for (let p = 0; p < score.length; p++) score[p] = w * score[p] + (1 - w) * own[p];
    }
    scores.push(score);
  }
  return scoresAsGiven(scores);
}
