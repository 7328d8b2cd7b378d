import { describe, expect, it } from "vitest";
import {
  attention,
  attentionBatch,
  indexedAttention,
  kvGather,
  kvWrite,
  kvWriteQ8,
  mixedAttention,
  reference,
  rope,
  scatterAdd,
  sum,
  TensorShapeError,
  topk,
  topkRagged,
  topPositions,
} from "../src/index.js";
import { maxAbsDiff, randn, rng } from "./rand.js";

describe("rope", () => {
  for (const [T, H, D] of [
    [1, 1, 8],
    [7, 3, 8],
    [5, 4, 64],
    [3, 2, 128],
  ]) {
    it(`matches the reference for T=${T} H=${H} D=${D}`, () => {
      const r = rng(T * 100 + D);
      const x = randn(T * H * D, r);
      const pos = Int32Array.from({ length: T }, (_, i) => i * 37 + 3);
      const y = x.slice();
      rope(x, pos, H, D, 10000);
      reference.ropeRef(y, pos, H, D, 10000);
      expect(maxAbsDiff(x, y)).toBeLessThan(2e-6);
    });
  }

  it("is the identity at position 0 and rotates pairs (i, i+D/2)", () => {
    const x = Float32Array.from([1, 2, 3, 4]);
    rope(x, Int32Array.of(0), 1, 4);
    expect(Array.from(x)).toEqual([1, 2, 3, 4]);
    const y = Float32Array.from([1, 0, 0, 0]);
    rope(y, Int32Array.of(1), 1, 4, 10000);
    expect(y[0]).toBeCloseTo(Math.cos(1), 6);
    expect(y[2]).toBeCloseTo(Math.sin(1), 6);
  });

  it("rejects odd head dims and wrong sizes", () => {
    expect(() => rope(new Float32Array(3), Int32Array.of(0), 1, 3)).toThrow(TensorShapeError);
    expect(() => rope(new Float32Array(7), Int32Array.of(0), 1, 8)).toThrow(/x has 7 elements/);
  });
});

