import { describe, expect, it } from "vitest";
import { attentionRowTops, reference, TensorShapeError } from "../src/index.js";
import { rng } from "./rand.js";

// A causal attention matrix: row u a distribution over 0..u (coarse values: many ties).
function causal(T: number, seed: number, levels: number): Float32Array {
  const r = rng(seed);
  const p = new Float32Array(T * T);
  for (let u = 0; u < T; u++) {
    let s = 0;
    for (let v = 0; v <= u; v++) s += p[u * T + v] = 1 + Math.floor(r() * levels);
    for (let v = 0; v <= u; v++) p[u * T + v] /= s;
  }
  return p;
}

describe("attentionRowTops", () => {
  for (const mode of ["row", "old", "own"] as const)
    for (const [T, levels, ratio] of [
      [1, 5, 0.2],
      [2, 5, 0.5],
      [40, 3, 0.2],
      [97, 1000, 0.3],
      [128, 4, 0.1],
    ] as const)
      it(`matches the reference per row: ${mode}, T = ${T}, ${levels} levels, ratio ${ratio}`, () => {
        const p = causal(T, T * 7 + levels, levels);
        const { idx, off } = attentionRowTops(p, T, ratio, mode);
        const want = reference.attentionRowTopsRef(p, T, ratio, mode);
        expect(off.length).toBe(T + 1);
        for (let u = 0; u < T; u++)
          expect(Array.from(idx.subarray(off[u], off[u + 1]))).toEqual(Array.from(want[u]));
      });

  it("refuses bad arguments with a typed error", () => {
    const p = causal(4, 1, 3);
    expect(() => attentionRowTops(p, 5, 0.2, "row")).toThrow(TensorShapeError);
    expect(() => attentionRowTops(p, 4, 0, "row")).toThrow(/ratio/);
    expect(() => attentionRowTops(p, 4, 0.2, "rows" as "row")).toThrow(/mode/);
  });
});
