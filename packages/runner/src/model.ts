import { availableParallelism } from "node:os";
import { basename, resolve } from "node:path";
import { attention, rope, type VOnlyRows } from "@smallkv/tensor";
import ort from "onnxruntime-node";
import { type ModelConfig, readConfig } from "./config.js";
import { ContextLengthError, InvalidOptionError, PolicyError } from "./errors.js";
import type { HotRows } from "./hot-set.js";
import { buildBlockGraphs } from "./onnx/blocks.js";
import type { AttentionRequest, KvPolicyHook, LayerSelection, StepInfo } from "./policy-hook.js";
import { Sequence } from "./sequence.js";
import { TextTokenizer } from "./tokenizer.js";
import { loadWeights } from "./weights.js";

export interface LoadOptions {
  /** Threads for onnxruntime's intra-op pool (default: all cores). */
  threads?: number;
}

/** One sequence's part of a forward step. */
export interface StepInput {
  seq: Sequence;
  tokens: ArrayLike<number>;
  /** Which positions' logits to return: the last (default), all, or none. */
  logits?: "last" | "all" | "none";
}

/** Logits [rows][vocab] per step input (1 row for "last", T for "all", 0 for "none"). */
export type StepOutput = Float32Array;

type Session = ort.InferenceSession;

/**
 * A loaded Llama-family model: dense math in onnxruntime sessions, attention and the KV
 * cache in @smallkv/tensor. `forward` runs one step for any number of sequences, each
 * with any number of new tokens (prefill, decode and mixed batches are the same call).
 */
