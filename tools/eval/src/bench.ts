import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type OptionValue, type PolicyFactory, resolvePolicy } from "@smallkv/policies";
import {
  AssistedModel,
  devicePath,
  type HotRowsMode,
  type KvStoreType,
  Model,
  type Sequence,
  type StepModel,
  type WeightType,
} from "@smallkv/runner";
import { measureReadBandwidth } from "./bandwidth.js";
import { parseSpec } from "./eval.js";
import { barSpec, renderPlot } from "./plots.js";
import {
  LLM_100M,
  LLM_GPU,
  LLM_SMALL,
  randomTokens,
  SLM_10M,
  SLM_GPU,
  SLM_SMALL,
  syntheticCheckpoint,
} from "./synthetic.js";
import { table, writeJson } from "./table.js";

export interface BenchOptions {
  /** Policies by name or module path (default: full, h2o, snapkv, streamingllm, smallkv). */
  policies?: string[];
  budget?: string | number;
  batches?: number[];
  contexts?: number[];
  /** Generated tokens per sequence (the first comes from prefill). */
  generate?: number;
  small?: boolean;
  /** The ~0.45B GPU-scale layouts (LLM_GPU + SLM_GPU) instead of ~100M + ~10M. */
  large?: boolean;
  /** Explicit (batch, context, generated) triples instead of batches x contexts x generate. */
  scenarios?: { batch: number; context: number; generate: number }[];
  /** Backend of both models (default cpu). */
  device?: "cpu" | "cuda" | "auto" | "emulator";
  dtype?: "f32" | "f16" | "bf16";
  /** Device backend: run policies on their device forms (default true). */
  devicePolicies?: boolean;
  /** Device backend: MiB the KV stores may take on the device (each model; default: the free memory less a reserve). */
  deviceKvBudget?: number;
  /** How both models store K/V on the CPU (default f32). */
  kvCold?: KvStoreType;
  /** How the assistant stores K/V on the CPU (default: as kvCold). */
  assistantKvCold?: KvStoreType;
  /** CPU weights of the LLM (default f32) and of the assistant (default: as weights). */
  weights?: WeightType;
  assistantWeights?: WeightType;
  /** Inputs per quantization group of int8/int4 weights (the runner's default when absent). */
  groupSize?: number;
  /** What runs the assistant's dense part (LoadOptions.dense; default auto). */
  assistantDense?: "auto" | "native" | "onnxruntime";
  /** How the CPU hot set holds selected rows (default indexed). */
  hotRows?: HotRowsMode;
  threads?: number;
  /**
   * Run each policy's decode steps back to back (the old way) instead of alternating the
   * policies' steps within a scenario (default: alternate).
   */
  sequential?: boolean;
  /** Read bandwidth (bytes/s) for the bytes-moved bound; measured when absent (CPU) or the device's peak. */
  bandwidth?: number;
  out?: string;
  /** Progress lines (stderr). */
  log?: (msg: string) => void;
  plot?: boolean;
}

