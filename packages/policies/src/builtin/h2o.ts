import { optionChecks } from "../option-checks.js";
import { definePolicy } from "../sdk.js";
import { type EvictionState, evictionState, heavyPlusRecent, heavyRecentRule } from "./eviction.js";

/**
 * H2O (Zhang et al. 2023): per kv head, accumulated attention (prefill plus every decode
 * row) ranks the heavy hitters; keep them and a recent window (1:1), evict the rest for good.
 * The scores come from the attention kernel's fused column-sum accumulation, so no
 * attention matrix is materialised, not even in prefill.
 */
export const h2o = definePolicy<EvictionState, { heavyRatio: number }>({
  name: "h2o",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["scores", "evicted"],
  description: "heavy hitters by accumulated attention + recent window, evicted for good",
  options: { heavyRatio: 0.5 },
  validate: (o) => optionChecks("h2o", o).number("heavyRatio", 0, 1),
  init: evictionState,
  wantsAttention: () => ({ scores: true }),
  observe: (ctx, obs) => ctx.state.scores.add(obs),
  // On the device: the attention's column sums add into a device table, the same heavy +
  // recent rule ranks it there, evicted positions are masked there for good.
  device: {
    accumulate: () => ({ fromRow: 0 }),
    plan(ctx) {
      const heavy = Math.floor(ctx.oldBudget * ctx.options.heavyRatio);
      const { window, k } = heavyRecentRule(
        ctx.config.numKvHeads,
        ctx.step.start,
        heavy,
        ctx.oldBudget - heavy,
      );
      return {
        recent: window,
        rule: { kind: "fixed", k, exact: k },
        scores: { kind: "accumulated" },
        evict: true,
      };
    },
  },
  select(ctx) {
    const heavy = Math.floor(ctx.oldBudget * ctx.options.heavyRatio);
    return {
      full: heavyPlusRecent(
        ctx.state,
        ctx.layer,
        ctx.config.numKvHeads,
        ctx.step.start,
        heavy,
        ctx.oldBudget - heavy,
      ),
    };
  },
});
