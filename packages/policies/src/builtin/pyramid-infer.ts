import { optionChecks } from "../option-checks.js";
import { definePolicy } from "../sdk.js";
import { type EvictionState, evictionState, heavyPlusRecent } from "./eviction.js";

/**
 * PyramidInfer (Yang et al. 2024, arXiv 2405.12532): per layer, keep the tokens that the
 * most recent tokens attend to most (attention of the last `window` prompt queries at
 * prefill, then a decayed accumulation so recent queries weigh more), with a retention
 * that shrinks geometrically in deeper layers; evicted tokens do not return.
 */
export const pyramidInfer = definePolicy<
  EvictionState,
  { window: number; decay: number; layerDecay: number; recentRatio: number }
>({
  name: "pyramidinfer",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["scores", "evicted"],
  description: "recent-query attention (decayed), layer budgets shrinking with depth, evicted for good",
  options: { window: 32, decay: 0.9, layerDecay: 0.85, recentRatio: 0.25 },
  validate(o) {
    const c = optionChecks("pyramidinfer", o);
    c.number("window", 1, 1 << 20, true);
    c.above("decay", 0, 1);
    c.above("layerDecay", 0, 1);
    c.number("recentRatio", 0, 1);
  },
  init: evictionState,
  layerShare: (layer, _L, o) => o.layerDecay ** layer,
  wantsAttention: (ctx) => ({
    scores: true,
    fromRow: ctx.step.T > 1 ? Math.max(0, ctx.step.T - ctx.options.window) : 0,
  }),
  observe(ctx, obs) {
    if (obs.T === 1) ctx.state.scores.scale(obs.layer, ctx.options.decay);
    ctx.state.scores.add(obs);
  },
  select(ctx) {
    const recent = Math.floor(ctx.oldBudget * ctx.options.recentRatio);
    return {
      full: heavyPlusRecent(
        ctx.state,
        ctx.layer,
        ctx.config.numKvHeads,
        ctx.step.start,
        ctx.oldBudget - recent,
        recent,
      ),
    };
  },
});
