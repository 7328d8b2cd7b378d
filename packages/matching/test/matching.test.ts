import { readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assetsDir, Model } from "@smallkv/runner";
import { beforeAll, describe, expect, it } from "vitest";
import {
  collectAttention,
  columnSums,
  HeadMatching,
  identityOf,
  jaccard,
  MatchingMismatchError,
  matchingWindow,
  matchModels,
  nnls,
  rowCosine,
  topSet,
} from "../src/index.js";

const models = join(assetsDir(), "models");
const text = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8");

describe("similarity primitives", () => {
  it("column sums, top sets, Jaccard and row cosine on hand-made matrices", () => {
    // 3x3 causal attention
    const a = Float32Array.from([1, 0, 0, 0.5, 0.5, 0, 0.2, 0.3, 0.5]);
    const s = columnSums(a, 3);
    [1.7, 0.8, 0.5].forEach((x, i) => expect(s[i]).toBeCloseTo(x, 6));

    expect([...topSet([0.1, 0.9, 0.5, 0.7], 2)].sort()).toEqual([1, 3]);
    expect(jaccard(new Set([1, 2, 3]), new Set([2, 3, 4]))).toBeCloseTo(0.5);
    expect(rowCosine(a, a, 3)).toBeCloseTo(1, 6);
    const b = Float32Array.from([1, 0, 0, 1, 0, 0, 1, 0, 0]);
    expect(rowCosine(a, b, 3)).toBeLessThan(0.9);
  });

  it("matching windows: delay below 100 tokens, whole context up to 200, truncation above", () => {
    expect(matchingWindow(99)).toBeNull();
    expect(matchingWindow(100)).toEqual([0, 100]);
    expect(matchingWindow(200)).toEqual([0, 200]);
    expect(matchingWindow(450)).toEqual([0, 128]);
    expect(matchingWindow(450, { minTokens: 100, maxTokens: 200, size: 128, from: "last" })).toEqual([
      322, 450,
    ]);
  });
});

describe("head matching on the shipped models", () => {
  let llm: Model;
  let slm: Model;
  let ids: number[];
  beforeAll(async () => {
    llm = await Model.load(join(models, "stories260K"));
    slm = await Model.load(join(models, "stories260K-slm"));
    // 128 tokens need only the first few KB of the text, not all 622 KB.
    ids = llm.tokenizer.encode(text.slice(0, 4000)).slice(0, 128);
  });

  it("matching a model with itself maps every head to itself with Jaccard 1", async () => {
    const m = await matchModels(llm, llm, ids);
    const c = llm.config;
    expect(m.matches.length).toBe(c.numLayers * c.numHeads);
    for (const x of m.matches) {
      expect(x.jaccard).toBe(1);
      expect(x.cosine).toBeCloseTo(1, 5);
    }
    // With cosine as the metric every head finds itself (Jaccard ties can pick a twin head).
    const byCos = await matchModels(llm, llm, ids, { metric: "cosine" });
    for (const x of byCos.matches) expect([x.slmLayer, x.slmHead]).toEqual([x.llmLayer, x.llmHead]);
    expect(m.report().jaccard.min).toBe(1);
  });

  it("the trained assistant matches far better than a randomly initialised one of the same shape", async () => {
    const { writeRandomTwin } = await import("@smallkv/runner");
    const dir = writeRandomTwin(join(tmpdir(), `smallkv-random-slm-${process.pid}`), slm);
    const random = await Model.load(dir);
    const trained = (await matchModels(llm, slm, ids)).report();
    const control = (await matchModels(llm, random, ids)).report();
    expect(trained.cosine.mean).toBeGreaterThan(control.cosine.mean + 0.15);
    expect(trained.jaccard.mean).toBeGreaterThan(control.jaccard.mean);
  });

  it("collects attention equal to the golden matrices", async () => {
    const g = JSON.parse(readFileSync(join(models, "golden", "stories260K.json"), "utf8")).attention;
    const want = new Float32Array(readFileSync(join(models, "golden", g.file)).buffer.slice(0));
    const a = await collectAttention(llm, g.ids);
    // Bounds from the golden file's shape, not from the result under test.
    const [L, H, T] = g.shape;
    expect(T).toBe(g.ids.length);
    expect(want.length).toBe(L * H * T * T);
    expect([a.numLayers, a.numHeads, a.T, a.probs.length]).toEqual([L, H, T, L]);
    let worst = 0;
    for (let l = 0; l < L; l++) {
      expect(a.probs[l].length).toBe(H * T * T);
      for (let i = 0; i < H * T * T; i++)
        worst = Math.max(worst, Math.abs(a.probs[l][i] - want[l * H * T * T + i]));
    }
    expect(worst).toBeLessThan(1e-5);
  });

  it("saves and reloads a matching with the two models' identities, and refuses another pair", async () => {
    const m = await matchModels(llm, slm, ids);
    const path = join(tmpdir(), `smallkv-matching-${process.pid}.json`);
    m.save(path);
    const back = HeadMatching.load(path, { llm, slm });
    expect(back.matches).toEqual(m.matches);
    expect(back.slmHeadOf(2, 3)).toEqual(m.slmHeadOf(2, 3));
    expect(back.llm).toEqual(identityOf(llm));
    expect(() => HeadMatching.load(path, { llm: slm, slm })).toThrow(MatchingMismatchError);
    writeFileSync(path, "{}");
    expect(() => HeadMatching.load(path)).toThrow(/not a head-matching file/);
  });

  it("reports per-layer similarity and where the matches land, as the matches themselves say", async () => {
    const m = await matchModels(llm, slm, ids);
    const r = m.report();
    const { numLayers: L, numHeads: H } = llm.config;
    // One match per LLM head, each onto a real SLM head.
    expect(m.matches.map((x) => x.llmLayer * H + x.llmHead)).toEqual(
      Array.from({ length: L * H }, (_, i) => i),
    );
    for (const x of m.matches) {
      expect(x.slmLayer).toBeGreaterThanOrEqual(0);
      expect(x.slmLayer).toBeLessThan(slm.config.numLayers);
      expect(x.slmHead).toBeGreaterThanOrEqual(0);
      expect(x.slmHead).toBeLessThan(slm.config.numHeads);
      expect(x.jaccard).toBeGreaterThanOrEqual(0);
      expect(x.jaccard).toBeLessThanOrEqual(1);
    }
    // The report's figures recomputed from the matches.
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(r.perLayer.map((p) => p.layer)).toEqual(Array.from({ length: L }, (_, l) => l));
    for (const p of r.perLayer) {
      const mine = m.matches.filter((x) => x.llmLayer === p.layer);
      expect(p.jaccard.mean).toBeCloseTo(mean(mine.map((x) => x.jaccard)), 10);
      expect(p.cosine.mean).toBeCloseTo(mean(mine.map((x) => x.cosine)), 10);
      expect(p.jaccard.min).toBe(Math.min(...mine.map((x) => x.jaccard)));
      expect(p.jaccard.max).toBe(Math.max(...mine.map((x) => x.jaccard)));
    }
    expect(r.jaccard.mean).toBeCloseTo(mean(m.matches.map((x) => x.jaccard)), 10);
    expect(r.cosine.mean).toBeCloseTo(mean(m.matches.map((x) => x.cosine)), 10);
    const use = new Array(slm.config.numLayers).fill(0);
    for (const x of m.matches) use[x.slmLayer]++;
    expect(r.slmLayerUse).toEqual(use);
  });
});