describe("attention", () => {
  const cases: Array<[number, number, number, number, number]> = [];
  // [Hkv, group, D, past, T]: GQA ratios 1/2/4/8, head dims 8/64/128, odd sizes, prefill and decode.
  for (const group of [1, 2, 4, 8]) {
    for (const D of [8, 64, 128]) {
      cases.push([group === 8 ? 1 : 2, group, D, 0, 13]);
      cases.push([3, group, D, 29, 1]);
    }
  }
  cases.push([1, 1, 8, 0, 1]);
  cases.push([2, 3, 8, 5, 3]);
  // Head dims with their own compiled loops (6: stories260K-slm-a) and one without (12).
  cases.push([4, 2, 6, 40, 1], [2, 2, 6, 0, 9], [2, 2, 12, 17, 2]);
  // Head dims 6 and 8 at every group size of their register path (1-4), over 8-key blocks and tails.
  cases.push([1, 4, 6, 21, 3], [3, 3, 6, 8, 2], [2, 1, 6, 15, 1], [1, 3, 8, 16, 1], [2, 1, 8, 7, 4]);

  for (const [Hkv, group, D, past, T] of cases) {
    const Hq = Hkv * group;
    it(`matches the reference: Hq=${Hq} Hkv=${Hkv} D=${D} past=${past} T=${T}`, () => {
      const r = rng(Hq * 1000 + D * 10 + T + past);
      const cap = past + T + 3;
      const q = randn(T * Hq * D, r, 0.5);
      const k = randn(Hkv * cap * D, r, 0.5);
      const v = randn(Hkv * cap * D, r);
      const scores = new Float32Array(Hq * (past + T)).fill(1);
      const got = attention({ q, k, v, cap, T, past, Hq, Hkv, D, probs: true, scores });
      const want = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D });
      expect(got.Lmax).toBe(want.Lmax);
      expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
      expect(maxAbsDiff(got.probs!, want.probs)).toBeLessThan(1e-6);
      expect(
        maxAbsDiff(
          scores.map((s) => s - 1),
          want.scores,
        ),
      ).toBeLessThan(1e-5);
      // Without probs/scores the output is the same (the other code path).
      const plain = attention({ q, k, v, cap, T, past, Hq, Hkv, D });
      expect(maxAbsDiff(plain.out, want.out)).toBeLessThan(1e-5);
    });
  }

  it.each([
    [1, 5],
    [3, 3],
    [4, 20],
    [7, 1],
  ])("a sliding window of %i keys (T=%i) matches the reference: probs, scores, output", (window, T) => {
    const r = rng(window * 100 + T);
    const [Hq, Hkv, D] = [4, 2, 8];
    const past = Int32Array.of(6, 11);
    const cap = 11 + T + 2;
    const Lmax = 11 + T;
    const q = randn(T * Hq * D, r);
    const k = randn(Hkv * cap * D, r);
    const v = randn(Hkv * cap * D, r);
    const scores = new Float32Array(Hq * Lmax);
    const got = attention({ q, k, v, cap, T, past, Hq, Hkv, D, probs: true, scores, window });
    const want = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D, window });
    expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
    expect(maxAbsDiff(got.probs!, want.probs)).toBeLessThan(1e-6);
    expect(maxAbsDiff(scores, want.scores)).toBeLessThan(1e-5);
    expect(maxAbsDiff(attention({ q, k, v, cap, T, past, Hq, Hkv, D, window }).out, want.out)).toBeLessThan(
      1e-5,
    );
    // The window changes the result unless it covers every key.
    const all = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D });
    if (window < 7) expect(maxAbsDiff(all.out, want.out)).toBeGreaterThan(1e-4);
  });

  it("supports a different number of past keys per kv head", () => {
    const r = rng(7);
    const [Hq, Hkv, D, T, cap] = [4, 2, 8, 2, 12];
    const past = Int32Array.of(3, 9);
    const q = randn(T * Hq * D, r);
    const k = randn(Hkv * cap * D, r);
    const v = randn(Hkv * cap * D, r);
    const got = attention({ q, k, v, cap, T, past, Hq, Hkv, D, probs: true });
    const want = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D });
    expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
    expect(maxAbsDiff(got.probs!, want.probs)).toBeLessThan(1e-6);
  });

  it("each probability row sums to 1 and is causal", () => {
    const r = rng(3);
    const [Hq, Hkv, D, T] = [2, 1, 8, 6];
    const { probs, Lmax } = attention({
      q: randn(T * Hq * D, r),
      k: randn(T * D, r),
      v: randn(T * D, r),
      cap: T,
      T,
      past: 0,
      Hq,
      Hkv,
      D,
      probs: true,
    });
    for (let h = 0; h < Hq; h++) {
      for (let t = 0; t < T; t++) {
        const row = probs!.subarray((h * T + t) * Lmax, (h * T + t + 1) * Lmax);
        expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
        for (let j = t + 1; j < Lmax; j++) expect(row[j]).toBe(0);
      }
    }
  });

  it("rejects bad shapes with a typed error", () => {
    const base = {
      q: new Float32Array(8),
      k: new Float32Array(16),
      v: new Float32Array(16),
      cap: 2,
      T: 1,
      past: 1,
      Hq: 1,
      Hkv: 1,
      D: 8,
    };
    expect(() => attention({ ...base, past: 2 })).toThrow(/exceeds the store capacity/);
    expect(() => attention({ ...base, Hq: 3, Hkv: 2 })).toThrow(TensorShapeError);
    expect(() => attention({ ...base, q: new Float32Array(4) })).toThrow(/q has 4 elements/);
    expect(() => attention({ ...base, k: new Float64Array(16) as unknown as Float32Array })).toThrow(
      /Float32Array/,
    );
  });
});

