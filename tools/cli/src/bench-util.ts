import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assetsDir, type SyntheticModelOptions, writeSyntheticCheckpoint } from "@smallkv/runner";

/** A ~100M-parameter Llama layout (GQA 3:1), the benchmarks' "realistic" LLM. */
export const LLM_100M: Omit<SyntheticModelOptions, "tokenizerFrom"> = {
  hiddenSize: 768,
  intermediateSize: 2048,
  numLayers: 12,
  numHeads: 12,
  numKvHeads: 4,
  vocabSize: 32000,
  maxPositions: 4096,
  tieWordEmbeddings: true,
  seed: 100,
};

/** A small layout for quick runs (`--small`) and tests. */
export const LLM_SMALL: Omit<SyntheticModelOptions, "tokenizerFrom"> = {
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

/** Write (once) and return the folder of a synthetic checkpoint, cached under the temp dir. */
export function syntheticCheckpoint(name: string, o: Omit<SyntheticModelOptions, "tokenizerFrom">): string {
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

/** Render rows as an aligned text table. */
export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (typeof c === "number" ? fmt(c) : c)))];
  const w = headers.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const line = (r: (string | number)[]) => r.map((c, i) => String(c).padStart(w[i])).join("  ");
  return [line(cells[0]), w.map((x) => "-".repeat(x)).join("  "), ...cells.slice(1).map(line)].join("\n");
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return String(x);
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

export function writeJson(outDir: string, file: string, data: unknown): string {
  mkdirSync(outDir, { recursive: true });
  const p = join(outDir, file);
  writeFileSync(p, `${JSON.stringify(data, null, 2)}\n`);
  return p;
}
