// A whole decoder in one ONNX graph, attention included: for a small draft model whose
// step is mostly fixed per-call cost (one ORT call per layer plus two, rope and attention
// calls in between), one call per step. Full attention over a KV cache the caller keeps:
//   inputs:  x [B·T, d] (embeddings, sequence-major), cos/sin [B, T, 1, D] (RoPE of each row's
//            position, halves repeated), mask [B, T, N] (additive; N = P + T: a shorter
//            sequence's padding columns masked), past_k{l}/past_v{l} [B, P, Hkv, D]
//   outputs: logits [B·T, V], k{l}/v{l} [B, T, Hkv, D] (the new rows, k after RoPE)
import type { ModelConfig } from "../config.js";
import {
  type GraphQuant,
  type GraphWeights,
  graphHead,
  graphLayer,
  linear,
  postAttention,
  preAttention,
  rmsNorm,
} from "./blocks.js";
import { GraphBuilder } from "./graph.js";

/**
 * Rotate-half RoPE of x [B, T, H, D] as x·cos + (x·R)·sin, with cos/sin [B, T, 1, D] (each half's
 * table twice) and R the signed half swap: four nodes instead of nine.
 */
function rotate(g: GraphBuilder, x: string, R: string): string {
  return g.one("Add", [g.one("Mul", [x, "cos"]), g.one("Mul", [g.one("MatMul", [x, R]), "sin"])]);
}

/** R [D, D] with (x·R)[i] = −x[i + D/2] for i < D/2 and x[i − D/2] above: rotate_half. */
function halfSwap(D: number): Float32Array {
  const h = D / 2;
  const R = new Float32Array(D * D);
  for (let i = 0; i < h; i++) {
    R[(i + h) * D + i] = -1;
    R[i * D + i + h] = 1;
  }
  return R;
}

export function decoderGraph(
  c: ModelConfig,
  w: GraphWeights,
  quant: GraphQuant | null,
  bytes: { n: number },
): GraphBuilder {
  const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D, numLayers: L } = c;
  const G = Hq / Hkv;
  const g = new GraphBuilder("decoder");
  g.fusedNorm = true;
  let resid = g.input("x", ["BT", d]);
  g.input("cos", ["B", "T", 1, D]);
  g.input("sin", ["B", "T", 1, D]);
  const R = g.init("rope_swap", halfSwap(D), [D, D]);
  const mask = g.input("mask", ["B", "T", "N"]);
  // Rows of the scores are (group member, query row): the mask repeats per group member,
  // and broadcasts over the kv heads ([B, 1, G·T, N]).
  const maskG = g.one("Unsqueeze", [
    g.one("Tile", [mask, g.initInt64("mask_rep", [1, G, 1])]),
    g.initInt64("mask_ax", [1]),
  ]);
  // The batch size and T from the inputs (shapes of dynamic dims).
  const shapeCos = g.one("Shape", ["cos"]);
  const BT2 = g.one("Slice", [
    shapeCos,
    g.initInt64("bt_s", [0]),
    g.initInt64("bt_e", [2]),
    g.initInt64("bt_ax", [0]),
  ]);
  const dims = (name: string, tail: number[]) => g.one("Concat", [BT2, g.initInt64(name, tail)], { axis: 0 });
  const qShape = dims("q4", [Hq, D]);
  const kvShape = dims("kv4", [Hkv, D]);
  const scale = g.init("attn_scale", Float32Array.of(1 / Math.sqrt(D)), []);
  for (let l = 0; l < L; l++) {
    const pk = g.input(`past_k${l}`, ["B", "P", Hkv, D]);
    const pv = g.input(`past_v${l}`, ["B", "P", Hkv, D]);
    const [q, k, v] = preAttention(g, c, graphLayer(w, l, quant), l, resid, quant, bytes);
    const q4 = g.one("Reshape", [q, qShape]);
    const k4 = g.one("Reshape", [k, kvShape]);
    const v4 = g.one("Reshape", [v, kvShape]);
    const qr = rotate(g, q4, R);
    const kr = rotate(g, k4, R);
    g.output(kr, `k${l}`, ["B", "T", Hkv, D]);
    g.output(v4, `v${l}`, ["B", "T", Hkv, D]);
    const K = g.one("Concat", [pk, kr], { axis: 1 });
    const V = g.one("Concat", [pv, v4], { axis: 1 });
    // [B, T, Hq, D] -> [B, T, Hkv, G, D] -> [B, Hkv, G, T, D] -> [B, Hkv, G·T, D].
    const q5 = g.one("Reshape", [qr, dims(`l${l}_q5`, [Hkv, G, D])]);
    const qg = g.one("Transpose", [q5], { perm: [0, 2, 3, 1, 4] });
    const qf = g.one("Reshape", [qg, g.initInt64(`l${l}_qf`, [0, Hkv, -1, D])]);
    const Kt = g.one("Transpose", [K], { perm: [0, 2, 3, 1] });
    const s = g.one("Add", [g.one("Mul", [g.one("MatMul", [qf, Kt]), scale]), maskG]);
    const p = g.one("Softmax", [s], { axis: -1 });
    const o = g.one("MatMul", [p, g.one("Transpose", [V], { perm: [0, 2, 1, 3] })]);
    // [B, Hkv, G·T, D] -> [B, Hkv, G, T, D] -> [B, T, Hkv, G, D] -> [B·T, Hq·D].
    const o5 = g.one("Reshape", [o, g.initInt64(`l${l}_o5`, [0, Hkv, G, -1, D])]);
    const attn = g.one("Reshape", [
      g.one("Transpose", [o5], { perm: [0, 3, 1, 2, 4] }),
      g.initInt64(`l${l}_of`, [-1, Hq * D]),
    ]);
    resid = postAttention(g, c, graphLayer(w, l, quant), l, resid, attn, quant, bytes);
  }
  const h = rmsNorm(g, resid, w.norm, c.rmsNormEps, "final");
  const headQuant = quant && { bits: 8 as const, groupSize: Math.max(quant.groupSize, 64) };
  const logits = linear(g, h, graphHead(w, quant), c.vocabSize, d, undefined, "lm_head", headQuant, bytes);
  g.output(logits, "logits", ["BT", c.vocabSize]);
  return g;
}