export interface BenchRow {
  policy: string;
  batch: number;
  context: number;
  generated: number;
  /** Seconds: prefill step (all prompts of the batch in one step) = time to first token. */
  ttft: number;
  /** Seconds of the first decode step (SmallKV matches its heads there, once per sequence). */
  firstDecode: number;
  /** Seconds per decode step after the first (one token for every sequence). */
  tpot: number;
  /** Generated tokens per second over decode steps, and end to end (prefill included). */
  decodeTokensPerSecond: number;
  tokensPerSecond: number;
  peakHotBytes: number;
  peakColdBytes: number;
  assistantKvBytes: number;
  /** Share of decode step time (after the first step) in the assistant (SmallKV) and in policy callbacks / hot-set bookkeeping. */
  slmShare: number;
  /** Share of a decode step's FLOPs that are the assistant's (beside its share of the time). */
  slmFlopShare: number;
  policyShare: number;
  /** Mean bytes one decode step must move: weights streamed (LLM, and the assistant's when used) + KV attention read (hot rows, or the whole cache) + the assistant's KV. */
  bytesPerStep: number;
  /** bytesPerStep over the bandwidth: no decode step can be faster (seconds). */
  boundSeconds: number;
  /** Measured decode step over its bound (1 = at the bytes-moved limit). */
  overBound: number;
  /** Mean multiply-add work of one decode step, in FLOPs: dense layers and LM head of both models, attention over the rows read. */
  flopsPerStep: number;
  /** flopsPerStep over the measured dense rate: no decode step can be faster on this machine (seconds). */
  computeBoundSeconds: number;
  /** Measured decode step over the larger of the two bounds (1 = at whichever limit binds). */
  overMaxBound: number;
  /** Peak KV kept resident (cold store + the assistant's KV + rows a device hot set holds). */
  residentKvBytes: number;
  /**
   * Device runs: peak GPU memory the policy's batch holds: both models' weights plus every
   * sequence's device-resident KV (stores in device memory, hot sets; the assistant's too).
   * The activations and workspaces, shared by the policies of a run, are not counted.
   */
  deviceBytes?: number;
  /** Device runs: peak pinned host memory of the KV stores (host policies' cold stores, stores past the device KV budget). */
  hostKvBytes?: number;
  vsFull: number | null;
  /** Decode tokens/s over Full's in the same scenario. */
  decodeVsFull: number | null;
  vsH2o: number | null;
}

/** FLOPs of one token through the dense parts (every layer's projections and MLP, the LM head). */
export function denseFlopsPerToken(m: Model, head = true): number {
  const { vocabSize: V, hiddenSize: d, tieWordEmbeddings } = m.config;
  // Parameters minus the embedding table (looked up, not multiplied); a tied LM head multiplies it once more.
  const all = 2 * (m.parameters - V * d) + (tieWordEmbeddings ? 2 * V * d : 0);
  // The assistant's decode steps ask for no logits: its LM head is not multiplied.
  return head ? all : all - 2 * V * d;
}

/**
 * FLOPs of one decode step's attention for a sequence: per query head, QK and PV over every exact
 * row (4·D) and PV over every V-only row (2·D), summed over layers (`full`/`vOnly`: rows per kv
 * head, summed over layers and kv heads, as `Sequence.stats().classes` counts them).
 */
export function attentionFlops(m: Model, full: number, vOnly: number): number {
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = m.config;
  return (Hq / Hkv) * (4 * D * full + 2 * D * vOnly);
}

/**
 * The dense rate this machine reaches on the model: the better of two prefills of 256 tokens
 * (compute-bound steps; their attention is a few percent of the work and counted as dense).
 */
export async function measureDenseRate(m: Model): Promise<number> {
  let best = 0;
  const T = Math.min(256, m.config.maxPositions);
  for (let i = 0; i < 2; i++) {
    const seq = m.newSequence();
    const t0 = performance.now();
    await m.forward([{ seq, tokens: randomTokens(T, m.config.vocabSize, 77 + i), logits: "last" }]);
    const s = (performance.now() - t0) / 1000;
    seq.release();
    best = Math.max(best, (T * denseFlopsPerToken(m)) / s);
  }
  return best;
}

/** Weight bytes a decode step streams: everything but the embedding table (only B rows of it are read). */
function streamedWeightBytes(m: Model, head = true): number {
  const table = m.config.vocabSize * m.config.hiddenSize;
  const bytes = m.runner ? m.weightBytes : m.weightBytes - table * 4;
  // Without logits (the assistant's decode steps) the LM head is not read: f32, or int8/int4
  // blocks with their scales (about 1.06 bytes a weight for int8, the head's type at int4 too).
  return head ? bytes : bytes - table * (m.weightType === "f32" ? 4 : 34 / 32);
}

/**
 * One policy's batch in a scenario: prefill, then decode steps one at a time, so that the
 * scenario can interleave the steps of every policy (a slow spell of a shared machine then
 * falls on all of them instead of on whichever ran during it).
 */
