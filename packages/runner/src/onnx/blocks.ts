// The dense part of a Llama/Qwen2 decoder as a few ONNX graphs. Attention sits between
// them (it runs in @smallkv/tensor), so the graphs are cut at the attention boundary:
//   first:   x -> layer 0 pre-attention (RMSNorm, fused QKV projection)
//   mid l:   (resid, attn of layer l-1) -> o_proj, residual, MLP -> layer l pre-attention
//   last:    (resid, attn of the last layer) -> o_proj, residual, MLP
//   head:    resid -> final RMSNorm -> LM head
// One ORT call per layer plus two per step, whatever the batch.
import type { ModelConfig } from "../config.js";
import { type QuantizedMatrix, quantize, quantizedBytes } from "../quant.js";
import type { GraphLayer, LayeredWeights, StoredMatrix } from "../weights.js";
import { GraphBuilder } from "./graph.js";

/** Quantized projections: onnxruntime's MatMulNBits with group-wise scales and zero points. */
export interface GraphQuant {
  bits: 4 | 8;
  groupSize: number;
}

/**
 * y = x · Wᵀ (+ bias) for W [N][K], given as row blocks stacked along N (q, k and v; gate and
 * up): a Gemm over float32 weights, or MatMulNBits over quantized ones (activations quantized
 * to int8 per group inside the kernel: accuracy_level 4, the fast path on x86). Float parts are
 * quantized here when `quant` asks; parts already quantized (a GGUF file's own blocks) go in as
 * they are, and parts that do not share one layout each get their node, joined by a Concat.
 * Adds the bytes the weights occupy to `bytes`.
 */
export function linear(
  g: GraphBuilder,
  x: string,
  w: StoredMatrix | StoredMatrix[],
  N: number,
  K: number,
  bias: Float32Array | undefined,
  tag: string,
  quant: GraphQuant | null,
  bytes: { n: number },
): string {
  const parts = Array.isArray(w) ? w : [w];
  const rows = parts.reduce((a, p) => a + (p instanceof Float32Array ? p.length / K : p.N), 0);
  if (rows !== N) throw new RangeError(`${tag}: ${rows} rows given, ${N} expected`);
  let y: string;
  if (parts.every((p) => p instanceof Float32Array)) {
    const f = concatRows(...(parts as Float32Array[]));
    if (!quant) {
      bytes.n += f.byteLength + (bias?.byteLength ?? 0);
      const inputs = [x, g.init(`${tag}_w`, f, [N, K])];
      if (bias) inputs.push(g.init(`${tag}_b`, bias, [N]));
      return g.one("Gemm", inputs, { transB: 1 });
    }
    y = nbits(g, x, quantize(f, N, K, quant.bits, quant.groupSize), tag, bytes);
  } else if (parts.every((p) => !(p instanceof Float32Array) && sameLayout(p, parts[0] as QuantizedMatrix))) {
    y = nbits(g, x, concatQuantized(parts as QuantizedMatrix[]), tag, bytes);
  } else {
    const ys = parts.map((p, i) =>
      linear(
        g,
        x,
        p,
        p instanceof Float32Array ? p.length / K : p.N,
        K,
        undefined,
        `${tag}${i}`,
        quant,
        bytes,
      ),
    );
    y = g.one("Concat", ys, { axis: 1 });
  }
  if (!bias) return y;
  bytes.n += bias.byteLength;
  return g.one("Add", [y, g.init(`${tag}_b`, bias, [N])]);
}

function nbits(g: GraphBuilder, x: string, q: QuantizedMatrix, tag: string, bytes: { n: number }): string {
  bytes.n += quantizedBytes(q);
  const { N, K, bits, groupSize } = q;
  const G = Math.ceil(K / groupSize);
  const zp = g.initUint8(`${tag}_z`, q.zeroPoints, [q.zeroPoints.length]);
  const y = g.node(
    "MatMulNBits",
    [
      x,
      g.initUint8(`${tag}_q`, q.packed, [N, G, (groupSize * bits) / 8]),
      g.init(`${tag}_s`, q.scales, [N * G]),
      zp,
    ],
    { K, N, bits, block_size: groupSize, accuracy_level: 4 },
    1,
    "com.microsoft",
  )[0];
  if (!q.groupMins) return y;
  // K-quants: y −= mins · (each group's sum of x), a [M, G] × [G, N] product beside the
  // integer one (onnxruntime's float zero points take a path ~50x slower; measured 5.7 ms
  // against 0.11 ms for a 4096 × 768 int4 matrix).
  const sums = g.one(
    "ReduceSum",
    [g.one("Reshape", [x, g.initInt64(`${tag}_gr`, [-1, G, groupSize])]), g.initInt64(`${tag}_ga`, [-1])],
    {
      keepdims: 0,
    },
  );
  return g.one("Sub", [y, g.one("Gemm", [sums, g.init(`${tag}_m`, q.groupMins, [N, G])], { transB: 1 })]);
}

