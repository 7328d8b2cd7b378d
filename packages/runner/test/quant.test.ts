// Quantized weights: the group-wise round trip against a plain reference on random matrices,
// onnxruntime's MatMulNBits against the dequantized matrix, and int8 generation against f32.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { dequantize, Generator, InvalidOptionError, Model, quantize } from "../src/index.js";
import { golden, MODELS } from "./helpers.js";

function rand(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 2 ** 32;
  };
}

/** Round-to-nearest min/max quantization of one group, written independently: its squared error. */
function rtnError(vals: number[], bits: number): number {
  const qmax = 2 ** bits - 1;
  const lo = Math.min(0, ...vals);
  const hi = Math.max(0, ...vals);
  const scale = hi > lo ? (hi - lo) / qmax : 1;
  const zp = Math.min(qmax, Math.max(0, Math.round(-lo / scale)));
  return vals.reduce((a, v) => {
    const q = Math.min(qmax, Math.max(0, Math.round(v / scale) + zp));
    return a + ((q - zp) * scale - v) ** 2;
  }, 0);
}

describe("group-wise quantization", () => {
  for (const bits of [8, 4] as const)
    for (const groupSize of [16, 32, 64, 128])
      for (const [N, K] of [
        [7, 37],
        [5, 100],
        [3, 129],
        [9, 16],
      ])
        it(`int${bits}, group ${groupSize}, ${N}x${K}: the round trip is within half a step (int8) / never worse than min-max rounding (int4)`, () => {
          const r = rand(bits * 1000 + groupSize + N * K);
          const w = Float32Array.from({ length: N * K }, () => (r() * 2 - 1) * (r() < 0.05 ? 1 : 0.1));
          const q = quantize(w, N, K, bits, groupSize);
          const back = dequantize(q);
          const G = Math.ceil(K / groupSize);
          for (let n = 0; n < N; n++)
            for (let g = 0; g < G; g++) {
              const ks = Array.from(
                { length: Math.min(K, (g + 1) * groupSize) - g * groupSize },
                (_, i) => g * groupSize + i,
              );
              const vals = ks.map((k) => w[n * K + k]);
              const scale = q.scales[n * G + g];
              if (bits === 8)
                for (const k of ks)
                  expect(Math.abs(back[n * K + k] - w[n * K + k])).toBeLessThanOrEqual(scale / 2 + 1e-7);
              else {
                const err = ks.reduce((a, k) => a + (back[n * K + k] - w[n * K + k]) ** 2, 0);
                expect(err).toBeLessThanOrEqual(rtnError(vals, 4) * (1 + 1e-5) + 1e-12);
              }
            }
          // Deterministic: the same matrix gives the same bytes.
          expect(quantize(w, N, K, bits, groupSize).packed).toEqual(q.packed);
        });

  it("refuses a group size that is not a power of two >= 16", () => {
    expect(() => quantize(new Float32Array(48), 1, 48, 8, 24)).toThrow(/power of two/);
  });
});

describe("quantized models", () => {
  it("int8 generation matches f32 greedy ids for 32 tokens, or departs only at a near tie of the f32 model", async () => {
    const f32 = await Model.load(join(MODELS, "stories260K"), { threads: 1 });
    const int8 = await Model.load(join(MODELS, "stories260K"), { threads: 1, weights: "int8" });
    expect(int8.weightType).toBe("int8");
    expect(int8.weightBytes).toBeLessThan(f32.weightBytes * 0.5);
    const matched: Record<string, number> = {};
    for (const p of golden("stories260K").prompts) {
      const o = { temperature: 0, maxTokens: 32, stopTokens: [] };
      const a = (await new Generator(f32).generate(p.ids, o)).tokens;
      const b = (await new Generator(int8).generate(p.ids, o)).tokens;
      let i = 0;
      while (i < 32 && a[i] === b[i]) i++;
      matched[p.name] = i;
      if (i < 32) {
        // Where they part, f32 itself hesitates: int8's token is within 0.25 of f32's best logit.
        const seq = f32.newSequence();
        const [l] = await f32.forward([{ seq, tokens: [...p.ids, ...a.slice(0, i)] }]);
        expect(l[a[i]] - l[b[i]], `${p.name} at token ${i}`).toBeLessThan(0.25);
      }
    }
    console.log(`int8 greedy tokens equal to f32 (of 32): ${JSON.stringify(matched)}`);
    expect(Object.values(matched).filter((n) => n === 32).length).toBeGreaterThanOrEqual(3);
  });

  it("int4 logits stay close to f32 (the MatMulNBits path computes what the weights say)", async () => {
    const f32 = await Model.load(join(MODELS, "stories260K"), { threads: 1 });
    const int4 = await Model.load(join(MODELS, "stories260K"), { threads: 1, weights: "int4" });
    const ids = golden("stories260K").prompts[0].ids;
    const run = async (m: Model) => {
      const seq = m.newSequence();
      const [l] = await m.forward([{ seq, tokens: ids }]);
      return l;
    };
    const [a, b] = [await run(f32), await run(int4)];
    let top = 0;
    for (let v = 1; v < a.length; v++) if (a[v] > a[top]) top = v;
    let topb = 0;
    for (let v = 1; v < b.length; v++) if (b[v] > b[topb]) topb = v;
    expect(topb).toBe(top);
    expect(Math.max(...a.map((x, i) => Math.abs(x - b[i])))).toBeLessThan(2.5);
  });

  it("refuses what it cannot honour: f16 on the CPU, quantized weights on the device, bad group sizes", async () => {
    const dir = join(MODELS, "stories260K");
    await expect(Model.load(dir, { dtype: "f16" })).rejects.toThrow(
      /device backend; on the CPU use --weights/,
    );
    await expect(Model.load(dir, { device: "emulator", weights: "int8" })).rejects.toThrow(/CPU backend/);
    await expect(Model.load(dir, { weights: "int4", groupSize: 48 })).rejects.toThrow(InvalidOptionError);
    await expect(Model.load(dir, { weights: "int3" as never })).rejects.toThrow(/f32, int8, int4/);
  });
});

describe("the graph cache", () => {
  it("a second load finds the built graphs; a changed checkpoint or option builds new ones", async () => {
    const { findGraphs } = await import("../src/graph-cache.js");
    const { cpSync, mkdtempSync, writeFileSync, readFileSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const cache = mkdtempSync(join(tmpdir(), "smallkv-cache-"));
    const dir = mkdtempSync(join(tmpdir(), "smallkv-ckpt-"));
    cpSync(join(MODELS, "stories260K"), dir, { recursive: true });
    const before = process.env.SMALLKV_CACHE;
    process.env.SMALLKV_CACHE = cache;
    try {
      const opts = { weights: "int8", groupSize: 64 };
      expect(findGraphs(dir, opts)).toBeNull();
      const a = await Model.load(dir, { threads: 1, weights: "int8" });
      expect(findGraphs(dir, opts)).not.toBeNull();
      const b = await Model.load(dir, { threads: 1, weights: "int8" });
      const ids = golden("stories260K").prompts[1].ids;
      const o = { temperature: 0, maxTokens: 16, stopTokens: [] };
      expect((await new Generator(b).generate(ids, o)).tokens).toEqual(
        (await new Generator(a).generate(ids, o)).tokens,
      );
      expect(findGraphs(dir, { weights: "int4", groupSize: 32 })).toBeNull();
      const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
      writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, rms_norm_eps: 1e-6 }));
      expect(findGraphs(dir, opts)).toBeNull();
    } finally {
      if (before === undefined) delete process.env.SMALLKV_CACHE;
      else process.env.SMALLKV_CACHE = before;
    }
  });
});
