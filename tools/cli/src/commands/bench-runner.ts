import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join } from "node:path";
import {
  LLM_100M,
  LLM_GPU,
  LLM_SMALL,
  measureReadBandwidth,
  randomTokens,
  syntheticCheckpoint,
  table,
  writeJson,
} from "@smallkv/eval";
import { Model, WEIGHT_TYPES, type WeightType } from "@smallkv/runner";
import { buildInfo } from "@smallkv/tensor";
import { InvalidArgumentError } from "commander";
import type { DeviceCliOptions } from "../options.js";

interface Opts extends Partial<DeviceCliOptions> {
  small?: boolean;
  large?: boolean;
  prefill: number;
  context: number;
  steps: number;
  batches: string;
  threads?: number;
  out: string;
  /** Weight types to compare on the CPU (each measured in its own process, for its peak RSS). */
  weights: string;
  /** Interleaved rounds over the weight types (best round kept per type). */
  rounds: number;
  /** Inputs per quantization group (default: 32 for int4, 64 for int8). */
  groupSize?: number;
  /** Internal: measure one weight type in this process and write its JSON here. */
  childOut?: string;
}

/**
 * This process's peak resident set in bytes: VmHWM on Linux (its own address space; the
 * rusage maximum would include the parent's size at fork, which execve keeps).
 */
function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

/** One weight type's measurements (one process). */
interface Measured {
  weights: WeightType;
  weightBytes: number;
  /** Weight bytes a decode step reads (every matrix once; one embedding row). */
  streamedBytes: number;
  bandwidth: number;
  prefill: { tokens: number; seconds: number; tokensPerSecond: number };
  decode: { batch: number; steps: number; secondsPerStep: number; tokensPerSecond: number }[];
  /** The device it ran on (absent: the CPU). */
  device?: unknown;
  /** Peak resident set of the process (bytes), and the KV bytes of the largest decode batch. */
  peakRss: number;
  kvBytes: number;
  loadSeconds: number;
}

/** The synthetic checkpoint the bench runs on (made once, then found in the bench cache). */
function checkpoint(o: Opts): string {
  if (o.large) return syntheticCheckpoint("llm-gpu", LLM_GPU);
  return syntheticCheckpoint(o.small ? "llm-small" : "llm-100m", o.small ? LLM_SMALL : LLM_100M);
}

const sizeName = (o: Opts) => (o.large ? "~0.45B" : o.small ? "small" : "~100M");

/**
 * One weight type's measurements. `bandwidth`: the CPU's measured read bandwidth; on a device
 * its peak bandwidth is used instead.
 */
async function measure(o: Opts, weights: WeightType, cpuBandwidth: number | null): Promise<Measured> {
  const dir = checkpoint(o);
  const t0 = performance.now();
  const model = await Model.load(dir, {
    threads: o.threads,
    device: o.device,
    dtype: o.dtype,
    // The runner bench keeps every token (no policy selects); passed for a uniform load.
    devicePolicies: o.devicePolicies !== "off",
    deviceKvBudget: o.deviceKvBudget,
    weights,
    groupSize: o.groupSize,
  });
  const loadSeconds = (performance.now() - t0) / 1000;
  const c = model.config;
  const V = c.vocabSize;
  // The JS embedding table is read one row per token; everything else once per step.
  const streamedBytes = model.runner ? model.weightBytes : model.weightBytes - V * c.hiddenSize * 4;
  const prompt = randomTokens(o.prefill, V, 1);
  let prefillBest = Number.POSITIVE_INFINITY;
  for (let rep = 0; rep < 2; rep++) {
    const seq = model.newSequence();
    const p0 = performance.now();
    await model.forward([{ seq, tokens: prompt }]);
    prefillBest = Math.min(prefillBest, performance.now() - p0);
    seq.release();
  }
  const decode: Measured["decode"] = [];
  let kvBytes = 0;
  for (const B of o.batches.split(",").map(Number)) {
    const seqs = Array.from({ length: B }, () => model.newSequence());
    await model.forward(seqs.map((seq, i) => ({ seq, tokens: randomTokens(o.context, V, 10 + i) })));
    const next = seqs.map((_, i) => randomTokens(o.steps + 1, V, 100 + i));
    // Steps ask for the greedy token only, as a greedy server does: on the device the argmax
    // runs there and one integer per sequence comes back (the CPU reads the logits either way).
    const step = (s: number) =>
      model.forward(seqs.map((seq, i) => ({ seq, tokens: [next[i][s]], logits: "argmax" as const })));
    await step(0); // warm-up step
    const d0 = performance.now();
    for (let s = 1; s <= o.steps; s++) await step(s);
    const secs = (performance.now() - d0) / 1000;
    decode.push({
      batch: B,
      steps: o.steps,
      secondsPerStep: secs / o.steps,
      tokensPerSecond: (B * o.steps) / secs,
    });
    kvBytes = Math.max(
      kvBytes,
      seqs.reduce((a, s) => a + s.stats().coldBytes, 0),
    );
    for (const s of seqs) s.release();
  }
  const device = model.device?.info;
  const bandwidth = device ? device.bandwidthGBs * 1e9 : (cpuBandwidth ?? measureReadBandwidth());
  model.close();
  return {
    weights,
    weightBytes: model.weightBytes,
    streamedBytes,
    bandwidth,
    device,
    prefill: {
      tokens: o.prefill,
      seconds: prefillBest / 1000,
      tokensPerSecond: o.prefill / (prefillBest / 1000),
    },
    decode,
    peakRss: peakRss(),
    kvBytes,
    loadSeconds,
  };
}

/**
 * Prefill and decode throughput per weight type, each in its own process (so that its peak
 * RSS is its own), with ratios to f32 from the same run and each type's roofline from the
 * weight bytes it streams per token and the measured read bandwidth.
 */
