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
    ids = llm.tokenizer.encode(text).slice(0, 128);
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
    const T = g.ids.length;
    let worst = 0;
    for (let l = 0; l < a.numLayers; l++) {
      for (let i = 0; i < a.probs[l].length; i++)
        worst = Math.max(worst, Math.abs(a.probs[l][i] - want[l * a.numHeads * T * T + i]));
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

  it("reports per-layer similarity and where the matches land", async () => {
    const r = (await matchModels(llm, slm, ids)).report();
    expect(r.perLayer.length).toBe(llm.config.numLayers);
    expect(r.slmLayerUse.reduce((a, b) => a + b, 0)).toBe(llm.config.numLayers * llm.config.numHeads);
    expect(r.jaccard.min).toBeLessThanOrEqual(r.jaccard.mean);
    expect(r.jaccard.mean).toBeLessThanOrEqual(r.jaccard.max);
  });
});
