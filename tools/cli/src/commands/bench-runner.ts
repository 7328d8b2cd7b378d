import { availableParallelism, cpus } from "node:os";
import { LLM_100M, LLM_SMALL, randomTokens, syntheticCheckpoint, table, writeJson } from "@smallkv/eval";
import { Model } from "@smallkv/runner";
import { buildInfo, sum } from "@smallkv/tensor";

interface Opts {
  small?: boolean;
  prefill: number;
  context: number;
  steps: number;
  batches: string;
  threads?: number;
  out: string;
  device?: "cpu" | "cuda" | "auto" | "emulator";
  dtype?: "f32" | "f16" | "bf16";
}

/** Read bandwidth in bytes/s: best of several passes over a buffer far larger than the caches. */
export function measureReadBandwidth(bytes = 512 * 1024 * 1024, passes = 5): number {
  const x = new Float32Array(bytes / 4).fill(1);
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < passes; i++) {
    const t0 = performance.now();
    sum(x);
    best = Math.min(best, performance.now() - t0);
  }
  return bytes / (best / 1000);
}

export async function benchRunner(o: Opts): Promise<void> {
  const shape = o.small ? LLM_SMALL : LLM_100M;
  process.stderr.write(`preparing synthetic checkpoint (${o.small ? "small" : "~100M"})...\n`);
  const dir = syntheticCheckpoint(o.small ? "llm-small" : "llm-100m", shape);
  const model = await Model.load(dir, { threads: o.threads, device: o.device, dtype: o.dtype });
  const c = model.config;
  const V = c.vocabSize;
  const dev = model.device;
  // Bytes of weights a decode step streams: every matrix once (the tied table serves as LM
  // head; the embedding lookup reads one row).
  const weightBytes = model.runner ? model.runner.weightBytes : model.parameters * 4;
  // On a GPU the roofline uses the memory's peak bandwidth (clock x bus width); on the CPU a
  // measured streaming read. The emulator has neither, so its ratio is left out.
  const bandwidth = dev ? dev.info.bandwidthGBs * 1e9 : measureReadBandwidth();
  const roofline = bandwidth / weightBytes;

  const prompt = randomTokens(o.prefill, V, 1);
  let prefillBest = Number.POSITIVE_INFINITY;
  for (let rep = 0; rep < 2; rep++) {
    const seq = model.newSequence();
    const t0 = performance.now();
    await model.forward([{ seq, tokens: prompt }]);
    prefillBest = Math.min(prefillBest, performance.now() - t0);
    seq.release();
  }
  const prefillTps = o.prefill / (prefillBest / 1000);

  const rows: (string | number)[][] = [["prefill", 1, o.prefill, prefillTps, prefillBest / 1000, "-"]];
  const results: Record<string, unknown>[] = [
    {
      phase: "prefill",
      batch: 1,
      tokens: o.prefill,
      tokensPerSecond: prefillTps,
      seconds: prefillBest / 1000,
    },
  ];
  for (const B of o.batches.split(",").map(Number)) {
    const seqs = Array.from({ length: B }, () => model.newSequence());
    await model.forward(seqs.map((seq, i) => ({ seq, tokens: randomTokens(o.context, V, 10 + i) })));
    const next = seqs.map((_, i) => randomTokens(o.steps + 1, V, 100 + i));
    await model.forward(seqs.map((seq, i) => ({ seq, tokens: [next[i][0]] }))); // warm-up step
    const t0 = performance.now();
    for (let s = 1; s <= o.steps; s++)
      await model.forward(seqs.map((seq, i) => ({ seq, tokens: [next[i][s]] })));
    const secs = (performance.now() - t0) / 1000;
    const tps = (B * o.steps) / secs;
    const ratio = B === 1 && bandwidth > 0 ? tps / roofline : null;
    rows.push([
      `decode`,
      B,
      o.steps,
      tps,
      secs / o.steps,
      ratio === null ? "-" : `${(ratio * 100).toFixed(1)}%`,
    ]);
    results.push({
      phase: "decode",
      batch: B,
      steps: o.steps,
      context: o.context,
      tokensPerSecond: tps,
      secondsPerStep: secs / o.steps,
      rooflineRatio: ratio,
    });
    for (const s of seqs) s.release();
  }
  const header =
    `model: synthetic ${(model.parameters / 1e6).toFixed(1)}M params (${c.numLayers}L d${c.hiddenSize} ${c.numHeads}h/${c.numKvHeads}kv, vocab ${V}), ${o.dtype ?? "f32"} weights ${(weightBytes / 2 ** 20).toFixed(0)} MiB\n` +
    (dev
      ? `device: ${dev.info.name} (${dev.info.kind}, sm ${dev.info.computeCapability}, ${(dev.info.totalBytes / 2 ** 30).toFixed(1)} GiB); peak bandwidth ${(bandwidth / 1e9).toFixed(0)} GB/s -> batch-1 decode roofline ${bandwidth > 0 ? roofline.toFixed(1) : "-"} tok/s`
      : `machine: ${cpus()[0]?.model ?? "cpu"} x${availableParallelism()}, kernels ${buildInfo().simd}; read bandwidth ${(bandwidth / 1e9).toFixed(1)} GB/s -> batch-1 decode roofline ${roofline.toFixed(1)} tok/s`);
  process.stdout.write(
    `${header}\n\n${table(["phase", "batch", "tokens/steps", "tokens/s", "s (per step)", "of roofline"], rows)}\n`,
  );
  const path = writeJson(o.out, "runner.json", {
    model: { parameters: model.parameters, config: c, weightBytes, dtype: o.dtype ?? "f32" },
    device: dev ? dev.info : { kind: "cpu" },
    bandwidthBytesPerSecond: bandwidth,
    rooflineTokensPerSecond: roofline,
    results,
  });
  process.stdout.write(`\nJSON: ${path}\n`);
}
