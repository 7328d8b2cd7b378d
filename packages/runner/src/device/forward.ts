import {
  ATTN_SEQ_BYTES,
  type Device,
  type DeviceBuffer,
  type DeviceGraph,
  packSampling,
  type SampleParams,
  toHalfBits,
} from "@smallkv/tensor";
import type { ModelConfig } from "../config.js";
import { type RopeKernelArgs, ropeKernelArgs } from "../rope.js";
import type { ModelWeights } from "../weights.js";
import { type AttendContext, attendOne } from "./attend.js";
import { type DeviceStepPart, type StepMeta, StepMetadata } from "./batch.js";
import { DeviceKvBudget } from "./kv-budget.js";
import { Staging } from "./staging.js";

/**
 * The default device KV budget: the free memory once the weights are loaded, less a reserve
 * for activations, workspaces and graphs (a tenth of the device, at least 1 GiB).
 */
function defaultKvBudget(dev: Device): number {
  const { free, total } = dev.memInfo();
  return Math.max(0, free - Math.max(2 ** 30, total / 10));
}

export type { DeviceStepPart } from "./batch.js";

/** A staged RoPE frequency table and its cos/sin factor (undefined: plain RoPE). */
type DeviceRope = { invFreq: number; scale: number } | undefined;

/** Weight storage on the device: f32 as loaded, or f16/bf16 for the tensor-core GEMM. */
export type WeightDtype = "f32" | "f16" | "bf16";

/** Steps of up to this many rows (the GEMV kernel's limit) run their products through it in one launch; larger ones the tiled GEMM. */
const GEMV_ROWS = 16;
/** Steps of up to this many rows fold the block's RMSNorms into their GEMVs. */
const NORM_ROWS = 4;
/** Captured step shapes kept (batch size x key-length bucket); the least recently used go first. */
const MAX_GRAPHS = 64;

interface LayerBuffers {
  inputNorm: DeviceBuffer;
  postNorm: DeviceBuffer;
  /** q, k and v stacked as one [Hq*D + 2*Hkv*D][d] matrix (q, k, v are views of it). */
  qkv: DeviceBuffer;
  qkvBias?: DeviceBuffer;
  q: DeviceBuffer;
  k: DeviceBuffer;
  v: DeviceBuffer;
  o: DeviceBuffer;
  gate: DeviceBuffer;
  up: DeviceBuffer;
  down: DeviceBuffer;
  qBias?: DeviceBuffer;
  kBias?: DeviceBuffer;
  vBias?: DeviceBuffer;
  oBias?: DeviceBuffer;
  gateBias?: DeviceBuffer;
  upBias?: DeviceBuffer;
  downBias?: DeviceBuffer;
  qNorm?: DeviceBuffer;
  kNorm?: DeviceBuffer;
}

/**
 * The device backend's forward pass: every weight, activation and hot KV row on the GPU;
 * the host only runs the policies and receives logits. A step queues all its kernels on the
 * compute stream and waits once, for the logits (policies that observe attention add one
 * wait per observed layer).
 */
export class DeviceRunner implements AttendContext {
  private scratch = new Map<string, DeviceBuffer>();
  /** This step's query buffer (query-aware policies read their rows back). */
  queryBuf!: DeviceBuffer;
  private readonly staging: Staging;
  private readonly meta: StepMetadata;
  /** Captured decode steps by shape; `seen`: the shape ran once eagerly (buffers sized) at `gen`. */
  private graphs = new Map<string, { graph: DeviceGraph | null; gen: number }>();
  /** Bumped whenever a scratch buffer is reallocated: graphs captured before hold stale addresses. */
  private gen = 0;
  /** Steps captured as graphs, and steps replayed from one. */
  readonly graphStats = { captured: 0, replayed: 0 };
  /** Bytes of weights on the device. */
  readonly weightBytes: number;
  /** Whether this model's heads fit the batched path's kernels (else every sequence runs per sequence). */
  readonly batchedHeads: boolean;
  /** Device memory the sequences' KV stores may take before they spill to pinned host memory. */
  readonly kvBudget: DeviceKvBudget;

