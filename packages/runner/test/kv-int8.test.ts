// The int8 KV store: a real model's perplexity barely moves, every policy path reads it in
// place (plain, selected, V-only, sliding windows), and what cannot honour it refuses.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { assetsDir, fullCache, InvalidOptionError, KvCache, logSoftmax, Model } from "../src/index.js";
import { MODELS } from "./helpers.js";

/** Mean negative log-likelihood of `ids[1..]` given the prefix, in one prefill step. */
async function nll(m: Model, ids: number[]): Promise<number> {
  const seq = m.newSequence(fullCache);
  const [logits] = await m.forward([{ seq, tokens: ids, logits: "all" }]);
  const V = m.config.vocabSize;
  let total = 0;
  for (let t = 0; t + 1 < ids.length; t++)
    total -= logSoftmax(logits.subarray(t * V, (t + 1) * V))[ids[t + 1]];
  seq.release();
  return total / (ids.length - 1);
}

describe("int8 KV store", () => {
  it("keeps stories260K's perplexity within 0.5% of the float store on real text, at (D + 4) / 4D of the float bytes (37.5% at head dim 8, 27% at 64)", async () => {
    const dir = join(MODELS, "stories260K");
    const f32 = await Model.load(dir, { threads: 1 });
    const int8 = await Model.load(dir, { threads: 1, kvCold: "int8" });
    expect(int8.kvCold).toBe("int8");
    const text = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8").slice(0, 6000);
    const ids = f32.tokenizer.encode(text).slice(0, 250);
    const [a, b] = [await nll(f32, ids), await nll(int8, ids)];
    const ratio = Math.exp(b - a);
    console.log(`int8 KV store: perplexity ratio to f32 ${ratio.toFixed(5)} over ${ids.length} tokens`);
    expect(ratio).toBeLessThan(1.005);
    expect(ratio).toBeGreaterThan(0.995);
    // Bytes as stored: D int8 values and a float scale per row.
    const seq = int8.newSequence();
    await int8.forward([{ seq, tokens: ids.slice(0, 40) }]);
    const D = int8.config.headDim;
    expect(seq.stats().coldBytes).toBe(2 * int8.config.numLayers * int8.config.numKvHeads * 40 * (D + 4));
    const fseq = f32.newSequence();
    await f32.forward([{ seq: fseq, tokens: ids.slice(0, 40) }]);
    expect(seq.stats().coldBytes / fseq.stats().coldBytes).toBeCloseTo((D + 4) / (4 * D), 10);
  });

  it("decode steps through a selection read the int8 rows in place (V-only rows too)", async () => {
    const dir = join(MODELS, "stories260K");
    const run = async (kvCold: "f32" | "int8") => {
      const m = await Model.load(dir, { threads: 1, kvCold });
      // Keep every other old token exactly and the rest V-only with uniform small weights.
      const policy = {
        name: "alternate",
        select: (s: { length: number }, _l: number, step: { start: number }) => {
          const H = m.config.numKvHeads;
          const even = Int32Array.from({ length: Math.ceil(step.start / 2) }, (_, i) => 2 * i);
          const odd = Int32Array.from({ length: Math.floor(step.start / 2) }, (_, i) => 2 * i + 1);
          void s;
          return { full: Array.from({ length: H }, () => even), vOnly: Array.from({ length: H }, () => odd) };
        },
        vOnlyWeights: (_s: unknown, _l: number, step: { start: number; T: number }) => {
          const vmax = Math.floor(step.start / 2);
          return new Float32Array(m.config.numHeads * step.T * vmax).fill(0.5 / Math.max(1, vmax));
        },
      };
      const seq = m.newSequence(policy as never);
      let [l] = await m.forward([{ seq, tokens: [1, 400, 300, 200, 100, 50] }]);
      for (let i = 0; i < 6; i++) [l] = await m.forward([{ seq, tokens: [10 + i] }]);
      expect(seq.fault).toBeNull();
      return l;
    };
    const [a, b] = [await run("f32"), await run("int8")];
    let top = 0;
    for (let v = 1; v < a.length; v++) if (a[v] > a[top]) top = v;
    let topb = 0;
    for (let v = 1; v < b.length; v++) if (b[v] > b[topb]) topb = v;
    expect(topb).toBe(top);
    expect(Math.max(...a.map((x, i) => Math.abs(x - b[i])))).toBeLessThan(0.2);
  });

  it("a sliding-window store in int8 slides and grows like the float one", () => {
    const config = { numLayers: 2, numKvHeads: 2, headDim: 4, maxPositions: 512, slidingWindow: [3, null] };
    const a = new KvCache(config as never, 4, "f32");
    const b = new KvCache(config as never, 4, "int8");
    for (let start = 0; start < 40; start += 5) {
      const rows = Float32Array.from({ length: 5 * 2 * 4 }, (_, i) => Math.sin(start * 31 + i));
      for (const c of [a, b]) {
        c.ensure(start + 5);
        for (let l = 0; l < 2; l++) c.write(l, rows, rows, start, 5);
        c.length = start + 5;
      }
    }
    for (let l = 0; l < 2; l++) {
      expect(b.base[l]).toBe(a.base[l]);
      const held = a.heldRows(l);
      for (let g = 0; g < 2; g++) {
        const x = a.keyRows(l, g, 0, held);
        const y = b.keyRows(l, g, 0, held);
        expect(Math.max(...x.map((v, i) => Math.abs(v - y[i])))).toBeLessThan(1 / 127);
      }
    }
    expect(b.usedBytes()).toBe((a.usedBytes() / 16) * (4 + 4));
  });

  it("refuses an unknown store type, and int8 on the device backend", async () => {
    const dir = join(MODELS, "stories260K");
    await expect(Model.load(dir, { kvCold: "f16" as never })).rejects.toThrow(InvalidOptionError);
    await expect(Model.load(dir, { device: "emulator", kvCold: "int8" })).rejects.toThrow(/CPU backend/);
  });
});
