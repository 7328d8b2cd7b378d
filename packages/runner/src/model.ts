import { availableParallelism } from "node:os";
import { join } from "node:path";
import { attentionBatch, Device, DeviceError, rope, type SamplingRule, sampleToken } from "@smallkv/tensor";
import type Ort from "onnxruntime-node";
import { type Checkpoint, checkpointName, openCheckpoint } from "./checkpoint.js";
import type { ModelConfig } from "./config.js";
import { type DenseStack, OrtDense, type QKV } from "./dense.js";
import { DeviceRunner, type WeightDtype } from "./device/forward.js";
import { type EmbeddingTable, floatEmbedding } from "./embedding.js";
import { ContextLengthError, InvalidOptionError, PolicyError } from "./errors.js";
import { FusedDecoder } from "./fused-decoder.js";
import { graphFolder } from "./graph-cache.js";
import { type PlannedAttention, planAt } from "./host-attend.js";
import { KV_STORE_TYPES, type KvStoreType } from "./kv-cache.js";
import {
  type DraftDecoder,
  NATIVE_DRAFT_MAX_PARAMETERS,
  NativeDecoder,
  wholeStepFits,
} from "./native-decoder.js";
import { NativeDense } from "./native-dense.js";
import { BlockGraphs, type GraphQuant } from "./onnx/blocks.js";
import { decoderGraph } from "./onnx/decoder.js";
import type { KvPolicyHook, SequenceOptions } from "./policy-hook.js";
import { isGroupSize, WEIGHT_TYPES, type WeightType } from "./quant.js";
import { replaySteps } from "./replay.js";
import { ropeKernelArgs } from "./rope.js";
import { argmax, validateSampling } from "./sampler.js";
import { policyHasState, Sequence } from "./sequence.js";
import type { TextTokenizer } from "./tokenizer.js";
import type { LayeredWeights } from "./weights.js";
import { loadAll } from "./weights.js";

/**
 * Up to this many parameters a model's onnxruntime sessions run on one thread by default: its
 * matrices are too small to share. Measured on stories260K (2 cores): a 3-row verify step
 * took 0.42-0.50 ms on one thread against 0.52-0.60 ms on two; a 1-row step the same.
 */
export const ONE_THREAD_MAX_PARAMETERS = 4_000_000;

/** Where the model runs: the CPU (onnxruntime + @smallkv/tensor), a CUDA GPU, the first of those available, or the CPU emulator of the CUDA kernels (tests). */
export type DeviceOption = "cpu" | "cuda" | "auto" | "emulator";

export interface LoadOptions {
  /**
   * Threads for onnxruntime's intra-op pool (default: all cores; one for a model of at most
   * ONE_THREAD_MAX_PARAMETERS, whose operations are too small to share).
   */
  threads?: number;
  /** Backend (default "cpu"). "auto" takes CUDA when a device opens and says why it fell back otherwise. */
  device?: DeviceOption;
  /** Weight storage on the device (default f32; f16/bf16 halve memory and use tensor cores). */
  dtype?: WeightDtype;
  /**
   * Device backend: replay decode steps as CUDA graphs (default true). A step whose sequences
   * all take the batched path is captured once per shape (batch, rows, key-length bucket) and
   * replayed: one launch instead of ~10 per layer.
   */
  graphs?: boolean;
  /**
   * Device backend: how the device-resident KV store keeps rows (default: the weights' dtype).
   * It holds the sequences whose policy keeps every token; selecting policies keep their cold
   * store in pinned host memory as f32.
   */
  deviceKv?: WeightDtype;
  /**
   * Device backend: run a policy's device form where it has one (default true): H2O and SmallKV
   * then rank, select and accumulate on the device and their sequences join the batched path.
   * false: every selecting policy runs on the host (the per-sequence path).
   */
  devicePolicies?: boolean;
  /**
   * Device backend: MiB of device memory the KV stores may take (default: the free memory once
   * the weights are loaded, less a reserve of a tenth of the device, at least 1 GiB). A store
   * that would pass it is kept in pinned host memory instead, which the kernels read over the bus.
   */
  deviceKvBudget?: number;
  /**
   * Weights of the projections and the MLP on the CPU (default f32): int8 or int4 with
   * group-wise scales and zero points, quantized at load (embedding and LM head stay float32).
   */
  weights?: WeightType;
  /** Inputs per quantization group (a power of two >= 16; default 32 for int4, 64 for int8). */
  groupSize?: number;
  /**
   * How the CPU backend stores every sequence's K/V (default f32): int8 keeps each row with a
   * scale per token and kv head (about 27% of the float bytes at head dim 64), and attention
   * reads it in place. The device backend refuses it.
   */
  kvCold?: KvStoreType;
  /**
   * How the CPU backend's hot set holds the rows a policy selects (default indexed): "indexed"
   * keeps none, attention gathers them from the store in place (no second resident copy);
   * "copy" keeps them as contiguous float32 rows (the rows that entered are copied in each
   * step, dequantised from an int8 store) that attention streams. On this CPU the two measured
   * alike for SmallKV (faster reads, paid back by the copies); the device always copies.
   */
  hotRows?: HotRowsMode;
  /**
   * What runs the projections and the MLP of a GGUF file on the CPU (default auto): "native",
   * @smallkv/tensor's kernels over the file's own Q8_0/Q4_0 blocks (and float rows), with no
   * onnxruntime session and no second copy of the weights; "onnxruntime", MatMulNBits graphs
   * (every GGUF type, and checkpoint folders); "auto", native where the file's matrices are
   * Q8_0/Q4_0 (float ones among them are fine; a mostly float file prefills faster on onnxruntime).
   * A checkpoint folder runs on onnxruntime unless "native" is asked for: its matrices are then
   * quantized at load to Q8_0 (int8) or Q4_0 (int4) blocks of 32, or kept float (f32) — no
   * session overhead per layer, which is most of a small model's decode step.
   */
  dense?: "auto" | "native" | "onnxruntime";
  /** Where "auto" reports its choice (default: stderr). */
  onLog?: (message: string) => void;
}

