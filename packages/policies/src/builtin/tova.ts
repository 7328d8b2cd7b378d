import { definePolicy } from "../sdk.js";
import { everyHead } from "../select.js";

interface TovaState {
  /** Per layer: the last query's attention averaged over all heads, by position. */
  current: Float64Array[];
  /** Per layer: tokens still in the cache. */
  kept: Set<number>[];
  /** Per layer: positions below this have joined the cache once. */
  seen: number[];
}

/**
 * TOVA (Oren et al. 2024): a fixed-size cache; when it is full, drop the token the current
 * query attends to least, averaged over all heads: one decision per layer.
 */
export const tova = definePolicy<TovaState>({
  name: "tova",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["current", "kept", "seen"],
  description: "drop the token with the lowest current attention (mean over heads), per layer",
  init: (seq) => ({
    current: Array.from({ length: seq.config.numLayers }, () => new Float64Array(0)),
    kept: Array.from({ length: seq.config.numLayers }, () => new Set<number>()),
    seen: new Array(seq.config.numLayers).fill(0),
  }),
  wantsAttention: (ctx) => ({ scores: true, fromRow: ctx.step.T - 1 }),
  observe(ctx, obs) {
    const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
    const group = Hq / Hkv;
    const cur = new Float64Array(obs.start + obs.T);
    for (let g = 0; g < Hkv; g++) {
      const pos = obs.keyPositions[g];
      for (let h = g * group; h < (g + 1) * group; h++) {
        for (let j = 0; j < pos.length; j++) cur[pos[j]] += obs.scores![h * obs.Lmax + j] / Hq;
      }
    }
    ctx.state.current[obs.layer] = cur;
  },
  // On the device: the last row's column sums replace a device table each step; every kv
  // head's list ranks by the mean over all heads (one choice a layer), evictions for good.
  device: {
    accumulate: (ctx) => ({ fromRow: ctx.step.T - 1, replace: true }),
    plan(ctx) {
      const k = new Int32Array(ctx.config.numKvHeads).fill(ctx.oldBudget);
      return {
        recent: 0,
        rule: { kind: "fixed", k, exact: k },
        scores: { kind: "accumulated", over: "layer" },
        evict: true,
      };
    },
  },
  select(ctx) {
    const { start } = ctx.step;
    const kept = ctx.state.kept[ctx.layer];
    // Tokens that arrived since the last decision (the prompt, then each step's token) join first.
    for (let p = ctx.state.seen[ctx.layer]; p < start; p++) kept.add(p);
    ctx.state.seen[ctx.layer] = start;
    const cur = ctx.state.current[ctx.layer];
    if (kept.size > ctx.oldBudget) {
      const order = [...kept].sort((a, b) => (cur[a] ?? 0) - (cur[b] ?? 0) || b - a);
      for (const p of order.slice(0, kept.size - ctx.oldBudget)) kept.delete(p);
    }
    return { full: everyHead(ctx.config.numKvHeads, Int32Array.from(kept).sort()) };
  },
});