export class Model {
  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly tokenizer: TextTokenizer,
    private readonly embed: Float32Array,
    private readonly layers: Session[],
    private readonly head: Session,
    /** Parameter count, for reports. */
    readonly parameters: number,
  ) {}

  /**
   * Seconds spent since load (or the last reset): whole forward steps, and the part of them
   * inside KV policies (their callbacks and the hot-set moves they cause).
   */
  readonly timing = { forward: 0, policy: 0, steps: 0 };

  /** A short name for reports: the checkpoint folder's name. */
  get name(): string {
    return basename(this.dir);
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<Model> {
    const abs = resolve(dir);
    const config = readConfig(abs);
    const tokenizer = new TextTokenizer(abs);
    const weights = loadWeights(abs, config);
    const graphs = buildBlockGraphs(config, weights);
    const threads = opts.threads ?? availableParallelism();
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      executionProviders: ["cpu"],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
      // One arena per session would keep each block's peak (a batched long prefill) resident:
      // measured 24 GB RSS for 16 x 2048 tokens on the ~100M model. Allocate per run instead.
      enableCpuMemArena: false,
      enableMemPattern: false,
      extra: { session: { intra_op: { allow_spinning: "0" } } },
    };
    const layers: Session[] = [];
    for (const g of graphs.layers) layers.push(await ort.InferenceSession.create(g, sessionOptions));
    const head = await ort.InferenceSession.create(graphs.head, sessionOptions);
    let parameters =
      weights.embed.length +
      weights.norm.length +
      (weights.lmHead === weights.embed ? 0 : weights.lmHead.length);
    for (const l of weights.layers) {
      for (const a of Object.values(l)) parameters += (a as Float32Array).length;
    }
    return new Model(abs, config, tokenizer, weights.embed, layers, head, parameters);
  }

  /** A new empty sequence (its own KV cache) governed by `policy` (default: keep everything). */
  newSequence(policy?: KvPolicyHook): Sequence {
    return new Sequence(this.config, policy, this);
  }

  /** Run one step: append each input's tokens to its sequence and return the requested logits. */
  async forward(inputs: StepInput[]): Promise<StepOutput[]> {
    const c = this.config;
    const V = c.vocabSize;
    const seen = new Set<Sequence>();
    let M = 0;
    for (const { seq, tokens } of inputs) {
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
    const c = this.config;
    const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D, vocabSize: V } = c;
    const tp = performance.now();
    for (const { seq, tokens } of inputs) {
      if (!seq.policy.prepare || seq.fault) continue;
      try {
        await seq.policy.prepare(seq, { start: seq.length, T: tokens.length });
      } catch (e) {
        seq.fault =
          e instanceof PolicyError ? e : new PolicyError(seq.policy.name, "prepare", (e as Error).message);
      }
    }
    this.timing.policy += (performance.now() - tp) / 1000;

    const x = new Float32Array(M * d);
    const positions = new Int32Array(M);
    let r = 0;
    for (const { seq, tokens } of inputs) {
      seq.kv.ensure(seq.length + tokens.length);
      for (let i = 0; i < tokens.length; i++, r++) {
        x.set(this.embed.subarray(tokens[i] * d, (tokens[i] + 1) * d), r * d);
        positions[r] = seq.length + i;
      }
    }

    // Session l+1 takes the residual entering layer l and layer l's attention output, and
    // returns the residual leaving layer l with the q/k/v of layer l+1.
    let residIn: Float32Array = x;
    let out = await this.layers[0].run({ resid: new ort.Tensor("float32", x, [M, d]) });
    for (let l = 0; l < c.numLayers; l++) {
      const q = out.q.data as Float32Array;
      const k = out.k.data as Float32Array;
      const v = out.v.data as Float32Array;
      rope(q, positions, Hq, D, c.ropeTheta);
      rope(k, positions, Hkv, D, c.ropeTheta);
      const attn = new Float32Array(M * Hq * D);
      let row = 0;
      for (const { seq, tokens } of inputs) {
        const T = tokens.length;
        const rows = (a: Float32Array, w: number) => a.subarray(row * w, (row + T) * w);
        this.attend(seq, l, T, rows(q, Hq * D), rows(k, Hkv * D), rows(v, Hkv * D), rows(attn, Hq * D));
        row += T;
      }
      out = await this.layers[l + 1].run({
        resid: new ort.Tensor("float32", residIn, [M, d]),
        attn: new ort.Tensor("float32", attn, [M, Hq * D]),
      });
      residIn = out.resid_out.data as Float32Array;
    }

    for (const { seq, tokens } of inputs) {
      seq.kv.length += tokens.length;
      for (let i = 0; i < tokens.length; i++) seq.tokens.push(tokens[i]);
    }

    const final = residIn;
    const rows: number[] = [];
    r = 0;
    for (const { tokens, logits = "last" } of inputs) {
      if (logits === "all") for (let i = 0; i < tokens.length; i++) rows.push(r + i);
      else if (logits === "last") rows.push(r + tokens.length - 1);
      r += tokens.length;
    }
    const results: StepOutput[] = [];
    let logitsAll: Float32Array = new Float32Array(0);
    if (rows.length > 0) {
      const h = new Float32Array(rows.length * d);
      rows.forEach((src, i) => {
        h.set(final.subarray(src * d, (src + 1) * d), i * d);
      });
      const o = await this.head.run({ resid: new ort.Tensor("float32", h, [rows.length, d]) });
      logitsAll = o.logits.data as Float32Array;
    }
    let lr = 0;
    for (const { tokens, logits = "last" } of inputs) {
      const n = logits === "all" ? tokens.length : logits === "last" ? 1 : 0;
      results.push(logitsAll.subarray(lr * V, (lr + n) * V));
      lr += n;
    }
    return results;
  }

  /** Attention of one sequence at one layer, through its policy's selection. */
  private attend(
    seq: Sequence,
    layer: number,
    T: number,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
  ): void {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.config;
    const start = seq.length;
    const step = { start, T };
    seq.kv.write(layer, k, v, start, T);
    // Time in the policy and its hot-set moves (everything here but the attention kernel).
    let tPolicy = performance.now();
    const policy = seq.policy;
    const sel = seq.fault ? null : this.selectFor(seq, layer, step);
    let request: AttentionRequest = false;
    if (!seq.fault && policy.wantsAttention) {
      try {
        request = policy.wantsAttention(seq, layer, step);
      } catch (e) {
        seq.fault = new PolicyError(policy.name, "wantsAttention", (e as Error).message);
      }
    }
    if (sel && (sel.perQueryHead ?? false) !== seq.hot[layer].perQuery) {
      seq.hot[layer].full.release();
      seq.hot[layer].vOnly.release();
      seq.hot[layer] = seq.newHot(sel.perQueryHead ?? false);
    }
    const hot = seq.hot[layer];
    let result: ReturnType<typeof attention>;
    let keyPositions: Int32Array[] = [];
    let scores: Float32Array | undefined;
    const wantProbs = request === "probs";
    const scoreStart = typeof request === "object" ? (request.fromRow ?? 0) : 0;
    if (!sel) {
      if (hot.active) {
        hot.full.clear();
        hot.vOnly.clear();
        hot.active = false;
      }
      const L = start + T;
      if (typeof request === "object") scores = new Float32Array(Hq * L);
      this.timing.policy += (performance.now() - tPolicy) / 1000;
      result = attention({
        q,
        k: seq.kv.k[layer],
        v: seq.kv.v[layer],
        cap: seq.kv.cap,
        T,
        past: start,
        Hq,
        Hkv,
        D,
        out,
        probs: wantProbs,
        scores,
        scoreStart,
      });
      tPolicy = performance.now();
      if (request) {
        const all = Int32Array.from({ length: L }, (_, i) => i);
        keyPositions = Array.from({ length: Hkv }, () => all);
      }
    } else {
      hot.active = true;
      // Per-query-head selections attend with one hot "kv head" per query head.
      const HkvHot = sel.perQueryHead ? Hq : Hkv;
      const cold = [seq.kv.k[layer], seq.kv.v[layer]];
      hot.full.apply(sel.full, cold, seq.kv.cap, start + T);
      hot.full.append([k, v], start, T);
      const past = Int32Array.from(sel.full, (s) => s.length);
      let vOnly: VOnlyRows | undefined;
      const vsel = sel.vOnly;
      if (vsel?.some((x) => x.length > 0)) {
        hot.vOnly.apply(vsel, [seq.kv.v[layer]], seq.kv.cap, start + T);
        try {
          // The hot set keeps its own slot order; weights come in selection order, so reorder.
          const weights = this.vOnlyWeightsInSlotOrder(seq, layer, step, sel, hot.vOnly);
          vOnly = {
            v: hot.vOnly.buf[0],
            cap: hot.vOnly.cap,
            counts: hot.vOnly.count,
            weights,
            mode: sel.combine ?? "mass",
          };
        } catch (e) {
          // The request fails at the end of this step; its neighbours in the batch are unaffected.
          seq.fault = e as Error;
        }
      } else hot.vOnly.clear();
      const Lmax = Math.max(...past) + T;
      if (typeof request === "object") scores = new Float32Array(Hq * Lmax);
      this.timing.policy += (performance.now() - tPolicy) / 1000;
      result = attention({
        q,
        k: hot.full.buf[0],
        v: hot.full.buf[1],
        cap: hot.full.cap,
        T,
        past,
        Hq,
        Hkv: HkvHot,
        D,
        out,
        probs: wantProbs,
        scores,
        scoreStart,
        vOnly,
      });
      tPolicy = performance.now();
      if (request) keyPositions = Array.from({ length: HkvHot }, (_, g) => hot.full.positions(g).slice());
    }
    if (request && policy.observe && !seq.fault) {
      try {
        policy.observe(seq, {
          layer,
          start,
          T,
          probs: result.probs,
          scores,
          Lmax: result.Lmax,
          keyPositions,
        });
      } catch (e) {
        seq.fault = new PolicyError(policy.name, "observe", (e as Error).message);
      }
    }
    this.timing.policy += (performance.now() - tPolicy) / 1000;
  }

  /** The policy's selection for this layer and step, validated; a broken one faults the sequence. */
  private selectFor(seq: Sequence, layer: number, step: StepInfo): LayerSelection | null {
    const policy = seq.policy;
    if (!policy.select) return null;
    try {
      const sel = policy.select(seq, layer, step);
      if (sel)
        validateSelection(
          seq,
          sel,
          sel.perQueryHead ? this.config.numHeads : this.config.numKvHeads,
          step.start,
        );
      return sel;
    } catch (e) {
      seq.fault = e instanceof PolicyError ? e : new PolicyError(policy.name, "select", (e as Error).message);
      return null;
    }
  }

  private vOnlyWeightsInSlotOrder(
    seq: Sequence,
    layer: number,
    step: StepInfo,
    sel: LayerSelection,
    rows: HotRows,
  ): Float32Array {
    const Hq = this.config.numHeads;
    const Hkv = sel.perQueryHead ? Hq : this.config.numKvHeads;
    const group = Hq / Hkv;
    const vsel = sel.vOnly!;
    const vmax = Math.max(...vsel.map((x) => x.length));
    const name = seq.policy.name;
    if (!seq.policy.vOnlyWeights)
      throw new PolicyError(
        name,
        "V-only weights",
        "selection has V-only tokens but the policy has no vOnlyWeights",
      );
    let w: Float32Array;
    try {
      w = seq.policy.vOnlyWeights(seq, layer, step, sel);
    } catch (e) {
      throw new PolicyError(name, "vOnlyWeights", (e as Error).message);
    }
    const T = step.T;
    if (!(w instanceof Float32Array) || w.length !== Hq * T * vmax) {
      throw new PolicyError(
        name,
        "V-only weights",
        `expected a Float32Array of Hq*T*vmax = ${Hq * T * vmax} weights`,
      );
    }
    const out = new Float32Array(Hq * T * vmax);
    for (let g = 0; g < Hkv; g++) {
      const order = new Map<number, number>();
      vsel[g].forEach((p, i) => order.set(p, i));
      const slots = rows.positions(g);
      for (let h = g * group; h < (g + 1) * group; h++) {
        for (let t = 0; t < T; t++) {
          const base = (h * T + t) * vmax;
          for (let s = 0; s < slots.length; s++) {
            const x = w[base + order.get(slots[s])!];
            if (!Number.isFinite(x) || x < 0)
              throw new PolicyError(
                name,
                "V-only weights",
                `weight ${x} is not a finite non-negative number`,
              );
            out[base + s] = x;
          }
        }
      }
    }
    return out;
  }
}

