import { afterAll, describe, expect, it } from "vitest";
import {
  type AttentionSeq,
  Device,
  type DeviceKind,
  fromHalfBits,
  packAttentionSeqs,
  packProbOuts,
  packRankLists,
  patchRankList,
  type RankList,
  type RankSplitResult,
  rankSplit,
  reference,
  scoresAsGiven,
  toHalfBits,
} from "../src/index.js";
import { maxAbsDiff, randn, rng } from "./rand.js";

// The selecting policies' device kernels: the probability pass against the attention
// reference, the ranked selection against the host's rankSplit (the same lists, masks and
// V-only weights), on the emulator everywhere and on a GPU where there is one.
const probe = Device.probe();

/** Scores on a 1/4096 grid with repeats (ties), so float and double sums agree exactly. */
function gridScores(n: number, r: () => number, levels = 64): Float32Array {
  return Float32Array.from({ length: n }, () => Math.floor(r() * levels) / 4096);
}

/** A device list equals rankSplit's one list: its exact positions plus the step's T rows from n, its V-only ones. */
function expectHostLists(
  got: { full: number[]; vOnly: number[] },
  want: RankSplitResult,
  n: number,
  T = 1,
): void {
  expect(got.full).toEqual([...want.full[0], ...Array.from({ length: T }, (_, t) => n + t)]);
  expect(got.vOnly).toEqual(Array.from(want.vOnly[0]));
}

