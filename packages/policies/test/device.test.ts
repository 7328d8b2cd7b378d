import { join } from "node:path";
import { AssistedModel, assetsDir, devicePath, Generator, Model } from "@smallkv/runner";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPolicy, type OptionValue } from "../src/index.js";

// SmallKV and the baselines on the device backend. The emulator runs the CUDA kernels on
// the CPU, so CI checks the device path of every policy kind: on the host path, scores
// observed on the device, hot sets moved by difference, V-only rows with the assistant's
// weights; on the device forms (H2O, SmallKV), ranking, selection and score sums on the device.
const models = join(assetsDir(), "models");

describe("policies on the device backend (CUDA emulator) equal the CPU path step by step", () => {
  const cpu: { llm?: Model; slm?: Model } = {};
  const dev: { llm?: Model; slm?: Model } = {};
  beforeAll(async () => {
    cpu.llm = await Model.load(join(models, "stories260K"));
    cpu.slm = await Model.load(join(models, "stories260K-slm"));
    // The host path (policies select and observe on the host, per sequence).
    dev.llm = await Model.load(join(models, "stories260K"), { device: "emulator", devicePolicies: false });
    dev.slm = await Model.load(join(models, "stories260K-slm"), {
      device: "emulator",
      devicePolicies: false,
    });
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
    it(`${name} ${JSON.stringify(options)} at 20% on the host path: same logits (1e-4) and same hot set at every step`, async () => {
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

describe("device forms (CUDA emulator): H2O and SmallKV ranked, selected and accumulated on the device", () => {
  const cpu: { llm?: Model; slm?: Model; weak?: Model } = {};
  const dev: { llm?: Model; slm?: Model; weak?: Model } = {};
  beforeAll(async () => {
    // The shipped pair: the assistant's head dim (6) runs it per sequence, its rows kept on the device.
    cpu.llm = await Model.load(join(models, "stories260K"));
    cpu.slm = await Model.load(join(models, "stories260K-slm-a"));
    cpu.weak = await Model.load(join(models, "stories260K-slm"));
    dev.llm = await Model.load(join(models, "stories260K"), { device: "emulator" });
    dev.slm = await Model.load(join(models, "stories260K-slm-a"), { device: "emulator" });
    dev.weak = await Model.load(join(models, "stories260K-slm"), { device: "emulator" });
  });
  afterAll(() => {
    dev.llm?.close();
    dev.slm?.close();
    dev.weak?.close();
  });

  for (const [name, options, weak] of [
    ["h2o", {}, false],
    ["tova", {}, false],
    ["snapkv", { window: 8 }, false],
    ["pyramidkv", { window: 16 }, false],
    ["smallkv", { minContext: 32, window: 32 }, false],
    ["smallkv", { minContext: 32, window: 32, mode: "literal", split: "2:1:2" }, false],
    // The weakly aligned assistant: some heads fall back to the LLM's own mean attention (the blend).
    ["smallkv", { minContext: 32, window: 32 }, true],
  ] as [string, Record<string, OptionValue>, boolean][]) {
    it(`${name} ${JSON.stringify(options)}${weak ? " (weak assistant)" : ""} at 20%: batched, same logits (1e-4) and as many tokens read as the host's selection`, async () => {
      const a = new AssistedModel(cpu.llm as Model, (weak ? cpu.weak : cpu.slm) as Model);
      const b = new AssistedModel(dev.llm as Model, (weak ? dev.weak : dev.slm) as Model);
      const ids = a.llm.tokenizer.encode(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog. ".repeat(
          3,
        ),
      );
      const sa = a.newSequence(await createPolicy(name, 0.2, options));
      const sb = b.newSequence(await createPolicy(name, 0.2, options));
      expect(devicePath(sb)).toMatchObject({ path: "batched", policy: "device form", store: "device" });
      let tokens = ids.slice(0, 64);
      let worst = 0;
      for (let i = 0; i < 10; i++) {
        const [la] = await a.forward([{ seq: sa, tokens }]);
        const [lb] = await b.forward([{ seq: sb, tokens }]);
        expect(sb.fault).toBeNull();
        worst = Math.max(worst, ...la.map((x, j) => Math.abs(x - lb[j])));
        // The device's lists hold what the host's selection holds (exact and V-only, every layer).
        const [x, y] = [sa.stats(), sb.stats()];
        expect(y.classes).toEqual(x.classes);
        tokens = [ids[64 + i]];
      }
      expect(worst).toBeLessThan(1e-4);
      const st = sb.stats();
      expect(st.classes.dropped).toBeGreaterThan(st.classes.full); // it compressed
      if (weak) expect(sb.policy.describe?.(sb).fallbackHeads).toBeGreaterThan(0); // the blend ran
    });
  }

  it("a batch of device-form and plain sequences equals each run alone, greedy", async () => {
    const b = new AssistedModel(dev.llm as Model, dev.slm as Model);
    const prompt = b.llm.tokenizer
      .encode("Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(3))
      .slice(0, 40);
    const o = { temperature: 0, maxTokens: 6, stopTokens: [] };
    const g = new Generator(b);
    const specs: [string, Record<string, OptionValue>][] = [
      ["h2o", {}],
      ["smallkv", { minContext: 32, window: 32 }],
      ["full", {}],
    ];
    const alone = [];
    for (const [name, opts] of specs)
      alone.push((await g.generate(prompt, { ...o, policy: await createPolicy(name, 0.2, opts) })).tokens);
    const together = await Promise.all(
      specs.map(
        async ([name, opts]) =>
          (await g.generate(prompt, { ...o, policy: await createPolicy(name, 0.2, opts) })).tokens,
      ),
    );
    expect(together).toEqual(alone);
  });

  it("speculative decoding keeps the host path (the device form keeps no snapshots)", async () => {
    const b = new AssistedModel(dev.llm as Model, dev.slm as Model);
    const seq = b.newSequence(await createPolicy("h2o", 0.2), { hostPolicy: true });
    expect(devicePath(seq).policy).toBe("host");
    expect(seq.canRollBack).toBe(true);
    const form = b.newSequence(await createPolicy("h2o", 0.2));
    expect(form.canRollBack).toBe(false);
    seq.release();
    form.release();
  });
});