function validateSelection(seq: Sequence, sel: LayerSelection, Hkv: number, start: number): void {
  const name = seq.policy.name;
  const check = (lists: Int32Array[], what: string, seen: Set<number>[]) => {
    if (!Array.isArray(lists) || lists.length !== Hkv) {
      throw new PolicyError(
        name,
        "one list per kv head",
        `${what}: got ${Array.isArray(lists) ? lists.length : typeof lists} lists for ${Hkv} kv heads`,
      );
    }
    for (let g = 0; g < Hkv; g++) {
      for (const p of lists[g]) {
        if (!Number.isInteger(p) || p < 0 || p >= start) {
          throw new PolicyError(
            name,
            "valid indices",
            `${what}, kv head ${g}: position ${p} is outside the past tokens [0, ${start})`,
          );
        }
        if (seen[g].has(p))
          throw new PolicyError(name, "no duplicates", `${what}, kv head ${g}: position ${p} selected twice`);
        seen[g].add(p);
      }
    }
  };
  const seen = Array.from({ length: Hkv }, () => new Set<number>());
  check(sel.full, "full", seen);
  if (sel.vOnly) check(sel.vOnly, "vOnly", seen);
  if (sel.combine !== undefined && sel.combine !== "literal" && sel.combine !== "mass") {
    throw new PolicyError(
      name,
      "combine mode",
      `combine must be "literal" or "mass", got ${String(sel.combine)}`,
    );
  }
}
