// `smallkv bench anchor`: ours against llama.cpp (node-llama-cpp, a dev dependency) on the same
// GGUF files of the synthetic ~100M Llama: prefill and decode tokens/s at 1 and 2 threads and
// peak RSS, each measurement in its own process, the engines and types interleaved over rounds
// (best kept), as a user of each would run it (llama.cpp with its default context settings).
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { LLM_100M, LLM_SMALL, syntheticCheckpoint, table, writeJson } from "@smallkv/eval";
import {
  argmax,
  assetsDir,
  type Checkpoint,
  GgufFile,
  type GgufWriteType,
  Model,
  openCheckpoint,
  writeGguf,
} from "@smallkv/runner";

interface Opts {
  small?: boolean;
  prefill: number;
  steps: number;
  threads: string;
  types: string;
  rounds: number;
  out: string;
  child?: string;
}

interface Measured {
  prefillTokS: number;
  decodeTokS: number;
  peakRssMiB: number;
}

const ENGINES = ["smallkv", "llama.cpp"] as const;
type Engine = (typeof ENGINES)[number];

function peakRssMiB(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

function promptIds(n: number): number[] {
  // Real tokens of the shipped vocabulary (ids 3..511), after BOS.
  return [1, ...Array.from({ length: n - 1 }, (_, i) => 3 + ((i * 7919) % 509))];
}

async function measureOurs(file: string, threads: number, P: number, steps: number): Promise<Measured> {
  const m = await Model.load(file, { threads });
  const seq = m.newSequence();
  const t0 = performance.now();
  let [logits] = await m.forward([{ seq, tokens: promptIds(P) }]);
  const prefill = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  for (let s = 0; s < steps; s++) {
    [logits] = await m.forward([{ seq, tokens: [argmax(logits)] }]);
  }
  const decode = (performance.now() - t1) / 1000;
  return { prefillTokS: P / prefill, decodeTokS: steps / decode, peakRssMiB: peakRssMiB() };
}

async function measureLlamaCpp(file: string, threads: number, P: number, steps: number): Promise<Measured> {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: P + steps + 16, threads, batchSize: P, sequences: 1 });
  const seq = ctx.getSequence();
  const t0 = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(promptIds(P) as never);
  const prefill = (performance.now() - t0) / 1000;
  let n = 0;
  let t1 = 0;
  for await (const _ of seq.evaluate([promptIds(2)[1]] as never, { temperature: 0 })) {
    // The first token pays for the one-token prompt step; the clock starts after it.
    if (n === 0) t1 = performance.now();
    if (++n > steps) break;
  }
  const decode = (performance.now() - t1) / 1000;
  return { prefillTokS: P / prefill, decodeTokS: steps / decode, peakRssMiB: peakRssMiB() };
}

/** The synthetic model as GGUF files of each type (made once, beside the checkpoint). */
async function ggufFiles(o: Opts, types: GgufWriteType[]): Promise<Map<GgufWriteType, string>> {
  const dir = syntheticCheckpoint(o.small ? "llm-small" : "llm-100m", o.small ? LLM_SMALL : LLM_100M);
  const files = new Map<GgufWriteType, string>();
  // The checkpoint and the tokenizer's file, opened once for every type still to write.
  let source: { ckpt: Checkpoint; tok: GgufFile } | null = null;
  for (const t of types) {
    const f = join(dir, `model-${t}.gguf`);
    if (!existsSync(f)) {
      process.stderr.write(`writing ${f}\n`);
      source ??= {
        ckpt: await openCheckpoint(dir),
        tok: await GgufFile.open(join(assetsDir(), "models", "gguf", "stories260K-f32.gguf")),
      };
      const { ckpt, tok } = source;
      writeGguf(`${f}.tmp`, ckpt.config, ckpt.open(), tok, t, `synthetic-${t}`);
      renameSync(`${f}.tmp`, f);
    }
    files.set(t, f);
  }
  return files;
}

function runChild(engine: Engine, file: string, threads: number, o: Opts): Measured | null {
  const out = join(tmpdir(), `smallkv-anchor-${process.pid}-${Date.now()}.json`);
  const bin = fileURLToPath(new URL("../bin.js", import.meta.url));
  const args = [bin, "bench", "anchor", "--child", JSON.stringify({ engine, file, threads, out })];
  args.push("--prefill", String(o.prefill), "--steps", String(o.steps));
  const r = spawnSync(process.execPath, args, { stdio: ["ignore", "ignore", "inherit"] });
  if (r.status !== 0 || !existsSync(out)) return null;
  return JSON.parse(readFileSync(out, "utf8")) as Measured;
}