class PolicyRun {
  private readonly seqs: Sequence[];
  private readonly pair: AssistedModel | null;
  /** Each sequence's next (greedy) token. */
  private next: number[] = [];
  private ttft = 0;
  private first = 0;
  private decode = 0;
  private slm = 0;
  private llmT = 0;
  private policy = 0;
  private peakHot = 0;
  private peakCold = 0;
  private assistantBytes = 0;
  private peakResident = 0;
  private peakDevice = 0;
  private peakHost = 0;
  private moved = 0;
  private flops = 0;
  private slmFlops = 0;
  /** Dense FLOPs of one token through the LLM and through the assistant. */
  private readonly llmDense: number;
  private readonly slmDense: number;

  constructor(
    private readonly model: StepModel,
    private readonly llm: Model,
    factory: PolicyFactory,
    options: Record<string, OptionValue>,
    budget: string | number,
    private readonly B: number,
    private readonly G: number,
  ) {
    this.seqs = Array.from({ length: B }, () => model.newSequence(factory.create({ budget, options })));
    this.pair = model instanceof AssistedModel ? model : null;
    this.llmDense = denseFlopsPerToken(llm);
    this.slmDense = this.pair ? denseFlopsPerToken(this.pair.slm, false) : 0;
  }

  async prefill(ctx: number, seed: number): Promise<void> {
    const V = this.model.config.vocabSize;
    const t0 = performance.now();
    const out = await this.model.forward(
      this.seqs.map((seq, i) => ({ seq, tokens: randomTokens(ctx, V, seed + i), logits: "argmax" as const })),
    );
    this.next = out.map((o) => o[0]);
    this.ttft = (performance.now() - t0) / 1000;
  }

  /** Decode step s (1 ≤ s < G): one token for every sequence. */
  async step(s: number): Promise<void> {
    const { llm, pair, seqs } = this;
    const slm0 = pair ? pair.timing.slm : 0;
    const llm0 = llm.timing.forward;
    const pol0 = llm.timing.policy;
    const t1 = performance.now();
    // Greedy tokens only: on the device the argmax runs there (B integers come back).
    const out = await this.model.forward(
      seqs.map((seq, i) => ({ seq, tokens: [this.next[i]], logits: "argmax" as const })),
    );
    this.next = out.map((o) => o[0]);
    const dt = (performance.now() - t1) / 1000;
    // The first decode step is reported on its own: SmallKV matches heads there (once per sequence).
    // Shares and FLOPs are of the steady decode steps (after the first), not of prefill.
    const firstStep = s === 1 && this.G > 2;
    if (firstStep) this.first = dt;
    else {
      this.decode += dt;
      this.slm += pair ? pair.timing.slm - slm0 : 0;
      this.llmT += llm.timing.forward - llm0;
      this.policy += llm.timing.policy - pol0;
    }
    let hot = 0;
    let cold = 0;
    let ab = 0;
    let flops = 0;
    let slmFlops = 0;
    // Hot rows held as copies (the device's per-sequence host path, the CPU's copy mode); the
    // batched path (passive or a device form) and an indexed hot set read the store in place.
    let hotCopies = 0;
    for (const q of seqs) {
      const st = q.stats();
      hot += st.hotBytes;
      cold += st.coldBytes;
      if (llm.device ? devicePath(q).policy === "host" : llm.hotRows === "copy") hotCopies += st.hotBytes;
      flops += this.llmDense + attentionFlops(llm, st.classes.full, st.classes.vOnly);
      if (q.assistant && pair) {
        const a = q.assistant.seq;
        ab += a.stats().coldBytes;
        const c = a.config;
        const f = this.slmDense + attentionFlops(pair.slm, c.numLayers * c.numKvHeads * a.length, 0);
        flops += f;
        slmFlops += f;
      }
    }
    if (!firstStep) {
      this.flops += flops;
      this.slmFlops += slmFlops;
    }
    this.peakHot = Math.max(this.peakHot, hot);
    this.peakCold = Math.max(this.peakCold, cold);
    this.assistantBytes = Math.max(this.assistantBytes, ab);
    this.peakResident = Math.max(this.peakResident, cold + ab + hotCopies);
    if (llm.device) {
      let dev = llm.weightBytes + (pair ? pair.slm.weightBytes : 0);
      let host = 0;
      for (const q of [...seqs, ...seqs.map((x) => x.assistant?.seq)]) {
        if (!q) continue;
        const p = devicePath(q);
        dev += p.deviceBytes;
        host += p.hostBytes;
      }
      this.peakDevice = Math.max(this.peakDevice, dev);
      this.peakHost = Math.max(this.peakHost, host);
    }
    this.moved += hot + ab;
  }

