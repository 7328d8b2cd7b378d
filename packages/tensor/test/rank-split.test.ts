import { describe, expect, it } from "vitest";
import {
  buildInfo,
  kvCopyRows,
  RankSplitBuffers,
  type RankSplitRule,
  rankSplit,
  rankSplitMany,
  reference,
  setThreads,
  TensorShapeError,
} from "../src/index.js";
import { rng } from "./rand.js";

type Case = Parameters<typeof rankSplit>[0];

/** Attention-like rows: `peak` sets how concentrated they are (0: flat). */
function rows(len: number, r: () => number, peak: number, f64: boolean): Float32Array | Float64Array {
  const x = f64 ? new Float64Array(len) : new Float32Array(len);
  for (let i = 0; i < len; i++) x[i] = r() ** (1 + 12 * peak) / 50;
  return x;
}

function randomCase(seed: number, size?: number): Case {
  const r = rng(seed);
  const n = size ?? [0, 1, 5, 64, 300, 1000, 5000][seed % 7];
  const lists = 1 + (seed % 4);
  const sources = Array.from({ length: 1 + (seed % 3) }, (_, i) => rows(3 * n + 7, r, r(), i % 2 === 1));
  const termList: number[] = [];
  const w: number[] = [];
  for (let g = 0; g < lists; g++)
    for (let j = 0; j < 1 + Math.floor(r() * 3); j++) {
      const s = Math.floor(r() * sources.length);
      termList.push(g, s, Math.floor(r() * 8));
      w.push(r() < 0.1 ? 0 : r());
    }
  // Ties (coarse values) and a NaN now and then.
  if (seed % 5 === 0)
    for (const s of sources) for (let i = 0; i < s.length; i++) s[i] = Math.round(s[i] * 400) / 400;
  if (seed % 7 === 0 && n > 3) sources[0][3] = Number.NaN;
  const recent = Math.floor(r() * Math.min(n + 2, 20));
  const units = Float64Array.from({ length: lists }, () =>
    r() < 0.1 ? 0 : r() * n * 0.4 + (r() < 0.5 ? 0.5 : 0),
  );
  const rule: RankSplitRule =
    seed % 3 === 2
      ? {
          kind: "fixed",
          k: Int32Array.from({ length: lists }, () => Math.floor(r() * n * 0.5)),
          exact: Int32Array.from({ length: lists }, () => Math.floor(r() * n * 0.3)),
        }
      : {
          kind: "adaptive",
          units,
          vOnly: Uint8Array.from({ length: lists }, () => (r() < 0.8 ? 1 : 0)),
          exactShare: [0.9, 0.5, 1, 0.99][seed % 4],
          negligible: [0.002, 0, 0.05][seed % 3] / Math.max(1, n / 100),
        };
  return {
    n,
    lists,
    sources,
    terms: Int32Array.from(termList),
    weights: Float64Array.from(w),
    own:
      seed % 2 === 0
        ? {
            assistantWeight: Float64Array.from({ length: lists }, () => (r() < 0.3 ? -1 : r())),
            sums: Array.from({ length: lists }, () => Float64Array.from({ length: n }, () => r())),
            counts: Array.from({ length: lists }, () =>
              Float64Array.from({ length: Math.floor(n * r()) }, () => Math.floor(r() * 4)),
            ),
          }
        : undefined,
    recent,
    exclude:
      seed % 4 === 1
        ? Array.from({ length: lists }, () => Uint8Array.from({ length: n }, () => (r() < 0.3 ? 1 : 0)))
        : undefined,
    skipExcludedRecent: seed % 8 === 1,
    evict: seed % 12 === 1 || seed % 12 === 5,
    rule,
  };
}

const plain = (x: { full: Int32Array[]; vOnly: Int32Array[] }) => ({
  full: x.full.map((l) => Array.from(l)),
  vOnly: x.vOnly.map((l) => Array.from(l)),
});

