// qgemm (GGUF Q8_0 / Q4_0 blocks, and float32 rows) against its TypeScript reference.
import { describe, expect, it } from "vitest";
import { QGEMM_TYPES, QMatrix, qgemmRowBytes, reference, swiglu, TensorShapeError } from "../src/index.js";

function rand(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 2 ** 32;
  };
}

/** N rows of K values of `type` as a GGUF file stores them, random (scales near 0.01). */
function blocks(type: 0 | 2 | 8, N: number, K: number, r: () => number): Uint8Array {
  const rb = qgemmRowBytes(type, K);
  const out = new Uint8Array(new ArrayBuffer(Math.ceil((N * rb) / 4) * 4), 0, N * rb);
  if (type === 0) {
    new Float32Array(out.buffer, 0, N * K).forEach((_, i, a) => (a[i] = (r() * 2 - 1) * 0.1));
    return out;
  }
  const size = type === 8 ? 34 : 18;
  for (let b = 0; b < (N * K) / 32; b++) {
    // float16 scales between 2^-8 and 2^-6 (exponent 7..9, random mantissa).
    const h = ((7 + Math.floor(r() * 3)) << 10) | Math.floor(r() * 1024);
    out[b * size] = h & 255;
    out[b * size + 1] = h >> 8;
    for (let i = 2; i < size; i++) out[b * size + i] = Math.floor(r() * 256);
  }
  return out;
}

describe("qgemm", () => {
  for (const [name, type] of Object.entries(QGEMM_TYPES))
    for (const [N, K, M] of [
      [13, 96, 1],
      [8, 32, 3],
      [40, 256, 5],
      [7, 64, 9],
    ])
      it(`${name}: ${M}x${K} by ${N}x${K} equals the reference (1 and 2 threads)`, () => {
        const r = rand(N * 1000 + K + M + type);
        const src = blocks(type as 0 | 2 | 8, N, K, r);
        const x = Float32Array.from({ length: M * K }, () => (r() * 2 - 1) * (r() < 0.1 ? 4 : 1));
        const want = reference.qgemmRef(type, src, N, K, x, M);
        const m = QMatrix.pack(type as 0 | 2 | 8, src, N, K);
        for (const threads of [1, 2]) {
          const got = m.apply(x, M, undefined, threads);
          expect(got.length).toBe(M * N);
          for (let i = 0; i < want.length; i++)
            expect(Math.abs(got[i] - want[i]), `${i}`).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want[i])));
        }
        // add: onto what y holds.
        const base = Float32Array.from({ length: M * N }, (_, i) => i * 0.25 - 3);
        const sum = m.apply(x, M, base.slice(), 1, true);
        for (let i = 0; i < want.length; i++)
          expect(Math.abs(sum[i] - (base[i] + want[i]))).toBeLessThanOrEqual(
            1e-5 * (1 + Math.abs(base[i] + want[i])),
          );
      });

  it("refuses what it cannot read, with TensorShapeError", () => {
    const src = new Uint8Array(34 * 4);
    expect(() => QMatrix.pack(3 as never, src, 1, 32)).toThrow(TensorShapeError);
    expect(() => QMatrix.pack(8, src, 1, 48)).toThrow(/multiple of 32/);
    expect(() => QMatrix.pack(8, src, 5, 32)).toThrow(/bytes/);
    const m = QMatrix.pack(8, src, 4, 32);
    expect(() => m.apply(new Float32Array(31), 1)).toThrow(TensorShapeError);
    expect(() => m.apply(new Float32Array(32), 1, new Float32Array(3))).toThrow(TensorShapeError);
  });
});

describe("swiglu", () => {
  it("equals silu(gate) · up of the stacked rows (reference siluGateRef)", () => {
    const r = rand(9);
    const [M, I] = [3, 37];
    const gu = Float32Array.from({ length: 2 * M * I }, () => (r() * 2 - 1) * 6);
    const got = swiglu(gu, M, I);
    for (let m = 0; m < M; m++) {
      const want = reference.siluGateRef(
        gu.slice(2 * m * I, 2 * m * I + I),
        gu.slice(2 * m * I + I, 2 * (m + 1) * I),
      );
      for (let i = 0; i < I; i++)
        expect(Math.abs(got[m * I + i] - want[i])).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(want[i])));
    }
    expect(() => swiglu(gu, M + 1, I)).toThrow(TensorShapeError);
  });
});