/** How the CPU backend's hot set holds selected rows (see LoadOptions.hotRows). */
export type HotRowsMode = "copy" | "indexed";

/** One sequence's part of a forward step. */
export interface StepInput {
  seq: Sequence;
  tokens: ArrayLike<number>;
  /**
   * Which positions' logits to return: the last (default), all, or none; "argmax": the last
   * position's greedy token only (one number; on the device backend the argmax runs there
   * and one integer per sequence comes back instead of a row of logits).
   */
  logits?: "last" | "all" | "none" | "argmax" | "sample";
  /**
   * With logits "sample": the last position's token drawn by this rule with the uniform draw u in
   * [0, 1) (`sampleToken`; on the device backend it is drawn there and one integer comes back).
   */
  sample?: SamplingRule & { u: number };
  /**
   * Plan the tokens' attention one row at a time inside each layer, exactly as one-token steps
   * would (the verify step of speculative decoding under a "layerwise" policy): the policy
   * selects and observes per row while the dense work stays batched. CPU backend.
   */
  rowwise?: boolean;
  /**
   * Take a checkpoint before this step's layers (after its policy prepared): `rollback` can
   * then return the sequence to any length from here on; `settle` closes the checkpoint.
   */
  checkpoint?: boolean;
  /** The tokens were drafted by the sequence's own assistant, which has run on them already (AssistedModel). */
  drafted?: boolean;
}

/** Logits [rows][vocab] per step input (1 row for "last", T for "all", 0 for "none"; the token id alone for "argmax" and "sample"). */
export type StepOutput = Float32Array;

const LOGITS_MODES: readonly string[] = ["last", "all", "none", "argmax", "sample"];

/**
 * A loaded Llama-family model: dense math in onnxruntime sessions, attention and the KV
 * cache in @smallkv/tensor. `forward` runs one step for any number of sequences, each
 * with any number of new tokens (prefill, decode and mixed batches are the same call).
 */
export class Model {
  private constructor(
    /** The checkpoint folder or GGUF file the model was loaded from. */
    readonly dir: string,
    readonly config: ModelConfig,
    readonly tokenizer: TextTokenizer,
    private readonly embed: EmbeddingTable,
    /** Parameter count, for reports. */
    readonly parameters: number,
    private readonly ort: typeof Ort | null,
    /** The device backend, when the model runs on a GPU (or the emulator). */
    readonly runner: DeviceRunner | null = null,
    /** The dense part of a CPU step (onnxruntime sessions, or the native GGUF-block kernels). */
    private readonly dense: DenseStack | null = null,
  ) {}

  /** The device this model runs on (null: CPU). */
  get device(): Device | null {
    return this.runner?.dev ?? null;
  }

  /**
   * Seconds spent since load (or the last reset): whole forward steps, and the part of them
   * inside KV policies (their callbacks and the hot-set moves they cause).
   */
  /** Seconds: whole steps, policy work (selection, hot-set moves, observation), attention kernels. */
  readonly timing = { forward: 0, policy: 0, attention: 0, steps: 0 };

  /** How the projection and MLP weights are held on the CPU (f32, int8, int4, or a GGUF file's own types). */
  weightType: WeightType = "f32";
  /** What the model was loaded from. */
  private checkpoint!: Checkpoint;
  /** What runs the dense part of a CPU step: onnxruntime sessions, or the native GGUF-block kernels. */
  denseKind: "onnxruntime" | "native" = "onnxruntime";
  /** How sequences of this model store their K/V (the CPU backend). */
  kvCold: KvStoreType = "f32";
  /** How the CPU hot set holds selected rows (Model.load's hotRows). */
  hotRows: HotRowsMode = "indexed";
  /** Bytes of weights this model holds (as stored: quantized matrices count their packed size). */
  weightBytes = 0;
  private sessionOptions: Ort.InferenceSession.SessionOptions = {};
  private quant: GraphQuant | null = null;
  private fused: Promise<FusedDecoder | null> | null = null;
  private draft: Promise<DraftDecoder | null> | null = null;