/** The weights a graph is made from: float32 layers, and a GGUF file's own blocks where it has them. */
export type GraphWeights = Pick<LayeredWeights, "norm" | "lmHead" | "layer" | "graphLayer" | "graphHead">;

/** Layer l's matrices for a graph: as stored (GGUF blocks) unless the options re-quantize from floats. */
export function graphLayer(w: GraphWeights, l: number, quant: GraphQuant | null): GraphLayer {
  return (!quant && w.graphLayer?.(l)) || w.layer(l);
}

export function graphHead(w: GraphWeights, quant: GraphQuant | null): StoredMatrix {
  return (!quant && w.graphHead?.()) || w.lmHead;
}

function sameLayout(a: QuantizedMatrix, b: QuantizedMatrix): boolean {
  return a.bits === b.bits && a.groupSize === b.groupSize && !a.groupMins === !b.groupMins;
}

/** Row blocks of one layout stacked along N (each row's groups, scales and zero points are its own). */
function concatQuantized(ms: QuantizedMatrix[]): QuantizedMatrix {
  if (ms.length === 1) return ms[0];
  const cat = <T extends Uint8Array | Float32Array>(xs: T[], make: (n: number) => T): T => {
    const out = make(xs.reduce((a, x) => a + x.length, 0));
    let o = 0;
    for (const x of xs) {
      out.set(x as never, o);
      o += x.length;
    }
    return out;
  };
  const m0 = ms[0];
  return {
    bits: m0.bits,
    groupSize: m0.groupSize,
    K: m0.K,
    N: ms.reduce((a, m) => a + m.N, 0),
    packed: cat(
      ms.map((m) => m.packed),
      (n) => new Uint8Array(n),
    ),
    scales: cat(
      ms.map((m) => m.scales),
      (n) => new Float32Array(n),
    ),
    zeroPoints: cat(
      ms.map((m) => m.zeroPoints),
      (n) => new Uint8Array(n),
    ),
    groupMins: m0.groupMins
      ? cat(
          ms.map((m) => m.groupMins as Float32Array),
          (n) => new Float32Array(n),
        )
      : undefined,
  };
}

function concatRows(...parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function rmsNorm(g: GraphBuilder, x: string, w: Float32Array, eps: number, tag: string): string {
  // onnxruntime's own RMSNorm kernel: one node instead of six (the fused decoder's choice).
  if (g.fusedNorm)
    return g.one("SimplifiedLayerNormalization", [x, g.init(`${tag}_w`, w, [w.length])], {
      axis: -1,
      epsilon: eps,
    });
  const sq = g.one("Mul", [x, x]);
  const ms = g.one("ReduceMean", [sq], { axes: [-1], keepdims: 1 });
  const e = g.init(`${tag}_eps`, Float32Array.of(eps), []);
  const r = g.one("Sqrt", [g.one("Add", [ms, e])]);
  return g.one("Mul", [g.one("Div", [x, r]), g.init(`${tag}_w`, w, [w.length])]);
}

/** Appends layer l's pre-attention part; returns the q, k, v value names. */
export function preAttention(
  g: GraphBuilder,
  c: ModelConfig,
  w: GraphLayer,
  l: number,
  resid: string,
  quant: GraphQuant | null,
  bytes: { n: number },
): [string, string, string] {
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const h = rmsNorm(g, resid, w.inputNorm, c.rmsNormEps, `l${l}_in`);
  const b = w.qBias && w.kBias && w.vBias ? concatRows(w.qBias, w.kBias, w.vBias) : undefined;
  const qkv = linear(g, h, [w.q, w.k, w.v], qd + 2 * kvd, d, b, `l${l}_qkv`, quant, bytes);
  let [q, k, v] = g.node("Split", [qkv, g.initInt64(`l${l}_split`, [qd, kvd, kvd])], { axis: 1 }, 3);
  if (w.qNorm && w.kNorm) {
    // Qwen3: RMSNorm over each head's head_dim (rows [M·H, D]), before RoPE.
    q = headNorm(g, q, w.qNorm, c, c.numHeads, `l${l}_qn`);
    k = headNorm(g, k, w.kNorm, c, c.numKvHeads, `l${l}_kn`);
  }
  return [q, k, v];
}

/** RMSNorm of every head vector of x [M, H·D] with weights [D]. */
function headNorm(
  g: GraphBuilder,
  x: string,
  w: Float32Array,
  c: ModelConfig,
  H: number,
  tag: string,
): string {
  const heads = g.one("Reshape", [x, g.initInt64(`${tag}_heads`, [-1, H, c.headDim])]);
  const n = rmsNorm(g, heads, w, c.rmsNormEps, tag);
  return g.one("Reshape", [n, g.initInt64(`${tag}_flat`, [-1, H * c.headDim])]);
}

/** Appends layer l's post-attention part; returns the new residual stream. */
export function postAttention(
  g: GraphBuilder,
  c: ModelConfig,
  w: GraphLayer,
  l: number,
  resid: string,
  attn: string,
  quant: GraphQuant | null,
  bytes: { n: number },
): string {
  const d = c.hiddenSize;
  const I = c.intermediateSize;
  const o = linear(g, attn, w.o, d, c.numHeads * c.headDim, w.oBias, `l${l}_o`, quant, bytes);
  const r2 = g.one("Add", [resid, o]);
  const h = rmsNorm(g, r2, w.postNorm, c.rmsNormEps, `l${l}_post`);
  const guBias = w.gateBias && w.upBias ? concatRows(w.gateBias, w.upBias) : undefined;
  const gu = linear(g, h, [w.gate, w.up], 2 * I, d, guBias, `l${l}_gu`, quant, bytes);
  const [gate, up] = g.node("Split", [gu, g.initInt64(`l${l}_gusplit`, [I, I])], { axis: 1 }, 2);
  const act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])]), up]);
  const down = linear(g, act, w.down, d, I, w.downBias, `l${l}_d`, quant, bytes);
  return g.one("Add", [r2, down]);
}

