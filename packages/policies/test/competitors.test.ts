import type { ModelConfig, Sequence } from "@smallkv/runner";
import { describe, expect, it } from "vitest";
import { Budget, omniKv, quest, specKv } from "../src/index.js";
import { conformancePair, runConformance } from "../src/testing/index.js";

const config = { numLayers: 3, numHeads: 2, numKvHeads: 1, headDim: 2, maxPositions: 64 } as ModelConfig;

describe("Quest", () => {
  it("reads the pages whose key min/max bound the current query's logits highest", () => {
    // 12 tokens in pages of 4; keys point along x for page 1 only, the query points along x.
    const cap = 16;
    const k = new Float32Array(cap * 2);
    for (let p = 0; p < 12; p++) k.set(p >= 4 && p < 8 ? [1, 0] : [-1, p % 2], p * 2);
    const seq = {
      config,
      kv: {
        k: [k, k, k],
        cap,
        base: [0, 0, 0],
        capOf: () => cap,
        keyRows: (_l: number, g: number, from: number, to: number) =>
          k.subarray((g * cap + from) * 2, (g * cap + to) * 2),
      },
    } as unknown as Sequence;
    const p = quest.create({ budget: 5, options: { pageSize: 4 } });
    const query = Float32Array.from([1, 0, 1, 0]); // T = 1, 2 query heads
    const sel = p.select!(seq, 0, { start: 12, T: 1, query })!;
    // 4 old units: page 1 whole.
    expect(Array.from(sel.full[0])).toEqual([4, 5, 6, 7]);
    // Another query direction picks other pages.
    const sel2 = p.select!(seq, 0, { start: 12, T: 1, query: Float32Array.from([0, 1, 0, 1]) })!;
    expect(Array.from(sel2.full[0])).not.toContain(4);
  });
  it("refuses to run without queries", () => {
    const seq = { config, kv: { k: [], cap: 0, base: [0, 0, 0], capOf: () => 0 } } as unknown as Sequence;
    const p = quest.create({ budget: 2 });
    expect(() => p.select!(seq, 0, { start: 12, T: 1 })).toThrow(/no queries/);
  });
});

describe("OmniKV", () => {
  it("in the paper's form, dense layers read everything and later layers read the filter layer's top tokens of this step", () => {
    const seq = { config, id: 1 } as unknown as Sequence;
    const p = omniKv.create({ budget: 4, options: { filters: "1", budgeted: false } });
    const scores = new Float32Array(2 * 11);
    for (const h of [0, 1]) for (const j of [2, 7, 9]) scores[h * 11 + j] = 0.3;
    const step = { start: 10, T: 1 };
    expect(p.select!(seq, 0, step)).toBeNull();
    expect(p.select!(seq, 1, step)).toBeNull();
    p.observe!(seq, {
      layer: 1,
      start: 10,
      T: 1,
      scores,
      Lmax: 11,
      keyPositions: [Int32Array.from({ length: 11 }, (_, i) => i)],
    });
    expect(Array.from(p.select!(seq, 2, step)!.full[0])).toEqual([2, 7, 9]);
  });
  it("budgeted, the summed budget holds: a budget that cannot pay for dense layers selects in every layer", () => {
    const seq = { config, id: 2 } as unknown as Sequence;
    const p = omniKv.create({ budget: Budget.fraction(0.2), options: { filters: "1" } });
    const step = { start: 40, T: 1 };
    // Before the filter layer has run: the newest tokens, a budget's worth in layers 0 and 1.
    const sels = [p.select!(seq, 0, step), p.select!(seq, 1, step)];
    const scores = new Float32Array(2 * 41);
    for (const h of [0, 1])
      for (const j of [3, 11, 17, 25, 30, 31, 33, 36, 38]) scores[h * 41 + j] = 0.1 + j / 100;
    p.observe!(seq, {
      layer: 1,
      start: 40,
      T: 1,
      scores,
      Lmax: 41,
      keyPositions: [Int32Array.from({ length: 41 }, (_, i) => i)],
    });
    sels.push(p.select!(seq, 2, step));
    // Every layer selects (none falls back to reading everything) ...
    for (const sel of sels) expect(sel).not.toBeNull();
    const rows = sels.map((sel) => Array.from(sel!.full[0]));
    // ... each within its share of 20% of 40 old tokens, and the sum over layers within the summed budget.
    const share = Math.floor(0.2 * 41) - 1;
    for (const r of rows) {
      expect(r.length).toBe(share);
      expect(r.every((x) => x >= 0 && x < 40)).toBe(true);
    }
    expect(rows.reduce((a, r) => a + r.length + 1, 0)).toBeLessThanOrEqual(3 * Math.floor(0.2 * 41));
    expect(rows[0]).toEqual([33, 34, 35, 36, 37, 38, 39]);
    // Layer 2 follows the filter layer's attention of this step: its top tokens.
    expect(rows[2].sort((a, b) => a - b)).toEqual([17, 25, 30, 31, 33, 36, 38]);
  });
});

describe("SpecKV passes the conformance kit with a draft model", () => {
  it("defaults", async () => {
    const model = await conformancePair();
    const r = await runConformance(specKv, { model, options: { lookahead: 4 } });
    expect(r.failures).toEqual([]);
  });
});