  /**
   * What this model drafts with for speculative decoding: a small f32 model's whole step in
   * one native call per sequence, else the fused onnxruntime graph, else null (the per-layer
   * runner then drafts).
   */
  draftDecoder(): Promise<DraftDecoder | null> {
    this.draft ??= (async () => {
      const c = this.config;
      if (!this.runner && !this.quant) {
        try {
          const w = this.checkpoint.open();
          if (w.parameters <= NATIVE_DRAFT_MAX_PARAMETERS) {
            const d = NativeDecoder.create(c, w, this.timing);
            if (d) return d;
          }
        } catch (e) {
          // The fused graph (or the per-layer runner) serves instead: same drafts, slower.
          process.stderr.write(`[smallkv] ${this.name}: no native draft decoder (${(e as Error).message})\n`);
        }
      }
      return this.fusedDecoder();
    })();
    return this.draft;
  }

  /**
   * The whole model as one onnxruntime graph (attention included, full cache, no policy), or
   * null where it does not apply (device backend, sliding-window layers, dynamic RoPE). Built
   * once, on first use: what a draft model runs, one call per step.
   */
  fusedDecoder(): Promise<FusedDecoder | null> {
    this.fused ??= (async () => {
      const c = this.config;
      if (this.runner || !this.ort || !wholeStepFits(c)) return null;
      try {
        const graph = decoderGraph(c, this.checkpoint.open(), this.quant, { n: 0 });
        const session = await this.ort.InferenceSession.create(graph.encode(), this.sessionOptions);
        return new FusedDecoder(this.ort, session, this.embed, c, this.timing);
      } catch (e) {
        // The per-layer runner serves instead (slower for a draft, same results).
        process.stderr.write(`[smallkv] ${this.name}: no fused decoder (${(e as Error).message})\n`);
        return null;
      }
    })();
    return this.fused;
  }

  /** A short name for reports: the checkpoint folder's name. */
  get name(): string {
    return checkpointName(this.dir);
  }