  private constructor(
    readonly dev: Device,
    readonly c: ModelConfig,
    private readonly embed: DeviceBuffer,
    private readonly norm: DeviceBuffer,
    private readonly lmHead: DeviceBuffer,
    private readonly layers: LayerBuffers[],
    private readonly useGraphs: boolean,
    /** Rows of the device-resident KV stores (the batched path's sequences). */
    readonly kvDtype: WeightDtype,
    /** Policies run their device form where they have one. */
    readonly devicePolicies: boolean,
    kvBudgetBytes: number | undefined,
  ) {
    this.kvBudget = new DeviceKvBudget(kvBudgetBytes ?? defaultKvBudget(dev));
    // The batched kernels read rows in 16-byte vectors of the store's dtype.
    this.batchedHeads = c.headDim % (kvDtype === "f32" ? 4 : 8) === 0 && c.headDim <= 256;
    this.staging = new Staging(dev);
    this.meta = new StepMetadata(dev, c, this.staging);
    this.weightBytes = [embed, norm, lmHead, ...layers.flatMap((l) => Object.values(l) as DeviceBuffer[])]
      // q, k, v and their biases are views of the stacked buffers.
      .filter((b) => !layers.some((l) => [l.q, l.k, l.v, l.qBias, l.kBias, l.vBias].includes(b)))
      .reduce((a, b) => a + (b === lmHead && lmHead === embed ? 0 : b.bytes), 0);
  }

  static create(
    dev: Device,
    c: ModelConfig,
    w: ModelWeights,
    dtype: WeightDtype,
    graphs = true,
    kvDtype: WeightDtype = "f32",
    devicePolicies = true,
    /** Bytes the KV stores may take on the device (default: the free memory after the weights, less a reserve). */
    kvBudgetBytes?: number,
  ): DeviceRunner {
    const mat = (a: Float32Array) =>
      dtype === "f32" ? dev.upload(a) : dev.upload(toHalfBits(a, dtype), dtype);
    const vec = (a: Float32Array) => dev.upload(a);
    try {
      const { numHeads: Hq, numKvHeads: Hkv, headDim: D, hiddenSize: d } = c;
      const layers = w.layers.map((l) => {
        const nq = Hq * D * d;
        const nk = Hkv * D * d;
        const stacked = new Float32Array(nq + 2 * nk);
        stacked.set(l.q, 0);
        stacked.set(l.k, nq);
        stacked.set(l.v, nq + nk);
        const qkv = mat(stacked);
        const b: LayerBuffers = {
          inputNorm: vec(l.inputNorm),
          postNorm: vec(l.postNorm),
          qkv,
          q: qkv.view(0, nq),
          k: qkv.view(nq, nk),
          v: qkv.view(nq + nk, nk),
          o: mat(l.o),
          gate: mat(l.gate),
          up: mat(l.up),
          down: mat(l.down),
        };
        if (l.qBias || l.kBias || l.vBias) {
          // One bias for the stacked matrix (a missing part is zeros); q/k/v biases are views.
          const bias = new Float32Array((Hq + 2 * Hkv) * D);
          if (l.qBias) bias.set(l.qBias, 0);
          if (l.kBias) bias.set(l.kBias, Hq * D);
          if (l.vBias) bias.set(l.vBias, (Hq + Hkv) * D);
          const qkvBias = vec(bias);
          b.qkvBias = qkvBias;
          b.qBias = qkvBias.view(0, Hq * D);
          b.kBias = qkvBias.view(Hq * D, Hkv * D);
          b.vBias = qkvBias.view((Hq + Hkv) * D, Hkv * D);
        }
        for (const key of ["oBias", "gateBias", "upBias", "downBias", "qNorm", "kNorm"] as const) {
          const a = l[key];
          if (a) b[key] = vec(a);
        }
        return b;
      });
      const embed = mat(w.embed);
      const lmHead = w.lmHead === w.embed ? embed : mat(w.lmHead);
      return new DeviceRunner(
        dev,
        c,
        embed,
        vec(w.norm),
        lmHead,
        layers,
        graphs,
        kvDtype,
        devicePolicies,
        kvBudgetBytes,
      );
    } catch (e) {
      dev.releaseAll();
      throw e;
    }
  }

