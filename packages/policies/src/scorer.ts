import type { AttentionRequest } from "@smallkv/runner";
import { rankSplit, scoresAsGiven } from "@smallkv/tensor";
import { ScoreTable } from "./scores.js";
import { definePolicy, type OptionSchema, type PolicyContext, type PolicyFactory } from "./sdk.js";
import { Evictions, typedScores } from "./select.js";

export interface ScorerState {
  /** Accumulated attention (filled when `accumulate` is set). */
  scores: ScoreTable;
  /** Tokens gone for good (used when `irreversible`). */
  evicted: Evictions;
}

export interface ScorerDefinition<O extends OptionSchema> {
  name: string;
  description?: string;
  options?: O;
  /**
   * Score of every old token (positions [0, step.start)) for kv head g: higher is kept.
   * `ctx.state.scores` holds accumulated attention when `accumulate` is set.
   */
  score(ctx: PolicyContext<ScorerState, O>, g: number): ArrayLike<number>;
  /** Accumulate attention: "all" rows (H2O-style), "last" row only, or none (default). */
  accumulate?: "all" | "last" | "none";
  /** Share of the budget kept as a recent window (default 0.25). */
  recentRatio?: number;
  /** Evicted tokens never return (default false: re-selected from the cold store each step). */
  irreversible?: boolean;
}

/**
 * The few-lines way to write a policy: give a score per token; the SDK keeps a recent
 * window and the top-scoring tokens within the budget, per kv head, every step.
 */
export function scorerPolicy<O extends OptionSchema = Record<string, never>>(
  def: ScorerDefinition<O>,
): PolicyFactory<O> {
  const acc = def.accumulate ?? "none";
  return definePolicy<ScorerState, O>({
    name: def.name,
    // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
    verify: "layerwise",
    layerFields: ["scores", "evicted"],
    description: def.description,
    options: def.options,
    init: (seq) => ({
      scores: new ScoreTable(
        seq.config.numLayers,
        seq.config.numKvHeads,
        seq.config.numHeads / seq.config.numKvHeads,
      ),
      evicted: new Evictions(seq.config.numLayers, seq.config.numKvHeads),
    }),
    wantsAttention: (ctx): AttentionRequest =>
      acc === "none" ? false : { scores: true, fromRow: acc === "last" ? ctx.step.T - 1 : 0 },
    observe: (ctx, obs) => {
      if (acc === "last") ctx.state.scores.reset(obs.layer);
      ctx.state.scores.add(obs);
    },
    // One native call per layer: the recent window, then the top-scoring rest; an irreversible
    // policy ranks against its eviction masks and updates them in place.
    select(ctx) {
      const { start } = ctx.step;
      const Hkv = ctx.config.numKvHeads;
      const window = Math.min(start, Math.floor(ctx.oldBudget * (def.recentRatio ?? 0.25)));
      const k = new Int32Array(Hkv).fill(Math.max(0, ctx.oldBudget - window));
      const { sources, terms, weights } = scoresAsGiven(
        Array.from({ length: Hkv }, (_, g) => typedScores(def.score(ctx, g), start)),
      );
      // Fields written out, not spread: a spread followed by new fields is V8's slow path.
      const { full } = rankSplit({
        n: start,
        lists: Hkv,
        sources,
        terms,
        weights,
        recent: window,
        exclude: def.irreversible ? ctx.state.evicted.masksFor(ctx.layer, start) : undefined,
        evict: def.irreversible,
        rule: { kind: "fixed", k, exact: k },
      });
      return { full };
    },
  });
}