  /**
   * Load a model from a Hugging Face checkpoint folder or a GGUF file (`*.gguf`). A GGUF file's
   * matrices keep their own types where MatMulNBits holds them exactly (Q8_0, Q4_0, Q6_K, and
   * Q4_K/Q5_K with float zero points); `weights` re-quantizes them from float instead.
   */
  static async load(dir: string, opts: LoadOptions = {}): Promise<Model> {
    const ckpt = await openCheckpoint(dir);
    const abs = ckpt.path;
    const { config, tokenizer } = ckpt;
    if (opts.dtype !== undefined && !["f32", "f16", "bf16"].includes(opts.dtype))
      throw new InvalidOptionError("dtype", `must be f32, f16 or bf16, got ${String(opts.dtype)}`);
    const weightType = opts.weights ?? (ckpt.format === "gguf" ? "stored" : "f32");
    if (!WEIGHT_TYPES.includes(weightType))
      throw new InvalidOptionError(
        "weights",
        `must be ${WEIGHT_TYPES.join(", ")}, got ${String(weightType)}`,
      );
    if (weightType === "stored" && ckpt.format !== "gguf")
      throw new InvalidOptionError(
        "weights",
        "stored weights are a GGUF file's own types; this is a checkpoint folder",
      );
    const groupSize = opts.groupSize ?? (weightType === "int4" ? 32 : 64);
    if (!isGroupSize(groupSize))
      throw new InvalidOptionError("groupSize", `must be a power of two >= 16, got ${groupSize}`);
    const kvCold = opts.kvCold ?? "f32";
    if (!KV_STORE_TYPES.includes(kvCold))
      throw new InvalidOptionError("kvCold", `must be ${KV_STORE_TYPES.join(", ")}, got ${String(kvCold)}`);
    const hotRows = opts.hotRows ?? "indexed";
    if (hotRows !== "copy" && hotRows !== "indexed")
      throw new InvalidOptionError("hotRows", `must be copy or indexed, got ${String(hotRows)}`);
    const dev = openDevice(opts);
    if (dev) {
      if (kvCold !== "f32") {
        dev.releaseAll();
        throw new InvalidOptionError("kvCold", `an ${kvCold} KV store is for the CPU backend`);
      }
      if (weightType !== "f32" && weightType !== "stored") {
        dev.releaseAll();
        throw new InvalidOptionError(
          "weights",
          `${weightType} weights are for the CPU backend; on the device use --dtype f16 or bf16`,
        );
      }
      const weights = loadAll(ckpt.open(), config);
      const parameters = weights.parameters;
      if (opts.graphs !== undefined && typeof opts.graphs !== "boolean") {
        dev.releaseAll();
        throw new InvalidOptionError("graphs", `must be a boolean, got ${String(opts.graphs)}`);
      }
      const deviceKv = opts.deviceKv ?? opts.dtype ?? "f32";
      if (!["f32", "f16", "bf16"].includes(deviceKv)) {
        dev.releaseAll();
        throw new InvalidOptionError("deviceKv", `must be f32, f16 or bf16, got ${String(deviceKv)}`);
      }
      if (
        opts.deviceKvBudget !== undefined &&
        !(
          typeof opts.deviceKvBudget === "number" &&
          opts.deviceKvBudget >= 0 &&
          Number.isFinite(opts.deviceKvBudget)
        )
      ) {
        dev.releaseAll();
        throw new InvalidOptionError(
          "deviceKvBudget",
          `must be a non-negative number of MiB, got ${String(opts.deviceKvBudget)}`,
        );
      }
      if (opts.devicePolicies !== undefined && typeof opts.devicePolicies !== "boolean") {
        dev.releaseAll();
        throw new InvalidOptionError(
          "devicePolicies",
          `must be a boolean, got ${String(opts.devicePolicies)}`,
        );
      }
      const runner = DeviceRunner.create(
        dev,
        config,
        weights,
        opts.dtype ?? "f32",
        opts.graphs ?? true,
        deviceKv,
        opts.devicePolicies ?? true,
        opts.deviceKvBudget === undefined ? undefined : opts.deviceKvBudget * 2 ** 20,
      );
      const model = new Model(
        abs,
        config,
        tokenizer,
        floatEmbedding(weights.embed, config.hiddenSize),
        parameters,
        null,
        runner,
      );
      model.checkpoint = ckpt;
      model.weightBytes = runner.weightBytes;
      return model;
    }
    if (opts.dtype !== undefined && opts.dtype !== "f32")
      throw new InvalidOptionError(
        "dtype",
        `${opts.dtype} weights are for the device backend; on the CPU use --weights int8 or int4 (or f32)`,
      );
    const denseOpt = opts.dense ?? "auto";
    if (denseOpt !== "auto" && denseOpt !== "native" && denseOpt !== "onnxruntime")
      throw new InvalidOptionError("dense", `must be auto, native or onnxruntime, got ${String(denseOpt)}`);
    const threadsOf = (w: LayeredWeights) =>
      opts.threads ?? (w.parameters <= ONE_THREAD_MAX_PARAMETERS ? 1 : availableParallelism());
    // A model whose dense part runs on the native block kernels (no onnxruntime session).
    const nativeModel = (w: LayeredWeights, native: NativeDense): Model => {
      const embed = ckpt.embedding();
      const model = new Model(abs, config, tokenizer, embed, w.parameters, null, null, native);
      model.checkpoint = ckpt;
      model.weightType = weightType;
      model.kvCold = kvCold;
      model.hotRows = hotRows;
      model.denseKind = "native";
      model.weightBytes = native.bytes + embed.bytes;
      return model;
    };
    if (denseOpt === "native" && ckpt.format === "gguf" && weightType !== "stored")
      throw new InvalidOptionError(
        "dense",
        "the native dense kernels run a GGUF file's own blocks (weights: stored)",
      );
    if (denseOpt === "native" && ckpt.format !== "gguf") {
      if (opts.groupSize !== undefined && opts.groupSize !== 32 && weightType !== "f32")
        throw new InvalidOptionError(
          "groupSize",
          "the native kernels' blocks hold 32 inputs (GGUF Q8_0/Q4_0)",
        );
      // A folder's float weights, quantized at load to the kernels' blocks (or kept float).
      const w = ckpt.open();
      const native = NativeDense.quantized(config, w, weightType as "f32" | "int8" | "int4", threadsOf(w));
      return nativeModel(w, native);
    }
    if (ckpt.format === "gguf" && weightType === "stored" && denseOpt !== "onnxruntime") {
      // A GGUF file whose matrices are Q8_0, Q4_0 or float: the native kernels read its blocks
      // as they are (no onnxruntime session, no packed second copy).
      const w = ckpt.open();
      const native = NativeDense.create(config, w, threadsOf(w), denseOpt === "native");
      if (native) return nativeModel(w, native);
      if (denseOpt === "native")
        throw new InvalidOptionError(
          "dense",
          `${ckpt.path} has matrices the native kernels do not read (they read F32, F16, BF16, Q8_0 and Q4_0): use dense "onnxruntime"`,
        );
    }
    // onnxruntime is loaded only here: the device backend never pulls in its 45 MB library.
    const ort = (await import("onnxruntime-node")).default;
    const quant =
      weightType === "int8" || weightType === "int4"
        ? { bits: (weightType === "int8" ? 8 : 4) as 4 | 8, groupSize }
        : null;
    const sessionOptions: Ort.InferenceSession.SessionOptions = {
      executionProviders: ["cpu"],
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
      // One arena per session would keep each block's peak (a batched long prefill) resident:
      // measured 24 GB RSS for 16 x 2048 tokens on the ~100M model. Allocate per run instead.
      enableCpuMemArena: false,
      enableMemPattern: false,
      extra: { session: { intra_op: { allow_spinning: "0" } } },
    };
    // The graphs live on disk with their weights as external data, keyed by the checkpoint and
    // the options: onnxruntime reads each layer's weights from its file (held about once in
    // memory), and a second start finds them built (no reading or quantizing of the layers).
    const folder = graphFolder(abs, { weights: weightType, groupSize: quant ? groupSize : null });
    let meta = folder.hit;
    let files = folder.dir;
    if (!meta) {
      // Layers are read from the checkpoint as their graphs are made (a few at a time). A
      // GGUF file's f32 load dequantizes; its default keeps the file's blocks.
      const weights = ckpt.open();
      if (weightType === "f32") {
        delete weights.graphLayer;
        delete weights.graphHead;
      }
      const graphs = new BlockGraphs(config, weights, quant);
      for (let i = 0; i < graphs.count; i++) graphs.writeLayer(i, folder.dir);
      graphs.writeHead(folder.dir);
      // The embedding table stays in JS for the lookup, beside the graphs' weights.
      meta = { layers: graphs.count, weightBytes: graphs.bytes.n, parameters: weights.parameters, key: "" };
      files = folder.commit({
        layers: meta.layers,
        weightBytes: meta.weightBytes,
        parameters: meta.parameters,
      });
    }
    sessionOptions.intraOpNumThreads =
      opts.threads ?? (meta.parameters <= ONE_THREAD_MAX_PARAMETERS ? 1 : availableParallelism());
    const layers: Ort.InferenceSession[] = [];
    for (let i = 0; i < meta.layers; i++)
      layers.push(await ort.InferenceSession.create(join(files, `layer${i}.onnx`), sessionOptions));
    const head = await ort.InferenceSession.create(join(files, "head.onnx"), sessionOptions);
    // The lookup table is read after the graphs are made (a GGUF file's rows stay in blocks).
    const embed = ckpt.embedding();
    const dense = new OrtDense(ort, layers, head, config.hiddenSize, config.numHeads * config.headDim);
    const model = new Model(abs, config, tokenizer, embed, meta.parameters, ort, null, dense);
    model.checkpoint = ckpt;
    model.sessionOptions = sessionOptions;
    model.quant = quant;
    model.weightType = weightType;
    model.kvCold = kvCold;
    model.hotRows = hotRows;
    model.weightBytes = meta.weightBytes + embed.bytes;
    return model;
  }

