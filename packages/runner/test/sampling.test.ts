import { sampleToken } from "@smallkv/tensor";
import { beforeAll, describe, expect, it } from "vitest";
import { Generator, Model, Sampler, seededRandom } from "../src/index.js";
import { LLM } from "./helpers.js";

describe("sampling", () => {
  let model: Model;
  beforeAll(async () => {
    model = await Model.load(LLM);
  });

  it("is reproducible for a seed and varies across seeds", async () => {
    const g = new Generator(model);
    const o = { temperature: 1, maxTokens: 30, stopTokens: [] };
    const a = await g.generate("Once upon a time", { ...o, seed: 7 });
    const b = await g.generate("Once upon a time", { ...o, seed: 7 });
    const c = await g.generate("Once upon a time", { ...o, seed: 8 });
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens).not.toEqual(c.tokens);
  });

  it('a step input with logits "sample" returns the token sampleToken draws from its last row', async () => {
    const ids = model.tokenizer.encode("Once upon a time");
    const rule = { temperature: 0.8, topK: 40, topP: 0.95 };
    for (const u of [0, 0.3, 0.999]) {
      const [row] = await model.forward([{ seq: model.newSequence(), tokens: ids }]);
      const [tok] = await model.forward([
        { seq: model.newSequence(), tokens: ids, logits: "sample", sample: { ...rule, u } },
      ]);
      expect(Array.from(tok)).toEqual([sampleToken(row, rule, u)]);
    }
  });

  it("top-k 1 and a tiny top-p are greedy", async () => {
    const g = new Generator(model);
    const greedy = await g.generate("Tom went", { temperature: 0, maxTokens: 20, stopTokens: [] });
    const k1 = await g.generate("Tom went", {
      temperature: 1.5,
      topK: 1,
      seed: 3,
      maxTokens: 20,
      stopTokens: [],
    });
    const p0 = await g.generate("Tom went", {
      temperature: 1.5,
      topP: 1e-6,
      seed: 3,
      maxTokens: 20,
      stopTokens: [],
    });
    expect(k1.tokens).toEqual(greedy.tokens);
    expect(p0.tokens).toEqual(greedy.tokens);
  });

  it("top-k restricts the choice to the k most likely tokens", () => {
    const logits = Float32Array.from([0, 5, 4, 3, -1]);
    const s = new Sampler({ temperature: 5, topK: 2, seed: 1 });
    const seen = new Set<number>();
    for (let i = 0; i < 500; i++) seen.add(s.next(logits));
    expect([...seen].sort()).toEqual([1, 2]);
  });

  it("top-p keeps the smallest nucleus", () => {
    // probabilities ~ [0.665, 0.245, 0.09]: top-p 0.8 keeps the first two.
    const logits = Float32Array.from([2, 1, 0]);
    const s = new Sampler({ temperature: 1, topP: 0.8, seed: 2 });
    const counts = [0, 0, 0];
    for (let i = 0; i < 2000; i++) counts[s.next(logits)]++;
    expect(counts[2]).toBe(0);
    expect(counts[0] / 2000).toBeCloseTo(0.665 / 0.91, 1);
  });

  it("the seeded random stream is uniform enough", () => {
    const r = seededRandom(42);
    let sum = 0;
    for (let i = 0; i < 10000; i++) sum += r();
    expect(sum / 10000).toBeCloseTo(0.5, 1);
  });

  it("stop strings cut the text before them; streamed deltas add up to the text", async () => {
    const g = new Generator(model);
    const full = await g.generate("", { temperature: 0, maxTokens: 40, stopTokens: [] });
    expect(full.text).toContain("Lily");
    const s = g.submit("", { temperature: 0, maxTokens: 40, stop: ["Lily"], stopTokens: [] });
    let streamed = "";
    for await (const ev of s) streamed += ev.text;
    const r = await s.result;
    expect(r.finishReason).toBe("stop");
    expect(r.text).toBe(full.text.slice(0, full.text.indexOf("Lily")));
    expect(streamed).toBe(r.text);
  });

  it("stop tokens end generation without emitting the token", async () => {
    const g = new Generator(model);
    const full = await g.generate("", { temperature: 0, maxTokens: 20, stopTokens: [] });
    const stopAt = full.tokens[5];
    const r = await g.generate("", { temperature: 0, maxTokens: 20, stopTokens: [stopAt] });
    expect(r.finishReason).toBe("stop");
    expect(r.tokens).toEqual(full.tokens.slice(0, full.tokens.indexOf(stopAt)));
  });

  it("logprobs of chosen tokens and their top-3 alternatives equal a plain forward pass's log-softmax", async () => {
    const r = await new Generator(model).generate("Once", {
      temperature: 0,
      maxTokens: 5,
      logprobs: 3,
      stopTokens: [],
    });
    expect(r.logprobs!.length).toBe(5);
    // The reference: each step's distribution from a plain forward pass over the prefix,
    // log-softmax written out here, and its three best tokens.
    const prefix = [...r.promptTokens];
    for (const lp of r.logprobs!) {
      const seq = model.newSequence();
      const [logits] = await model.forward([{ seq, tokens: prefix }]);
      seq.release();
      let m = -Infinity;
      for (const x of logits) m = Math.max(m, x);
      let z = 0;
      for (const x of logits) z += Math.exp(x - m);
      const ref = Array.from(logits, (x, token) => ({ token, logprob: x - m - Math.log(z) })).sort(
        (a, b) => b.logprob - a.logprob,
      );
      expect(lp.topLogprobs!.length).toBe(3);
      lp.topLogprobs!.forEach((alt, i) => {
        expect(alt.token).toBe(ref[i].token);
        expect(alt.logprob).toBeCloseTo(ref[i].logprob, 4);
      });
      expect(lp.token).toBe(ref[0].token); // greedy picks the top one
      expect(lp.logprob).toBeCloseTo(ref[0].logprob, 4);
      prefix.push(lp.token);
    }
  });

  it("cancel ends the request and frees its sequence", async () => {
    const g = new Generator(model);
    const s = g.submit("Once", { temperature: 0, maxTokens: 400, stopTokens: [] });
    let n = 0;
    for await (const _ of s) if (++n === 3) s.cancel();
    const r = await s.result;
    expect(r.finishReason).toBe("cancelled");
    expect(s.sequence.released).toBe(true);
    expect(g.size).toBe(0);
  });
});