  /** The figures of the steps so far; releases the sequences (a faulted one throws its error). */
  finish(bandwidth: number, denseRate: number) {
    const { B, G, pair, llm } = this;
    const steps = Math.max(1, G > 2 ? G - 2 : G - 1);
    const weights = streamedWeightBytes(llm) + (pair ? streamedWeightBytes(pair.slm, false) : 0);
    const bytesPerStep = weights + this.moved / steps;
    const fault = this.seqs.find((q) => q.fault)?.fault;
    this.release();
    if (fault) throw fault;
    const decode = this.decode;
    return {
      ttft: this.ttft,
      firstDecode: this.first,
      tpot: decode / steps,
      decodeTokensPerSecond: (B * steps) / decode,
      tokensPerSecond: (B * G) / (this.ttft + this.first + decode),
      peakHotBytes: this.peakHot,
      peakColdBytes: this.peakCold,
      assistantKvBytes: this.assistantBytes,
      slmShare: this.slm / (this.slm + this.llmT),
      slmFlopShare: this.flops > 0 ? this.slmFlops / this.flops : 0,
      policyShare: this.policy / this.llmT,
      bytesPerStep,
      boundSeconds: bytesPerStep / bandwidth,
      overBound: decode / steps / (bytesPerStep / bandwidth),
      flopsPerStep: this.flops / steps,
      computeBoundSeconds: this.flops / steps / denseRate,
      overMaxBound: decode / steps / Math.max(bytesPerStep / bandwidth, this.flops / steps / denseRate),
      residentKvBytes: this.peakResident,
      ...(llm.device ? { deviceBytes: this.peakDevice, hostKvBytes: this.peakHost } : {}),
    };
  }

  /** Free the sequences (again harmless: a run that finished has already freed them). */
  release(): void {
    for (const q of this.seqs) q.release();
  }
}

function rowOf(
  policy: string,
  batch: number,
  context: number,
  generated: number,
  r: ReturnType<PolicyRun["finish"]>,
): BenchRow {
  return { policy, batch, context, generated, ...r, vsFull: null, decodeVsFull: null, vsH2o: null };
}