describe("rankSplit", () => {
  it("equals the reference on 300 random layers (flat and peaked scores, ties, NaN, blends, exclusions, both rules)", () => {
    const buffers = new RankSplitBuffers();
    for (let seed = 0; seed < 300; seed++) {
      const c = randomCase(seed);
      // Eviction writes into the masks: each side gets its own copy.
      const d = { ...c, exclude: c.exclude?.map((m) => m.slice()) };
      expect(plain(rankSplit(c, buffers)), `seed ${seed}`).toEqual(plain(reference.rankSplitRef(d)));
      expect(
        c.exclude?.map((m) => Array.from(m)),
        `seed ${seed} masks`,
      ).toEqual(d.exclude?.map((m) => Array.from(m)));
    }
  });

  it("gives the same lists when the lists of a large layer run on two threads (packed in list order)", () => {
    const before = buildInfo().threads;
    try {
      // 4 lists of 40000 positions: above the parallel threshold (2^17 ranked positions).
      for (const seed of [27, 55, 83, 111, 139, 167]) {
        const c = randomCase(seed, 40000);
        expect(c.n * c.lists).toBeGreaterThanOrEqual(1 << 17);
        const one = { ...c, exclude: c.exclude?.map((m) => m.slice()) };
        const two = { ...c, exclude: c.exclude?.map((m) => m.slice()) };
        setThreads(1);
        const serial = plain(rankSplit(one, new RankSplitBuffers()));
        setThreads(2);
        expect(plain(rankSplit(two, new RankSplitBuffers())), `seed ${seed}`).toEqual(serial);
        expect(two.exclude, `seed ${seed} masks`).toEqual(one.exclude);
      }
      // With masks only the positions they leave count as work: 10% masked leaves 4 x ~36000
      // ranked (threaded), 80% masked leaves 4 x ~8000 (serial); evicting, so the masks change.
      for (const [seed, masked] of [
        [55, 0.1],
        [83, 0.8],
      ]) {
        const c = randomCase(seed, 40000);
        const r = rng(seed + 1);
        const masks = Array.from({ length: c.lists }, () =>
          Uint8Array.from({ length: c.n }, () => (r() < masked ? 1 : 0)),
        );
        const one = { ...c, exclude: masks.map((m) => m.slice()), evict: true, skipExcludedRecent: true };
        const two = { ...c, exclude: masks.map((m) => m.slice()), evict: true, skipExcludedRecent: true };
        setThreads(1);
        const serial = plain(rankSplit(one, new RankSplitBuffers()));
        setThreads(2);
        expect(plain(rankSplit(two, new RankSplitBuffers())), `seed ${seed} masked ${masked}`).toEqual(
          serial,
        );
        expect(two.exclude, `seed ${seed} masked ${masked}: masks`).toEqual(one.exclude);
        expect(
          plain(
            reference.rankSplitRef({
              ...c,
              exclude: masks.map((m) => m.slice()),
              evict: true,
              skipExcludedRecent: true,
            }),
          ),
          `seed ${seed} reference`,
        ).toEqual(serial);
      }
    } finally {
      setThreads(before);
    }
  });

  it("rankSplitMany gives each selection what rankSplit and the reference give, on one thread and on two", () => {
    const before = buildInfo().threads;
    try {
      // 12 selections of up to 4 lists x 5000: above the threshold together, not one by one.
      const cases = Array.from({ length: 12 }, (_, i) => randomCase(300 + 7 * i, 5000));
      for (const threads of [1, 2]) {
        setThreads(threads);
        const mine = cases.map((c) => ({ ...c, exclude: c.exclude?.map((m) => m.slice()) }));
        const refs = cases.map((c) => ({ ...c, exclude: c.exclude?.map((m) => m.slice()) }));
        const got = rankSplitMany(
          mine,
          mine.map(() => new RankSplitBuffers()),
        );
        got.forEach((g, i) => {
          expect(plain(g), `call ${i} threads ${threads}`).toEqual(plain(reference.rankSplitRef(refs[i])));
          expect(mine[i].exclude, `call ${i} masks`).toEqual(refs[i].exclude);
        });
      }
    } finally {
      setThreads(before);
    }
    expect(() => rankSplitMany([randomCase(1, 10)], [])).toThrow(TensorShapeError);
  });

  it("selects exactly when a strided sample of the scores misleads (large lists bracket the rank with a sample)", () => {
    const n = 4096;
    const recent = 2;
    const m = n - recent;
    // The sampled candidates are all the largest: the bracket misses and the selection falls back.
    const misled = new Float64Array(n).map((_, p) => ((p * 7919) % 1000) / 1e4);
    for (let i = 0; i < 128; i++) misled[Math.floor((i * m) / 128)] = 1;
    // All equal: ties go to the earlier positions. And few distinct values: ties inside the bracket.
    const equal = new Float64Array(n).fill(0.25);
    const coarse = new Float64Array(n).map((_, p) => (p * 31) % 5);
    for (const scores of [misled, equal, coarse])
      for (const k of [1, 300, 800, 2000, 4000]) {
        const c: Case = {
          n,
          lists: 1,
          sources: [scores],
          terms: Int32Array.of(0, 0, 0),
          weights: Float64Array.of(1),
          recent,
          rule: { kind: "fixed", k: Int32Array.of(k), exact: Int32Array.of(Math.floor(k / 2)) },
        };
        expect(plain(rankSplit(c, new RankSplitBuffers())), `k ${k}`).toEqual(
          plain(reference.rankSplitRef(c)),
        );
      }
  });

  it("splits by predicted mass: a peaked list gets few exact tokens and V-only ones after them", () => {
    const n = 100;
    const s = new Float64Array(n).fill(0.001);
    s[10] = 0.5;
    s[20] = 0.3;
    s[30] = 0.05;
    const out = rankSplit({
      n,
      lists: 1,
      sources: [s],
      terms: Int32Array.of(0, 0, 0),
      weights: Float64Array.of(1),
      recent: 2,
      rule: {
        kind: "adaptive",
        units: Float64Array.of(10),
        vOnly: Uint8Array.of(1),
        exactShare: 0.9,
        negligible: 0.002,
      },
    });
    // 0.5 + 0.3 + 0.05 reach 90% of the candidates' mass; the 0.001s are negligible, so the
    // budget left goes back to exact tokens (ties to the earlier position), then the recent two.
    expect(Array.from(out.full[0])).toEqual([0, 1, 2, 3, 4, 5, 6, 10, 20, 30, 98, 99]);
    expect(out.vOnly[0].length).toBe(0);
  });

  it("evicts for good: what is not chosen below the window is excluded next time, evicted window slots go to ranked tokens", () => {
    const n = 8;
    const scores = Float64Array.of(0.1, 0.9, 0.2, 0.8, 0.3, 0.05, 0.5, 0.4);
    const mask = Uint8Array.of(0, 0, 0, 0, 0, 0, 1, 0); // position 6 (in the window) was evicted
    const step = () =>
      rankSplit({
        n,
        lists: 1,
        sources: [scores],
        terms: Int32Array.of(0, 0, 0),
        weights: Float64Array.of(1),
        recent: 2,
        exclude: [mask],
        skipExcludedRecent: true,
        evict: true,
        rule: { kind: "fixed", k: Int32Array.of(2), exact: Int32Array.of(2) },
      }).full[0];
    // Window {6, 7}: 6 is gone, so 3 heavy hitters instead of 2.
    expect(Array.from(step())).toEqual([1, 3, 4, 7]);
    expect(Array.from(mask)).toEqual([1, 0, 1, 0, 0, 1, 1, 0]);
    scores[0] = 5; // a higher score cannot bring an evicted token back
    expect(Array.from(step())).toEqual([1, 3, 4, 7]);
  });

  it("rejects terms outside their sources and wrong rules with a typed error", () => {
    const base: Case = {
      n: 10,
      lists: 1,
      sources: [new Float32Array(10)],
      terms: Int32Array.of(0, 0, 1),
      weights: Float64Array.of(1),
      recent: 0,
      rule: { kind: "fixed", k: Int32Array.of(3), exact: Int32Array.of(3) },
    };
    expect(() => rankSplit(base)).toThrow(TensorShapeError);
    expect(() => rankSplit({ ...base, terms: Int32Array.of(1, 0, 0) })).toThrow(/list 1/);
    expect(() => rankSplit({ ...base, terms: Int32Array.of(0, 0, 0), rule: { kind: "x" } as never })).toThrow(
      /rule.kind/,
    );
    expect(() => rankSplit({ ...base, terms: Int32Array.of(0, 0, 0), exclude: [new Uint8Array(3)] })).toThrow(
      /exclude/,
    );
  });
});