/**
 * The model's graphs, made one at a time (so that a loader can hand each to onnxruntime and
 * drop its bytes and weights before making the next: the weights are held once).
 * layer(0) = first, layer(1..L−1) = mid, layer(L) = last; then head().
 */
export class BlockGraphs {
  /** Bytes of the weights in the graphs made so far, as stored (quantized or float32). */
  readonly bytes = { n: 0 };

  constructor(
    private readonly c: ModelConfig,
    private readonly w: GraphWeights,
    private readonly quant: GraphQuant | null = null,
  ) {}

  get count(): number {
    return this.c.numLayers + 1;
  }

  layer(i: number): Uint8Array {
    return this.layerGraph(i).encode();
  }

  /** Layer graph i written to `dir` with external weights (see GraphBuilder.writeTo). */
  writeLayer(i: number, dir: string): string {
    return this.layerGraph(i).writeTo(dir, `layer${i}`);
  }

  writeHead(dir: string): string {
    return this.headGraph().writeTo(dir, "head");
  }

  private layerGraph(i: number): GraphBuilder {
    const { c, w, quant, bytes } = this;
    const d = c.hiddenSize;
    const qd = c.numHeads * c.headDim;
    const kvd = c.numKvHeads * c.headDim;
    const L = c.numLayers;
    const g = new GraphBuilder(i === 0 ? "first" : i === L ? "last" : `mid${i}`);
    let resid = g.input("resid", ["M", d]);
    if (i > 0) {
      const attn = g.input("attn", ["M", qd]);
      resid = postAttention(g, c, graphLayer(w, i - 1, quant), i - 1, resid, attn, quant, bytes);
      g.output(resid, "resid_out", ["M", d]);
    }
    if (i < L) {
      const [q, k, v] = preAttention(g, c, graphLayer(w, i, quant), i, resid, quant, bytes);
      g.output(q, "q", ["M", qd]);
      g.output(k, "k", ["M", kvd]);
      g.output(v, "v", ["M", kvd]);
    }
    return g;
  }

  /** Final norm and LM head (quantized like the layers when they are: it is the largest matrix a step reads). */
  head(): Uint8Array {
    return this.headGraph().encode();
  }

  private headGraph(): GraphBuilder {
    const { c, w, quant, bytes } = this;
    const d = c.hiddenSize;
    const g = new GraphBuilder("head");
    const x = g.input("resid", ["M", d]);
    const h = rmsNorm(g, x, w.norm, c.rmsNormEps, "final");
    bytes.n += w.norm.byteLength;
    // int4 models keep an int8 LM head (as llama.cpp keeps a wider output matrix): the
    // logits are where 4-bit error shows most.
    const headQuant = quant && { bits: 8 as const, groupSize: Math.max(quant.groupSize, 64) };
    const logits = linear(g, h, graphHead(w, quant), c.vocabSize, d, undefined, "lm_head", headQuant, bytes);
    g.output(logits, "logits", ["M", c.vocabSize]);
    return g;
  }
}
