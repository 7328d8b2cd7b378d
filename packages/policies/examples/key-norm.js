// A complete KV policy in a few lines: keep the tokens whose keys have the smallest L2
// norm (low-norm keys tend to draw the most attention; Devoto et al. 2024), plus a recent
// window. Run it:  pnpm smallkv generate -m stories260K --policy packages/policies/examples/key-norm.js --budget 0.3 --stats
import { scorerPolicy } from "@smallkv/policies";

export default scorerPolicy({
  name: "key-norm",
  description: "keep the lowest-norm keys plus a recent window",
  options: { recentRatio: 0.25 },
  score(ctx, g) {
    const { seq, layer, step, config } = ctx;
    const D = config.headDim;
    const keys = seq.kv.k[layer]; // the cold store: [kvHeads][capacity][D]
    const out = new Float32Array(step.start);
    for (let p = 0; p < step.start; p++) {
      let n = 0;
      for (let d = 0; d < D; d++) n += keys[(g * seq.kv.cap + p) * D + d] ** 2;
      out[p] = -Math.sqrt(n);
    }
    return out;
  },
});