function policySuite(kind: DeviceKind) {
  const dev = kind === "cuda" && !probe.available ? null : Device.open(kind);
  const d = () => dev as Device;
  afterAll(() => dev?.releaseAll());

  /**
   * A batch of contiguous records over random stores (rounded to dt): the queries, the records
   * and each record's reference attention (scores from rowFrom, its window).
   */
  function batchOf(
    cases: { T: number; n: number; rowFrom?: number; window?: number }[],
    [Hq, Hkv, D]: number[],
    dt: "f32" | "f16" | "bf16",
    r: () => number,
    qScale: number,
  ) {
    const M = cases.reduce((a, c) => a + c.T, 0);
    const q = randn(M * Hq * D, r, qScale);
    const seqs: AttentionSeq[] = [];
    const refs: ReturnType<typeof reference.attentionRef>[] = [];
    const up = (a: Float32Array) => (dt === "f32" ? d().upload(a) : d().upload(toHalfBits(a, dt), dt));
    const rd = (a: Float32Array) => (dt === "f32" ? a : fromHalfBits(toHalfBits(a, dt), dt));
    let row = 0;
    for (const c of cases) {
      const cap = c.n + 3;
      const k = rd(randn(Hkv * cap * D, r));
      const v = rd(randn(Hkv * cap * D, r));
      seqs.push({ k: up(k), v: up(v), cap, n: c.n, T: c.T, qRow: row, window: c.window });
      const qs = q.subarray(row * Hq * D, (row + c.T) * Hq * D);
      const past = c.n - c.T;
      refs.push(
        reference.attentionRef({
          q: qs,
          k,
          v,
          cap,
          T: c.T,
          past,
          Hq,
          Hkv,
          D,
          scoreStart: c.rowFrom,
          window: c.window,
        }),
      );
      row += c.T;
    }
    return { M, q, seqs, refs };
  }

  for (const dt of ["f32", "bf16"] as const) {
    it(`attentionProbs ${dt}: rows and column sums equal the attention's probabilities`, () => {
      const [Hq, Hkv, D] = [4, 2, 32];
      const r = rng(7);
      // A decode row over 300 keys (two chunks) and a 3-row step over 40 (rows from 1 on).
      const cases = [
        { T: 1, n: 300, rowFrom: 0 },
        { T: 3, n: 40, rowFrom: 1 },
      ];
      const { M, q, seqs, refs } = batchOf(cases, [Hq, Hkv, D], dt, r, 2);
      const recs = d().upload(packAttentionSeqs(seqs));
      const lse = d().alloc(M * Hq);
      const qb = d().upload(q);
      const out = d().alloc(M * Hq * D);
      const part = d().alloc(d().attentionPartFloats(2, 3, 300, Hq, D));
      d().attentionBatch({
        seqs: recs,
        B: 2,
        maxT: 3,
        maxKeys: 300,
        Hq,
        Hkv,
        D,
        kvDtype: dt,
        q: qb,
        out,
        part,
        lse,
      });
      for (const mode of ["rows", "columnSums", "columnValues"] as const) {
        const bufs = cases.map((c) => d().alloc(mode === "rows" ? Hq * (c.T - c.rowFrom) * c.n : Hkv * c.n));
        // Column values replace what was there; sums add to it (zero here).
        for (const b of bufs) d().write(b, new Float32Array(b.length).fill(mode === "columnValues" ? 7 : 0));
        const counts = cases.map((c) => d().alloc(Hkv * c.n));
        for (const b of counts) d().zero(b, 0, b.length);
        const outs = packProbOuts(
          cases.map((c, i) => ({
            kind: mode,
            dst: bufs[i],
            stride: c.n,
            rowFrom: c.rowFrom,
            counts: counts[i],
          })),
        );
        d().attentionProbs({
          seqs: recs,
          outs: d().upload(outs),
          B: 2,
          maxKeys: 300,
          Hq,
          Hkv,
          D,
          kvDtype: dt,
          q: qb,
          lse,
        });
        cases.forEach((c, i) => {
          const { probs, scores, Lmax } = refs[i];
          const rows = c.T - c.rowFrom;
          const got = d().read(bufs[i], new Float32Array(bufs[i].length));
          if (mode === "rows") {
            const want = new Float32Array(Hq * rows * c.n);
            for (let h = 0; h < Hq; h++)
              for (let t = c.rowFrom; t < c.T; t++)
                for (let j = 0; j < c.n; j++)
                  want[(h * rows + t - c.rowFrom) * c.n + j] = probs[(h * c.T + t) * Lmax + j];
            expect(maxAbsDiff(got, want)).toBeLessThan(1e-5);
          } else {
            const G = Hq / Hkv;
            const want = new Float32Array(Hkv * c.n);
            for (let h = 0; h < Hq; h++)
              for (let j = 0; j < c.n; j++) want[Math.floor(h / G) * c.n + j] += scores[h * Lmax + j];
            expect(maxAbsDiff(got, want)).toBeLessThan(1e-5);
            // Rows t >= rowFrom that see each key (MeanAttention's counts: T - max(fromRow, pos - start)).
            const start = c.n - c.T;
            const wantCounts = Float32Array.from({ length: Hkv * c.n }, (_, i) =>
              Math.max(0, c.T - Math.max(c.rowFrom, (i % c.n) - start)),
            );
            expect(Array.from(d().read(counts[i], new Float32Array(Hkv * c.n)))).toEqual(
              Array.from(wantCounts),
            );
          }
        });
      }
    });
  }

  for (const dt of ["bf16", "f16"] as const) {
    it(`attentionBatch ${dt}: prefill records run as tensor-core tiles (with a window, GQA, a decode row beside), and their log-sum-exp feeds attentionProbs`, () => {
      const r = rng(21);
      const [Hq, Hkv] = [4, 2];
      for (const D of [32, 64]) {
        // 130 rows after 40 past keys (3 query tiles, the last partial), a windowed 70-row step, a decode row.
        const cases = [
          { T: 130, n: 170, window: 0 },
          { T: 70, n: 70, window: 24 },
          { T: 1, n: 90, window: 0 },
        ];
        const { M, q, seqs, refs: wants } = batchOf(cases, [Hq, Hkv, D], dt, r, 1);
        let row = 0;
        const recs = d().upload(packAttentionSeqs(seqs));
        const qb = d().upload(q);
        const run = (prefillRows: number) => {
          const out = d().alloc(M * Hq * D);
          const lse = d().alloc(M * Hq);
          const part = d().alloc(d().attentionPartFloats(3, 130, 170, Hq, D));
          d().attentionBatch({
            seqs: recs,
            B: 3,
            maxT: 130,
            maxKeys: 170,
            Hq,
            Hkv,
            D,
            kvDtype: dt,
            q: qb,
            out,
            part,
            lse,
            prefillRows,
          });
          return { out: d().read(out, new Float32Array(M * Hq * D)), lse };
        };
        const tc = run(64);
        const cuda = run(0);
        // P is rounded to the store's type on the tensor cores: bf16 keeps 8 bits, f16 11.
        const tol = dt === "bf16" ? 2e-2 : 3e-3;
        row = 0;
        cases.forEach((c, i) => {
          const got = tc.out.subarray(row * Hq * D, (row + c.T) * Hq * D);
          expect(maxAbsDiff(got, wants[i].out)).toBeLessThan(c.T >= 64 ? tol : 2e-5);
          row += c.T;
        });
        expect(maxAbsDiff(tc.out, cuda.out)).toBeLessThan(tol);
        // The tiles' log-sum-exp: the probability pass's column sums match the reference's.
        const sums = cases.map((c) => {
          const b = d().alloc(Hkv * c.n);
          d().zero(b);
          return b;
        });
        const hits = cases.map((c) => {
          const b = d().alloc(Hkv * c.n);
          d().zero(b);
          return b;
        });
        const outs = d().upload(
          packProbOuts(
            cases.map((c, i) => ({ kind: "columnSums", dst: sums[i], stride: c.n, counts: hits[i] })),
          ),
        );
        d().attentionProbs({
          seqs: recs,
          outs,
          B: 3,
          maxKeys: 170,
          Hq,
          Hkv,
          D,
          kvDtype: dt,
          q: qb,
          lse: tc.lse,
        });
        // The CUDA-core pass (prefillRows 0) gives the same sums within the tiles' rounding, not bit for bit.
        const plain = cases.map((c) => {
          const b = d().alloc(Hkv * c.n);
          d().zero(b);
          return b;
        });
        const outs0 = d().upload(
          packProbOuts(cases.map((c, i) => ({ kind: "columnSums", dst: plain[i], stride: c.n }))),
        );
        d().attentionProbs({
          seqs: recs,
          outs: outs0,
          B: 3,
          maxKeys: 170,
          Hq,
          Hkv,
          D,
          kvDtype: dt,
          q: qb,
          lse: tc.lse,
          prefillRows: 0,
        });
        const a0 = d().read(sums[0], new Float32Array(Hkv * cases[0].n));
        const b0 = d().read(plain[0], new Float32Array(Hkv * cases[0].n));
        expect(maxAbsDiff(a0, b0)).toBeGreaterThan(0);
        expect(maxAbsDiff(a0, b0)).toBeLessThan(0.05 * Math.sqrt(cases[0].T));
        cases.forEach((c, i) => {
          const { scores, Lmax } = wants[i];
          const want = new Float32Array(Hkv * c.n);
          for (let h = 0; h < Hq; h++)
            for (let j = 0; j < c.n; j++) want[Math.floor(h / (Hq / Hkv)) * c.n + j] += scores[h * Lmax + j];
          const got = d().read(sums[i], new Float32Array(Hkv * c.n));
          expect(maxAbsDiff(got, want)).toBeLessThan(c.T >= 64 ? 0.05 * Math.sqrt(c.T) : 1e-4);
          // Rows that see each key (the tiles count them as the CUDA-core pass does).
          const past = c.n - c.T;
          const wantHits = Array.from({ length: Hkv * c.n }, (_, x) =>
            Math.max(0, c.T - Math.max(0, (x % c.n) - past)),
          );
          expect(Array.from(d().read(hits[i], new Float32Array(Hkv * c.n)))).toEqual(wantHits);
        });
      }
    });
  }

  it("attentionProbs adds a selection's column sums at the selected positions", () => {
    const [Hq, Hkv, D] = [2, 1, 16];
    const r = rng(11);
    const cap = 64;
    const k = randn(Hkv * cap * D, r);
    const v = randn(Hkv * cap * D, r);
    const q = randn(Hq * D, r, 2);
    // Positions 3, 10, 40 and this step's row 50.
    const list = [3, 10, 40, 50];
    const seq: AttentionSeq = {
      k: d().upload(k),
      v: d().upload(v),
      cap,
      n: 51,
      T: 1,
      qRow: 0,
      select: { idx: d().upload(Int32Array.from(list)), counts: d().upload(Int32Array.of(4)), icap: 4 },
    };
    const recs = d().upload(packAttentionSeqs([seq]));
    const lse = d().alloc(Hq);
    const qb = d().upload(q);
    const part = d().alloc(d().attentionPartFloats(1, 1, 4, Hq, D));
    d().attentionBatch({
      seqs: recs,
      B: 1,
      maxT: 1,
      maxKeys: 4,
      Hq,
      Hkv,
      D,
      kvDtype: "f32",
      q: qb,
      out: d().alloc(Hq * D),
      part,
      lse,
    });
    const table = d().upload(new Float32Array(cap).fill(0.5));
    const outs = d().upload(packProbOuts([{ kind: "columnSums", dst: table, stride: cap }]));
    d().attentionProbs({ seqs: recs, outs, B: 1, maxKeys: 4, Hq, Hkv, D, kvDtype: "f32", q: qb, lse });
    const got = d().read(table, new Float32Array(cap));
    // The reference: softmax over the listed keys, per query head, summed over the group.
    const want = new Float32Array(cap).fill(0.5);
    for (let h = 0; h < Hq; h++) {
      const logits = list.map((p) => {
        let s = 0;
        for (let e = 0; e < D; e++) s += q[h * D + e] * k[p * D + e];
        return s / Math.sqrt(D);
      });
      const mx = Math.max(...logits);
      const ex = logits.map((x) => Math.exp(x - mx));
      const z = ex.reduce((a, b) => a + b, 0);
      list.forEach((p, i) => {
        want[p] += ex[i] / z;
      });
    }
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-5);
  });

  /** Runs lists on the device; returns per list its exact and V-only positions (and the masks). */
  function runLists(
    lists: (Omit<RankList, "full" | "fullCount" | "vOnly" | "vOnlyCount"> & { cap: number })[],
    cacheN?: number,
  ) {
    const outs = lists.map((l) => ({
      full: d().alloc(l.n + l.T + 1, "i32"),
      vOnly: d().alloc(l.n + 1, "i32"),
      counts: d().alloc(2, "i32"),
    }));
    const recs = packRankLists(
      lists.map((l, i) => ({
        ...l,
        full: outs[i].full,
        fullCount: outs[i].counts.at(0),
        vOnly: outs[i].vOnly,
        vOnlyCount: outs[i].counts.at(1),
      })),
    );
    d().rankSelect(d().upload(recs), lists.length, cacheN ?? Math.max(...lists.map((l) => l.n)));
    return outs.map((o) => {
      const c = new Int32Array(2);
      d().read(o.counts, new Float32Array(c.buffer));
      const full = new Int32Array(o.full.length);
      const vOnly = new Int32Array(o.vOnly.length);
      d().read(o.full, new Float32Array(full.buffer));
      d().read(o.vOnly, new Float32Array(vOnly.buffer));
      return { full: Array.from(full.subarray(0, c[0])), vOnly: Array.from(vOnly.subarray(0, c[1])) };
    });
  }

  it("rankSelect, fixed rule with eviction (H2O): the lists and masks of rankSplit", () => {
    const r = rng(3);
    for (const [n, T, recent, k, exact] of [
      [1000, 1, 20, 50, 50],
      [300, 1, 0, 40, 25],
      [64, 1, 8, 100, 100], // keeps everything
      [5, 2, 10, 3, 3], // the window covers every position
      [700, 1, 30, 0, 0],
    ]) {
      const scores = gridScores(n, r);
      const mask = Uint8Array.from({ length: n }, () => (r() < 0.2 ? 1 : 0));
      // The mask's bytes in an int32 buffer (n rounded up to whole words).
      const bytes = new Uint8Array(4 * Math.ceil(n / 4));
      bytes.set(mask);
      const exb = d().upload(new Int32Array(bytes.buffer));
      const [got] = runLists([
        {
          n,
          T,
          cap: n,
          recent,
          rule: { kind: "fixed", k, exact },
          exclude: exb,
          skipExcludedRecent: true,
          evict: true,
          terms: [{ row: d().upload(scores), weight: 1 }],
        },
      ]);
      const hostMask = mask.slice();
      const want = rankSplit({
        n,
        lists: 1,
        ...scoresAsGiven([scores]),
        recent,
        exclude: [hostMask],
        skipExcludedRecent: true,
        evict: true,
        rule: { kind: "fixed", k: Int32Array.of(k), exact: Int32Array.of(exact) },
      });
      expectHostLists(got, want, n, T);
      const devMask = new Uint8Array(d().read(exb, new Float32Array(exb.length)).buffer).subarray(0, n);
      expect(Array.from(devMask)).toEqual(Array.from(hostMask));
    }
  });

  it("rankSelect, fixed split into exact and V-only without masks", () => {
    const r = rng(5);
    const n = 2000;
    const scores = gridScores(n, r, 4096);
    const [got] = runLists([
      {
        n,
        T: 1,
        cap: n,
        recent: 4,
        rule: { kind: "fixed", k: 300, exact: 120 },
        terms: [{ row: d().upload(scores), weight: 1 }],
      },
    ]);
    const want = rankSplit({
      n,
      lists: 1,
      ...scoresAsGiven([scores]),
      recent: 4,
      rule: { kind: "fixed", k: Int32Array.of(300), exact: Int32Array.of(120) },
    });
    expectHostLists(got, want, n);
  });

  it("rankSelect, adaptive rule over a group's terms (SmallKV): lists and V-only weights of rankSplit", () => {
    const r = rng(9);
    let vOnlySeen = 0;
    for (const [n, units, recent, vOnly, exactShare, negligible] of [
      [1500, 60.5, 2, true, 0.9, 0.002],
      [800, 20, 2, true, 0.5, 0.0005],
      [400, 33, 0, false, 0.9, 0.002],
      [50, 100, 2, true, 0.9, 0.002], // more units than positions
      [3000, 0.5, 2, true, 0.9, 0.0],
    ] as const) {
      // Two query heads' rows (peaked, so the exact share is reached early), weight 1/2 each.
      const rows = [0, 1].map(() => {
        const x = gridScores(n, r, 8);
        for (let i = 0; i < 20; i++) x[Math.floor(r() * n)] = Math.floor(r() * 512) / 4096;
        return x;
      });
      const bufs = rows.map((x) => d().upload(x));
      const w = d().alloc(2 * (n + 1));
      d().zero(w, 0, w.length);
      const [got] = runLists([
        {
          n,
          T: 1,
          cap: n,
          recent,
          rule: { kind: "adaptive", units, vOnly, exactShare, negligible },
          terms: bufs.map((row) => ({ row, weight: 0.5 })),
          weights: { w, stride: n + 1, gate: [true, false] },
        },
      ]);
      const want = rankSplit({
        n,
        lists: 1,
        sources: rows,
        terms: Int32Array.of(0, 0, 0, 0, 1, 0),
        weights: Float64Array.of(0.5, 0.5),
        recent,
        rule: {
          kind: "adaptive",
          units: Float64Array.of(units),
          vOnly: Uint8Array.of(vOnly ? 1 : 0),
          exactShare,
          negligible,
        },
      });
      expectHostLists(got, want, n);
      vOnlySeen += got.vOnly.length;
      const wg = d().read(w, new Float32Array(w.length));
      const nv = got.vOnly.length;
      expect(Array.from(wg.subarray(0, nv))).toEqual(got.vOnly.map((p) => rows[0][p]));
      expect(Array.from(wg.subarray(n + 1, n + 1 + nv))).toEqual(new Array(nv).fill(0));
    }
    expect(vOnlySeen).toBeGreaterThan(0); // the cases reach the V-only split
  });

  it("rankSelect blends a list's terms with the mean attention (SmallKV's fallback) as rankSplit's own", () => {
    const r = rng(17);
    const n = 600;
    const rows = [gridScores(n, r, 64)];
    // Sums and counts whose means are on the grid too (counts powers of two).
    const counts = Float32Array.from({ length: n }, () => 2 ** Math.floor(r() * 4));
    const sums = Float32Array.from({ length: n }, (_, p) => (Math.floor(r() * 64) / 4096) * counts[p]);
    for (const weight of [0.5, 0, 1]) {
      const [got] = runLists([
        {
          n,
          T: 1,
          cap: n,
          recent: 2,
          rule: { kind: "fixed", k: 40, exact: 30 },
          terms: [{ row: d().upload(rows[0]), weight: 1 }],
          blend: { weight, sums: d().upload(sums), counts: d().upload(counts) },
        },
      ]);
      const want = rankSplit({
        n,
        lists: 1,
        ...scoresAsGiven(rows),
        own: {
          assistantWeight: Float64Array.of(weight),
          sums: [Float64Array.from(sums)],
          counts: [Float64Array.from(counts)],
        },
        recent: 2,
        rule: { kind: "fixed", k: Int32Array.of(40), exact: Int32Array.of(30) },
      });
      expectHostLists(got, want, n);
    }
  });

  it("rankSelect ranks pooled scores (SnapKV's votes: a window mean with zero padding) as topPositions of avgPool", () => {
    const r = rng(23);
    const P = 300;
    const raw = gridScores(P, r, 4096);
    for (const [radius, k, recent] of [
      [2, 40, 32],
      [0, 10, 5],
      [3, 500, 0],
    ]) {
      const [got] = runLists([
        {
          n: P,
          T: 1,
          cap: P,
          recent,
          rule: { kind: "fixed", k, exact: k },
          terms: [{ row: d().upload(raw), weight: 1 }],
          pool: { radius, limit: P },
        },
      ]);
      // avgPool (count_include_pad) over the whole prompt, ranked as float32, ties to the lower position.
      const pooled = Float32Array.from({ length: P }, (_, i) => {
        let s = 0;
        for (let j = Math.max(0, i - radius); j <= Math.min(P - 1, i + radius); j++) s += raw[j];
        return s / (2 * radius + 1);
      });
      const lo = P - recent;
      const order = Array.from({ length: lo }, (_, i) => i).sort((a, b) => pooled[b] - pooled[a] || a - b);
      const want = [
        ...order.slice(0, k).sort((a, b) => a - b),
        ...Array.from({ length: recent + 1 }, (_, i) => lo + i),
      ];
      expect(got.full).toEqual(want);
    }
  });

  it("rankSelect runs many lists in one launch, each its own, with or without the shared-memory score cache", () => {
    const r = rng(13);
    const specs = Array.from({ length: 6 }, (_, i) => ({ n: 100 + 97 * i, k: 10 + i * 7 }));
    const scores = specs.map((s) => gridScores(s.n, r, 4096));
    const lists = specs.map((s, i) => ({
      n: s.n,
      T: 1,
      cap: s.n,
      recent: 3,
      rule: { kind: "fixed" as const, k: s.k, exact: s.k },
      terms: [{ row: d().upload(scores[i]), weight: 1 }],
    }));
    const got = runLists(lists);
    // Without the cache (every score computed where it is read): the same lists.
    expect(runLists(lists, 0)).toEqual(got);
    specs.forEach((s, i) => {
      const want = rankSplit({
        n: s.n,
        lists: 1,
        ...scoresAsGiven([scores[i]]),
        recent: 3,
        rule: { kind: "fixed", k: Int32Array.of(s.k), exact: Int32Array.of(s.k) },
      });
      expect(got[i].full).toEqual([...want.full[0], s.n]);
    });
  });

  it("patchRankList rewrites a packed list's step fields to what packing them afresh gives", () => {
    const row = d().alloc(4);
    const base = {
      T: 1,
      terms: [{ row, weight: 0.5 }],
      full: row,
      fullCount: row,
      weights: { w: row, stride: 7, gate: [true] },
    };
    for (const [a, b] of [
      [
        { n: 10, recent: 2, rule: { kind: "fixed", k: 3, exact: 2 } },
        { n: 11, recent: 1, rule: { kind: "fixed", k: 4, exact: 4 } },
      ],
      [
        {
          n: 10,
          recent: 2,
          rule: { kind: "adaptive", units: 2.5, vOnly: true, exactShare: 0.9, negligible: 0.01 },
        },
        {
          n: 12,
          recent: 2,
          rule: { kind: "adaptive", units: 3.5, vOnly: true, exactShare: 0.9, negligible: 0.01 },
        },
      ],
    ] as Pick<RankList, "n" | "recent" | "rule">[][]) {
      const packed = packRankLists([
        { ...base, ...a },
        { ...base, ...a },
      ]);
      patchRankList(packed, 0, 1, { ...b, T: 2 });
      expect(packed).toEqual(
        packRankLists([
          { ...base, ...a },
          { ...base, ...b, T: 2 },
        ]),
      );
    }
  });

  it("packRankLists refuses more terms than a record holds", () => {
    const row = d().alloc(4);
    expect(() =>
      packRankLists([
        {
          n: 1,
          T: 1,
          recent: 0,
          rule: { kind: "fixed", k: 1, exact: 1 },
          terms: Array.from({ length: 17 }, () => ({ row, weight: 1 })),
          full: row,
          fullCount: row,
        },
      ]),
    ).toThrow(/terms/);
  });
}

describe("policy kernels on the CPU emulator", () => policySuite("emulator"));
describe.skipIf(!probe.available)(`policy kernels on CUDA (${probe.reason})`, () => policySuite("cuda"));