/** Throughput and memory of each policy on a synthetic ~100M LLM (+ ~10M assistant), batches x contexts. */
export async function runBench(
  o: BenchOptions = {},
): Promise<{ rows: BenchRow[]; json: string; plots: string[] }> {
  const log = o.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const policies = o.policies ?? ["full", "h2o", "snapkv", "streamingllm", "smallkv"];
  const budget = o.budget ?? 0.2;
  const batches = o.batches ?? [1, 8, 16];
  const contexts = o.contexts ?? [512, 2048];
  const G = o.generate ?? 128;
  const size = o.small ? "small" : o.large ? "gpu" : "100m";
  log(
    `preparing synthetic checkpoints (${{ small: "small", gpu: "~0.45B LLM + ~30M assistant", "100m": "~100M LLM + ~10M assistant" }[size]})...`,
  );
  const llmDir = syntheticCheckpoint(
    `llm-${size}`,
    { small: LLM_SMALL, gpu: LLM_GPU, "100m": LLM_100M }[size],
  );
  const slmDir = syntheticCheckpoint(
    `slm-${size}`,
    { small: SLM_SMALL, gpu: SLM_GPU, "100m": SLM_10M }[size],
  );
  const llm = await Model.load(llmDir, {
    threads: o.threads,
    device: o.device,
    dtype: o.dtype,
    devicePolicies: o.devicePolicies,
    deviceKvBudget: o.deviceKvBudget,
    kvCold: o.kvCold,
    hotRows: o.hotRows,
    weights: o.weights,
    groupSize: o.groupSize,
  });
  // The assistant runs where the LLM landed (--device auto may fall back to the CPU).
  const slm = await Model.load(slmDir, {
    threads: o.threads,
    device: llm.device?.info.kind ?? "cpu",
    dtype: o.dtype,
    devicePolicies: o.devicePolicies,
    deviceKvBudget: o.deviceKvBudget,
    kvCold: o.assistantKvCold ?? o.kvCold,
    hotRows: o.hotRows,
    weights: o.assistantWeights ?? o.weights,
    groupSize: o.groupSize,
    dense: o.assistantDense,
  });
  const pair = new AssistedModel(llm, slm);
  const bandwidth = o.bandwidth ?? (llm.device ? llm.device.info.bandwidthGBs * 1e9 : measureReadBandwidth());
  // The compute bound's denominator: what this machine's dense kernels reach on this model.
  const denseRate = await measureDenseRate(llm);
  // Each entry is a policy spec: a name (or module path), with options as name:k=v,k=v.
  const factories = await Promise.all(
    policies.map(async (spec) => {
      const { name, options } = parseSpec(spec);
      const factory = await resolvePolicy(name);
      // Rows keep the policy's own name (a module path reads as its name); options follow it.
      return { label: factory.name + spec.slice(name.length), factory, options };
    }),
  );
  const rows: BenchRow[] = [];
  const scenarios =
    o.scenarios ?? contexts.flatMap((context) => batches.map((batch) => ({ batch, context, generate: G })));
  for (const { batch: B, context: ctx, generate: G } of scenarios) {
    {
      // Every policy of the scenario is prefilled first, then their decode steps alternate
      // (the order rotating each round), unless `sequential`.
      const runs = factories.map(
        ({ factory: f, options }) =>
          new PolicyRun(f.usesAssistant ? pair : llm, llm, f, options, budget, B, G),
      );
      const group: BenchRow[] = [];
      try {
        const seed = 1000 * B + ctx;
        for (const [i, run] of runs.entries()) {
          log(`  ${factories[i].label}: batch ${B}, context ${ctx} + ${G}`);
          // SmallKV's matching window is the first 128 tokens; synthetic prompts are long enough.
          await run.prefill(ctx, seed);
          if (o.sequential) {
            for (let s = 1; s < G; s++) await run.step(s);
            group.push(rowOf(factories[i].label, B, ctx, G, run.finish(bandwidth, denseRate)));
          }
        }
        if (!o.sequential) {
          for (let s = 1; s < G; s++)
            for (let j = 0; j < runs.length; j++) await runs[(s + j) % runs.length].step(s);
          for (const [i, run] of runs.entries())
            group.push(rowOf(factories[i].label, B, ctx, G, run.finish(bandwidth, denseRate)));
        }
      } finally {
        for (const run of runs) run.release();
      }
      const full = group.find((r) => r.policy === "full");
      const h2o = group.find((r) => r.policy === "h2o");
      for (const r of group) {
        r.vsFull = full ? r.tokensPerSecond / full.tokensPerSecond : null;
        r.decodeVsFull = full ? r.decodeTokensPerSecond / full.decodeTokensPerSecond : null;
        r.vsH2o = h2o ? r.tokensPerSecond / h2o.tokensPerSecond : null;
      }
      rows.push(...group);
    }
  }
  llm.close();
  slm.close();
  const out = o.out ?? "bench-results";
  mkdirSync(out, { recursive: true });
  const json = writeJson(out, "bench.json", {
    kind: "smallkv.bench",
    budget: String(budget),
    kvCold: o.kvCold ?? "f32",
    assistantKvCold: o.assistantKvCold ?? o.kvCold ?? "f32",
    weights: llm.weightType,
    assistantWeights: slm.weightType,
    assistantDense: slm.denseKind,
    hotRows: o.hotRows ?? "indexed",
    schedule: o.sequential ? "sequential" : "alternated",
    device: llm.device ? llm.device.info : { kind: "cpu" },
    bandwidthBytesPerSecond: bandwidth,
    denseFlopsPerSecond: denseRate,
    llm: { dir: llmDir, parameters: llm.parameters, config: llm.config },
    assistant: { dir: slmDir, parameters: slm.parameters, config: slm.config },
    rows,
  });
  const plots: string[] = [];
  if (o.plot !== false) {
    const values = rows.map((r) => ({ ...r, scenario: `b${r.batch} x ${r.context}` }));
    const p = await renderPlot(
      barSpec({
        title: `tokens/s at ${budget} budget (higher is better)`,
        values,
        group: "scenario",
        series: "policy",
        y: "tokensPerSecond",
        yTitle: "tokens/s (end to end)",
      }),
      join(out, "bench-throughput"),
    );
    const m = await renderPlot(
      barSpec({
        title: "peak hot KV bytes (MiB)",
        values: values.map((v) => ({ ...v, hotMiB: v.peakHotBytes / 2 ** 20 })),
        group: "scenario",
        series: "policy",
        y: "hotMiB",
        yTitle: "MiB",
      }),
      join(out, "bench-hot-bytes"),
    );
    plots.push(p.svg, p.png, m.svg, m.png);
  }
  return { rows, json, plots };
}

