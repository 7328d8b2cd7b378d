import { afterAll, describe, expect, it } from "vitest";
import {
  Device,
  DeviceError,
  type DeviceKind,
  fromHalfBits,
  reference,
  TensorShapeError,
  toHalfBits,
} from "../src/index.js";
import { maxAbsDiff, randn, rng } from "./rand.js";

// The same kernel sources run on a real GPU ("cuda") and, everywhere, on the CPU emulator:
// CI has no GPU, so the emulator is what proves the kernels' logic there.
const probe = Device.probe();
if (!probe.available) console.log(`CUDA device tests skipped: ${probe.reason}`);

const bf16Round = (v: number) => fromHalfBits(toHalfBits(Float32Array.of(v), "bf16"), "bf16")[0];
const f16Round = (v: number) => fromHalfBits(toHalfBits(Float32Array.of(v), "f16"), "f16")[0];

function kernelSuite(kind: DeviceKind) {
  const dev = kind === "cuda" && !probe.available ? null : Device.open(kind);
  const d = () => dev as Device;
  afterAll(() => dev?.releaseAll());

  it("round-trips buffers and pinned memory", () => {
    const x = randn(1000, rng(1));
    const b = d().upload(x);
    expect(d().read(b, new Float32Array(1000))).toEqual(x);
    expect(d().read(b, new Float32Array(10), 990)).toEqual(x.subarray(990));
    const p = d().pinned(16);
    p.f32.set(x.subarray(0, 16));
    const back = d().alloc(16);
    d().copy(back, p, 64);
    expect(d().read(back, new Float32Array(16))).toEqual(x.subarray(0, 16));
  });

  it("embedding gathers rows of f32, f16 and bf16 tables", () => {
    const V = 37,
      D = 24,
      r = rng(2);
    const table = randn(V * D, r);
    const ids = Int32Array.of(3, 0, 36, 3, 17);
    const out = d().alloc(ids.length * D);
    for (const dt of ["f32", "f16", "bf16"] as const) {
      const t = dt === "f32" ? d().upload(table) : d().upload(toHalfBits(table, dt), dt);
      d().embedding(out, t, d().upload(ids), ids.length, D);
      const got = d().read(out, new Float32Array(ids.length * D));
      const src = dt === "f32" ? table : fromHalfBits(toHalfBits(table, dt), dt);
      const want = new Float32Array(ids.length * D);
      ids.forEach((id, i) => want.set(src.subarray(id * D, (id + 1) * D), i * D));
      expect(got).toEqual(want);
    }
  });

  it("rmsnorm matches the reference", () => {
    const n = 5,
      D = 300,
      r = rng(3);
    const x = randn(n * D, r, 3),
      w = randn(D, r);
    const out = d().alloc(n * D);
    d().rmsnorm(out, d().upload(x), d().upload(w), n, D, 1e-5);
    expect(
      maxAbsDiff(d().read(out, new Float32Array(n * D)), reference.rmsnormRef(x, w, n, D, 1e-5)),
    ).toBeLessThan(1e-5);
  });

  // GEMV (m <= 8), tiled SIMT (f32, m > 8) and tensor cores (f16/bf16, m > 8): the cp.async
  // kernel at 32/64/128-row tiles with and without split K (16-byte rows), the plain WMMA
  // kernel for other rows (k = 50); odd sizes.
  for (const [m, n, k] of [
    [1, 67, 40],
    [5, 33, 129],
    [8, 64, 64],
    [9, 70, 50],
    [130, 65, 96],
    [20, 70, 256],
    [100, 130, 88],
  ]) {
    for (const dt of ["f32", "f16", "bf16"] as const) {
      it(`gemm ${dt} m=${m} n=${n} k=${k} with bias and accumulate`, () => {
        const r = rng(m * 1000 + n * 10 + k);
        const x = randn(m * k, r),
          w = randn(n * k, r, 0.5),
          bias = randn(n, r);
        const wq = dt === "f32" ? w : fromHalfBits(toHalfBits(w, dt), dt);
        const wb = dt === "f32" ? d().upload(w) : d().upload(toHalfBits(w, dt), dt);
        const y = d().upload(randn(m * n, r));
        const y0 = d().read(y, new Float32Array(m * n));
        d().gemm({ y, x: d().upload(x), w: wb, bias: d().upload(bias), m, n, k, accumulate: true });
        const got = d().read(y, new Float32Array(m * n));
        // Tensor cores (m > 8) see x rounded to the weight type; GEMV and SIMT use it as is.
        const round = dt === "f32" || m <= 8 ? undefined : dt === "f16" ? f16Round : bf16Round;
        const want = reference.gemmRef(x, wq, m, n, k, bias, round).map((v, i) => v + y0[i]);
        expect(maxAbsDiff(got, want)).toBeLessThan(1e-4 * Math.sqrt(k));
        const rel = maxAbsDiff(
          got,
          reference.gemmRef(x, w, m, n, k, bias).map((v, i) => v + y0[i]),
        );
        // Against full-precision weights: the stated F16/BF16 tolerances.
        expect(rel).toBeLessThan(dt === "f32" ? 1e-3 : dt === "f16" ? 0.02 : 0.15);
      });
    }
  }

  it("rope matches the CPU reference at large positions", () => {
    const T = 3,
      H = 4,
      D = 16,
      r = rng(4);
    const x = randn(T * H * D, r);
    const pos = Int32Array.of(0, 777, 100000);
    const buf = d().upload(x);
    d().rope(buf, d().upload(pos), T, H, D, 500000);
    const want = x.slice();
    reference.ropeRef(want, pos, H, D, 500000);
    expect(maxAbsDiff(d().read(buf, new Float32Array(x.length)), want)).toBeLessThan(1e-5);
    // q and k (here 4 and 2 heads) in one launch.
    const k = randn(T * 2 * D, r);
    const qb = d().upload(x);
    const kb = d().upload(k);
    d().rope(qb, d().upload(pos), T, H, D, 500000, 0, undefined, { x: kb, H: 2 });
    const wantK = k.slice();
    reference.ropeRef(wantK, pos, 2, D, 500000);
    expect(maxAbsDiff(d().read(qb, new Float32Array(x.length)), want)).toBeLessThan(1e-5);
    expect(maxAbsDiff(d().read(kb, new Float32Array(k.length)), wantK)).toBeLessThan(1e-5);
  });

  it("silu-gate and add", () => {
    const n = 1000,
      r = rng(5);
    const g = randn(n, r, 4),
      u = randn(n, r);
    const out = d().alloc(n);
    d().siluGate(out, d().upload(g), d().upload(u), n);
    expect(maxAbsDiff(d().read(out, new Float32Array(n)), reference.siluGateRef(g, u))).toBeLessThan(1e-6);
    const y = d().upload(g);
    d().add(y, out, n);
    const want = reference.siluGateRef(g, u).map((v, i) => v + g[i]);
    expect(maxAbsDiff(d().read(y, new Float32Array(n)), want)).toBeLessThan(1e-6);
  });

  // Decode (T=1), prefill (T>1) over > 1 key tile, GQA groups 1/2/4, ragged per-head past.
  for (const [T, Hq, Hkv, D, pasts] of [
    [1, 4, 4, 8, [5, 5, 5, 5]],
    [1, 8, 2, 64, [300, 131]],
    [7, 8, 4, 32, [0, 3, 140, 9]],
    [150, 4, 1, 16, [10]],
  ] as [number, number, number, number, number[]][]) {
    it(`attention T=${T} Hq=${Hq} Hkv=${Hkv} D=${D}: output, probs, scores, V-only`, () => {
      const r = rng(T * 7 + Hq + D);
      const maxPast = Math.max(...pasts);
      const cap = maxPast + T + 3;
      const Lmax = maxPast + T;
      const q = randn(T * Hq * D, r),
        k = randn(Hkv * cap * D, r),
        v = randn(Hkv * cap * D, r);
      const past = Int32Array.from(pasts);
      const dq = d().upload(q),
        dk = d().upload(k),
        dv = d().upload(v),
        dp = d().upload(past);
      const out = d().alloc(T * Hq * D);
      const base = { q: dq, k: dk, v: dv, cap, T, past: dp, maxPast, Hq, Hkv, D, out };
      // Flash path (no probabilities wanted).
      d().attention(base);
      const ref = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D, probs: true });
      expect(maxAbsDiff(d().read(out, new Float32Array(T * Hq * D)), ref.out)).toBeLessThan(1e-5);
      // Exact two-pass path with probabilities and scores from row 1.
      const probs = d().alloc(Hq * T * Lmax);
      const scores = d().upload(randn(Hq * Lmax, r));
      const s0 = d().read(scores, new Float32Array(Hq * Lmax));
      const scoreStart = Math.min(1, T - 1);
      d().attention({
        ...base,
        probs,
        scores,
        scoreStart,
      });
      expect(maxAbsDiff(d().read(out, new Float32Array(T * Hq * D)), ref.out)).toBeLessThan(1e-5);
      const gotProbs = d().read(probs, new Float32Array(Hq * T * Lmax));
      expect(maxAbsDiff(gotProbs, ref.probs as Float32Array)).toBeLessThan(1e-6);
      const wantScores = s0.slice();
      for (let h = 0; h < Hq; h++)
        for (let t = scoreStart; t < T; t++)
          for (let j = 0; j < Lmax; j++)
            wantScores[h * Lmax + j] += (ref.probs as Float32Array)[(h * T + t) * Lmax + j];
      expect(maxAbsDiff(d().read(scores, new Float32Array(Hq * Lmax)), wantScores)).toBeLessThan(1e-5);
      // V-only rows in both combine modes.
      const vcap = 20;
      const counts = Int32Array.from({ length: Hkv }, (_, g) => (g * 7) % 13);
      const vmax = Math.max(...counts, 1);
      const vo = randn(Hkv * vcap * D, r);
      const w = new Float32Array(Hq * T * vmax).map(() => r() * 0.05);
      for (const mode of ["literal", "mass"] as const) {
        d().attention({
          ...base,
          vOnly: {
            v: d().upload(vo),
            cap: vcap,
            counts: d().upload(counts),
            vmax,
            weights: d().upload(w),
            mode,
          },
        });
        const want = reference.attentionRef({
          q,
          k,
          v,
          cap,
          T,
          past,
          Hq,
          Hkv,
          D,
          vOnly: { v: vo, cap: vcap, counts, weights: w, mode },
        });
        expect(maxAbsDiff(d().read(out, new Float32Array(T * Hq * D)), want.out)).toBeLessThan(1e-5);
      }
    });
  }

  it("kvWrite and kvMove (from pinned host memory) match the references", () => {
    const Hkv = 3,
      D = 40,
      cap = 12,
      T = 4,
      r = rng(9);
    const src = randn(T * Hkv * D, r);
    const dst = Int32Array.of(2, 0, 11, 5);
    const store = d().upload(new Float32Array(Hkv * cap * D));
    d().kvWrite(store, cap, Hkv, D, d().upload(src), T, d().upload(dst));
    const want = new Float32Array(Hkv * cap * D);
    reference.kvWriteRef(want, cap, Hkv, D, src, dst);
    expect(d().read(store, new Float32Array(Hkv * cap * D))).toEqual(want);

    const cold = d().pinned(Hkv * cap * D);
    cold.f32.set(want);
    const hotCap = 6;
    const hot = d().upload(new Float32Array(4 * hotCap * D));
    // A per-query-head hot set (4 heads) filled from kv heads 0..2.
    const moves = Int32Array.of(0, 0, 0, 2, 3, 5, 2, 11, 1, 1, 1, 5, 2, 4, 0, 0);
    d().kvMove(hot, hotCap, cold, cap, D, d().upload(moves), 4);
    const got = d().read(hot, new Float32Array(4 * hotCap * D));
    for (let i = 0; i < 4; i++) {
      const [dh, dr, sh, sr] = moves.subarray(i * 4, i * 4 + 4);
      expect(got.subarray((dh * hotCap + dr) * D, (dh * hotCap + dr + 1) * D)).toEqual(
        want.subarray((sh * cap + sr) * D, (sh * cap + sr + 1) * D),
      );
    }
    // K and V planes in one launch: the same moves on both pairs.
    const vCold = d().pinned(Hkv * cap * D);
    const vWant = randn(Hkv * cap * D, r);
    vCold.f32.set(vWant);
    const hotK = d().upload(new Float32Array(4 * hotCap * D));
    const hotV = d().upload(new Float32Array(4 * hotCap * D));
    d().kvMove(hotK, hotCap, cold, cap, D, d().upload(moves), 4, 0, { dst: hotV, src: vCold });
    const gotK = d().read(hotK, new Float32Array(4 * hotCap * D));
    const gotV = d().read(hotV, new Float32Array(4 * hotCap * D));
    for (let i = 0; i < 4; i++) {
      const [dh, dr, sh, sr] = moves.subarray(i * 4, i * 4 + 4);
      const at = (dh * hotCap + dr) * D;
      expect(gotK.subarray(at, at + D)).toEqual(want.subarray((sh * cap + sr) * D, (sh * cap + sr + 1) * D));
      expect(gotV.subarray(at, at + D)).toEqual(vWant.subarray((sh * cap + sr) * D, (sh * cap + sr + 1) * D));
    }
  });

  it("an allocation beyond the device's memory is a DeviceError EOOM, and the device and the next kernel stay usable", () => {
    let err: unknown;
    try {
      d().alloc(2 ** 43); // 32 TiB of float32
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeviceError);
    expect((err as DeviceError).code).toBe("EOOM");
    const b = d().upload(Float32Array.of(1, 2, 3));
    expect(d().read(b, new Float32Array(3))).toEqual(Float32Array.of(1, 2, 3));
    // The next kernel launches cleanly: the failed allocation left no "last error" behind (on
    // CUDA a failed cudaMalloc does unless it is cleared; the emulator behaves the same way).
    const x = Float32Array.of(1, 2, 3, 4);
    const w = Float32Array.of(1, 1, 1, 1);
    const out = d().alloc(4);
    d().rmsnorm(out, d().upload(x), d().upload(w), 1, 4, 1e-5);
    expect(
      maxAbsDiff(d().read(out, new Float32Array(4)), reference.rmsnormRef(x, w, 1, 4, 1e-5)),
    ).toBeLessThan(1e-5);
  });

  it.each([
    [3, 4],
    [130, 200],
    [5, 1],
  ])("sliding window %i (T=%i): output, probabilities and scores match the reference", (window, T) => {
    const r = rng(window + T);
    const [Hq, Hkv, D] = [4, 2, 16];
    const pasts = [9, 140];
    const maxPast = 140;
    const cap = maxPast + T + 2;
    const Lmax = maxPast + T;
    const q = randn(T * Hq * D, r);
    const k = randn(Hkv * cap * D, r);
    const v = randn(Hkv * cap * D, r);
    const past = Int32Array.from(pasts);
    const ref = reference.attentionRef({ q, k, v, cap, T, past, Hq, Hkv, D, window });
    const base = {
      q: d().upload(q),
      k: d().upload(k),
      v: d().upload(v),
      cap,
      T,
      past: d().upload(past),
      maxPast,
      Hq,
      Hkv,
      D,
      window,
      out: d().alloc(T * Hq * D),
    };
    d().attention(base);
    expect(maxAbsDiff(d().read(base.out, new Float32Array(T * Hq * D)), ref.out)).toBeLessThan(1e-5);
    const probs = d().alloc(Hq * T * Lmax);
    const scores = d().alloc(Hq * Lmax);
    d().zero(scores, 0, Hq * Lmax);
    d().attention({ ...base, probs, scores });
    expect(maxAbsDiff(d().read(base.out, new Float32Array(T * Hq * D)), ref.out)).toBeLessThan(1e-5);
    expect(maxAbsDiff(d().read(probs, new Float32Array(Hq * T * Lmax)), ref.probs)).toBeLessThan(1e-6);
    expect(maxAbsDiff(d().read(scores, new Float32Array(Hq * Lmax)), ref.scores)).toBeLessThan(1e-4);
  });

  it("rejects bad arguments with typed errors", () => {
    const b = d().alloc(4);
    expect(() => d().rmsnorm(b, b, b, 2, 4, 1e-5)).toThrow(TensorShapeError);
    expect(() =>
      d().attention({ q: b, k: b, v: b, cap: 1, T: 1, past: b, maxPast: 0, Hq: 3, Hkv: 2, D: 2, out: b }),
    ).toThrow(/multiple/);
    b.free();
    expect(() => d().read(b, new Float32Array(1))).toThrow(/freed/);
    expect(() => d().alloc(-1)).toThrow(TensorShapeError);
  });
}

describe("device kernels on the CPU emulator", () => kernelSuite("emulator"));
describe.skipIf(!probe.available)(`device kernels on CUDA (${probe.reason})`, () => kernelSuite("cuda"));

describe("device errors", () => {
  it("a missing GPU is a DeviceError with a reason, never a crash", () => {
    if (probe.available) {
      expect(() => Device.open("cuda", 999)).toThrow(DeviceError);
    } else {
      let err: unknown;
      try {
        Device.open("cuda");
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DeviceError);
      expect(["ENODEV", "ENOBUILD"]).toContain((err as DeviceError).code);
    }
  });
});