  /** Free the device memory of a model on the device backend (the CPU backend needs nothing). */
  close(): void {
    this.runner?.release();
  }

  /** A new empty sequence (its own KV cache) governed by `policy` (default: keep everything). */
  newSequence(policy?: KvPolicyHook, opts?: SequenceOptions): Sequence {
    return new Sequence(this.config, policy, this, opts);
  }

  /** Run one step: append each input's tokens to its sequence and return the requested logits. */
  async forward(inputs: StepInput[]): Promise<StepOutput[]> {
    const c = this.config;
    const V = c.vocabSize;
    const seen = new Set<Sequence>();
    let M = 0;
    for (const { seq, tokens, logits, sample } of inputs) {
      if (logits !== undefined && !LOGITS_MODES.includes(logits))
        throw new InvalidOptionError("logits", `must be ${LOGITS_MODES.join(", ")}, got ${String(logits)}`);
      if (logits === "sample") checkSample(sample);
      if (seq.released) throw new InvalidOptionError("seq", `sequence ${seq.id} was released`);
      if (seen.has(seq)) throw new InvalidOptionError("seq", `sequence ${seq.id} appears twice in one step`);
      seen.add(seq);
      if (tokens.length === 0)
        throw new InvalidOptionError("tokens", "a step needs at least one token per sequence");
      if (seq.length + tokens.length > c.maxPositions)
        throw new ContextLengthError(seq.length + tokens.length, c.maxPositions);
      for (let i = 0; i < tokens.length; i++) {
        const t = tokens[i];
        if (!Number.isInteger(t) || t < 0 || t >= V)
          throw new InvalidOptionError("tokens", `token id ${t} is outside [0, ${V})`);
      }
      M += tokens.length;
    }
    if (this.runner && inputs.some((i) => i.rowwise))
      throw new InvalidOptionError("rowwise", "row-by-row verify steps are for the CPU backend");
    if (M === 0) return [];
    const t0 = performance.now();
    try {
      return await this.step(inputs, M);
    } finally {
      this.timing.forward += (performance.now() - t0) / 1000;
      this.timing.steps++;
    }
  }

