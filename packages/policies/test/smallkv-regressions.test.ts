import { join } from "node:path";
import { HeadMatching, identityOf } from "@smallkv/matching";
import { AssistedModel, assetsDir, Generator, Model } from "@smallkv/runner";
import { beforeAll, describe, expect, it } from "vitest";
import { smallKv, smallKvPaper, splitBudget } from "../src/index.js";

// Each test here failed on the code before the fix it guards.
const models = join(assetsDir(), "models");

describe("splitBudget when the step's own tokens exceed the recent share", () => {
  it("never returns a negative count and gives the old-token units to critical first", () => {
    // Budget 28 with 19 new tokens: 9 units for old tokens. The old code returned marginal -10
    // and shrank critical from 14 to 4.
    const s = splitBudget(28, 19, [2, 1, 2], true);
    expect(s.marginal).toBeGreaterThanOrEqual(0);
    expect(s.recent).toBe(19);
    expect(s.critical).toBe(9);
    expect(s.critical + s.recent + s.marginal / 2).toBeLessThanOrEqual(28);
  });
  it("holds for every budget and step length", () => {
    for (let total = 1; total <= 60; total++) {
      for (let T = 1; T <= total; T++) {
        for (const marginal of [true, false]) {
          const s = splitBudget(total, T, [2, 1, 2], marginal);
          expect(Math.min(s.critical, s.recent, s.marginal)).toBeGreaterThanOrEqual(0);
          expect(s.recent).toBeGreaterThanOrEqual(T);
          expect(s.critical + s.recent + s.marginal / 2).toBeLessThanOrEqual(total);
        }
      }
    }
  });
});

describe("SmallKV on the shipped pair", () => {
  let llm: Model;
  let slm: Model;
  beforeAll(async () => {
    llm = await Model.load(join(models, "stories260K"));
    slm = await Model.load(join(models, "stories260K-slm"));
  });
  const prompt = (m: Model, n: number) =>
    m.tokenizer
      .encode(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. ".repeat(
          8,
        ),
      )
      .slice(0, n);

  it("a step longer than 16 tokens after matching, with marginals, does not fail the sequence", async () => {
    // The old assistant kept rows only for steps of at most 16 tokens: "no attention rows for layer 2".
    const pair = new AssistedModel(llm, slm);
    for (const policy of [
      smallKvPaper.create({ budget: 0.3 }),
      smallKv.create({ budget: 0.3, options: { gate: 0, exactShare: 0.5 } }),
    ]) {
      const seq = pair.newSequence(policy);
      const ids = prompt(llm, 160);
      await pair.forward([{ seq, tokens: ids.slice(0, 110) }]); // matching happens at the next step
      await pair.forward([{ seq, tokens: ids.slice(110, 111) }]);
      const out = await pair.forward([{ seq, tokens: ids.slice(111, 150) }]); // 39 tokens in one step
      expect(seq.fault).toBeFalsy();
      expect(out[0].every(Number.isFinite)).toBe(true);
      await pair.forward([{ seq, tokens: ids.slice(150, 151) }]);
      expect(seq.fault).toBeFalsy();
      seq.release();
    }
  });

  it("gqa=query holds the same hot memory as gqa=kv at the same budget", async () => {
    // The old per-query-head mode gave every query head the whole kv-head budget (2x the memory).
    const pair = new AssistedModel(llm, slm);
    const ids = prompt(llm, 140);
    const hot: Record<string, number> = {};
    for (const gqa of ["kv", "query"]) {
      const g = new Generator(pair);
      const s = g.submit(ids, {
        temperature: 0,
        maxTokens: 20,
        stopTokens: [],
        policy: smallKv.create({ budget: 0.1, options: { gqa } }),
      });
      for await (const _ of s);
      const r = await s.result;
      expect(r.error).toBeUndefined();
      hot[gqa] = s.sequence.stats().hotBytes;
    }
    expect(hot.query).toBeLessThanOrEqual(hot.kv);
    expect(hot.query).toBeGreaterThan(hot.kv * 0.8);
  });
});

describe("head matching ties", () => {
  it("a Jaccard tie goes to the SLM head with the higher row cosine, not to the lowest index", () => {
    const T = 6;
    // Two SLM heads with the same column-sum top set but different rows; the LLM head equals the second.
    const rowsA = new Float32Array(T * T);
    const rowsB = new Float32Array(T * T);
    for (let u = 0; u < T; u++) {
      for (let v = 0; v <= u; v++) {
        rowsA[u * T + v] = 1 / (u + 1);
        rowsB[u * T + v] = v === 0 ? 0.6 : 0.4 / Math.max(1, u);
      }
      if (u === 0) rowsB[0] = 1;
    }
    const slmSet = { numLayers: 1, numHeads: 2, T, probs: [Float32Array.from([...rowsA, ...rowsB])] };
    const llmSet = { numLayers: 1, numHeads: 1, T, probs: [Float32Array.from(rowsB)] };
    const id = (name: string, heads: number) => ({
      name,
      numLayers: 1,
      numHeads: heads,
      numKvHeads: 1,
      hiddenSize: 8,
      vocabSize: 8,
      tokenizer: "t",
    });
    const m = HeadMatching.compute(llmSet, slmSet, { llm: id("l", 1), slm: id("s", 2) }, { topkRatio: 0.34 });
    // Same Jaccard for both candidates...
    expect(m.matches[0].runnersUp?.[0].score).toBe(m.matches[0].jaccard);
    // ...and the winner is the head whose rows are the LLM's.
    expect(m.slmHeadOf(0, 0)).toEqual({ layer: 0, head: 1 });
    void identityOf;
  });
});