describe("kv write/gather", () => {
  it("kvWrite matches the reference", () => {
    const r = rng(11);
    const [cap, Hkv, D] = [9, 3, 8];
    const src = randn(4 * Hkv * D, r);
    const dst = Int32Array.of(0, 5, 2, 8);
    const a = new Float32Array(Hkv * cap * D);
    const b = new Float32Array(Hkv * cap * D);
    kvWrite(a, cap, Hkv, D, src, dst);
    reference.kvWriteRef(b, cap, Hkv, D, src, dst);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(() => kvWrite(a, cap, Hkv, D, src, Int32Array.of(0, 1, 2, 9))).toThrow(/outside/);
  });

  it("kvGather matches the reference with per-head counts and offsets", () => {
    const r = rng(12);
    const [scap, dcap, Hkv, D] = [17, 10, 3, 64];
    const src = randn(Hkv * scap * D, r);
    const idx = Int32Array.of(16, 0, 3, 5, 7, 1, 2, 3, 4);
    const off = Int32Array.of(0, 3, 3, 9);
    const start = Int32Array.of(1, 0, 4);
    const a = new Float32Array(Hkv * dcap * D);
    const b = new Float32Array(Hkv * dcap * D);
    kvGather(src, scap, a, dcap, Hkv, D, idx, off, start);
    reference.kvGatherRef(src, scap, b, dcap, Hkv, D, idx, off, start);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(() => kvGather(src, scap, a, dcap, Hkv, D, Int32Array.of(17), Int32Array.of(0, 1, 1, 1))).toThrow(
      /outside/,
    );
    expect(() => kvGather(src, scap, a, 2, Hkv, D, idx, off)).toThrow(/capacity/);
  });
});

describe("topk", () => {
  it("matches the reference on random rows, ties to the lower index", () => {
    const r = rng(5);
    for (const [rows, n, k] of [
      [1, 1, 1],
      [3, 17, 5],
      [4, 1000, 100],
      [2, 9, 9],
    ]) {
      const x = randn(rows * n, r).map((v) => Math.round(v * 8) / 8); // many ties
      expect(Array.from(topk(x, n, k, rows))).toEqual(Array.from(reference.topkRef(x, n, k, rows)));
    }
    expect(topk(new Float32Array(5), 5, 0).length).toBe(0);
    expect(() => topk(new Float32Array(5), 5, 6)).toThrow(TensorShapeError);
  });
});

describe("topkRagged", () => {
  it("equals topk row by row on rows of different lengths (ties, empty rows, k = len)", () => {
    const r = rng(13);
    const stride = 40;
    const lens = Int32Array.of(1, 40, 17, 0, 33, 5);
    const ks = Int32Array.of(1, 8, 17, 0, 1, 5);
    const x = randn(lens.length * stride, r).map((v) => Math.round(v * 4) / 4);
    const got = topkRagged(x, stride, lens, ks);
    lens.forEach((n, i) => {
      const row = x.slice(i * stride, i * stride + n);
      expect(Array.from(got[i])).toEqual(Array.from(reference.topkRef(row, n, ks[i])));
    });
    expect(() => topkRagged(x, stride, Int32Array.of(41), Int32Array.of(1))).toThrow(TensorShapeError);
    expect(() => topkRagged(x, stride, Int32Array.of(3), Int32Array.of(4))).toThrow(TensorShapeError);
  });
});

