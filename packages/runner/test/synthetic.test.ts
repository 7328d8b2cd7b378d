import { describe, expect, it } from "vitest";
import {
  type DType,
  Model,
  readConfig,
  type SyntheticModelOptions,
  writeSyntheticCheckpoint,
} from "../src/index.js";
import { LLM, maxAbsDiff, tempDir } from "./helpers.js";
import { referenceForward } from "./reference-model.js";

const base: SyntheticModelOptions = {
  hiddenSize: 32,
  intermediateSize: 40,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 4,
  vocabSize: 512,
  maxPositions: 64,
  tokenizerFrom: LLM,
  scale: 0.2,
};

const cases: [string, Partial<SyntheticModelOptions>][] = [
  ["Llama, MHA (GQA 1), untied, F32", { numKvHeads: 4 }],
  ["Llama, GQA 2, tied, F16", { numKvHeads: 2, tieWordEmbeddings: true, dtype: "F16" as DType }],
  ["Llama, GQA 4, untied, BF16, 3 shards", { numKvHeads: 1, dtype: "BF16" as DType, shards: 3 }],
  ["Qwen2 with q/k/v bias, GQA 2, untied", { architecture: "Qwen2ForCausalLM", numKvHeads: 2 }],
  [
    "Qwen2, tied, BF16, head_dim 16 != hidden/heads",
    {
      architecture: "Qwen2ForCausalLM",
      numKvHeads: 2,
      tieWordEmbeddings: true,
      dtype: "BF16" as DType,
      headDim: 16,
    },
  ],
];

describe("generated checkpoints match a plain TypeScript reference forward pass", () => {
  for (const [name, o] of cases) {
    it(name, async () => {
      const dir = tempDir();
      const tensors = writeSyntheticCheckpoint(dir, { ...base, ...o, seed: name.length });
      const config = readConfig(dir);
      const model = await Model.load(dir, { threads: 1 });
      const ids = [1, 17, 300, 42, 5, 99, 250, 7, 8, 400, 3];
      const want = referenceForward(config, tensors, ids);
      // Prefill of the first 6 tokens (all positions), then 5 single-token decode steps.
      const seq = model.newSequence();
      const [pre] = await model.forward([{ seq, tokens: ids.slice(0, 6), logits: "all" }]);
      let worst = 0;
      for (let t = 0; t < 6; t++)
        worst = Math.max(worst, maxAbsDiff(pre.subarray(t * 512, (t + 1) * 512), want[t]));
      for (let t = 6; t < ids.length; t++) {
        const [l] = await model.forward([{ seq, tokens: [ids[t]] }]);
        worst = Math.max(worst, maxAbsDiff(l, want[t]));
      }
      expect(worst).toBeLessThan(2e-4);
      // The logits are not trivially flat: the check has teeth.
      expect(Math.max(...want[3]) - Math.min(...want[3])).toBeGreaterThan(0.1);
    });
  }
});