  private async step(inputs: StepInput[], M: number): Promise<StepOutput[]> {
    if (this.runner) return this.deviceStep(inputs, M);
    const c = this.config;
    const dense = this.dense as DenseStack;
    const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D } = c;
    await this.preparePolicies(inputs);
    this.openCheckpoints(inputs);

    const x = new Float32Array(M * d);
    const positions = new Int32Array(M);
    let r = 0;
    for (const { seq, tokens } of inputs) {
      seq.kv.ensure(seq.length + tokens.length);
      for (let i = 0; i < tokens.length; i++, r++) {
        this.embed.row(tokens[i], x, r * d);
        positions[r] = seq.length + i;
      }
    }

    // Session l+1 takes the residual entering layer l and layer l's attention output, and
    // returns the residual leaving layer l with the q/k/v of layer l+1.
    let residIn: Float32Array = x;
    let out: Partial<QKV> = await dense.first(x, M);
    for (let l = 0; l < c.numLayers; l++) {
      const q = out.q as Float32Array;
      const k = out.k as Float32Array;
      const v = out.v as Float32Array;
      this.applyRope(inputs, positions, q, k);
      this.journalQueries(inputs, l, q);
      const attn = new Float32Array(M * Hq * D);
      let row = 0;
      for (const { seq, tokens } of inputs) {
        const T = tokens.length;
        seq.kv.write(
          l,
          k.subarray(row * Hkv * D, (row + T) * Hkv * D),
          v.subarray(row * Hkv * D, (row + T) * Hkv * D),
          seq.length,
          T,
        );
        row += T;
      }
      // The policies plan every sequence, one kernel call attends them all, the policies observe.
      // Rowwise inputs plan one row per round (as one-token steps would), the others in round 0.
      let rounds = 1;
      for (const i of inputs) if (i.rowwise) rounds = Math.max(rounds, i.tokens.length);
      for (let r = 0; r < rounds; r++) {
        let tp = performance.now();
        const plans: PlannedAttention[] = [];
        row = 0;
        for (const { seq, tokens, rowwise } of inputs) {
          const T = tokens.length;
          const at = (t0: number, n: number) => {
            const rows = (a: Float32Array) => a.subarray((row + t0) * Hq * D, (row + t0 + n) * Hq * D);
            plans.push(planAt(seq, l, seq.length + t0, n, rows(q), rows(attn)));
          };
          if (rowwise) {
            if (r < T) at(r, 1);
          } else if (r === 0) at(0, T);
          row += T;
        }
        const tk = performance.now();
        this.timing.policy += (tk - tp) / 1000;
        const results = attentionBatch(plans.map((p) => p.args));
        const ta = performance.now();
        this.timing.attention += (ta - tk) / 1000;
        tp = ta;
        plans.forEach((p, i) => p.finish(results[i]));
        this.keepRowSnapshots(inputs, l, r);
        this.timing.policy += (performance.now() - tp) / 1000;
      }
      const next = await dense.next(l, residIn, attn, M);
      residIn = next.resid;
      out = next;
    }

    for (const { seq, tokens } of inputs) {
      seq.kv.length += tokens.length;
      for (let i = 0; i < tokens.length; i++) seq.tokens.push(tokens[i]);
      seq.assistant?.viewAt(null);
    }

