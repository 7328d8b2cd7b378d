import { optionChecks } from "../option-checks.js";
import { MeanAttention, ScoreTable } from "../scores.js";
import { definePolicy } from "../sdk.js";
import { maskOf, range, topPositions, union } from "../select.js";

interface ReversibleState {
  /** `scores=mean`: accumulated attention per query that read each token. */
  mean: MeanAttention | null;
  /** `sum`, `current` and `decay`: accumulated, last-row, or decayed attention. */
  table: ScoreTable | null;
}

const MODES = ["mean", "sum", "current", "decay"];

/**
 * The assistant-free reversible control: per kv head, rank old tokens by the LLM's own
 * attention and re-select every step from the cold store, with a small recent window.
 * Nothing is lost for good; no assistant is needed. `scores` names the ranking: `mean`
 * (default: accumulated attention divided by the queries that read each token, no
 * positional bias), `sum` (raw accumulated column sums), `current` (the last step's row)
 * or `decay` (accumulation with a half-life of `halfLife` steps). SmallKV falls back to
 * the `mean` ranking where its assistant does not predict the LLM's attention.
 */
export const reversible = definePolicy<ReversibleState, { recent: number; scores: string; halfLife: number }>(
  {
    name: "reversible",
    // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
    verify: "layerwise",
    layerFields: ["mean", "table"],
    description: "LLM's own (mean) accumulated attention, re-selected every step from the cold store",
    options: { recent: 2, scores: "mean", halfLife: 8 },
    validate(o) {
      const c = optionChecks("reversible", o);
      c.oneOf("scores", MODES);
      c.above("halfLife", 0);
      c.number("recent", 0, 1 << 20, true);
    },
    init: (seq, o) => {
      const c = seq.config;
      const group = c.numHeads / c.numKvHeads;
      return o.scores === "mean"
        ? { mean: new MeanAttention(c.numLayers, c.numKvHeads, group), table: null }
        : { mean: null, table: new ScoreTable(c.numLayers, c.numKvHeads, group) };
    },
    wantsAttention: (ctx) =>
      ctx.options.scores === "current" ? { scores: true, fromRow: ctx.step.T - 1 } : { scores: true },
    observe: (ctx, obs) => {
      const { mean, table } = ctx.state;
      if (mean) return mean.add(obs);
      if (ctx.options.scores === "current") table!.reset(obs.layer);
      if (ctx.options.scores === "decay") table!.scale(obs.layer, 0.5 ** (obs.T / ctx.options.halfLife));
      table!.add(obs);
    },
    select(ctx) {
      const { start } = ctx.step;
      const r = Math.min(start, ctx.oldBudget, Math.max(0, Math.floor(ctx.options.recent)));
      const rec = range(start - r, start);
      const full: Int32Array[] = [];
      for (let g = 0; g < ctx.config.numKvHeads; g++) {
        const s = ctx.state.mean
          ? ctx.state.mean.get(ctx.layer, g, start)
          : ctx.state.table!.get(ctx.layer, g, start);
        full.push(union(rec, topPositions(s, start, ctx.oldBudget - r, maskOf(start, rec))));
      }
      return { full };
    },
  },
);