describe("topPositions", () => {
  it("matches the reference: f32 and f64 scores, exclusions, ties, NaN, k above what is left", () => {
    const r = rng(9);
    for (const [n, k, excludeShare] of [
      [1, 1, 0],
      [17, 5, 0.3],
      [1000, 100, 0.5],
      [512, 600, 0.2],
      [64, 64, 0],
      [300, 7, 0.99],
    ]) {
      const f32 = randn(n, r).map((v) => Math.round(v * 8) / 8); // many ties
      if (n > 10) f32[3] = Number.NaN;
      // f64 scores that differ only below float32 precision rank as ties.
      const f64 = Float64Array.from(f32, (v, i) => v + (i % 3) * 1e-12);
      const exclude = Uint8Array.from({ length: n }, () => (r() < excludeShare ? 1 : 0));
      for (const scores of [f32, f64]) {
        expect(Array.from(topPositions(scores, n, k, exclude))).toEqual(
          Array.from(reference.topPositionsRef(scores, n, k, exclude)),
        );
        expect(Array.from(topPositions(scores, n, k))).toEqual(
          Array.from(reference.topPositionsRef(scores, n, k)),
        );
        expect(Array.from(topPositions(scores, n, k, exclude, true))).toEqual(
          Array.from(reference.topPositionsRef(scores, n, k, exclude, true)),
        );
      }
    }
  });

  it("refuses wrong inputs", () => {
    expect(topPositions(new Float32Array(5), 5, 0).length).toBe(0);
    expect(() => topPositions(new Float32Array(4), 5, 1)).toThrow(TensorShapeError);
    expect(() => topPositions(new Float32Array(5), 5, 1, new Uint8Array(2))).toThrow(/exclude/);
    expect(() => topPositions([1, 2] as unknown as Float32Array, 2, 1)).toThrow(/Float64Array/);
  });
});

describe("sum", () => {
  it("matches the reference for odd lengths", () => {
    const r = rng(9);
    for (const n of [0, 1, 15, 16, 17, 100_003]) {
      const x = randn(n, r);
      expect(sum(x)).toBeCloseTo(reference.sumRef(x), 3);
    }
  });
});

describe("mixed attention (exact over C ∪ R plus weighted V-only rows)", () => {
  const cases: Array<[string, number, number, number, number[], number[], number]> = [
    // name, Hkv, group, D, past per kv head, V-only count per kv head, T
    ["GQA 2, both parts", 2, 2, 8, [7, 4], [5, 3], 1],
    ["GQA 4, D 64", 2, 4, 64, [11, 11], [9, 2], 1],
    ["MHA, D 128, prefill rows", 3, 1, 128, [3, 5, 0], [4, 0, 6], 3],
    ["empty M (no V-only rows)", 2, 2, 8, [6, 6], [0, 0], 1],
    ["empty C (only the new token is exact)", 2, 4, 8, [0, 0], [7, 3], 1],
  ];
  for (const [name, Hkv, group, D, pastArr, counts, T] of cases) {
    for (const mode of ["literal", "mass"] as const) {
      it(`${name}, ${mode} mode, matches the reference to 1e-5`, () => {
        const r = rng(name.length * 31 + (mode === "mass" ? 1 : 0));
        const Hq = Hkv * group;
        const past = Int32Array.from(pastArr);
        const cap = Math.max(...pastArr) + T + 2;
        const vcap = Math.max(1, ...counts) + 1;
        const vmax = Math.max(0, ...counts);
        const q = randn(T * Hq * D, r);
        const k = randn(Hkv * cap * D, r, 0.5);
        const v = randn(Hkv * cap * D, r);
        const vOnly = {
          v: randn(Hkv * vcap * D, r),
          cap: vcap,
          counts: Int32Array.from(counts),
          weights: randn(Hq * T * Math.max(vmax, 1), r).map((x) => Math.abs(x) * 0.05),
          mode,
        };
        const scores = new Float32Array(Hq * (Math.max(...pastArr) + T));
        const got = mixedAttention({
          q,
          k,
          v,
          cap,
          T,
          past,
          Hq,
          Hkv,
          D,
          vOnly,
          scores,
          probs: true,
          scoreStart: T - 1,
        });
        const want = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D, vOnly, scoreStart: T - 1 });
        expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
        expect(maxAbsDiff(scores, want.scores)).toBeLessThan(1e-5);
        // The V-only part really contributes (unless M is empty).
        const exact = attention({ q, k, v, cap, T, past, Hq, Hkv, D });
        if (vmax > 0) expect(maxAbsDiff(got.out, exact.out)).toBeGreaterThan(1e-3);
        else if (mode === "literal") expect(maxAbsDiff(got.out, exact.out)).toBe(0);
      });
    }
  }

  it("mass mode with weights summing to 1 ignores the exact part", () => {
    const [Hq, Hkv, D, T, cap] = [1, 1, 8, 1, 4];
    const r = rng(77);
    const vOnly = {
      v: randn(3 * D, r),
      cap: 3,
      counts: Int32Array.of(2),
      weights: Float32Array.of(0.25, 0.75),
      mode: "mass" as const,
    };
    const { out } = mixedAttention({
      q: randn(D, r),
      k: randn(cap * D, r),
      v: randn(cap * D, r),
      cap,
      T,
      past: 2,
      Hq,
      Hkv,
      D,
      vOnly,
    });
    for (let d = 0; d < D; d++) expect(out[d]).toBeCloseTo(0.25 * vOnly.v[d] + 0.75 * vOnly.v[D + d], 5);
  });

  it("rejects V-only weights of the wrong size", () => {
    const vOnly = {
      v: new Float32Array(16),
      cap: 2,
      counts: Int32Array.of(2),
      weights: new Float32Array(1),
      mode: "mass" as const,
    };
    expect(() =>
      mixedAttention({
        q: new Float32Array(8),
        k: new Float32Array(16),
        v: new Float32Array(16),
        cap: 2,
        T: 1,
        past: 1,
        Hq: 1,
        Hkv: 1,
        D: 8,
        vOnly,
      }),
    ).toThrow(/vOnly.weights/);
  });
});

