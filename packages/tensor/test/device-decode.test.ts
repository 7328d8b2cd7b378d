import { afterAll, describe, expect, it } from "vitest";
import {
  ATTN_SEQ_INTS,
  type AttentionSeq,
  Device,
  type DeviceKind,
  fromHalfBits,
  packAddresses,
  packAttentionSeqs,
  packSampling,
  reference,
  type SamplingRule,
  sampleToken,
  TensorShapeError,
  toHalfBits,
} from "../src/index.js";
import { maxAbsDiff, randn, rng } from "./rand.js";

// The batched decode path's kernels (GEMV, batched flash-decoding attention, KV append,
// argmax) against the TypeScript references, on the emulator everywhere and on a GPU where
// there is one.
const probe = Device.probe();
const round = (a: Float32Array, dt: "f32" | "f16" | "bf16") =>
  dt === "f32" ? a : fromHalfBits(toHalfBits(a, dt), dt);
const silu = (x: number) => x / (1 + Math.exp(-x));

function decodeSuite(kind: DeviceKind) {
  const dev = kind === "cuda" && !probe.available ? null : Device.open(kind);
  const d = () => dev as Device;
  afterAll(() => dev?.releaseAll());
  const upW = (w: Float32Array, dt: "f32" | "f16" | "bf16") =>
    dt === "f32" ? d().upload(w) : d().upload(toHalfBits(w, dt), dt);

  // Vector loads (k a multiple of 8), the scalar path (odd k), every row bucket and split-K width.
  for (const [m, n, k] of [
    [1, 67, 40],
    [2, 1030, 24],
    [5, 33, 129],
    [9, 2100, 16],
    [16, 40, 64],
  ]) {
    for (const dt of ["f32", "f16", "bf16"] as const) {
      it(`gemv ${dt} m=${m} n=${n} k=${k}: store with bias, accumulate`, () => {
        const r = rng(m * 31 + n + k);
        const x = randn(m * k, r),
          w = randn(n * k, r, 0.5),
          bias = randn(n, r);
        const wb = upW(w, dt);
        const want = reference.gemmRef(x, round(w, dt), m, n, k, bias);
        const y = d().alloc(m * n);
        d().gemv({ y, x: d().upload(x), w: wb, bias: d().upload(bias), m, n, k });
        expect(maxAbsDiff(d().read(y, new Float32Array(m * n)), want)).toBeLessThan(1e-4 * Math.sqrt(k));
        const y0 = randn(m * n, r);
        const acc = d().upload(y0);
        d().gemv({ y: acc, x: d().upload(x), w: wb, m, n, k, mode: "accumulate" });
        const plain = reference.gemmRef(x, round(w, dt), m, n, k);
        expect(
          maxAbsDiff(
            d().read(acc, new Float32Array(m * n)),
            plain.map((v, i) => v + y0[i]),
          ),
        ).toBeLessThan(1e-4 * Math.sqrt(k));
      });
    }
  }

  it("gemv's fused gate/up with SiLU and its QKV segments match separate products", () => {
    const m = 3,
      n = 50,
      k = 32,
      r = rng(77);
    const x = randn(m * k, r),
      g = randn(n * k, r, 0.5),
      u = randn(n * k, r, 0.5),
      bg = randn(n, r),
      bu = randn(n, r);
    const y = d().alloc(m * n);
    const xb = d().upload(x);
    d().gemv({
      y,
      x: xb,
      w: upW(g, "bf16"),
      w2: upW(u, "bf16"),
      bias: d().upload(bg),
      bias2: d().upload(bu),
      m,
      n,
      k,
      mode: "siluGate",
    });
    const G = reference.gemmRef(x, round(g, "bf16"), m, n, k, bg);
    const U = reference.gemmRef(x, round(u, "bf16"), m, n, k, bu);
    expect(
      maxAbsDiff(
        d().read(y, new Float32Array(m * n)),
        G.map((v, i) => silu(v) * U[i]),
      ),
    ).toBeLessThan(1e-4);
    // Columns 0..19 -> q, 20..34 -> k, 35..49 -> v.
    const outs = [d().alloc(m * 20), d().alloc(m * 15), d().alloc(m * 15)] as const;
    d().gemv({ y: [...outs], split: [20, 15], x: xb, w: upW(g, "f32"), m, n, k });
    const full = reference.gemmRef(x, g, m, n, k);
    const seg = (lo: number, w: number) =>
      Float32Array.from({ length: m * w }, (_, i) => full[Math.floor(i / w) * n + lo + (i % w)]);
    expect(maxAbsDiff(d().read(outs[0], new Float32Array(m * 20)), seg(0, 20))).toBeLessThan(1e-5);
    expect(maxAbsDiff(d().read(outs[1], new Float32Array(m * 15)), seg(20, 15))).toBeLessThan(1e-5);
    expect(maxAbsDiff(d().read(outs[2], new Float32Array(m * 15)), seg(35, 15))).toBeLessThan(1e-5);
    expect(() => d().gemv({ y, x: xb, w: upW(g, "f32"), m: 17, n, k })).toThrow(TensorShapeError);
    expect(() => d().gemv({ y, x: xb, w: upW(g, "f32"), m, n, k, mode: "siluGate" })).toThrow(/w2/);
  });

  it("gemv folds an RMSNorm of x's rows into the product (plain, gate/up and QKV segments)", () => {
    const k = 48,
      n = 37,
      r = rng(91);
    for (const m of [1, 3, 4]) {
      const x = randn(m * k, r, 3),
        g = randn(k, r),
        w = randn(n * k, r, 0.5),
        u = randn(n * k, r, 0.5),
        bias = randn(n, r);
      const h = reference.rmsnormRef(x, g, m, k, 1e-5);
      const norm = { w: d().upload(g), eps: 1e-5 };
      const y = d().alloc(m * n);
      d().gemv({ y, x: d().upload(x), w: upW(w, "bf16"), bias: d().upload(bias), m, n, k, norm });
      expect(
        maxAbsDiff(
          d().read(y, new Float32Array(m * n)),
          reference.gemmRef(h, round(w, "bf16"), m, n, k, bias),
        ),
      ).toBeLessThan(1e-4);
      d().gemv({ y, x: d().upload(x), w: upW(w, "f32"), w2: upW(u, "f32"), m, n, k, mode: "siluGate", norm });
      const G = reference.gemmRef(h, w, m, n, k);
      const U = reference.gemmRef(h, u, m, n, k);
      expect(
        maxAbsDiff(
          d().read(y, new Float32Array(m * n)),
          G.map((v, i) => silu(v) * U[i]),
        ),
      ).toBeLessThan(1e-4);
    }
    const y = d().alloc(5 * n);
    expect(() =>
      d().gemv({
        y,
        x: d().alloc(5 * k),
        w: upW(randn(n * k, r), "f32"),
        m: 5,
        n,
        k,
        norm: { w: y, eps: 1e-5 },
      }),
    ).toThrow(/at most 4 rows/);
  });

  it("ropeAppend rotates q and k and appends the batch's rows (rotated K, V) to their stores", () => {
    const T = 3,
      Hq = 4,
      Hkv = 2,
      D = 16,
      r = rng(13);
    const q = randn(T * Hq * D, r),
      k = randn(T * Hkv * D, r),
      v = randn(T * Hkv * D, r);
    const pos = Int32Array.of(7, 0, 300);
    const caps = [8, 400];
    const stores = caps.map((c) => [d().alloc(Hkv * c * D, "bf16"), d().alloc(Hkv * c * D, "bf16")]);
    // Row 0 -> entry 1 at row 7 of store 1, row 1 belongs to another path (-1), row 2 -> entry 0 at row 5.
    const entry = Int32Array.of(1, -1, 0);
    const dst = [5, 7];
    const qb = d().upload(q),
      kb = d().upload(k);
    d().ropeAppend({
      q: qb,
      k: kb,
      v: d().upload(v),
      pos: d().upload(pos),
      T,
      Hq,
      Hkv,
      D,
      theta: 10000,
      kStores: d().upload(packAddresses(stores.map((s) => s[0].ptr))),
      vStores: d().upload(packAddresses(stores.map((s) => s[1].ptr))),
      caps: d().upload(Int32Array.from(caps)),
      dst: d().upload(Int32Array.from(dst)),
      entry: d().upload(entry),
      kvDtype: "bf16",
    });
    const wq = q.slice(),
      wk = k.slice();
    reference.ropeRef(wq, pos, Hq, D, 10000);
    reference.ropeRef(wk, pos, Hkv, D, 10000);
    expect(maxAbsDiff(d().read(qb, new Float32Array(q.length)), wq)).toBeLessThan(1e-5);
    const gotK = d().read(kb, new Float32Array(k.length));
    expect(maxAbsDiff(gotK, wk)).toBeLessThan(1e-5);
    for (const t of [0, 2]) {
      const e = entry[t];
      const [ks, vs] = stores[e].map((b) =>
        fromHalfBits(d().read(b, new Uint16Array(Hkv * caps[e] * D)), "bf16"),
      );
      for (let h = 0; h < Hkv; h++) {
        const at = (h * caps[e] + dst[e]) * D;
        const src = (t * Hkv + h) * D;
        expect(ks.subarray(at, at + D)).toEqual(round(gotK.slice(src, src + D), "bf16"));
        expect(vs.subarray(at, at + D)).toEqual(round(v.slice(src, src + D), "bf16"));
      }
    }
  });

  it("argmax picks the first maximum per row, as the host's argmax", () => {
    const rows = 4,
      n = 3000,
      r = rng(5);
    const x = randn(rows * n, r);
    x[0 * n + 2999] = 9; // last column
    x[1 * n + 7] = 5;
    x[1 * n + 2000] = 5; // a tie: the lower index wins
    x[2 * n + 100] = Number.NaN; // NaN never wins
    x[2 * n + 1500] = 3;
    x[3 * n] = Number.NaN; // a NaN first entry gives 0, as on the host
    const out = d().alloc(rows, "i32");
    d().argmax(out, d().upload(x), rows, n);
    const host = Array.from({ length: rows }, (_, i) => {
      const row = x.subarray(i * n, (i + 1) * n);
      let best = 0;
      for (let j = 1; j < n; j++) if (row[j] > row[best]) best = j;
      return best;
    });
    expect([...d().read(out, new Int32Array(rows))]).toEqual(host);
    expect(host).toEqual([2999, 7, 1500, 0]);
  });

  it("sample draws the host's token (sampleToken) for every rule: argmax, temperature, top-k, top-p, ties", () => {
    const r = rng(77);
    const n = 3000;
    const rows: { logits: Float32Array; rule: SamplingRule; u: number }[] = [];
    for (let i = 0; i < 48; i++) {
      // Logits on a coarse grid (ties) or smooth; peaked or flat.
      const scale = i % 3 === 0 ? 8 : 2;
      const logits = Float32Array.from({ length: n }, () =>
        i % 2 === 0 ? Math.round(r() * 40) / 4 : (r() * 2 - 1) * scale,
      );
      const rule: SamplingRule = {
        temperature: [0, 0.3, 0.7, 1, 1.5][i % 5],
        topK: [0, 1, 5, 50, 0, 2999, 4000][i % 7],
        topP: [1, 0.9, 0.5, 0.01, 1, 0.99][i % 6],
      };
      rows.push({ logits, rule, u: i === 1 ? 0 : r() * 0.999999 });
    }
    const x = d().upload(Float32Array.from(rows.flatMap((row) => Array.from(row.logits))));
    const params = d().upload(packSampling(rows.map((row) => ({ ...row.rule, u: row.u }))));
    const out = d().alloc(rows.length, "i32");
    d().sample(out, x, params, rows.length, n);
    const got = new Int32Array(rows.length);
    d().read(out, new Float32Array(got.buffer));
    expect(Array.from(got)).toEqual(rows.map((row) => sampleToken(row.logits, row.rule, row.u)));
    // The draws are not all the argmax (the rules really sample).
    const greedy = rows.map((row) => sampleToken(row.logits, { ...row.rule, temperature: 0 }, 0));
    expect(Array.from(got).filter((t, i) => t !== greedy[i]).length).toBeGreaterThan(10);
    expect(() => packSampling([{ temperature: 1, topK: 0, topP: 1, u: 1 }])).toThrow(RangeError);
  });

  it("kvAppend writes each row to its own sequence's stores (rows in order or picked), converting to the kv dtype", () => {
    const Hkv = 2,
      D = 16,
      n = 3,
      r = rng(8);
    for (const dt of ["f32", "bf16"] as const) {
      const caps = [4, 9, 5];
      const ks = caps.map((c) => d().alloc(Hkv * c * D, dt));
      const vs = caps.map((c) => d().alloc(Hkv * c * D, dt));
      const k = randn(n * Hkv * D, r),
        v = randn(n * Hkv * D, r);
      const dst = [3, 0, 4];
      const rows = dt === "f32" ? undefined : [2, 0, 1]; // entry i takes source row rows[i]
      d().kvAppend({
        rows: rows && d().upload(Int32Array.from(rows)),
        kStores: d().upload(packAddresses(ks.map((b) => b.ptr))),
        vStores: d().upload(packAddresses(vs.map((b) => b.ptr))),
        caps: d().upload(Int32Array.from(caps)),
        dst: d().upload(Int32Array.from(dst)),
        k: d().upload(k),
        v: d().upload(v),
        n,
        Hkv,
        D,
        kvDtype: dt,
      });
      for (let i = 0; i < n; i++)
        for (const [stores, src] of [
          [ks, k],
          [vs, v],
        ] as const) {
          const raw =
            dt === "f32"
              ? d().read(stores[i], new Float32Array(Hkv * caps[i] * D))
              : fromHalfBits(d().read(stores[i], new Uint16Array(Hkv * caps[i] * D)), dt);
          for (let g = 0; g < Hkv; g++) {
            const sr = rows ? rows[i] : i;
            const want = round(src.slice((sr * Hkv + g) * D, (sr * Hkv + g + 1) * D), dt);
            const at = (g * caps[i] + dst[i]) * D;
            expect(raw.subarray(at, at + D)).toEqual(want);
          }
        }
    }
  });

  // Ragged batches: decode rows, a verify block (T > 1), contiguous and selected key lists,
  // V-only rows, a sliding window, lists longer than one 256-key chunk, GQA groups wider than
  // one block's 8 queries; f32 and bf16 stores.
  interface Case {
    T: number;
    n: number;
    select?: number[][]; // per kv head: rows before this step's (which the test appends)
    vonly?: number[][];
    mode?: "literal" | "mass";
    window?: number;
  }
  const batches: [string, number, number, number, Case[]][] = [
    // Every list within one chunk: the split kernel writes the output (no reduce launch).
    [
      "one chunk, with V-only rows",
      4,
      2,
      16,
      [
        {
          T: 1,
          n: 40,
          select: [
            [0, 5, 9],
            [1, 2, 30],
          ],
          vonly: [[3, 4], [7]],
          mode: "mass",
        },
        { T: 2, n: 9, select: [[0], []], vonly: [[], [1, 2]], mode: "literal" },
        { T: 1, n: 100 },
      ],
    ],
    [
      "decode, contiguous, MHA",
      4,
      4,
      8,
      [
        { T: 1, n: 5 },
        { T: 1, n: 1 },
        { T: 1, n: 300 },
      ],
    ],
    [
      "GQA 4:1 with a verify block and a window",
      8,
      2,
      64,
      [
        { T: 1, n: 600 },
        { T: 3, n: 40, window: 16 },
      ],
    ],
    ["GQA 12:1 (two query blocks), T=2", 12, 1, 32, [{ T: 2, n: 270 }]],
    [
      "selections and V-only rows",
      4,
      2,
      16,
      [
        {
          T: 1,
          n: 500,
          select: [
            [0, 7, 9, 300, 499 - 1],
            [5, 6],
          ],
          vonly: [[1, 2], []],
          mode: "mass",
        },
        {
          T: 2,
          n: 300,
          select: [Array.from({ length: 270 }, (_, i) => i), [3]],
          vonly: [[10], [4, 8, 9]],
          mode: "literal",
        },
        { T: 1, n: 20 },
      ],
    ],
  ];
  for (const [name, Hq, Hkv, D, cases] of batches) {
    for (const dt of ["f32", "bf16"] as const) {
      it(`attentionBatch ${dt}: ${name}`, () => {
        const r = rng(Hq * 100 + D + cases.length);
        const caps = cases.map((c) => c.n + 3);
        const M = cases.reduce((a, c) => a + c.T, 0);
        const q = randn(M * Hq * D, r, 2);
        const seqs: AttentionSeq[] = [];
        const wants: Float32Array[] = [];
        let row = 0;
        let maxKeys = 0;
        for (const [i, c] of cases.entries()) {
          const cap = caps[i];
          const k = round(randn(Hkv * cap * D, r), dt);
          const v = round(randn(Hkv * cap * D, r), dt);
          const up = (a: Float32Array) => (dt === "f32" ? d().upload(a) : d().upload(toHalfBits(a, dt), dt));
          const kb = up(k),
            vb = up(v);
          const qs = q.subarray(row * Hq * D, (row + c.T) * Hq * D);
          const seq: AttentionSeq = { k: kb, v: vb, cap, n: c.n, T: c.T, qRow: row, window: c.window };
          let want: Float32Array;
          if (c.select) {
            // The list: the selected rows, then this step's T rows (the store's last T).
            const lists = c.select.map((rows) => [
              ...rows,
              ...Array.from({ length: c.T }, (_, t) => c.n - c.T + t),
            ]);
            const icap = Math.max(...lists.map((l) => l.length));
            maxKeys = Math.max(maxKeys, icap);
            const idx = new Int32Array(Hkv * icap);
            lists.forEach((l, g) => idx.set(l, g * icap));
            seq.select = {
              idx: d().upload(idx),
              counts: d().upload(Int32Array.from(lists.map((l) => l.length))),
              icap,
            };
            const off = Int32Array.from({ length: Hkv + 1 }, (_, g) =>
              c.select!.slice(0, g).reduce((a, l) => a + l.length, 0),
            );
            let vOnly: Parameters<typeof reference.indexedAttentionRef>[0]["vOnly"];
            if (c.vonly) {
              const vmax = Math.max(...c.vonly.map((l) => l.length));
              const vcap = Math.max(1, vmax);
              const vidx = new Int32Array(Hkv * vcap);
              c.vonly.forEach((l, g) => vidx.set(l, g * vcap));
              const weights = randn(Hq * c.T * vmax, r, 0.05).map(Math.abs);
              seq.vOnly = {
                idx: d().upload(vidx),
                counts: d().upload(Int32Array.from(c.vonly.map((l) => l.length))),
                vcap,
                weights: d().upload(weights),
                vmax,
                mode: c.mode ?? "mass",
              };
              const voff = Int32Array.from({ length: Hkv + 1 }, (_, g) =>
                c.vonly!.slice(0, g).reduce((a, l) => a + l.length, 0),
              );
              vOnly = { idx: Int32Array.from(c.vonly.flat()), off: voff, weights, mode: c.mode ?? "mass" };
            }
            want = reference.indexedAttentionRef({
              q: qs,
              k,
              v,
              cap,
              T: c.T,
              Hq,
              Hkv,
              D,
              lists: Hkv,
              idx: Int32Array.from(c.select.flat()),
              off,
              newAt: c.n - c.T,
              vOnly,
            }).out;
          } else {
            maxKeys = Math.max(maxKeys, c.n);
            want = reference.attentionRef({
              q: qs,
              k,
              v,
              cap,
              T: c.T,
              past: c.n - c.T,
              Hq,
              Hkv,
              D,
              window: c.window,
            }).out;
          }
          seqs.push(seq);
          wants.push(want);
          row += c.T;
        }
        const maxT = Math.max(...cases.map((c) => c.T));
        const out = d().alloc(M * Hq * D);
        const part = d().alloc(d().attentionPartFloats(cases.length, maxT, maxKeys, Hq, D));
        d().attentionBatch({
          seqs: d().upload(packAttentionSeqs(seqs)),
          B: cases.length,
          maxT,
          maxKeys,
          Hq,
          Hkv,
          D,
          kvDtype: dt,
          q: d().upload(q),
          out,
          part,
        });
        const got = d().read(out, new Float32Array(M * Hq * D));
        row = 0;
        for (const [i, c] of cases.entries()) {
          const g = got.subarray(row * Hq * D, (row + c.T) * Hq * D);
          expect(maxAbsDiff(g, wants[i])).toBeLessThan(2e-5);
          row += c.T;
        }
      });
    }
  }

  it("a captured graph replays its work on the buffers' current contents", () => {
    const m = 2,
      n = 40,
      k = 16,
      r = rng(11);
    const w = randn(n * k, r);
    const wb = upW(w, "bf16");
    const x = d().alloc(m * k);
    const y = d().alloc(m * n);
    const ids = d().alloc(m, "i32");
    const graph = d().capture(() => {
      d().gemv({ y, x, w: wb, m, n, k });
      d().argmax(ids, y, m, n);
    });
    for (let rep = 0; rep < 3; rep++) {
      const xs = randn(m * k, r);
      d().write(x, xs);
      graph.launch();
      const want = reference.gemmRef(xs, round(w, "bf16"), m, n, k);
      expect(maxAbsDiff(d().read(y, new Float32Array(m * n)), want)).toBeLessThan(1e-4);
      const top = [0, 1].map((i) => {
        const row = want.subarray(i * n, (i + 1) * n);
        return row.indexOf(Math.max(...row));
      });
      expect([...d().read(ids, new Int32Array(m))]).toEqual(top);
    }
    graph.free();
    expect(() => graph.launch()).toThrow(/freed/);
    // A failing body ends the capture: the stream runs work again afterwards.
    expect(() =>
      d().capture(() => {
        throw new Error("boom");
      }),
    ).toThrow("boom");
    d().gemv({ y, x, w: wb, m, n, k });
    expect(
      d()
        .read(y, new Float32Array(m * n))
        .some((v) => v !== 0),
    ).toBe(true);
  });

  it("records and addresses packed at an offset of a larger array equal the plain packing", () => {
    const seqs: AttentionSeq[] = [
      { k: 2 ** 40 + 16, v: 2 ** 33 + 48, cap: 64, n: 9, T: 1, qRow: 3, window: 4 },
      { k: 256, v: 512, cap: 8, n: 8, T: 2, qRow: 0, select: { idx: 1024, counts: 2048, icap: 5 } },
    ];
    const big = new Int32Array(ATTN_SEQ_INTS * 2 + 20).fill(-7);
    expect(packAttentionSeqs(seqs, big, 6)).toBe(big);
    expect(big.subarray(6, 6 + ATTN_SEQ_INTS * 2)).toEqual(packAttentionSeqs(seqs));
    expect(big.subarray(0, 6).every((x) => x === -7)).toBe(true);
    const addrs = [2 ** 45 + 8, 4096];
    const room = new Int32Array(7).fill(-7);
    expect(packAddresses(addrs, room, 2)).toBe(room);
    expect(room.subarray(2, 6)).toEqual(packAddresses(addrs));
    expect([room[0], room[1], room[6]]).toEqual([-7, -7, -7]);
    // Too short: a new array, long enough for the offset.
    expect(packAddresses(addrs, new Int32Array(2), 1).length).toBe(5);
  });

  it("attentionBatch refuses shapes it cannot run", () => {
    const b = d().alloc(1024);
    const base = { seqs: b, B: 1, maxT: 1, maxKeys: 4, q: b, out: b, part: b, kvDtype: "bf16" as const };
    expect(() => d().attentionBatch({ ...base, Hq: 3, Hkv: 2, D: 16 })).toThrow(/multiple/);
    expect(() => d().attentionBatch({ ...base, Hq: 2, Hkv: 2, D: 12 })).toThrow(/head dim/);
  });
}

describe("decode kernels on the CPU emulator", () => decodeSuite("emulator"));
describe.skipIf(!probe.available)(`decode kernels on CUDA (${probe.reason})`, () => decodeSuite("cuda"));
