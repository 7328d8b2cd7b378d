// GGUF files of every type we read, made here (K-quants need rows of 256, which the shipped
// fixtures lack): a random Llama with 256-wide rows written as F32, Q8_0, Q4_0, Q4_K, Q5_K and
// Q6_K. Ours against llama.cpp on the same file, and our MatMulNBits mapping of each type
// against the float matrices ggml's dequantization gives.
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  dequantize,
  dequantizeRows,
  GGML,
  GgufFile,
  type GgufWriteType,
  logSoftmax,
  Model,
  openCheckpoint,
  quantizeRows,
  toMatMulNBits,
  writeGguf,
  writeSyntheticCheckpoint,
} from "../src/index.js";
import { MODELS, maxAbsDiff, tempDir } from "./helpers.js";
import { loadLlamaCpp } from "./llamacpp.js";

const dir = tempDir("smallkv-kquant-");
const TYPES: GgufWriteType[] = ["F32", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"];

describe("each ggml type maps onto MatMulNBits exactly", () => {
  for (const t of TYPES.filter((t) => t !== "F32"))
    it(`${t}: the MatMulNBits matrix dequantizes to ggml's floats`, () => {
      const N = 3;
      const K = 512;
      let s = 7;
      const x = Float32Array.from({ length: N * K }, () => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return ((s / 2 ** 32) * 2 - 1) * (s % 7 === 0 ? 0.5 : 0.05);
      });
      const { type, bytes } = quantizeRows(x, K, t);
      expect(type).toBe(GGML[t]);
      const ggmlFloats = dequantizeRows(type, bytes, N, K);
      // The round trip of our block writer stays near x (a sanity check of the layouts).
      expect(maxAbsDiff(ggmlFloats, x)).toBeLessThan(t === "Q8_0" || t === "Q6_K" ? 0.01 : 0.1);
      const m = toMatMulNBits(type, bytes, N, K);
      expect(m).not.toBeNull();
      // Integer zero points are exact; float ones (K-quants' mins) to float rounding.
      expect(maxAbsDiff(dequantize(m!), ggmlFloats)).toBeLessThan(
        t.endsWith("_K") && t !== "Q6_K" ? 1e-6 : 1e-9,
      );
    });
});

describe("K-quant and legacy files made here, against llama.cpp", () => {
  const files = new Map<GgufWriteType, string>();
  beforeAll(async () => {
    const src = join(dir, "llama-256");
    writeSyntheticCheckpoint(src, {
      hiddenSize: 256,
      intermediateSize: 512,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      vocabSize: 512,
      maxPositions: 512,
      // An untied head of small weights: logits of a few units (a tied head of the unit-scale
      // embedding would make every distribution one-hot).
      tieWordEmbeddings: false,
      scale: 0.05,
      seed: 3,
      tokenizerFrom: join(MODELS, "stories260K"),
    });
    const ckpt = await openCheckpoint(src);
    const tok = await GgufFile.open(join(MODELS, "gguf", "stories260K-f32.gguf"));
    for (const t of TYPES) {
      const f = join(dir, `llama-256-${t}.gguf`);
      writeGguf(f, ckpt.config, ckpt.open(), tok, t, `llama-256-${t}`);
      files.set(t, f);
    }
  });

  const ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 400, 300, 265, 290];
  /** Stated tolerances on max |Δ log p| (both sides round activations to int8 their own way). */
  const TOL: Record<GgufWriteType, number> = {
    F32: 1e-3,
    Q8_0: 0.05,
    Q4_0: 0.1,
    Q4_K: 0.1,
    Q5_K: 0.1,
    Q6_K: 0.05,
  };
  for (const t of TYPES)
    it(`${t}: next-token log-probabilities within ${TOL[t]} of llama.cpp's`, async () => {
      const f = files.get(t)!;
      const ours = await Model.load(f, { threads: 1 });
      const ref = await loadLlamaCpp(f);
      try {
        for (const n of [1, 8, 16]) {
          const [logits] = await ours.forward([{ seq: ours.newSequence(), tokens: ids.slice(0, n) }]);
          const mine = logSoftmax(logits);
          const theirs = await ref.logProbs(ids.slice(0, n));
          let worst = 0;
          for (let v = 0; v < mine.length; v++)
            if (Number.isFinite(theirs[v])) worst = Math.max(worst, Math.abs(mine[v] - theirs[v]));
          console.log(`${t}, ${n} tokens: max |log p - log p(llama.cpp)| = ${worst.toExponential(2)}`);
          expect(worst).toBeLessThan(TOL[t]);
        }
      } finally {
        await ref.dispose();
      }
    });
});