export async function benchAnchor(o: Opts): Promise<void> {
  if (o.child) {
    const c = JSON.parse(o.child) as { engine: Engine; file: string; threads: number; out: string };
    const m =
      c.engine === "smallkv"
        ? await measureOurs(c.file, c.threads, o.prefill, o.steps)
        : await measureLlamaCpp(c.file, c.threads, o.prefill, o.steps);
    const { writeFileSync } = await import("node:fs");
    writeFileSync(c.out, JSON.stringify(m));
    process.exit(0);
  }
  const types = o.types.split(",").map((t) => t.trim()) as GgufWriteType[];
  const threads = o.threads.split(",").map(Number);
  const files = await ggufFiles(o, types);
  // A first run of ours per file builds its cached graphs (not measured).
  for (const t of types) runChild("smallkv", files.get(t) as string, 1, { ...o, steps: 1, prefill: 8 });
  const best = new Map<string, Measured>();
  for (let r = 0; r < o.rounds; r++)
    for (const t of types)
      for (const n of threads)
        for (const e of ENGINES) {
          const m = runChild(e, files.get(t) as string, n, o);
          if (!m) {
            process.stderr.write(`${e} ${t} ${n} threads: failed\n`);
            continue;
          }
          process.stderr.write(
            `round ${r + 1} ${e} ${t} ${n}t: prefill ${m.prefillTokS.toFixed(0)} decode ${m.decodeTokS.toFixed(1)} tok/s, ${m.peakRssMiB.toFixed(0)} MiB\n`,
          );
          const k = `${t}/${n}/${e}`;
          const b = best.get(k);
          best.set(k, {
            prefillTokS: Math.max(b?.prefillTokS ?? 0, m.prefillTokS),
            decodeTokS: Math.max(b?.decodeTokS ?? 0, m.decodeTokS),
            peakRssMiB: Math.min(b?.peakRssMiB ?? Number.POSITIVE_INFINITY, m.peakRssMiB),
          });
        }
  const rows: Record<string, string | number>[] = [];
  const cells: string[][] = [];
  const ratio = (a?: number, b?: number) => (a && b ? `${(a / b).toFixed(2)}x` : "-");
  for (const t of types) {
    const row: Record<string, string | number> = { type: t };
    const line: string[] = [t];
    for (const n of threads) {
      const a = best.get(`${t}/${n}/smallkv`);
      const b = best.get(`${t}/${n}/llama.cpp`);
      line.push(
        `${a?.prefillTokS.toFixed(0)} / ${b?.prefillTokS.toFixed(0)} (${ratio(a?.prefillTokS, b?.prefillTokS)})`,
        `${a?.decodeTokS.toFixed(1)} / ${b?.decodeTokS.toFixed(1)} (${ratio(a?.decodeTokS, b?.decodeTokS)})`,
      );
      row[`prefill_${n}t_ours`] = a?.prefillTokS ?? 0;
      row[`prefill_${n}t_llamacpp`] = b?.prefillTokS ?? 0;
      row[`decode_${n}t_ours`] = a?.decodeTokS ?? 0;
      row[`decode_${n}t_llamacpp`] = b?.decodeTokS ?? 0;
    }
    const a = best.get(`${t}/1/smallkv`);
    const b = best.get(`${t}/1/llama.cpp`);
    line.push(
      `${a?.peakRssMiB.toFixed(0)} / ${b?.peakRssMiB.toFixed(0)} (${ratio(a?.peakRssMiB, b?.peakRssMiB)})`,
    );
    row.rss_ours_mib = a?.peakRssMiB ?? 0;
    row.rss_llamacpp_mib = b?.peakRssMiB ?? 0;
    rows.push(row);
    cells.push(line);
  }
  const headers = ["GGUF type"];
  for (const n of threads)
    headers.push(`prefill ${n}t tok/s ours / llama.cpp`, `decode ${n}t tok/s ours / llama.cpp`);
  headers.push("peak RSS MiB (1t) ours / llama.cpp");
  process.stdout.write(`${table(headers, cells)}\n`);
  const path = writeJson(`${o.out}/anchor`, "bench.json", { config: { ...o, child: undefined }, rows });
  process.stdout.write(`wrote ${path}\n`);
}