    const final = residIn;
    const rows = logitRows(inputs);
    let logitsAll: Float32Array = new Float32Array(0);
    if (rows.length > 0) {
      const h = new Float32Array(rows.length * d);
      rows.forEach((src, i) => {
        h.set(final.subarray(src * d, (src + 1) * d), i * d);
      });
      logitsAll = await dense.head(h, rows.length);
    }
    return this.splitLogits(inputs, logitsAll);
  }

  /** Snapshots for the inputs that asked for a checkpoint; every journaled sequence logs this step. */
  private openCheckpoints(inputs: StepInput[]): void {
    const c = this.config;
    for (const { seq, tokens, checkpoint, rowwise } of inputs) {
      // A policy without state rolls back by truncation alone: nothing to snapshot or journal.
      const stateful = policyHasState(seq.policy);
      // A rowwise step of a policy with layer snapshots keeps one per row instead.
      const byRows = !!rowwise && !!seq.policy.snapshotLayer && !this.runner;
      if (checkpoint) {
        if (!seq.journal)
          seq.journal = { snaps: new Map(), start: seq.length, q: [], steps: [], rows: new Map() };
        if (stateful && !byRows) seq.journal.snaps.set(seq.length, seq.snapshot());
      }
      const j = seq.journal;
      if (!j || !stateful) continue;
      if (byRows) {
        for (let t = 0; t < tokens.length; t++) j.rows.set(seq.length + t, []);
        continue;
      }
      j.steps.push({ start: seq.length, T: tokens.length, rowwise: !!rowwise });
      if (this.runner) continue;
      const need = (seq.length + tokens.length - j.start) * c.numHeads * c.headDim;
      for (let l = 0; l < c.numLayers; l++) {
        const old = j.q[l] ?? new Float32Array(0);
        if (old.length >= need) continue;
        const next = new Float32Array(Math.max(need, 2 * old.length));
        next.set(old);
        j.q[l] = next;
      }
    }
  }

  /** After row r of layer l of rowwise inputs: the layer's hot set and policy part, for rollback. */
  private keepRowSnapshots(inputs: StepInput[], l: number, r: number): void {
    for (const { seq, tokens, rowwise } of inputs) {
      const at = rowwise && r < tokens.length ? seq.journal?.rows.get(seq.length + r) : undefined;
      if (!at) continue;
      at[l] = { hot: seq.hotSnapshot(l), policy: seq.policy.snapshotLayer!(seq, l) };
    }
  }

  /** Keep this layer's queries of journaled sequences (a rollback replays from them). */
  private journalQueries(inputs: StepInput[], layer: number, q: Float32Array): void {
    const w = this.config.numHeads * this.config.headDim;
    let row = 0;
    for (const { seq, tokens } of inputs) {
      const j = seq.journal;
      if (j?.q.length && j.q[layer].length >= (seq.length + tokens.length - j.start) * w)
        j.q[layer].set(q.subarray(row * w, (row + tokens.length) * w), (seq.length - j.start) * w);
      row += tokens.length;
    }
  }

  /**
   * Roll sequences back to `length` tokens, anywhere from their checkpoint on: exactly the
   * state one-token decoding would have there (KV length, hot sets, policy state). From the
   * nearest snapshot at or below it, the policy's part of the later rows is replayed (their
   * attention and the policy's choices; the dense layers are not run again). The assistant's
   * view rolls back with AssistantState.rollbackTo.
   */
  rollback(items: { seq: Sequence; length: number }[]): void {
    for (const { seq, length } of items) {
      const j = seq.journal;
      if (!j) throw new InvalidOptionError("rollback", `sequence ${seq.id} has no checkpoint`);
      if (!(Number.isInteger(length) && length >= j.start && length <= seq.length))
        throw new InvalidOptionError(
          "rollback",
          `length ${length} is outside [${j.start}, ${seq.length}] (checkpoint to current length)`,
        );
    }
    for (const { seq, length } of items) {
      if (length === seq.length) continue;
      if (!policyHasState(seq.policy)) {
        seq.truncateTo(length);
        continue;
      }
      const j = seq.journal!;
      const kept = seq.tokens.slice(0, length);
      const rows = j.rows.get(length - 1);
      if (rows && rows.length === this.config.numLayers && !seq.fault) {
        // Every layer as it was after the last kept row: no replay.
        rows.forEach((x, l) => {
          seq.restoreHot(l, x.hot);
          seq.policy.restoreLayer!(seq, l, x.policy);
        });
      } else {
        let from = j.start;
        for (const n of j.snaps.keys()) if (n <= length && n > from) from = n;
        seq.restore(j.snaps.get(from)!);
        for (const n of [...j.snaps.keys()]) if (n > length) j.snaps.delete(n);
        if (from < length) {
          if (this.runner)
            throw new InvalidOptionError("rollback", "the device backend rolls back to its snapshots only");
          const t0 = performance.now();
          replaySteps(seq, j, from, length);
          this.timing.policy += (performance.now() - t0) / 1000;
        }
      }
      // A restored snapshot cut the tokens to its own length.
      seq.kv.length = length;
      seq.tokens.splice(0, seq.tokens.length, ...kept);
      for (const p of [...j.rows.keys()]) if (p >= length) j.rows.delete(p);
      j.steps = j.steps.filter((s) => s.start < length);
      const last = j.steps[j.steps.length - 1];
      if (last && last.start + last.T > length) last.T = length - last.start;
      seq.assistant?.viewAt(null);
    }
  }

  /** Close a sequence's checkpoint: what it has now stays. */
  settle(seq: Sequence): void {
    seq.journal = null;
  }

  /** RoPE on this step's q and k rows (dynamic NTK: per sequence, from its own length). */
  private applyRope(inputs: StepInput[], positions: Int32Array, q: Float32Array, k: Float32Array): void {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D, rope: r, ropeTheta } = this.config;
    if (!r.dynamic) {
      const f = ropeKernelArgs(r, D, 0);
      rope(q, positions, Hq, D, ropeTheta, f);
      rope(k, positions, Hkv, D, ropeTheta, f);
      return;
    }
    let row = 0;
    for (const { seq, tokens } of inputs) {
      const T = tokens.length;
      const f = ropeKernelArgs(r, D, seq.length + T);
      const p = positions.subarray(row, row + T);
      rope(q.subarray(row * Hq * D, (row + T) * Hq * D), p, Hq, D, ropeTheta, f);
      rope(k.subarray(row * Hkv * D, (row + T) * Hkv * D), p, Hkv, D, ropeTheta, f);
      row += T;
    }
  }

  /** Each policy's per-step preparation (SmallKV runs its assistant here). */
  private async preparePolicies(inputs: StepInput[]): Promise<void> {
    const tp = performance.now();
    for (const { seq, tokens, rowwise } of inputs) {
      if (!seq.policy.prepare || seq.fault) continue;
      try {
        // A rowwise step prepares as its first row's one-token step would (the later rows
        // must have nothing to prepare: see KvPolicyHook.prepareIdle).
        await seq.policy.prepare(seq, { start: seq.length, T: rowwise ? 1 : tokens.length });
      } catch (e) {
        seq.fault =
          e instanceof PolicyError ? e : new PolicyError(seq.policy.name, "prepare", (e as Error).message);
      }
    }
    this.timing.policy += (performance.now() - tp) / 1000;
  }

  /** Cut the rows of logits [R][V] into one output per step input. */
  private splitLogits(inputs: StepInput[], logitsAll: Float32Array): StepOutput[] {
    const V = this.config.vocabSize;
    const results: StepOutput[] = [];
    let lr = 0;
    for (const input of inputs) {
      const n = logitCount(input);
      const rows = logitsAll.subarray(lr * V, (lr + n) * V);
      results.push(
        input.logits === "argmax"
          ? Float32Array.of(argmax(rows))
          : input.logits === "sample"
            ? Float32Array.of(sampleToken(rows, input.sample!, input.sample!.u))
            : rows,
      );
      lr += n;
    }
    return results;
  }

  /** One step on the device backend: policies prepare, the runner computes, logits come back. */
  private async deviceStep(inputs: StepInput[], M: number): Promise<StepOutput[]> {
    const runner = this.runner as DeviceRunner;
    await this.preparePolicies(inputs);
    this.openCheckpoints(inputs);
    const parts = [];
    let r = 0;
    for (const { seq, tokens } of inputs) {
      parts.push({ seq, tokens, row: r });
      r += tokens.length;
    }
    const rows = logitRows(inputs);
    // Tokens picked on the device when every requested row wants only its token.
    const picked = ({ logits = "last" }: StepInput) => logits === "argmax" || logits === "sample";
    const onDevice = rows.length > 0 && inputs.every((i) => picked(i) || i.logits === "none");
    const pick = !onDevice
      ? null
      : inputs.every((i) => i.logits !== "sample")
        ? "argmax"
        : inputs
            .filter(picked)
            .map((i) => (i.logits === "sample" ? i.sample! : { temperature: 0, topK: 0, topP: 1, u: 0 }));
    const out = runner.step(parts, M, rows, pick);
    for (const { seq, tokens } of inputs) {
      seq.kv.length += tokens.length;
      for (let i = 0; i < tokens.length; i++) seq.tokens.push(tokens[i]);
    }
    if (onDevice) {
      let i = 0;
      return inputs.map((input) => (picked(input) ? Float32Array.of(out[i++]) : new Float32Array(0)));
    }
    const logitsAll = out as Float32Array;
    return this.splitLogits(inputs, logitsAll);
  }
}