describe("attentionBatch", () => {
  // Jobs of different shapes in one call (every sequence of a layer): big enough that the
  // batch runs in parallel, with per-head pasts, windows, V-only rows, probs and scores.
  const shapes: Array<{
    Hkv: number;
    group: number;
    D: number;
    past: number[];
    T: number;
    window?: number;
    vOnly?: number[];
  }> = [
    { Hkv: 4, group: 3, D: 64, past: [700, 650, 701, 10], T: 1 },
    { Hkv: 2, group: 4, D: 32, past: [0, 0], T: 40 },
    { Hkv: 4, group: 3, D: 64, past: [100, 99, 98, 97], T: 1, vOnly: [20, 0, 13, 31] },
    { Hkv: 1, group: 8, D: 16, past: [300], T: 3, window: 64 },
    { Hkv: 2, group: 1, D: 8, past: [2, 5], T: 2 },
  ];
  const make = (seed: number) =>
    shapes.map((s, i) => {
      const r = rng(seed * 100 + i);
      const Hq = s.Hkv * s.group;
      const cap = Math.max(...s.past) + s.T + 1;
      const Lmax = Math.max(...s.past) + s.T;
      const vcap = Math.max(1, ...(s.vOnly ?? [0]));
      const vmax = Math.max(0, ...(s.vOnly ?? [0]));
      return {
        q: randn(s.T * Hq * s.D, r, 0.5),
        k: randn(s.Hkv * cap * s.D, r, 0.5),
        v: randn(s.Hkv * cap * s.D, r),
        cap,
        T: s.T,
        past: Int32Array.from(s.past),
        Hq,
        Hkv: s.Hkv,
        D: s.D,
        window: s.window,
        scores: i % 2 === 0 ? new Float32Array(Hq * Lmax) : undefined,
        probs: i % 2 === 1 ? true : undefined,
        vOnly: s.vOnly
          ? {
              v: randn(s.Hkv * vcap * s.D, r),
              cap: vcap,
              counts: Int32Array.from(s.vOnly),
              weights: randn(Hq * s.T * vmax, r).map((x) => Math.abs(x) * 0.01),
              mode: "mass" as const,
            }
          : undefined,
      };
    });

  it("each job equals the reference (output, probs, scores)", () => {
    const jobs = make(1);
    const got = attentionBatch(jobs);
    jobs.forEach((j, i) => {
      const want = reference.attentionRef({ ...j, scoreStart: 0 });
      expect(got[i].Lmax).toBe(want.Lmax);
      expect(maxAbsDiff(got[i].out, want.out)).toBeLessThan(1e-5);
      if (j.scores) expect(maxAbsDiff(j.scores, want.scores)).toBeLessThan(1e-5);
      if (j.probs) expect(maxAbsDiff(got[i].probs!, want.probs)).toBeLessThan(1e-6);
    });
  });

  it("each job equals attention of the same arguments, and an empty batch does nothing", () => {
    const a = make(2);
    const b = make(2);
    const batched = attentionBatch(a);
    b.forEach((j, i) => expect(maxAbsDiff(attention(j).out, batched[i].out)).toBeLessThan(1e-6));
    expect(attentionBatch([])).toEqual([]);
  });

  it("a bad job is refused with its index before anything runs", () => {
    const jobs = make(3);
    expect(() => attentionBatch([jobs[0], { ...jobs[1], past: Int32Array.of(1e6, 0) }])).toThrow(
      /attentionBatch\[1\].*past\[0\]/,
    );
    // The good job before it did not run either: its scores are still zero.
    expect(jobs[0].scores!.every((x) => x === 0)).toBe(true);
  });
});

