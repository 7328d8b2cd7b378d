import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assetsDir } from "../src/index.js";

export const MODELS = join(assetsDir(), "models");
export const GOLDEN = join(MODELS, "golden");
export const LLM = join(MODELS, "stories260K");
export const SLM = join(MODELS, "stories260K-slm");
export const SLM_L = join(MODELS, "stories260K-slm-l");

export interface GoldenPrompt {
  name: string;
  ids: number[];
  last_logits: number[];
  greedy_ids: number[];
}

export function golden(model: string): {
  prompts: GoldenPrompt[];
  attention: { file: string; ids: number[]; shape: number[] };
} {
  return JSON.parse(readFileSync(join(GOLDEN, `${model}.json`), "utf8"));
}

export function tempDir(prefix = "smallkv-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