/** A "sample" input's rule: a temperature, top-k and top-p as the sampler validates them, and u in [0, 1). */
function checkSample(s: StepInput["sample"]): void {
  if (!s) throw new InvalidOptionError("sample", 'logits "sample" needs { temperature, topK, topP, u }');
  validateSampling(s);
  if (!(s.u >= 0 && s.u < 1)) throw new InvalidOptionError("sample", `u must be in [0, 1), got ${s.u}`);
}

/** How many of a step input's last positions return logits (an argmax or sample input reads its last row's). */
function logitCount({ tokens, logits = "last" }: StepInput): number {
  return logits === "all" ? tokens.length : logits === "none" ? 0 : 1;
}

/** The batch rows whose logits the step's inputs want, in input order. */
function logitRows(inputs: StepInput[]): number[] {
  const rows: number[] = [];
  let r = 0;
  for (const input of inputs) {
    const T = input.tokens.length;
    for (let i = T - logitCount(input); i < T; i++) rows.push(r + i);
    r += T;
  }
  return rows;
}

/** The device for `opts.device`, or null for the CPU. "auto" falls back to the CPU with a message. */
function openDevice(opts: LoadOptions): Device | null {
  const want = opts.device ?? "cpu";
  const log = opts.onLog ?? ((m: string) => process.stderr.write(`[smallkv] ${m}\n`));
  switch (want) {
    case "cpu":
      return null;
    case "cuda":
    case "emulator":
      return Device.open(want);
    case "auto":
      try {
        const dev = Device.open("cuda");
        log(`device auto: running on CUDA (${dev.info.name})`);
        return dev;
      } catch (e) {
        if (!(e instanceof DeviceError)) throw e;
        log(`device auto: ${e.message}; running on the CPU`);
        return null;
      }
    default:
      throw new InvalidOptionError("device", `must be cpu, cuda, auto or emulator, got ${String(want)}`);
  }
}