describe("indexedAttention", () => {
  // Selections read straight from the store: per-kv-head and per-query-head lists, V-only
  // rows, prefill-style T > 1, empty lists; batched with a plain job.
  const cases: Array<{
    name: string;
    Hkv: number;
    group: number;
    D: number;
    lists: "kv" | "q";
    n: number;
    T: number;
    vOnly: boolean;
  }> = [
    { name: "decode, GQA 3, V-only", Hkv: 4, group: 3, D: 64, lists: "kv", n: 600, T: 1, vOnly: true },
    { name: "per query head lists", Hkv: 2, group: 4, D: 16, lists: "q", n: 90, T: 1, vOnly: true },
    { name: "T = 5, no V-only", Hkv: 2, group: 2, D: 8, lists: "kv", n: 40, T: 5, vOnly: false },
    { name: "an empty list", Hkv: 3, group: 1, D: 8, lists: "kv", n: 12, T: 2, vOnly: true },
    // No old token kept at all (a tiny budget): only the step's own rows are read.
    { name: "every list empty", Hkv: 2, group: 2, D: 8, lists: "kv", n: 10, T: 1, vOnly: false },
  ];
  for (const c of cases) {
    it(`${c.name}: equals the reference (output, probs, scores)`, () => {
      const r = rng(c.n + c.T * 7 + c.D);
      const Hq = c.Hkv * c.group;
      const lists = c.lists === "kv" ? c.Hkv : Hq;
      const cap = c.n + c.T + 3;
      const k = randn(c.Hkv * cap * c.D, r, 0.5);
      const v = randn(c.Hkv * cap * c.D, r);
      const q = randn(c.T * Hq * c.D, r, 0.5);
      const pick = (i: number, share: number) =>
        Int32Array.from({ length: c.n }, (_, p) => p).filter(
          () => r() < share && !(c.name === "an empty list" && i === 1) && c.name !== "every list empty",
        );
      const build = (share: number, avoid?: Int32Array[]) => {
        const ls = Array.from({ length: lists }, (_, i) =>
          pick(i, share).filter((p) => !avoid?.[i].includes(p)),
        );
        const off = new Int32Array(lists + 1);
        ls.forEach((l, i) => {
          off[i + 1] = off[i] + l.length;
        });
        // Lists need not be sorted: shuffle one to check order is the caller's.
        const idx = new Int32Array(off[lists]);
        ls.forEach((l, i) => idx.set(i === 0 ? l.slice().reverse() : l, off[i]));
        return { ls, idx, off };
      };
      const full = build(0.3);
      const vo = c.vOnly ? build(0.2, full.ls) : null;
      const vmax = vo ? Math.max(0, ...vo.ls.map((l) => l.length)) : 0;
      const vOnly = vo
        ? {
            idx: vo.idx,
            off: vo.off,
            weights: randn(Hq * c.T * vmax, r).map((x) => Math.abs(x) * 0.01),
            mode: "mass" as const,
          }
        : undefined;
      const args = {
        q,
        k,
        v,
        cap,
        T: c.T,
        Hq,
        Hkv: c.Hkv,
        D: c.D,
        lists,
        idx: full.idx,
        off: full.off,
        newAt: c.n,
        vOnly,
      };
      const scores = new Float32Array(Hq * (Math.max(...full.ls.map((l) => l.length)) + c.T));
      const got = indexedAttention({ ...args, probs: true, scores });
      const want = reference.indexedAttentionRef(args);
      expect(got.Lmax).toBe(want.Lmax);
      expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
      expect(maxAbsDiff(got.probs!, want.probs)).toBeLessThan(1e-6);
      expect(maxAbsDiff(scores, want.scores)).toBeLessThan(1e-5);
      // In a batch beside a plain job, the same answer.
      const [again] = attentionBatch([args, { q, k, v, cap, T: 1, past: 3, Hq, Hkv: c.Hkv, D: c.D }]);
      expect(maxAbsDiff(again.out, want.out)).toBeLessThan(1e-6);
    });
  }

  it("refuses slots at or after the step's rows, bad offsets and list counts", () => {
    const [Hq, Hkv, D, cap] = [2, 1, 4, 10];
    const base = {
      q: new Float32Array(Hq * D),
      k: new Float32Array(cap * D),
      v: new Float32Array(cap * D),
      cap,
      T: 1,
      Hq,
      Hkv,
      D,
      lists: 1,
      newAt: 5,
    };
    expect(() => indexedAttention({ ...base, idx: Int32Array.of(5), off: Int32Array.of(0, 1) })).toThrow(
      /slot 5/,
    );
    expect(() => indexedAttention({ ...base, idx: Int32Array.of(1), off: Int32Array.of(0, 2) })).toThrow(
      /offsets/,
    );
    expect(() => indexedAttention({ ...base, idx: Int32Array.of(1), off: Int32Array.of(1, 1) })).toThrow(
      /start at 0/,
    );
    expect(() =>
      indexedAttention({ ...base, lists: 3, idx: Int32Array.of(), off: Int32Array.of(0, 0, 0, 0) }),
    ).toThrow(/lists/);
    expect(() =>
      indexedAttention({ ...base, newAt: 10, idx: Int32Array.of(), off: Int32Array.of(0, 0) }),
    ).toThrow(/newAt/);
  });
});

