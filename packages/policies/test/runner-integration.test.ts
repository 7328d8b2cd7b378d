import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assetsDir, Generator, Model, PolicyError, writeSyntheticCheckpoint } from "@smallkv/runner";
import { beforeAll, describe, expect, it } from "vitest";
import {
  Budget,
  builtinPolicies,
  createPolicy,
  definePolicy,
  everyHead,
  full,
  loadPolicyModule,
  range,
  scorerPolicy,
} from "../src/index.js";
import { runConformance } from "../src/testing/index.js";

const LLM = join(assetsDir(), "models", "stories260K");

describe("policies in the runner", () => {
  let model: Model;
  beforeAll(async () => {
    model = await Model.load(LLM);
  });

  it("the Full policy's output is identical to the runner without a policy", async () => {
    const g = new Generator(model);
    const o = { temperature: 0, maxTokens: 80, stopTokens: [] };
    const plain = await g.generate("Once upon a time, there was a dog", o);
    const withFull = await g.generate("Once upon a time, there was a dog", {
      ...o,
      policy: full.create({ budget: 0.1 }),
    });
    expect(withFull.tokens).toEqual(plain.tokens);
  });

  for (const name of ["streamingllm", "h2o", "snapkv", "pyramidkv", "pyramidinfer", "tova", "pod"]) {
    it(`${name}: hot bytes at 20% stay within the budget accounting and the budget is used`, async () => {
      const g = new Generator(model);
      const policy = await createPolicy(name, 0.2);
      const s = g.submit(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends.",
        {
          temperature: 0,
          maxTokens: 60,
          stopTokens: [],
          policy,
        },
      );
      const c = model.config;
      let maxRatio = 0;
      let events = 0;
      for await (const _ of s) {
        const st = s.sequence.stats();
        // The first event follows the prefill step, which reads every prompt token by design.
        if (events++ === 0) continue;
        // Budget (cost units per layer and kv head) at the step that just ran, plus the step's own token.
        const allowed = Budget.parse(0.2).tokensAt(st.tokens);
        maxRatio = Math.max(maxRatio, st.hotTokensPerHead / Math.max(allowed, 1));
        expect(st.hotBytes).toBeLessThanOrEqual(
          Math.max(allowed, 1) * c.numLayers * c.numKvHeads * 2 * c.headDim * 4,
        );
        expect(st.coldBytes).toBe(st.tokens * c.numLayers * c.numKvHeads * 2 * c.headDim * 4);
      }
      const r = await s.result;
      expect(r.error).toBeUndefined();
      expect(maxRatio).toBeGreaterThan(0.5); // the budget is used, not ignored
      expect(maxRatio).toBeLessThanOrEqual(1);
    });
  }

  it("an invalid policy is reported with its name and the broken rule; other sequences are unaffected", async () => {
    const overBudget = definePolicy({
      name: "hog",
      select: (ctx) => ({ full: everyHead(ctx.config.numKvHeads, range(0, ctx.step.start + 1)) }),
    });
    const throws = definePolicy({
      name: "thrower",
      select: () => {
        throw new Error("no scores yet");
      },
    });
    const g = new Generator(model);
    const o = { temperature: 0, maxTokens: 12, stopTokens: [] };
    const [a, b, ok] = await Promise.all([
      g.generate("Tom", { ...o, policy: overBudget.create({ budget: 0.5 }) }),
      g.generate("Tom", { ...o, policy: throws.create({ budget: 0.5 }) }),
      g.generate("Tom", { ...o, policy: full.create({ budget: 1 }) }),
    ]);
    expect(a.error).toBeInstanceOf(PolicyError);
    expect(a.error!.message).toMatch(/policy "hog" broke rule "valid indices"/);
    expect(b.error!.message).toBe('policy "thrower" broke rule "select": no scores yet');
    expect(ok.error).toBeUndefined();
    expect(ok.tokens.length).toBe(12);
  });

  it("the shipped example policy loads from its module and passes the kit", async () => {
    const keyNorm = await loadPolicyModule(join(import.meta.dirname, "..", "examples", "key-norm.js"));
    expect(keyNorm.name).toBe("key-norm");
    const r = await runConformance(keyNorm);
    expect(r.failures).toEqual([]);
  });
});

