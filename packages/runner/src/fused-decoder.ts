import type Ort from "onnxruntime-node";
import type { ModelConfig } from "./config.js";
import type { EmbeddingTable } from "./embedding.js";
import { checkDraftItems, type DraftDecoder, type DraftState, DraftTokens } from "./native-decoder.js";
import { defaultInvFreq, ropeKernelArgs } from "./rope.js";

/** One sequence of a FusedDecoder: its tokens and K/V rows [cap][Hkv][D] per layer. */
export class DecoderState extends DraftTokens {
  cap = 0;
  k: Float32Array[] = [];
  v: Float32Array[] = [];
}

/**
 * A small model's whole step in one onnxruntime call (see onnx/decoder.ts): what a draft
 * model runs for speculative decoding, where the per-layer calls of the regular runner cost
 * more than the model's arithmetic. Full attention, no KV policy; one sequence per call.
 */
export class FusedDecoder implements DraftDecoder {
  /** Several sequences share one padded call: beside others the runner's batched step is cheaper. */
  readonly perSequence = false;
  private readonly inv: Float64Array;
  private readonly ropeScale: number;

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    private readonly embed: EmbeddingTable,
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

  /** Feed tokens to one sequence; returns the logits of the last one. */
  async step(s: DecoderState, tokens: number[]): Promise<Float32Array> {
    return (await this.stepMany([{ state: s, tokens }]))[0];
  }

  /**
   * Feed tokens to several sequences in one call; returns each one's last logits. Shorter
   * pasts and fewer tokens are padded: their columns are masked for the real rows, and a
   * padding row attends causally like the others (its outputs are dropped).
   */
  async stepMany(given: { state: DraftState; tokens: number[] }[]): Promise<Float32Array[]> {
    const c = this.config;
    const items = checkDraftItems(given, c, DecoderState);
    const { hiddenSize: d, numKvHeads: Hkv, headDim: D, numLayers: L, vocabSize: V } = c;
    const B = items.length;
    if (B === 0) return [];
    const T = Math.max(...items.map((i) => i.tokens.length));
    const P = Math.max(...items.map((i) => i.state.length));
    const N = P + T;
    const row = Hkv * D;
    const t0 = performance.now();
    const ort = this.ort;
    const half = D / 2;
    const x = new Float32Array(B * T * d);
    const cos = new Float32Array(B * T * D);
    const sin = new Float32Array(B * T * D);
    const mask = new Float32Array(B * T * N).fill(Number.NEGATIVE_INFINITY);
    items.forEach(({ state, tokens }, b) => {
      this.ensure(state, state.length + tokens.length);
      for (let t = 0; t < T; t++) {
        const r = b * T + t;
        if (t < tokens.length) this.embed.row(tokens[t], x, r * d);
        // cos/sin in double, rounded to float: the runner's RoPE kernel does the same.
        for (let i = 0; i < half; i++) {
          const a = (state.length + t) * this.inv[i];
          cos[r * D + i] = cos[r * D + i + half] = Math.cos(a) * this.ropeScale;
          sin[r * D + i] = sin[r * D + i + half] = Math.sin(a) * this.ropeScale;
        }
        const m = r * N;
        for (let j = 0; j < state.length; j++) mask[m + j] = 0;
        for (let j = 0; j <= t; j++) mask[m + P + j] = 0;
      }
    });
    const feeds: Record<string, Ort.Tensor> = {
      x: new ort.Tensor("float32", x, [B * T, d]),
      cos: new ort.Tensor("float32", cos, [B, T, 1, D]),
      sin: new ort.Tensor("float32", sin, [B, T, 1, D]),
      mask: new ort.Tensor("float32", mask, [B, T, N]),
    };
    for (let l = 0; l < L; l++) {
      for (const [name, planes] of [
        [`past_k${l}`, items.map((i) => i.state.k[l])],
        [`past_v${l}`, items.map((i) => i.state.v[l])],
      ] as const) {
        let data: Float32Array;
        if (B === 1) data = planes[0].subarray(0, P * row);
        else {
          data = new Float32Array(B * P * row);
          items.forEach(({ state }, b) => data.set(planes[b].subarray(0, state.length * row), b * P * row));
        }
        feeds[name] = new ort.Tensor("float32", data, [B, P, Hkv, D]);
      }
    }
    const out = await this.session.run(feeds);
    const logits = out.logits.data as Float32Array;
    const results = items.map(({ state, tokens }, b) => {
      const Tb = tokens.length;
      for (let l = 0; l < L; l++) {
        const k = out[`k${l}`].data as Float32Array;
        const v = out[`v${l}`].data as Float32Array;
        state.k[l].set(k.subarray(b * T * row, (b * T + Tb) * row), state.length * row);
        state.v[l].set(v.subarray(b * T * row, (b * T + Tb) * row), state.length * row);
      }
      state.length += Tb;
      for (const t of tokens) state.tokens.push(t);
      const r = b * T + Tb - 1;
      return logits.slice(r * V, (r + 1) * V);
    });
    this.timing.forward += (performance.now() - t0) / 1000;
    this.timing.steps++;
    return results;
  }
}
