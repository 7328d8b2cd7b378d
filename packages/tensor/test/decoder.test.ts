import { describe, expect, it } from "vitest";
import {
  type DecoderLayerWeights,
  type DecoderShape,
  decoderCacheFloats,
  decoderStep,
  packDecoderWeights,
  reference,
  TensorShapeError,
} from "../src/index.js";
import { maxAbsDiff, randn, rng } from "./rand.js";

function model(s: DecoderShape, seed: number) {
  const r = rng(seed);
  const { hidden: d, heads: Hq, kvHeads: Hkv, headDim: D, intermediate: I, vocab: V } = s;
  const w = (n: number, scale = 0.3) => randn(n, r, scale);
  const norm = (n: number) => Float32Array.from(w(n), (x) => 1 + x);
  const layers: DecoderLayerWeights[] = Array.from({ length: s.layers }, () => ({
    inputNorm: norm(d),
    postNorm: norm(d),
    q: w(Hq * D * d),
    k: w(Hkv * D * d),
    v: w(Hkv * D * d),
    o: w(d * Hq * D),
    gate: w(I * d),
    up: w(I * d),
    down: w(d * I),
    ...(s.qkvBias ? { qBias: w(Hq * D), kBias: w(Hkv * D), vBias: w(Hkv * D) } : {}),
    ...(s.oBias ? { oBias: w(d) } : {}),
    ...(s.mlpBias ? { gateBias: w(I), upBias: w(I), downBias: w(d) } : {}),
    ...(s.qkNorm ? { qNorm: norm(D), kNorm: norm(D) } : {}),
  }));
  const parts = { layers, norm: norm(d), lmHead: w(V * d), embed: w(V * d, 1) };
  return { packed: packDecoderWeights(s, layers, parts.norm, parts.lmHead, parts.embed), parts };
}

const base: DecoderShape = {
  layers: 2,
  hidden: 24,
  heads: 4,
  kvHeads: 2,
  headDim: 6,
  intermediate: 40,
  vocab: 50,
  eps: 1e-5,
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  qkNorm: false,
};

describe("decoderStep", () => {
  const shapes: [string, DecoderShape, { invFreq: Float32Array; scale: number } | undefined][] = [
    ["llama (GQA 2:1)", base, undefined],
    [
      "biases and q/k norms (Qwen-style)",
      { ...base, qkvBias: true, oBias: true, mlpBias: true, qkNorm: true },
      undefined,
    ],
    ["scaled RoPE, MHA", { ...base, kvHeads: 4 }, { invFreq: Float32Array.from([1, 0.3, 0.05]), scale: 1.2 }],
  ];
  for (const [name, s, rope] of shapes)
    it(`matches the TypeScript reference over a prefill and decode steps: ${name}`, () => {
      const { packed: weights, parts } = model(s, 7);
      const cap = 20;
      const kv = new Float32Array(decoderCacheFloats(s, cap));
      const kvRef = new Float32Array(kv.length);
      const r = rng(3);
      let past = 0;
      // 9 rows take the kernel's many-row path, the others the per-row one.
      for (const T of [9, 1, 1, 3, 1]) {
        const tokens = Int32Array.from({ length: T }, () => Math.floor(r() * s.vocab));
        const args = { shape: s, weights, cap, past, tokens, theta: 10000, rope };
        const got = decoderStep({ ...args, kv });
        // The reference takes the unpacked parts: a packing error cannot cancel out.
        const want = reference.decoderStepRef({ ...args, weights: parts, kv: kvRef });
        expect(maxAbsDiff(got, want)).toBeLessThan(1e-4);
        past += T;
      }
      // The caches hold the same rows, and nothing past the fed positions.
      expect(maxAbsDiff(kv, kvRef)).toBeLessThan(1e-5);
    });

  it("a prefill and one-token steps give the same logits (the cache carries the context)", () => {
    const weights = model(base, 11).packed;
    const cap = 12;
    const tokens = Int32Array.of(3, 14, 15, 9, 26, 5, 35, 8, 9, 7);
    const whole = decoderStep({
      shape: base,
      weights,
      kv: new Float32Array(decoderCacheFloats(base, cap)),
      cap,
      past: 0,
      tokens,
      theta: 10000,
    });
    const kv = new Float32Array(decoderCacheFloats(base, cap));
    let last = new Float32Array(0);
    for (let t = 0; t < tokens.length; t++)
      last = decoderStep({
        shape: base,
        weights,
        kv,
        cap,
        past: t,
        tokens: tokens.subarray(t, t + 1),
        theta: 10000,
      });
    expect(maxAbsDiff(whole, last)).toBeLessThan(1e-5);
  });

  it("refuses bad arguments with a typed error", () => {
    const weights = model(base, 1).packed;
    const cap = 4;
    const kv = new Float32Array(decoderCacheFloats(base, cap));
    const ok = { shape: base, weights, kv, cap, past: 0, tokens: Int32Array.of(1), theta: 10000 };
    expect(() => decoderStep({ ...ok, tokens: Int32Array.of(base.vocab) })).toThrow(TensorShapeError);
    expect(() => decoderStep({ ...ok, past: 4 })).toThrow(/must fit cap/);
    expect(() => decoderStep({ ...ok, weights: weights.subarray(1) })).toThrow(/weights has/);
    expect(() => decoderStep({ ...ok, kv: kv.subarray(1) })).toThrow(/kv has/);
    expect(() => decoderStep({ ...ok, shape: { ...base, heads: 3 } })).toThrow(/multiple of kvHeads/);
    expect(() =>
      packDecoderWeights(base, [], new Float32Array(0), new Float32Array(0), new Float32Array(0)),
    ).toThrow(/0 layers given/);
  });
});
