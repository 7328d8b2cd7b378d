import type { AttentionObservation, ModelConfig, Sequence } from "@smallkv/runner";
import { describe, expect, it } from "vitest";
import {
  Budget,
  BudgetError,
  h2o,
  PolicyOptionError,
  pod,
  pyramidInfer,
  pyramidKv,
  snapKv,
  streamingLlm,
  tova,
} from "../src/index.js";

// A fake sequence: the SDK only needs the config (and the object as a state key).
const config = { numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 8 } as ModelConfig;
const fakeSeq = () => ({ id: Math.random(), config }) as unknown as Sequence;

/** An observation whose fused scores are `perPos(position)` for every query head. */
function obs(
  layer: number,
  start: number,
  T: number,
  perPos: (p: number) => number,
  probs = false,
): AttentionObservation {
  const L = start + T;
  const rows = new Float32Array(config.numHeads * L);
  for (let h = 0; h < config.numHeads; h++) for (let p = 0; p < L; p++) rows[h * L + p] = perPos(p);
  const keyPositions = Array.from({ length: config.numKvHeads }, () =>
    Int32Array.from({ length: L }, (_, i) => i),
  );
  return probs
    ? { layer, start, T, probs: rows, Lmax: L, keyPositions }
    : { layer, start, T, scores: rows, Lmax: L, keyPositions };
}

const list = (a: Int32Array) => Array.from(a);

describe("budgets", () => {
  it("parses fractions, percentages and token counts", () => {
    expect(Budget.parse("0.2").tokensAt(100)).toBe(20);
    expect(Budget.parse("20%").tokensAt(55)).toBe(11);
    expect(Budget.parse(128).tokensAt(10_000)).toBe(128);
    expect(Budget.parse("1").coversAll(500)).toBe(true);
    expect(Budget.parse(0.05).tokensAt(3)).toBe(1);
  });
  it("rejects out-of-range budgets with a typed error", () => {
    for (const b of [0, -1, "abc", "", 1.5, "150%", "2.5", Number.NaN])
      expect(() => Budget.parse(b as string)).toThrow(BudgetError);
  });
  it("rejects unknown options and badly typed values", () => {
    expect(() => h2o.create({ budget: 0.2, options: { nope: 1 } as never })).toThrow(PolicyOptionError);
    expect(() => streamingLlm.create({ budget: 0.2, options: { sinks: "four" } })).toThrow(
      /must be a number/,
    );
  });
});

describe("StreamingLLM", () => {
  it("keeps exactly the sinks and the recent window", () => {
    const p = streamingLlm.create({ budget: 20 });
    const sel = p.select!(fakeSeq(), 0, { start: 100, T: 1 })!;
    expect(list(sel.full[0])).toEqual([0, 1, 2, 3, ...Array.from({ length: 15 }, (_, i) => 85 + i)]);
    expect(list(sel.full[1])).toEqual(list(sel.full[0]));
  });
});

describe("H2O", () => {
  it("keeps the heavy hitters and the recent window, and evicts for good", () => {
    const p = h2o.create({ budget: 9 });
    const seq = fakeSeq();
    const heavy = new Set([10, 50, 70, 33]);
    p.observe!(
      seq,
      obs(0, 0, 100, (pos) => (heavy.has(pos) ? 5 : pos === 20 ? 2 : 0.01)),
    );
    const sel = p.select!(seq, 0, { start: 100, T: 1 })!;
    // old budget 8: 4 heavy + 4 recent
    expect(list(sel.full[0])).toEqual([10, 33, 50, 70, 96, 97, 98, 99]);
    // Position 20 now gets huge attention, but it was evicted: it never returns.
    p.observe!(
      seq,
      obs(0, 100, 1, (pos) => (pos === 20 ? 100 : 0)),
    );
    const next = p.select!(seq, 0, { start: 101, T: 1 })!;
    expect(list(next.full[0])).not.toContain(20);
    expect(list(next.full[0])).toEqual([10, 33, 50, 70, 97, 98, 99, 100]);
  });
});