/**
 * A row's decode step over H2O's in the same scenario, divided by its bound over H2O's bound:
 * 1 = it costs exactly what its extra bytes say (null without an H2O row).
 */
export function byH2oBound(rows: BenchRow[], r: BenchRow): number | null {
  const h = rows.find((x) => x.policy === "h2o" && x.batch === r.batch && x.context === r.context);
  return h ? r.tpot / h.tpot / (r.boundSeconds / h.boundSeconds) : null;
}

/** The bench table's columns and rows (shared by the terminal table and the results page). */
export function benchTable(rows: BenchRow[]): { headers: string[]; rows: (string | number | null)[][] } {
  const mib = (b: number) => b / 2 ** 20;
  return {
    headers: [
      "policy",
      "batch",
      "context",
      "TTFT s",
      "1st step s",
      "TPOT s",
      "tok/s",
      "decode tok/s",
      "peak hot MiB",
      "resident KV MiB",
      ...(rows.some((r) => r.deviceBytes !== undefined) ? ["device MiB", "host KV MiB"] : []),
      "bound ms",
      "step / bound",
      "compute bound ms",
      "step / max bound",
      "SLM share",
      "SLM FLOP share",
      "policy share",
      "vs Full",
      "vs H2O",
      "step vs H2O / bound vs H2O",
    ],
    rows: rows.map((r) => [
      r.policy,
      r.batch,
      r.context,
      r.ttft,
      r.firstDecode ?? null,
      r.tpot,
      r.tokensPerSecond,
      r.decodeTokensPerSecond,
      mib(r.peakHotBytes),
      mib(r.residentKvBytes),
      ...(rows.some((x) => x.deviceBytes !== undefined)
        ? [
            r.deviceBytes !== undefined ? mib(r.deviceBytes) : null,
            r.hostKvBytes !== undefined ? mib(r.hostKvBytes) : null,
          ]
        : []),
      r.boundSeconds * 1000,
      r.overBound,
      r.computeBoundSeconds != null ? r.computeBoundSeconds * 1000 : null,
      r.overMaxBound ?? null,
      r.slmShare,
      r.slmFlopShare ?? null,
      r.policyShare,
      r.vsFull,
      r.vsH2o,
      byH2oBound(rows, r),
    ]),
  };
}

export function formatBench(rows: BenchRow[]): string {
  const t = benchTable(rows);
  return table(t.headers, t.rows);
}
