import { beforeAll, describe, expect, it } from "vitest";
import {
  type AttentionObservation,
  type KvPolicyHook,
  type LayerSelection,
  Model,
  type Sequence,
  type StepInfo,
} from "../src/index.js";
import { LLM, maxAbsDiff } from "./helpers.js";

describe("V-only rows with exact weights", () => {
  let model: Model;
  beforeAll(async () => {
    model = await Model.load(LLM);
  });

  it("when full and V-only rows cover every token and the weights are the true probabilities, mass mode reproduces Full", async () => {
    const c = model.config;
    const ids = model.tokenizer.encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    );
    // Reference sequence: full cache, records each layer's probabilities of the decode step.
    const probs: AttentionObservation[] = [];
    const recorder: KvPolicyHook = {
      name: "rec",
      wantsAttention: (_s, _l, st) => (st.T === 1 ? "probs" : false),
      observe: (_s, o) => probs.push(o),
    };
    const ref = model.newSequence(recorder);
    await model.forward([{ seq: ref, tokens: ids }]);
    const [want] = await model.forward([{ seq: ref, tokens: [300] }]);
    // Split: even positions exact (K+V), odd positions V-only with the reference's probabilities.
    const split: KvPolicyHook = {
      name: "split",
      select(_seq: Sequence, _layer: number, step: StepInfo): LayerSelection | null {
        if (step.start === 0) return null;
        const even = Int32Array.from({ length: step.start }, (_, i) => i).filter((p) => p % 2 === 0);
        const odd = Int32Array.from({ length: step.start }, (_, i) => i).filter((p) => p % 2 === 1);
        return {
          full: Array.from({ length: c.numKvHeads }, () => even),
          vOnly: Array.from({ length: c.numKvHeads }, () => odd),
          combine: "mass",
        };
      },
      vOnlyWeights(_seq, layer, step, sel) {
        const o = probs[layer];
        const vmax = Math.max(...sel.vOnly!.map((x) => x.length));
        const w = new Float32Array(c.numHeads * step.T * vmax);
        for (let h = 0; h < c.numHeads; h++)
          sel.vOnly![Math.floor(h / (c.numHeads / c.numKvHeads))].forEach(
            (p, i) => (w[h * vmax + i] = o.probs![h * o.Lmax + p]),
          );
        return w;
      },
    };
    const seq = model.newSequence(split);
    await model.forward([{ seq, tokens: ids }]);
    const [got] = await model.forward([{ seq, tokens: [300] }]);
    expect(seq.fault).toBeNull();
    expect(seq.stats().classes.vOnly).toBeGreaterThan(0);
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-4);
  });
});
