import { beforeAll, describe, expect, it } from "vitest";
import { Generator, generateBatch, Model } from "../src/index.js";
import { LLM } from "./helpers.js";

describe("batched decoding", () => {
  let model: Model;
  beforeAll(async () => {
    model = await Model.load(LLM);
  });

  it("4 prompts of different lengths give exactly the tokens of 4 separate greedy runs", async () => {
    const prompts = [
      "",
      "Once upon a time",
      "Tom and Sue went to the park. They saw a big dog.",
      "The sun was hot",
    ];
    const opts = { temperature: 0, maxTokens: 40, stopTokens: [] };
    const alone = [];
    for (const p of prompts) alone.push(await new Generator(model).generate(p, opts));
    const together = await generateBatch(model, prompts, opts);
    expect(together.map((r) => r.tokens)).toEqual(alone.map((r) => r.tokens));
    expect(new Set(together.map((r) => r.promptTokens.length)).size).toBe(4);
  });

  it("a mixed step (one prefill, one decode) equals separate steps", async () => {
    const a = model.newSequence();
    const b = model.newSequence();
    const ids = model.tokenizer.encode("Lily had a red ball");
    await model.forward([{ seq: a, tokens: ids }]);
    const [la, lb] = await model.forward([
      { seq: a, tokens: [300] },
      { seq: b, tokens: ids, logits: "all" },
    ]);
    const c = model.newSequence();
    await model.forward([{ seq: c, tokens: ids }]);
    const [lc] = await model.forward([{ seq: c, tokens: [300] }]);
    const d = model.newSequence();
    const [ld] = await model.forward([{ seq: d, tokens: ids, logits: "all" }]);
    expect(lb.length).toBe(ids.length * 512);
    for (let i = 0; i < la.length; i++) expect(Math.abs(la[i] - lc[i])).toBeLessThan(1e-4);
    for (let i = 0; i < lb.length; i++) expect(Math.abs(lb[i] - ld[i])).toBeLessThan(1e-4);
  });

  it("new requests join a running batch at step boundaries and all finish", async () => {
    const g = new Generator(model);
    const batches: number[] = [];
    const g2 = new Generator(model, { onStep: (s) => batches.push(s.batch) });
    const first = g2.submit("Once upon a time", { temperature: 0, maxTokens: 30, stopTokens: [] });
    // Let a few steps run before the second request arrives.
    let n = 0;
    for await (const _ of first) if (++n === 5) break;
    const second = g2.submit("Tom had a dog", { temperature: 0, maxTokens: 10, stopTokens: [] });
    const [r1, r2] = await Promise.all([first.result, second.result]);
    expect(r1.tokens.length).toBe(30);
    expect(r2.tokens.length).toBe(10);
    expect(Math.max(...batches)).toBe(2);
    const alone = await g.generate("Tom had a dog", { temperature: 0, maxTokens: 10, stopTokens: [] });
    expect(r2.tokens).toEqual(alone.tokens);
  });
});
