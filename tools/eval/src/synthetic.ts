import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assetsDir, type SyntheticModelOptions, writeSyntheticCheckpoint } from "@smallkv/runner";

export type Shape = Omit<SyntheticModelOptions, "tokenizerFrom">;

/** A ~100M-parameter Llama layout (GQA 3:1), the benchmarks' "realistic" LLM. */
export const LLM_100M: Shape = {
  hiddenSize: 768,
  intermediateSize: 2048,
  numLayers: 12,
  numHeads: 12,
  numKvHeads: 4,
  vocabSize: 32000,
  // Long enough for the long-context scenarios (batch 1 x 16384 + generation).
  maxPositions: 16896,
  tieWordEmbeddings: true,
  seed: 100,
};

/** Its assistant: same vocabulary and positions, about a tenth of the compute. */
export const SLM_10M: Shape = {
  hiddenSize: 256,
  intermediateSize: 688,
  numLayers: 6,
  numHeads: 4,
  numKvHeads: 2,
  vocabSize: 32000,
  maxPositions: 16896,
  tieWordEmbeddings: true,
  seed: 200,
};

/**
 * GPU-scale layouts for the paper's scenarios (batch 64 x 2048+256, batch 4 x 16384+512):
 * ~0.45B parameters, head dim 128, GQA 3:1, 32K positions; the assistant ~30M.
 */
export const LLM_GPU: Shape = {
  hiddenSize: 1536,
  intermediateSize: 4096,
  numLayers: 16,
  numHeads: 12,
  numKvHeads: 4,
  vocabSize: 32000,
  maxPositions: 32768,
  tieWordEmbeddings: true,
  seed: 300,
};
export const SLM_GPU: Shape = {
  hiddenSize: 512,
  intermediateSize: 1376,
  numLayers: 8,
  numHeads: 8,
  numKvHeads: 2,
  vocabSize: 32000,
  maxPositions: 32768,
  tieWordEmbeddings: true,
  seed: 301,
};

/** Small layouts for quick runs (`--small`) and tests. */
export const LLM_SMALL: Shape = {
  hiddenSize: 128,
  intermediateSize: 352,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  vocabSize: 2048,
  maxPositions: 4096,
  tieWordEmbeddings: true,
  seed: 101,
};
export const SLM_SMALL: Shape = {
  hiddenSize: 64,
  intermediateSize: 176,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  vocabSize: 2048,
  maxPositions: 4096,
  tieWordEmbeddings: true,
  seed: 102,
};

/** Write (once) and return the folder of a synthetic checkpoint, cached under the temp dir. */
export function syntheticCheckpoint(name: string, o: Shape): string {
  const dir = join(process.env.SMALLKV_BENCH_CACHE ?? join(tmpdir(), "smallkv-bench"), name);
  const stamp = join(dir, "synthetic.json");
  const want = JSON.stringify(o);
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === want) return dir;
  mkdirSync(dir, { recursive: true });
  writeSyntheticCheckpoint(dir, { ...o, tokenizerFrom: join(assetsDir(), "models", "stories260K") });
  writeFileSync(stamp, want);
  return dir;
}

export function randomTokens(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(3 + (s % (vocab - 3)));
  }
  return out;
}