describe("fitted head mixtures", () => {
  it("nnls recovers non-negative weights and clips negative ones to zero", () => {
    // X = [[1,0],[0,1],[1,1]], y = X [2, 0.5] -> w = [2, 0.5]
    const X = [
      [1, 0],
      [0, 1],
      [1, 1],
    ];
    const gram = (y: number[]) => {
      const G = new Float64Array(4);
      const b = new Float64Array(2);
      for (const [i, row] of X.entries())
        for (let j = 0; j < 2; j++) {
          b[j] += row[j] * y[i];
          for (let k = 0; k < 2; k++) G[j * 2 + k] += row[j] * row[k];
        }
      return { G, b };
    };
    const a = gram([2, 0.5, 2.5]);
    const w = nnls(a.G, a.b, 2);
    expect(w[0]).toBeCloseTo(2, 6);
    expect(w[1]).toBeCloseTo(0.5, 6);
    const c = gram([1, -1, 0]); // the unconstrained answer is [1, -1]
    const v = nnls(c.G, c.b, 2);
    expect(v[1]).toBe(0);
    expect(v[0]).toBeGreaterThan(0);
  });

  it("an LLM head equal to one SLM head gets (almost) all of its weight on that head", () => {
    const T = 12;
    const head = (seed: number) => {
      const p = new Float32Array(T * T);
      let s = seed;
      for (let u = 0; u < T; u++) {
        let sum = 0;
        for (let v = 0; v <= u; v++) {
          s = (s * 1103515245 + 12345) % 2147483648;
          p[u * T + v] = 0.05 + (s % 1000) / 1000;
          sum += p[u * T + v];
        }
        for (let v = 0; v <= u; v++) p[u * T + v] /= sum;
      }
      return p;
    };
    const slm = {
      numLayers: 1,
      numHeads: 3,
      T,
      probs: [Float32Array.from([...head(1), ...head(2), ...head(3)])],
    };
    const llm = { numLayers: 1, numHeads: 1, T, probs: [head(2)] };
    const id = (name: string, heads: number) => ({
      name,
      numLayers: 1,
      numHeads: heads,
      numKvHeads: 1,
      hiddenSize: 8,
      vocabSize: 8,
      tokenizer: "t",
    });
    const m = HeadMatching.compute(
      llm,
      slm,
      { llm: id("l", 1), slm: id("s", 3) },
      { fit: true, metric: "cosine" },
    );
    const w = m.weightsOf(0, 0)!;
    expect(w.length).toBe(4);
    expect(w[1]).toBeGreaterThan(0.95);
    expect(w[0] + w[2] + w[3]).toBeLessThan(0.05);
    expect(m.slmHeadOf(0, 0)).toEqual({ layer: 0, head: 1 });
    expect(m.coverageOf(0, 0)).toBeGreaterThan(0);
  });
});
