import { MeanAttention } from "../scores.js";
import { definePolicy } from "../sdk.js";
import { maskOf, range, topPositions, union } from "../select.js";

interface ReversibleState {
  attention: MeanAttention;
}

/**
 * The assistant-free reversible control: per kv head, rank old tokens by the LLM's own
 * position-normalised accumulated attention (mean over the queries that read each token)
 * and re-select every step from the cold store, with a small recent window. Nothing is
 * lost for good; no assistant is needed. SmallKV falls back to this ranking where its
 * assistant does not predict the LLM's attention.
 */
export const reversible = definePolicy<ReversibleState, { recent: number }>({
  name: "reversible",
  description: "LLM's own mean accumulated attention, re-selected every step from the cold store",
  options: { recent: 2 },
  init: (seq) => ({
    attention: new MeanAttention(
      seq.config.numLayers,
      seq.config.numKvHeads,
      seq.config.numHeads / seq.config.numKvHeads,
    ),
  }),
  wantsAttention: () => ({ scores: true }),
  observe: (ctx, obs) => ctx.state.attention.add(obs),
  select(ctx) {
    const { start } = ctx.step;
    const r = Math.min(start, ctx.oldBudget, Math.max(0, Math.floor(ctx.options.recent)));
    const rec = range(start - r, start);
    const full: Int32Array[] = [];
    for (let g = 0; g < ctx.config.numKvHeads; g++) {
      const s = ctx.state.attention.get(ctx.layer, g, start);
      full.push(union(rec, topPositions(s, start, ctx.oldBudget - r, maskOf(start, rec))));
    }
    return { full };
  },
});
