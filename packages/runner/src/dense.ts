// The dense part of a CPU step, between the attention calls: what `Model.step` runs per layer.
// Two implementations: onnxruntime sessions (OrtDense) and the native GGUF-block kernels
// (NativeDense, native-dense.ts).
import type Ort from "onnxruntime-node";

export interface QKV {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

export interface DenseStack {
  /** Layer 0's q/k/v from the embeddings x [M][hidden]. */
  first(x: Float32Array, M: number): Promise<QKV>;
  /** Layer l's output (o_proj, residual, MLP) and layer l+1's q/k/v (none after the last). */
  next(
    l: number,
    resid: Float32Array,
    attn: Float32Array,
    M: number,
  ): Promise<{ resid: Float32Array } & Partial<QKV>>;
  /** Final norm and LM head of rows h [rows][hidden]. */
  head(h: Float32Array, rows: number): Promise<Float32Array>;
}

/** The layer graphs as onnxruntime sessions: session l+1 takes layer l's residual and attention. */
export class OrtDense implements DenseStack {
  constructor(
    private readonly ort: typeof Ort,
    private readonly layers: Ort.InferenceSession[],
    private readonly headSession: Ort.InferenceSession,
    private readonly d: number,
    private readonly qd: number,
  ) {}

  async first(x: Float32Array, M: number): Promise<QKV> {
    const o = await this.layers[0].run({ resid: new this.ort.Tensor("float32", x, [M, this.d]) });
    return { q: o.q.data as Float32Array, k: o.k.data as Float32Array, v: o.v.data as Float32Array };
  }

  async next(l: number, resid: Float32Array, attn: Float32Array, M: number) {
    const o = await this.layers[l + 1].run({
      resid: new this.ort.Tensor("float32", resid, [M, this.d]),
      attn: new this.ort.Tensor("float32", attn, [M, this.qd]),
    });
    return {
      resid: o.resid_out.data as Float32Array,
      q: o.q?.data as Float32Array | undefined,
      k: o.k?.data as Float32Array | undefined,
      v: o.v?.data as Float32Array | undefined,
    };
  }

  async head(h: Float32Array, rows: number): Promise<Float32Array> {
    const o = await this.headSession.run({ resid: new this.ort.Tensor("float32", h, [rows, this.d]) });
    return o.logits.data as Float32Array;
  }
}