describe("SnapKV and PyramidKV", () => {
  it("SnapKV keeps the observation window, generated tokens and the best pooled votes", () => {
    const p = snapKv.create({ budget: 12, options: { window: 4, kernel: 3 } });
    const seq = fakeSeq();
    // Prompt of 40 tokens: strong votes around position 10 (pooling spreads them to 9 and 11).
    p.observe!(
      seq,
      obs(1, 0, 40, (pos) => (pos === 10 ? 9 : pos === 30 ? 1 : 0)),
    );
    const sel = p.select!(seq, 1, { start: 43, T: 1 })!;
    // old budget 11 = window [36,40) + generated [40,43) + 4 prompt picks
    expect(list(sel.full[0])).toEqual([9, 10, 11, 29, 36, 37, 38, 39, 40, 41, 42]);
  });

  it("PyramidKV's layer budgets decrease linearly with depth and keep the same total", () => {
    const p = pyramidKv.create({ budget: 0.25 });
    const budgets = [0, 1, 2, 3].map((l) => p.layerBudget(l, 400, 4));
    expect(budgets[0]).toBeGreaterThan(budgets[1]);
    expect(budgets[1]).toBeGreaterThan(budgets[2]);
    expect(budgets[2]).toBeGreaterThan(budgets[3]);
    expect(budgets.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(4 * 100);
    expect(budgets.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(4 * 100 - 4);
    expect(budgets[3]).toBe(Math.floor(100 / 20)); // beta = 20
  });
});

describe("PyramidInfer", () => {
  it("retention shrinks with depth and recent attention weighs more", () => {
    const p = pyramidInfer.create({ budget: 0.3, options: { decay: 0.5, recentRatio: 0 } });
    const b = [0, 1, 2, 3].map((l) => p.layerBudget(l, 100, 4));
    expect(b[0]).toBeGreaterThan(b[3]);
    const seq = fakeSeq();
    p.observe!(
      seq,
      obs(0, 0, 50, (pos) => (pos === 5 ? 4 : 0)),
    );
    // Later decode rows attend to position 7 only; with decay 0.5 position 7 overtakes 5.
    for (let s = 50; s < 54; s++)
      p.observe!(
        seq,
        obs(0, s, 1, (pos) => (pos === 7 ? 3 : 0)),
      );
    const budget0 = p.layerBudget(0, 55, 4) - 1;
    const sel = p.select!(seq, 0, { start: 54, T: 1 })!;
    expect(sel.full[0].length).toBe(budget0);
    expect(list(sel.full[0])).toContain(7);
    expect(list(sel.full[0])).toContain(5);
  });
});

describe("TOVA", () => {
  it("drops the token the current query attends to least (mean over heads), once per layer", () => {
    const p = tova.create({ budget: 6 });
    const seq = fakeSeq();
    p.observe!(
      seq,
      obs(2, 0, 6, (pos) => [0.3, 0.05, 0.2, 0.1, 0.15, 0.2][pos]),
    );
    const sel = p.select!(seq, 2, { start: 6, T: 1 })!;
    expect(list(sel.full[0])).toEqual([0, 2, 3, 4, 5]); // position 1 had the lowest attention
    expect(list(sel.full[1])).toEqual(list(sel.full[0]));
    p.observe!(
      seq,
      obs(2, 6, 1, (pos) => [0.3, 0, 0.2, 0.01, 0.15, 0.2, 0.14][pos]),
    );
    const next = p.select!(seq, 2, { start: 7, T: 1 })!;
    expect(list(next.full[0])).toEqual([0, 2, 4, 5, 6]); // 3 drops next
  });
});

describe("PoD", () => {
  it("the block's first layer keeps distant tokens' K+V, the next layer V only with the first layer's weights", () => {
    const p = pod.create({ budget: 16, options: { sinks: 2, recentRatio: 0.25 } });
    const seq = fakeSeq();
    const distant = new Set([10, 20, 30, 40, 50, 60]);
    p.observe!(
      seq,
      obs(0, 0, 100, (pos) => (distant.has(pos) ? 1 : 0.001)),
    );
    const first = p.select!(seq, 0, { start: 100, T: 1 })!;
    // old budget 15: proximal = 2 sinks + 3 recent; distant k = (15-5)*2/1.5 = 13
    expect(first.full[0].length).toBe(5 + 13);
    for (const d of distant) expect(list(first.full[0])).toContain(d);
    // The first layer's attention at this step, over its hot keys (proximal + distant + new).
    const keys = Int32Array.from([...first.full[0], 100]);
    const probs = new Float32Array(config.numHeads * keys.length).map((_, i) => (i % keys.length) / 1000);
    p.observe!(seq, { layer: 0, start: 100, T: 1, probs, Lmax: keys.length, keyPositions: [keys, keys] });
    const second = p.select!(seq, 1, { start: 100, T: 1 })!;
    expect(second.full[0].length).toBe(5);
    expect(second.vOnly![0].length).toBe(13);
    expect(second.combine).toBe("mass");
    const w = p.vOnlyWeights!(seq, 1, { start: 100, T: 1 }, second);
    // Weight of the i-th V-only token = the first layer's probability of that position.
    const col = (pos: number) => list(keys).indexOf(pos);
    second.vOnly![0].forEach((pos, i) => expect(w[i]).toBeCloseTo(col(pos) / 1000, 6));
  });
});
