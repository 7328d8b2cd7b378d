// The dense part of a Llama/Qwen2 decoder as a few ONNX graphs. Attention sits between
// them (it runs in @smallkv/tensor), so the graphs are cut at the attention boundary:
//   first:   x -> layer 0 pre-attention (RMSNorm, fused QKV projection)
//   mid l:   (resid, attn of layer l-1) -> o_proj, residual, MLP -> layer l pre-attention
//   last:    (resid, attn of the last layer) -> o_proj, residual, MLP
//   head:    resid -> final RMSNorm -> LM head
// One ORT call per layer plus two per step, whatever the batch.
import type { ModelConfig } from "../config.js";
import type { LayerWeights, ModelWeights } from "../weights.js";
import { GraphBuilder } from "./graph.js";

function concatRows(...parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function rmsNorm(g: GraphBuilder, x: string, w: Float32Array, eps: number, tag: string): string {
  const sq = g.one("Mul", [x, x]);
  const ms = g.one("ReduceMean", [sq], { axes: [-1], keepdims: 1 });
  const e = g.init(`${tag}_eps`, Float32Array.of(eps), []);
  const r = g.one("Sqrt", [g.one("Add", [ms, e])]);
  return g.one("Mul", [g.one("Div", [x, r]), g.init(`${tag}_w`, w, [w.length])]);
}

/** Appends layer l's pre-attention part; returns the q, k, v value names. */
function preAttention(
  g: GraphBuilder,
  c: ModelConfig,
  w: LayerWeights,
  l: number,
  resid: string,
): [string, string, string] {
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const h = rmsNorm(g, resid, w.inputNorm, c.rmsNormEps, `l${l}_in`);
  const W = g.init(`l${l}_wqkv`, concatRows(w.q, w.k, w.v), [qd + 2 * kvd, d]);
  const inputs = [h, W];
  if (w.qBias && w.kBias && w.vBias)
    inputs.push(g.init(`l${l}_bqkv`, concatRows(w.qBias, w.kBias, w.vBias), [qd + 2 * kvd]));
  const qkv = g.one("Gemm", inputs, { transB: 1 });
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
function postAttention(
  g: GraphBuilder,
  c: ModelConfig,
  w: LayerWeights,
  l: number,
  resid: string,
  attn: string,
): string {
  const d = c.hiddenSize;
  const I = c.intermediateSize;
  const bias = (name: string, b: Float32Array | undefined) => (b ? [g.init(name, b, [b.length])] : []);
  const o = g.one(
    "Gemm",
    [attn, g.init(`l${l}_wo`, w.o, [d, c.numHeads * c.headDim]), ...bias(`l${l}_bo`, w.oBias)],
    { transB: 1 },
  );
  const r2 = g.one("Add", [resid, o]);
  const h = rmsNorm(g, r2, w.postNorm, c.rmsNormEps, `l${l}_post`);
  const guBias = w.gateBias && w.upBias ? concatRows(w.gateBias, w.upBias) : undefined;
  const gu = g.one(
    "Gemm",
    [h, g.init(`l${l}_wgu`, concatRows(w.gate, w.up), [2 * I, d]), ...bias(`l${l}_bgu`, guBias)],
    { transB: 1 },
  );
  const [gate, up] = g.node("Split", [gu, g.initInt64(`l${l}_gusplit`, [I, I])], { axis: 1 }, 2);
  const act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])]), up]);
  const down = g.one("Gemm", [act, g.init(`l${l}_wd`, w.down, [d, I]), ...bias(`l${l}_bd`, w.downBias)], {
    transB: 1,
  });
  return g.one("Add", [r2, down]);
}

export interface BlockGraphs {
  /** graphs[0] = first, graphs[1..L-1] = mid, graphs[L] = last. */
  layers: Uint8Array[];
  head: Uint8Array;
}

export function buildBlockGraphs(c: ModelConfig, w: ModelWeights): BlockGraphs {
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const L = c.numLayers;
  const qkvOutputs = (g: GraphBuilder, [q, k, v]: [string, string, string]) => {
    g.output(q, "q", ["M", qd]);
    g.output(k, "k", ["M", kvd]);
    g.output(v, "v", ["M", kvd]);
  };
  const layers: Uint8Array[] = [];
  for (let i = 0; i <= L; i++) {
    const g = new GraphBuilder(i === 0 ? "first" : i === L ? "last" : `mid${i}`);
    let resid = g.input("resid", ["M", d]);
    if (i > 0) {
      const attn = g.input("attn", ["M", qd]);
      resid = postAttention(g, c, w.layers[i - 1], i - 1, resid, attn);
      g.output(resid, "resid_out", ["M", d]);
    }
    if (i < L) qkvOutputs(g, preAttention(g, c, w.layers[i], i, resid));
    layers.push(g.encode());
  }
  const g = new GraphBuilder("head");
  const x = g.input("resid", ["M", d]);
  const h = rmsNorm(g, x, w.norm, c.rmsNormEps, "final");
  g.output(g.one("Gemm", [h, g.init("lm_head", w.lmHead, [c.vocabSize, d])], { transB: 1 }), "logits", [
    "M",
    c.vocabSize,
  ]);
  return { layers, head: g.encode() };
}
