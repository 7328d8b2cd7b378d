import { collectAttention } from "@smallkv/matching";
import { argmax } from "@smallkv/runner";
import { PolicyOptionError } from "../errors.js";
import { optionChecks } from "../option-checks.js";
import { definePolicy } from "../sdk.js";
import { avgPool } from "../select.js";
import { type SnapState, snapSelect } from "./snapkv.js";

/** SnapKV's state: the prompt length and votes[layer][g][pos] over the prompt (empty until scored). */
type SpecState = SnapState;

type SpecOptions = { lookahead: number; window: number; kernel: number };

/**
 * SpecKV (Galim et al. 2025, arXiv 2506.08373): a small draft model writes `lookahead`
 * tokens after the prompt; the LLM's attention from those approximate future queries (and
 * the last `window` prompt queries) onto the prompt, pooled as in SnapKV, scores the KV once.
 * The kept prompt tokens, the window and every generated token are read afterwards (SnapKV's
 * rule when the budget runs short). The draft is the assistant model (run it through an
 * AssistedModel); scoring costs one extra LLM pass over prompt + draft.
 */
export const specKv = definePolicy<SpecState, SpecOptions>({
  name: "speckv",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["votes"],
  description:
    "draft (assistant) lookahead queries score the prompt once through the LLM's attention, SnapKV-style",
  options: { lookahead: 16, window: 8, kernel: 5 },
  usesAssistant: true,
  validate(o) {
    const c = optionChecks("speckv", o);
    c.number("lookahead", 1, 256, true);
    c.number("window", 0, 1 << 20, true);
    c.number("kernel", 1, 1023, true);
    if (o.kernel % 2 !== 1) c.bad(`kernel must be odd, got ${o.kernel}`);
  },
  init(seq) {
    return { prompt: 0, votes: Array.from({ length: seq.config.numLayers }, () => []) };
  },
  // Scored once, at the first step after the prompt.
  prepareIdle: (ctx) => ctx.step.start === 0 || ctx.state.prompt > 0,
  async prepare(ctx) {
    const st = ctx.state;
    const { start } = ctx.step;
    if (start === 0 || st.prompt > 0) return;
    const a = ctx.seq.assistant;
    if (!a || !ctx.seq.model)
      throw new PolicyOptionError(
        "speckv",
        "needs a draft model: run it through an AssistedModel (CLI: --assistant <dir>)",
      );
    const prompt = ctx.seq.tokens.slice(0, start);
    const room = Math.min(ctx.options.lookahead, ctx.seq.config.maxPositions - start);
    // The draft writes ahead greedily from the prompt.
    const draft: number[] = [];
    const dseq = a.model.newSequence();
    try {
      let out = (await a.model.forward([{ seq: dseq, tokens: prompt }]))[0];
      for (let i = 0; i < room; i++) {
        draft.push(argmax(out));
        if (i + 1 < room) out = (await a.model.forward([{ seq: dseq, tokens: [draft[i]] }]))[0];
      }
    } finally {
      dseq.release();
    }
    const ids = [...prompt, ...draft];
    const N = ids.length;
    const att = await collectAttention(ctx.seq.model, ids);
    const { numHeads: Hq, numKvHeads: Hkv, numLayers: L } = ctx.seq.config;
    const group = Hq / Hkv;
    const from = Math.max(0, start - ctx.options.window);
    for (let l = 0; l < L; l++) {
      const probs = att.probs[l];
      st.votes[l] = Array.from({ length: Hkv }, (_, g) => {
        const v = new Float64Array(start);
        for (let h = g * group; h < (g + 1) * group; h++)
          for (let u = from; u < N; u++) {
            const row = (h * N + u) * N;
            for (let j = 0; j < Math.min(start, u + 1); j++) v[j] += probs[row + j];
          }
        return avgPool(v, start, ctx.options.kernel);
      });
    }
    st.prompt = start;
  },
  // SnapKV's keep rule on the lookahead votes.
  select: snapSelect,
});