  buf(name: string, n: number): DeviceBuffer {
    let b = this.scratch.get(name);
    if (!b || b.length < n) {
      b?.free();
      b = this.dev.alloc(Math.max(n, 1024));
      this.scratch.set(name, b);
      this.gen++;
    }
    return b;
  }

  /**
   * Run the layers for M rows. Returns the requested rows' logits [R][V], or with `pick` their
   * tokens [R], picked on the device (R integers come back): "argmax" the greedy ones, or per
   * row a sampling rule with its uniform draw (temperature 0: the argmax).
   */
  step(
    parts: DeviceStepPart[],
    M: number,
    logitRows: number[],
    pick: "argmax" | SampleParams[] | null = null,
  ): Float32Array | Int32Array {
    const c = this.c;
    for (const { seq, tokens } of parts) seq.kv.ensure(seq.length + tokens.length);
    const meta = this.meta.prepare(parts, M);
    const ropeTables = this.ropeTables(parts);
    const R = logitRows.length;
    // Tokens picked on the device: the argmax, or draws by the rows' rules, which go to a fixed
    // device buffer ahead of the work (a graph reads them there).
    let choose: "argmax" | DeviceBuffer | null = pick === "argmax" ? "argmax" : null;
    if (Array.isArray(pick)) {
      choose = this.buf("sampling", 4 * R);
      this.dev.copy(choose, this.staging.ints("sampling", packSampling(pick)), 16 * R);
    }
    const run = () => this.enqueue(parts, M, meta, ropeTables, logitRows, choose);
    const mode = choose === null ? "logits" : choose === "argmax" ? "argmax" : "sample";
    const key = this.graphKey(parts, M, meta, logitRows, mode);
    if (key === null) run();
    else this.replay(key, run);
    if (R === 0) {
      this.dev.sync(0);
      return new Float32Array(0);
    }
    if (pick) {
      const out = new Int32Array(R);
      this.dev.read(this.scratch.get("tokens") as DeviceBuffer, new Float32Array(out.buffer));
      return out;
    }
    return this.dev.read(this.scratch.get("logits") as DeviceBuffer, new Float32Array(R * c.vocabSize));
  }

  /**
   * A step's graph shape, or null when it cannot be replayed: a sequence on the per-sequence
   * path (its policy reads back), per-sequence RoPE tables, or logits of picked rows.
   */
  private graphKey(
    parts: DeviceStepPart[],
    M: number,
    meta: StepMeta,
    logitRows: number[],
    pick: string,
  ): string | null {
    const b = meta.batch;
    if (!this.useGraphs || !b || b.parts.length !== parts.length || this.c.rope.dynamic) return null;
    if (logitRows.length !== M || !logitRows.every((r, i) => r === i)) return null;
    const shape = b.groups.map((g) => `${g.count}:${g.maxT}:${g.keyBucket}`).join(",");
    // The device forms' launches per layer (ranked lists, the probability pass).
    const forms = b.layers.map((m) => `${m.rankCount}${m.probOuts ? "p" : ""}`).join(".");
    return `${M}|${shape}|${forms}|${pick}`;
  }

  /**
   * Replays the step's graph. A new shape runs eagerly once (sizing every buffer it needs),
   * is captured the next time, and replayed from then on; a buffer reallocated since (the
   * generation moved) drops the graphs.
   */
  /** Moves whenever a buffer a graph may hold is reallocated (scratch or step metadata). */
  private get generation(): number {
    return this.gen + this.meta.generation;
  }