describe("kvCopyRows", () => {
  it("copies rows between stores by (head, row) quads, dequantising an int8 source, and checks bounds", () => {
    const D = 8;
    const src = Float32Array.from({ length: 2 * 5 * D }, (_, i) => i);
    const dst = new Float32Array(3 * 4 * D);
    const moves = Int32Array.of(2, 3, 1, 4, 0, 0, 0, 2);
    kvCopyRows(src, null, 2, 5, dst, 3, 4, D, moves);
    expect(Array.from(dst.subarray((2 * 4 + 3) * D, (2 * 4 + 4) * D))).toEqual(
      Array.from(src.subarray((1 * 5 + 4) * D, (1 * 5 + 5) * D)),
    );
    expect(Array.from(dst.subarray(0, D))).toEqual(Array.from(src.subarray(2 * D, 3 * D)));
    // Nothing else is written.
    expect(dst.reduce((a, x) => a + (x !== 0 ? 1 : 0), 0)).toBe(2 * D);
    const q = Int8Array.from({ length: 2 * 5 * D }, (_, i) => (i % 7) - 3);
    const scales = Float32Array.from({ length: 2 * 5 }, (_, i) => 0.5 + i);
    const out = new Float32Array(3 * 4 * D);
    kvCopyRows(q, scales, 2, 5, out, 3, 4, D, moves);
    for (let d = 0; d < D; d++)
      expect(out[(2 * 4 + 3) * D + d]).toBeCloseTo(q[(1 * 5 + 4) * D + d] * scales[9], 6);
    expect(() => kvCopyRows(src, null, 2, 5, dst, 3, 4, D, Int32Array.of(3, 0, 0, 0))).toThrow(
      TensorShapeError,
    );
    expect(() => kvCopyRows(q, null, 2, 5, dst, 3, 4, D, moves)).toThrow(/scales/);
  });
});