export async function benchRunner(o: Opts): Promise<void> {
  const types = o.weights.split(",").map((x) => x.trim()) as WeightType[];
  for (const t of types)
    if (!WEIGHT_TYPES.includes(t))
      throw new Error(`--weights: ${t} is not one of ${WEIGHT_TYPES.join(", ")}`);
  if (o.childOut) {
    const m = await measure(o, types[0], Number(process.env.SMALLKV_BENCH_BANDWIDTH) || null);
    writeFileSync(o.childOut, JSON.stringify(m));
    return;
  }
  const device = o.device && o.device !== "cpu";
  if (o.large && o.small) throw new InvalidArgumentError("--large and --small exclude each other");
  process.stderr.write(`preparing synthetic checkpoint (${sizeName(o)})...\n`);
  const dir = checkpoint(o);
  let results: Measured[];
  let bandwidth: number;
  let deviceInfo: unknown = { kind: "cpu" };
  if (device) {
    // The device backend: one weight type (its dtype), in this process.
    const m = await measure(o, "f32", null);
    bandwidth = m.bandwidth;
    deviceInfo = m.device ?? deviceInfo;
    results = [m];
  } else {
    bandwidth = measureReadBandwidth();
    const tmp = mkdtempSync(join(tmpdir(), "smallkv-bench-runner-"));
    // Interleaved rounds (f32, int8, int4, f32, ...): each type keeps its best round, so a
    // noisy neighbour on a shared machine does not decide a ratio.
    const best = new Map<WeightType, Measured>();
    for (let round = 1; round <= o.rounds; round++) {
      for (const t of types) {
        process.stderr.write(`  ${t} weights (round ${round}/${o.rounds})...\n`);
        const out = join(tmp, `${t}.json`);
        const args = [
          process.argv[1],
          "bench",
          "runner",
          "--weights",
          t,
          "--child-out",
          out,
          "--prefill",
          String(o.prefill),
          "--context",
          String(o.context),
          "--steps",
          String(o.steps),
          "--batches",
          o.batches,
        ];
        if (o.small) args.push("--small");
        if (o.large) args.push("--large");
        if (o.threads) args.push("--threads", String(o.threads));
        if (o.groupSize) args.push("--group-size", String(o.groupSize));
        execFileSync(process.execPath, args, {
          stdio: ["ignore", "ignore", "inherit"],
          env: { ...process.env, SMALLKV_BENCH_BANDWIDTH: String(bandwidth) },
        });
        const m: Measured = JSON.parse(readFileSync(out, "utf8"));
        const prev = best.get(t);
        if (!prev) best.set(t, m);
        else {
          if (m.prefill.tokensPerSecond > prev.prefill.tokensPerSecond) prev.prefill = m.prefill;
          prev.decode = prev.decode.map((d, i) =>
            m.decode[i].tokensPerSecond > d.tokensPerSecond ? m.decode[i] : d,
          );
          prev.peakRss = Math.max(prev.peakRss, m.peakRss);
        }
      }
    }
    results = types.map((t) => best.get(t)!);
    rmSync(tmp, { recursive: true, force: true });
  }
  const base = results.find((r) => r.weights === "f32") ?? results[0];
  const mib = (b: number) => (b / 2 ** 20).toFixed(0);
  const rows: (string | number)[][] = [];
  for (const r of results) {
    const roofline = bandwidth / r.streamedBytes;
    rows.push([
      r.weights,
      "prefill",
      1,
      r.prefill.tokensPerSecond,
      r.prefill.tokensPerSecond / base.prefill.tokensPerSecond,
      "-",
      mib(r.weightBytes),
      mib(r.peakRss),
      (r.peakRss / (r.weightBytes + r.kvBytes)).toFixed(2),
    ]);
    for (const d of r.decode) {
      const b = base.decode.find((x) => x.batch === d.batch)!;
      rows.push([
        r.weights,
        "decode",
        d.batch,
        d.tokensPerSecond,
        d.tokensPerSecond / b.tokensPerSecond,
        d.batch === 1
          ? `${((d.tokensPerSecond / roofline) * 100).toFixed(0)}% of ${roofline.toFixed(0)}`
          : "-",
        "",
        "",
        "",
      ]);
    }
  }
  const c = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  const header =
    `model: synthetic ${sizeName(o)} (${c.num_hidden_layers}L d${c.hidden_size} ${c.num_attention_heads}h/${c.num_key_value_heads}kv, vocab ${c.vocab_size}); ${device ? `${o.dtype ?? "f32"} weights on ${o.device}` : "projections and MLP in the listed weight type, embedding and LM head f32"}\n` +
    (device
      ? `device peak bandwidth ${(bandwidth / 1e9).toFixed(0)} GB/s`
      : `machine: ${cpus()[0]?.model ?? "cpu"} x${availableParallelism()}, kernels ${buildInfo().simd}; read bandwidth ${(bandwidth / 1e9).toFixed(1)} GB/s; roofline = bandwidth / weight bytes streamed per token`);
  process.stdout.write(
    `${header}\n\n${table(["weights", "phase", "batch", "tokens/s", "x f32", "batch-1 roofline tok/s", "weights MiB", "peak RSS MiB", "RSS/(weights+KV)"], rows)}\n`,
  );
  const path = writeJson(o.out, "runner.json", {
    model: { config: c, dtype: o.dtype ?? "f32" },
    device: deviceInfo,
    bandwidthBytesPerSecond: bandwidth,
    results: results.map((r) => ({ ...r, rooflineTokensPerSecond: bandwidth / r.streamedBytes })),
  });
  process.stdout.write(`\nJSON: ${path}\n`);
}