  private replay(key: string, run: () => void): void {
    const gen = this.generation;
    const e = this.graphs.get(key);
    if (e && e.gen !== gen) {
      for (const g of this.graphs.values()) g.graph?.free();
      this.graphs.clear();
    } else if (e?.graph) {
      // Most recently used last: the oldest shape is the one dropped past the cap.
      this.graphs.delete(key);
      this.graphs.set(key, e);
      e.graph.launch();
      this.graphStats.replayed++;
      return;
    } else if (e) {
      const graph = this.dev.capture(run);
      if (this.generation === gen) {
        e.graph = graph;
        graph.launch();
        this.graphStats.captured++;
        return;
      }
      graph.free(); // buffers moved while capturing: run this step eagerly
    }
    run();
    this.graphs.set(key, { graph: null, gen: this.generation });
    if (this.graphs.size > MAX_GRAPHS) {
      const [oldest, g] = this.graphs.entries().next().value as [string, { graph: DeviceGraph | null }];
      g.graph?.free();
      this.graphs.delete(oldest);
    }
  }

  /** Queue one step's kernels on stream 0 (no host read unless a per-sequence policy asks). */
  private enqueue(
    parts: DeviceStepPart[],
    M: number,
    meta: StepMeta,
    ropeTables: DeviceRope[],
    logitRows: number[],
    /** "argmax": greedy tokens; a buffer of sampling rules: drawn tokens; null: the logits. */
    pick: "argmax" | DeviceBuffer | null,
  ): void {
    const c = this.c;
    const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: I } = c;
    const dev = this.dev;
    const x = this.buf("x", M * d);
    const h = this.buf("h", M * d);
    const q = this.buf("q", M * Hq * D);
    this.queryBuf = q;
    const k = this.buf("k", M * Hkv * D);
    const v = this.buf("v", M * Hkv * D);
    const attn = this.buf("attn", M * Hq * D);
    const gate = this.buf("gate", M * I);
    const up = M > GEMV_ROWS ? this.buf("up", M * I) : gate;
    dev.embedding(x, this.embed, meta.ids, M, d);
    // The device forms' selections of every layer in one launch (each reads only what earlier
    // steps left: score sums, masks, the assistant's rows of this step). Sized by the key bucket,
    // fixed for a graph's life: lists up to it rank from shared memory.
    const b = meta.batch;
    if (b && b.rankCount > 0) dev.rankSelect(b.ranks, b.rankCount, b.keyBucket);
    const slow = parts.filter((p) => !meta.batch?.parts.includes(p));
    for (let l = 0; l < c.numLayers; l++) {
      const w = this.layers[l];
      // Up to NORM_ROWS rows, the GEMVs apply the block's RMSNorms themselves (no launch for them).
      const fold = M <= NORM_ROWS;
      if (fold) this.qkv(w, x, q, k, v, M, { w: w.inputNorm, eps: c.rmsNormEps });
      else {
        dev.rmsnorm(h, x, w.inputNorm, M, d, c.rmsNormEps);
        this.qkv(w, h, q, k, v, M);
      }
      if (w.qNorm && w.kNorm) {
        // Qwen3: RMSNorm of every head vector (rows of head_dim) before RoPE.
        dev.rmsnorm(q, q, w.qNorm, M * Hq, D, c.rmsNormEps);
        dev.rmsnorm(k, k, w.kNorm, M * Hkv, D, c.rmsNormEps);
      }
      // One table for the batch: RoPE and the batched rows' KV append in one launch.
      const fused = meta.batch !== null && !c.rope.dynamic;
      if (fused) this.ropeAppend(meta, l, ropeTables[0], q, k, v, M);
      else this.rope(parts, ropeTables, q, k, meta.pos, M);
      this.attendBatch(meta, l, q, k, v, attn, fused);
      // Every per-sequence launch first, then their read-backs: one wait for the layer.
      const observe = slow.map(({ seq, tokens, row }, i) =>
        attendOne(
          this,
          seq,
          l,
          tokens.length,
          q.at(row * Hq * D),
          k.at(row * Hkv * D),
          v.at(row * Hkv * D),
          attn.at(row * Hq * D),
          i,
        ),
      );
      for (const o of observe) o?.();
      this.linear(x, attn, w.o, w.oBias, M, d, Hq * D, true);
      if (!fold) dev.rmsnorm(h, x, w.postNorm, M, d, c.rmsNormEps);
      if (M <= GEMV_ROWS) {
        dev.gemv({
          y: gate,
          x: fold ? x : h,
          norm: fold ? { w: w.postNorm, eps: c.rmsNormEps } : undefined,
          w: w.gate,
          w2: w.up,
          bias: w.gateBias,
          bias2: w.upBias,
          m: M,
          n: I,
          k: d,
          mode: "siluGate",
        });
      } else {
        dev.gemm({ y: gate, x: h, w: w.gate, bias: w.gateBias, m: M, n: I, k: d });
        dev.gemm({ y: up, x: h, w: w.up, bias: w.upBias, m: M, n: I, k: d });
        dev.siluGate(gate, gate, up, M * I);
      }
      this.linear(x, gate, w.down, w.downBias, M, d, I, true);
    }
    const R = logitRows.length;
    if (R === 0) return;
    const hs = this.buf("hsel", R * d);
    if (logitRows.every((src, i) => src === i)) dev.rmsnorm(hs, x, this.norm, R, d, c.rmsNormEps);
    else {
      logitRows.forEach((src, i) => dev.copy(hs.at(i * d), x.at(src * d), d * 4));
      dev.rmsnorm(hs, hs, this.norm, R, d, c.rmsNormEps);
    }
    const logits = this.buf("logits", R * c.vocabSize);
    this.linear(logits, hs, this.lmHead, undefined, R, c.vocabSize, d, false);
    if (pick === "argmax") dev.argmax(this.buf("tokens", R), logits, R, c.vocabSize);
    else if (pick) dev.sample(this.buf("tokens", R), logits, pick, R, c.vocabSize);
  }

  /** y (+)= x . W^T + bias: the GEMV kernel for decode-sized steps, the tiled GEMM beyond. */
  private linear(
    y: DeviceBuffer,
    x: DeviceBuffer,
    w: DeviceBuffer,
    bias: DeviceBuffer | undefined,
    M: number,
    n: number,
    k: number,
    accumulate: boolean,
  ): void {
    if (M > GEMV_ROWS) this.dev.gemm({ y, x, w, bias, m: M, n, k, accumulate });
    else this.dev.gemv({ y, x, w, bias, m: M, n, k, mode: accumulate ? "accumulate" : "store" });
  }

  /** q, k and v of the step's rows: one GEMV launch writing three tensors, or three GEMMs. */
  private qkv(
    w: LayerBuffers,
    h: DeviceBuffer,
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    M: number,
    norm?: { w: DeviceBuffer; eps: number },
  ): void {
    const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.c;
    if (M > GEMV_ROWS) {
      this.dev.gemm({ y: q, x: h, w: w.q, bias: w.qBias, m: M, n: Hq * D, k: d });
      this.dev.gemm({ y: k, x: h, w: w.k, bias: w.kBias, m: M, n: Hkv * D, k: d });
      this.dev.gemm({ y: v, x: h, w: w.v, bias: w.vBias, m: M, n: Hkv * D, k: d });
      return;
    }
    this.dev.gemv({
      y: [q, k, v],
      split: [Hq * D, Hkv * D],
      x: h,
      w: w.qkv,
      bias: w.qkvBias,
      norm,
      m: M,
      n: (Hq + 2 * Hkv) * D,
      k: d,
    });
  }

  /** RoPE of the step's q and k with the batched rows' KV append folded in (one launch). */
  private ropeAppend(
    meta: StepMeta,
    l: number,
    freq: DeviceRope,
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    M: number,
  ): void {
    const b = meta.batch!;
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D, ropeTheta } = this.c;
    this.dev.ropeAppend({
      q,
      k,
      v,
      pos: meta.pos,
      T: M,
      Hq,
      Hkv,
      D,
      theta: ropeTheta,
      freq,
      kStores: b.layers[l].kStores,
      vStores: b.layers[l].vStores,
      caps: b.caps,
      dst: b.dst,
      entry: meta.entry,
      kvDtype: this.kvDtype,
    });
  }

  /** The batched sequences' KV append and attention at one layer: two launches for all of them. */
  private attendBatch(
    meta: StepMeta,
    l: number,
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    appended: boolean,
  ): void {
    const b = meta.batch;
    if (!b) return;
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.c;
    const m = b.layers[l];
    if (!appended)
      this.dev.kvAppend({
        kStores: m.kStores,
        vStores: m.vStores,
        caps: b.caps,
        dst: b.dst,
        rows: b.rowIndex,
        k,
        v,
        n: b.rows,
        Hkv,
        D,
        kvDtype: this.kvDtype,
      });
    // The rows' log-sum-exp, when a form keeps probabilities of this layer (the pass after reads it).
    const lse = m.probOuts ? this.buf("lse", q.length / D) : undefined; // by q row: [.][Hq]
    for (const g of b.groups)
      this.dev.attentionBatch({
        seqs: m.records + g.first * ATTN_SEQ_BYTES,
        B: g.count,
        maxT: g.maxT,
        maxKeys: g.keyBucket,
        Hq,
        Hkv,
        D,
        kvDtype: this.kvDtype,
        q,
        out,
        // One workspace for the step's groups: the launches run in stream order.
        part: this.buf("part", this.dev.attentionPartFloats(g.count, g.maxT, g.keyBucket, Hq, D)),
        lse,
      });
    // Then the probabilities the forms keep (score sums, the assistant's rows): one pass, no read-back.
    if (lse) {
      const last = b.groups.at(-1)!;
      this.dev.attentionProbs({
        seqs: m.records,
        outs: m.probOuts,
        B: last.first + last.count,
        maxKeys: b.keyBucket,
        Hq,
        Hkv,
        D,
        kvDtype: this.kvDtype,
        q,
        lse,
      });
    }
  }

  /**
   * The step's RoPE tables in pinned memory, staged once before the layers: one for the whole
   * batch, or one per sequence with dynamic NTK (its frequencies follow its own length).
   */
  private ropeTables(parts: DeviceStepPart[]): DeviceRope[] {
    const { headDim: D, rope: r } = this.c;
    const stage = (name: string, f: RopeKernelArgs): DeviceRope =>
      f ? { invFreq: this.staging.floats(name, f.invFreq), scale: f.scale } : undefined;
    if (!r.dynamic) return [stage("ropeFreq", ropeKernelArgs(r, D, 0))];
    return parts.map(({ seq, tokens }, i) =>
      stage(`ropeFreq${i}`, ropeKernelArgs(r, D, seq.length + tokens.length)),
    );
  }

  /** RoPE on the step's q and k with the tables of `ropeTables`. */
  private rope(
    parts: DeviceStepPart[],
    tables: DeviceRope[],
    q: DeviceBuffer,
    k: DeviceBuffer,
    posPtr: number,
    M: number,
  ): void {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D, rope: r, ropeTheta } = this.c;
    if (!r.dynamic) {
      this.dev.rope(q, posPtr, M, Hq, D, ropeTheta, 0, tables[0], { x: k, H: Hkv });
      return;
    }
    parts.forEach(({ tokens, row }, i) => {
      const T = tokens.length;
      const p = posPtr + row * 4;
      this.dev.rope(q.at(row * Hq * D), p, T, Hq, D, ropeTheta, 0, tables[i], {
        x: k.at(row * Hkv * D),
        H: Hkv,
      });
    });
  }

  release(): void {
    for (const g of this.graphs.values()) g.graph?.free();
    this.graphs.clear();
    this.meta.free();
    for (const b of this.scratch.values()) b.free();
    this.scratch.clear();
    this.staging.free();
    this.dev.releaseAll();
  }
}
