import { availableParallelism } from "node:os";
import { basename, resolve } from "node:path";
import { attention, kvGather, rope } from "@smallkv/tensor";
import ort from "onnxruntime-node";
import { type ModelConfig, readConfig } from "./config.js";
import { ContextLengthError, InvalidOptionError, PolicyError } from "./errors.js";
import { buildBlockGraphs } from "./onnx/blocks.js";
import type { KvPolicyHook } from "./policy-hook.js";
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
    return new Sequence(this.config, policy);
  }

  /** Run one step: append each input's tokens to its sequence and return the requested logits. */
  async forward(inputs: StepInput[]): Promise<StepOutput[]> {
    const c = this.config;
    const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D, vocabSize: V } = c;
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
      this.reselect(seq);
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
    seq.kv.write(layer, k, v, start, T);
    const sel = seq.selection[layer];
    const wants = seq.policy.wantsAttention?.(seq, layer) ?? false;
    let keyPositions: Int32Array[] | undefined;
    let result: ReturnType<typeof attention>;
    if (!sel) {
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
        probs: wants,
      });
      if (wants) {
        const all = Int32Array.from({ length: start + T }, (_, i) => i);
        keyPositions = Array.from({ length: Hkv }, () => all);
      }
    } else {
      // Gather the selected tokens plus this step's own into a compact working set.
      const counts = sel.map((s) => s.length + T);
      const hcap = Math.max(...counts);
      const idx = new Int32Array(counts.reduce((a, b) => a + b, 0));
      const off = new Int32Array(Hkv + 1);
      keyPositions = [];
      for (let g = 0; g < Hkv; g++) {
        const pos = new Int32Array(counts[g]);
        pos.set(sel[g]);
        for (let t = 0; t < T; t++) pos[sel[g].length + t] = start + t;
        idx.set(pos, off[g]);
        off[g + 1] = off[g] + counts[g];
        keyPositions.push(pos);
      }
      const hk = new Float32Array(Hkv * hcap * D);
      const hv = new Float32Array(Hkv * hcap * D);
      kvGather(seq.kv.k[layer], seq.kv.cap, hk, hcap, Hkv, D, idx, off);
      kvGather(seq.kv.v[layer], seq.kv.cap, hv, hcap, Hkv, D, idx, off);
      const past = Int32Array.from(sel, (s) => s.length);
      result = attention({ q, k: hk, v: hv, cap: hcap, T, past, Hq, Hkv, D, out, probs: wants });
    }
    if (wants && seq.policy.observe) {
      try {
        seq.policy.observe(seq, {
          layer,
          start,
          T,
          probs: result.probs!,
          Lmax: result.Lmax,
          keyPositions: keyPositions!,
        });
      } catch (e) {
        seq.fault ??= new PolicyError(seq.policy.name, "observe", (e as Error).message);
      }
    }
  }

  /**
   * Ask the policy for the next step's selection. A policy that throws or breaks a rule
   * faults only its own sequence (seq.fault), which then keeps every token.
   */
  private reselect(seq: Sequence): void {
    if (!seq.policy.select || seq.fault) return;
    for (let l = 0; l < this.config.numLayers; l++) {
      try {
        const sel = seq.policy.select(seq, l);
        if (sel) validateSelection(seq, sel, this.config.numKvHeads);
        seq.selection[l] = sel;
      } catch (e) {
        seq.fault =
          e instanceof PolicyError ? e : new PolicyError(seq.policy.name, "select", (e as Error).message);
        seq.selection.fill(null);
        return;
      }
    }
  }
}

function validateSelection(seq: Sequence, sel: Int32Array[], Hkv: number): void {
  const name = seq.policy.name;
  if (sel.length !== Hkv)
    throw new PolicyError(name, "one list per kv head", `got ${sel.length} lists for ${Hkv} kv heads`);
  for (let g = 0; g < Hkv; g++) {
    const seen = new Set<number>();
    for (const p of sel[g]) {
      if (!Number.isInteger(p) || p < 0 || p >= seq.length) {
        throw new PolicyError(
          name,
          "valid indices",
          `kv head ${g}: position ${p} is outside [0, ${seq.length})`,
        );
      }
      if (seen.has(p))
        throw new PolicyError(name, "no duplicates", `kv head ${g}: position ${p} selected twice`);
      seen.add(p);
    }
  }
}