describe("policies on a model with sliding-window layers", () => {
  it.each(["h2o", "tova", "snapkv", "quest", "reversible", "omnikv", "streamingllm", "pod"])(
    "%s at 30% runs 120 tokens on a Mistral-shaped model with a window of 8 (selections narrowed, stores bounded)",
    async (name) => {
      const dir = mkdtempSync(join(tmpdir(), "smallkv-sliding-"));
      writeSyntheticCheckpoint(dir, {
        architecture: "MistralForCausalLM",
        hiddenSize: 32,
        intermediateSize: 48,
        numLayers: 2,
        numHeads: 4,
        numKvHeads: 2,
        vocabSize: 512,
        maxPositions: 256,
        tokenizerFrom: LLM,
        scale: 0.2,
        extraConfig: { sliding_window: 8 },
      });
      const m = await Model.load(dir, { threads: 1 });
      // OmniKV's default filter layer (1) would leave a 2-layer model all dense: filter at 0.
      const inner = await createPolicy(name, 0.3, name === "omnikv" ? { filters: "0" } : {});
      // Count the positions the policy asks for that the window cannot read (the runner narrows them).
      let outside = 0;
      const policy = Object.assign(Object.create(Object.getPrototypeOf(inner)), inner, {
        select: inner.select
          ? (
              q: Parameters<NonNullable<typeof inner.select>>[0],
              l: number,
              st: { start: number; T: number },
            ) => {
              const sel = inner.select!(q, l, st);
              if (sel && st.T === 1)
                for (const list of [...sel.full, ...(sel.vOnly ?? [])])
                  for (const p of list) if (p < st.start - 8 + 1) outside++;
              return sel;
            }
          : undefined,
      });
      const g = new Generator(m);
      const stream = g.submit("Once upon a time, there was a little girl named Lily.", {
        temperature: 0,
        maxTokens: 120,
        stopTokens: [],
        policy,
      });
      const seq = stream.sequence;
      let held = 0;
      let read = 0;
      for await (const ev of stream) {
        if (ev.token < 0) continue;
        held = Math.max(held, seq.kv.heldRows(0));
        // What attention read at this step: only positions inside the window (p > position - 8).
        const last = seq.length - 1;
        for (const h of seq.hot) {
          if (!h.active) continue;
          const heads = h.perQuery ? m.config.numHeads : m.config.numKvHeads;
          for (let hd = 0; hd < heads; hd++)
            for (const p of [...h.full.positions(hd), ...h.vOnly.positions(hd)]) {
              read++;
              expect(p, `layer read position ${p} at ${last}`).toBeGreaterThan(last - 8);
            }
        }
      }
      const r = await stream.result;
      expect(r.error).toBeUndefined();
      expect(r.tokens).toHaveLength(120);
      // The policy did ask for positions beyond the window, and attention read rows at all.
      expect(outside, "nothing to narrow").toBeGreaterThan(0);
      expect(read).toBeGreaterThan(0);
      // Each layer's store never held more than the window (plus the prompt's step).
      expect(held).toBeLessThanOrEqual(8 + 20);
    },
  );
});

describe("policies over an int8 KV store", () => {
  it("every built-in policy generates from int8 rows without a fault, and mostly as it does from floats", async () => {
    const f32 = await Model.load(LLM, { threads: 1 });
    const int8 = await Model.load(LLM, { threads: 1, kvCold: "int8" });
    const slm = join(assetsDir(), "models", "stories260K-slm-a");
    const { AssistedModel } = await import("@smallkv/runner");
    const pair = async (kvCold: "f32" | "int8") =>
      new AssistedModel(kvCold === "f32" ? f32 : int8, await Model.load(slm, { threads: 1, kvCold }));
    const prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park";
    const o = { temperature: 0, maxTokens: 24, stopTokens: [], logprobs: 2 };
    const names = Object.keys(builtinPolicies);
    expect(names.length).toBe(14);
    for (const name of names) {
      const usesAssistant = (await createPolicy(name, 0.3)).usesAssistant;
      const run = async (kvCold: "f32" | "int8") => {
        const m = usesAssistant ? await pair(kvCold) : kvCold === "f32" ? f32 : int8;
        return new Generator(m).generate(prompt, { ...o, policy: await createPolicy(name, 0.3) });
      };
      const [a, b] = [await run("f32"), await run("int8")];
      expect(b.finishReason, name).toBe("length");
      expect(b.error, name).toBeUndefined();
      let same = 0;
      while (same < a.tokens.length && a.tokens[same] === b.tokens[same]) same++;
      if (same >= 8) continue;
      // An earlier difference must be a near-tie of the int8 run: the float run's token is its
      // runner-up within 0.1 nats (measured: PoD at token 2, 0.016 nats apart).
      const top = b.logprobs![same].topLogprobs;
      expect(top[1].token, `${name}: diverged at token ${same}, not a near-tie`).toBe(a.tokens[same]);
      expect(top[0].logprob - top[1].logprob, `${name}: gap at token ${same}`).toBeLessThan(0.1);
    }
  });
});

describe("scorerPolicy with irreversible eviction", () => {
  // A ranking that changes with every step: a token it drops must still never come back.
  const churning = scorerPolicy({
    name: "churning",
    irreversible: true,
    score: (ctx) =>
      Float64Array.from({ length: ctx.step.start }, (_, p) => ((p * 7919 + ctx.step.start * 31) % 97) + 0.5),
  });

  it("passes the conformance kit", async () => {
    const report = await runConformance(churning);
    expect(report.failures).toEqual([]);
  });

  it("keeps the newest token and never selects an evicted token again", async () => {
    const model = await Model.load(LLM);
    const policy = churning.create({ budget: 0.3 });
    const seen: { start: number; full: Int32Array[] }[] = [];
    const seq = model.newSequence({
      ...policy,
      select: (q, layer, st) => {
        const sel = policy.select!(q, layer, st);
        if (sel && layer === 1) seen.push({ start: st.start, full: sel.full.map((l) => l.slice()) });
        return sel;
      },
    });
    let logits = await model.forward([
      { seq, tokens: model.tokenizer.encode("Once upon a time, there was a girl who") },
    ]);
    for (let i = 0; i < 20; i++) {
      const next = logits[0].indexOf(Math.max(...logits[0]));
      logits = await model.forward([{ seq, tokens: [next] }]);
    }
    expect(seq.fault).toBeNull();
    expect(seen.length).toBeGreaterThan(10);
    for (let s = 1; s < seen.length; s++) {
      const prev = seen[s - 1];
      seen[s].full.forEach((list, g) => {
        const before = new Set(prev.full[g]);
        expect(list).toContain(seen[s].start - 1);
        // An old position read now was read at the step before (positions from its start on are new).
        for (const p of list) if (p < prev.start) expect(before.has(p)).toBe(true);
      });
    }
    model.close();
  });
});
