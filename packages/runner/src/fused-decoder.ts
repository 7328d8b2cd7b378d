import type Ort from "onnxruntime-node";
import type { ModelConfig } from "./config.js";
import { InvalidOptionError } from "./errors.js";
import { defaultInvFreq, ropeKernelArgs } from "./rope.js";

/** One sequence of a FusedDecoder: its tokens and K/V rows [cap][Hkv][D] per layer. */
export class DecoderState {
  readonly tokens: number[] = [];
  length = 0;
  cap = 0;
  k: Float32Array[] = [];
  v: Float32Array[] = [];

  /** Cut back to the first n tokens (the rows stay until overwritten). */
  truncateTo(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.length))
      throw new InvalidOptionError("truncate", `length ${n} is outside [0, ${this.length}]`);
    this.length = n;
    this.tokens.length = n;
  }
}

/**
 * A small model's whole step in one onnxruntime call (see onnx/decoder.ts): what a draft
 * model runs for speculative decoding, where the per-layer calls of the regular runner cost
 * more than the model's arithmetic. Full attention, no KV policy; one sequence per call.
 */
export class FusedDecoder {
  private readonly inv: Float64Array;
  private readonly ropeScale: number;

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    private readonly embed: Float32Array,
    readonly config: ModelConfig,
    /** Seconds and calls, added to the model's own timing. */
    private readonly timing: { forward: number; steps: number },
  ) {
    const r = ropeKernelArgs(config.rope, config.headDim, 0);
    this.inv = r ? Float64Array.from(r.invFreq) : defaultInvFreq(config.ropeTheta, config.headDim);
    this.ropeScale = r ? r.scale : 1;
  }

  newState(): DecoderState {
    return new DecoderState();
  }

  private ensure(s: DecoderState, n: number): void {
    if (n <= s.cap) return;
    const { numKvHeads: Hkv, headDim: D, numLayers: L } = this.config;
    let cap = Math.max(64, s.cap);
    while (cap < n) cap *= 2;
    const grow = (a: Float32Array | undefined) => {
      const b = new Float32Array(cap * Hkv * D);
      if (a) b.set(a.subarray(0, s.length * Hkv * D));
      return b;
    };
    s.k = Array.from({ length: L }, (_, l) => grow(s.k[l]));
    s.v = Array.from({ length: L }, (_, l) => grow(s.v[l]));
    s.cap = cap;
  }

  /** Feed tokens; returns the logits of the last one. */
  async step(s: DecoderState, tokens: number[]): Promise<Float32Array> {
    const c = this.config;
    const { hiddenSize: d, numKvHeads: Hkv, headDim: D, numLayers: L } = c;
    const T = tokens.length;
    const P = s.length;
    const N = P + T;
    if (T === 0) throw new InvalidOptionError("tokens", "a step needs at least one token");
    if (N > c.maxPositions) throw new InvalidOptionError("tokens", `context ${N} exceeds ${c.maxPositions}`);
    const t0 = performance.now();
    this.ensure(s, N);
    const ort = this.ort;
    const x = new Float32Array(T * d);
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize)
        throw new InvalidOptionError("tokens", `token id ${t} is outside [0, ${c.vocabSize})`);
      x.set(this.embed.subarray(t * d, (t + 1) * d), i * d);
    });
    // cos/sin in double, rounded to float: the runner's RoPE kernel does the same.
    const half = D / 2;
    const cos = new Float32Array(T * D);
    const sin = new Float32Array(T * D);
    for (let t = 0; t < T; t++)
      for (let i = 0; i < half; i++) {
        const a = (P + t) * this.inv[i];
        cos[t * D + i] = cos[t * D + i + half] = Math.cos(a) * this.ropeScale;
        sin[t * D + i] = sin[t * D + i + half] = Math.sin(a) * this.ropeScale;
      }
    const mask = new Float32Array(T * N);
    for (let t = 0; t < T; t++)
      for (let j = P + t + 1; j < N; j++) mask[t * N + j] = Number.NEGATIVE_INFINITY;
    const feeds: Record<string, Ort.Tensor> = {
      x: new ort.Tensor("float32", x, [T, d]),
      cos: new ort.Tensor("float32", cos, [T, 1, D]),
      sin: new ort.Tensor("float32", sin, [T, 1, D]),
      mask: new ort.Tensor("float32", mask, [T, N]),
    };
    for (let l = 0; l < L; l++) {
      feeds[`past_k${l}`] = new ort.Tensor("float32", s.k[l].subarray(0, P * Hkv * D), [P, Hkv, D]);
      feeds[`past_v${l}`] = new ort.Tensor("float32", s.v[l].subarray(0, P * Hkv * D), [P, Hkv, D]);
    }
    const out = await this.session.run(feeds);
    for (let l = 0; l < L; l++) {
      s.k[l].set(out[`k${l}`].data as Float32Array, P * Hkv * D);
      s.v[l].set(out[`v${l}`].data as Float32Array, P * Hkv * D);
    }
    s.length = N;
    for (const t of tokens) s.tokens.push(t);
    const logits = out.logits.data as Float32Array;
    this.timing.forward += (performance.now() - t0) / 1000;
    this.timing.steps++;
    return logits.subarray((T - 1) * c.vocabSize, T * c.vocabSize);
  }
}
