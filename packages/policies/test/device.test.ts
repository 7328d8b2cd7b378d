import { join } from "node:path";
import { AssistedModel, assetsDir, Generator, Model } from "@smallkv/runner";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPolicy, type OptionValue } from "../src/index.js";

// SmallKV and the baselines on the device backend. The emulator runs the CUDA kernels on
// the CPU, so CI checks the device path of every policy kind: scores observed on the device,
// hot sets moved by difference, V-only rows with the assistant's weights.
const models = join(assetsDir(), "models");

describe("policies on the device backend (CUDA emulator) equal the CPU path step by step", () => {
  const cpu: { llm?: Model; slm?: Model } = {};
  const dev: { llm?: Model; slm?: Model } = {};
  beforeAll(async () => {
    cpu.llm = await Model.load(join(models, "stories260K"));
    cpu.slm = await Model.load(join(models, "stories260K-slm"));
    dev.llm = await Model.load(join(models, "stories260K"), { device: "emulator" });
    dev.slm = await Model.load(join(models, "stories260K-slm"), { device: "emulator" });
  });
  afterAll(() => {
    dev.llm?.close();
    dev.slm?.close();
  });

  for (const [name, options] of [
    // A short matching window, so that SmallKV compresses within the test's 72 tokens.
    ["smallkv", { minContext: 32, window: 32 }],
    ["smallkv", { minContext: 32, window: 32, mode: "literal" }],
    ["h2o", {}],
    ["snapkv", {}],
    ["pod", {}],
    // Query-aware: the device backend copies the layer's queries back for select.
    ["quest", { pageSize: 4 }],
  ] as [string, Record<string, OptionValue>][]) {
    it(`${name} ${JSON.stringify(options)} at 20%: same logits (1e-4) and same hot set at every step`, async () => {
      const a = new AssistedModel(cpu.llm as Model, cpu.slm as Model);
      const b = new AssistedModel(dev.llm as Model, dev.slm as Model);
      const ids = a.llm.tokenizer.encode(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog. ".repeat(
          3,
        ),
      );
      const sa = a.newSequence(await createPolicy(name, 0.2, options));
      const sb = b.newSequence(await createPolicy(name, 0.2, options));
      let tokens = ids.slice(0, 64);
      let worst = 0;
      for (let i = 0; i < 8; i++) {
        const [la] = await a.forward([{ seq: sa, tokens }]);
        const [lb] = await b.forward([{ seq: sb, tokens }]);
        expect(sb.fault).toBeNull();
        worst = Math.max(worst, ...la.map((x, j) => Math.abs(x - lb[j])));
        expect(sb.stats()).toEqual(sa.stats());
        tokens = [ids[64 + i]];
      }
      expect(worst).toBeLessThan(1e-4);
      expect(sb.stats().hotBytes).toBeLessThan(sb.stats().coldBytes * 0.5);
    });
  }

  for (const [name, options] of [
    ["h2o", {}],
    ["smallkv", { minContext: 32, window: 32 }],
  ] as [string, Record<string, OptionValue>][]) {
    it(`${name} at 20%: speculative greedy output on the device equals plain greedy (one-token verify steps, snapshot rollback)`, async () => {
      const b = new AssistedModel(dev.llm as Model, dev.slm as Model);
      const prompt = b.llm.tokenizer
        .encode("Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(3))
        .slice(0, 60);
      const o = { temperature: 0, maxTokens: 20, stopTokens: [] };
      const g = new Generator(b);
      const plain = await g.generate(prompt, { ...o, policy: await createPolicy(name, 0.2, options) });
      const spec = await g.generate(prompt, {
        ...o,
        policy: await createPolicy(name, 0.2, options),
        speculative: { k: 3 },
      });
      expect(spec.error).toBeUndefined();
      expect(spec.tokens).toEqual(plain.tokens);
      expect(spec.speculative!.rounds).toBeGreaterThan(0);
    });
  }
});