describe("scatterAdd", () => {
  it("equals the reference bit for bit (repeated positions, several rows, a weight) and refuses bad bounds", () => {
    const r = rng(77);
    const src = Float32Array.from({ length: 3 * 50 + 9 }, () => r());
    const pos = Int32Array.from({ length: 40 }, () => Math.floor(r() * 30));
    const a = Float64Array.from({ length: 30 }, () => r());
    const b = a.slice();
    scatterAdd(a, pos, src, 9, 3, 50, 0.7);
    reference.scatterAddRef(b, pos, src, 9, 3, 50, 0.7);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(() => scatterAdd(a, pos, src, 9, 4, 50)).toThrow(/outside src/);
    expect(() => scatterAdd(a, Int32Array.of(30), src, 0, 1, 0)).toThrow(/outside acc/);
  });
});

describe("int8 KV store", () => {
  const make = (Hkv: number, cap: number, D: number, seed: number) => {
    const r = rng(seed);
    const src = randn(cap * Hkv * D, r, 0.7);
    // A zero row and a row with one large value: the scale rules at their edges.
    src.fill(0, 0, D);
    src[Hkv * D + 3] = 40;
    const store = {
      k: new Int8Array(Hkv * cap * D),
      v: new Int8Array(Hkv * cap * D),
      kScale: new Float32Array(Hkv * cap),
      vScale: new Float32Array(Hkv * cap),
    };
    const dst = Int32Array.from({ length: cap }, (_, i) => i);
    kvWriteQ8(store.k, store.kScale, cap, Hkv, D, src, dst);
    kvWriteQ8(
      store.v,
      store.vScale,
      cap,
      Hkv,
      D,
      src.map((x) => -x * 0.5),
      dst,
    );
    return { store, src, r };
  };

  it("kvWriteQ8 equals the reference bit for bit, and stays within half a step of the floats", () => {
    const [Hkv, cap, D] = [3, 21, 16];
    const { store, src } = make(Hkv, cap, D, 3);
    const want = { k: new Int8Array(Hkv * cap * D), s: new Float32Array(Hkv * cap) };
    reference.kvWriteQ8Ref(
      want.k,
      want.s,
      cap,
      Hkv,
      D,
      src,
      Int32Array.from({ length: cap }, (_, i) => i),
    );
    expect(Array.from(store.k)).toEqual(Array.from(want.k));
    expect(Array.from(store.kScale)).toEqual(Array.from(want.s));
    const { k } = reference.dequantizeStore(store, Hkv, cap, D);
    for (let t = 0; t < cap; t++)
      for (let g = 0; g < Hkv; g++)
        for (let d = 0; d < D; d++)
          expect(Math.abs(k[(g * cap + t) * D + d] - src[(t * Hkv + g) * D + d])).toBeLessThanOrEqual(
            store.kScale[g * cap + t] / 2 + 1e-6,
          );
    expect(() => kvWriteQ8(store.k, store.kScale, cap, Hkv, D, src, Int32Array.of(cap))).toThrow(
      TensorShapeError,
    );
  });

  it("attention over an int8 store equals the reference over its dequantized rows (probs, scores, window)", () => {
    const [Hq, Hkv, D, T] = [6, 2, 16, 3];
    const cap = 40;
    const { store, r } = make(Hkv, cap, D, 5);
    const past = Int32Array.of(30, 37);
    const q = randn(T * Hq * D, r, 0.5);
    const f = reference.dequantizeStore(store, Hkv, cap, D);
    for (const window of [0, 9]) {
      const scores = new Float32Array(Hq * (37 + T));
      const got = attention({
        q,
        k: new Float32Array(0),
        v: new Float32Array(0),
        int8: store,
        cap,
        T,
        past,
        Hq,
        Hkv,
        D,
        probs: true,
        scores,
        window,
      });
      const want = reference.attentionRef({ q, k: f.k, v: f.v, cap, T, past, Hq, Hkv, D, window });
      expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
      expect(maxAbsDiff(got.probs!, want.probs)).toBeLessThan(1e-6);
      expect(maxAbsDiff(scores, want.scores)).toBeLessThan(1e-5);
    }
  });

  it("indexedAttention over an int8 store, with V-only rows, equals the reference over its dequantized rows", () => {
    const [Hq, Hkv, D, T] = [8, 2, 16, 1];
    const cap = 64;
    const { store, r } = make(Hkv, cap, D, 7);
    const q = randn(T * Hq * D, r, 0.5);
    const idx = Int32Array.of(0, 5, 9, 30, 2, 44, 17);
    const off = Int32Array.of(0, 4, 7);
    const vIdx = Int32Array.of(1, 3, 50, 6);
    const vOff = Int32Array.of(0, 3, 4);
    const weights = randn(Hq * T * 3, r).map((x) => Math.abs(x) * 0.02);
    const vOnly = { idx: vIdx, off: vOff, weights, mode: "mass" as const };
    const f = reference.dequantizeStore(store, Hkv, cap, D);
    const args = { q, cap, T, Hq, Hkv, D, lists: Hkv, idx, off, newAt: 60, vOnly };
    const got = indexedAttention({
      ...args,
      k: new Float32Array(0),
      v: new Float32Array(0),
      int8: store,
      probs: true,
    });
    const want = reference.indexedAttentionRef({ ...args, k: f.k, v: f.v });
    expect(maxAbsDiff(got.out, want.out)).toBeLessThan(1e-5);
    expect(maxAbsDiff(got.probs!, want.probs)).toBeLessThan(1e-6);
    expect(() => indexedAttention({ ...args, k: new Float32Array(0), v: new Float32Array(0) })).toThrow(
      TensorShapeError,
    );
  });
});
