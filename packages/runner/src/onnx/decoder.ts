// A whole decoder in one ONNX graph, attention included: for a small draft model whose
// step is mostly fixed per-call cost (one ORT call per layer plus two, rope and attention
// calls in between), one call per step. Full attention over a KV cache the caller keeps:
//   inputs:  x [T, d] (embeddings), cos/sin [T, 1, D] (RoPE of the T positions, halves repeated),
//            mask [T, N] (additive; N = past + T), past_k{l}/past_v{l} [P, Hkv, D]
//   outputs: logits [T, V], k{l}/v{l} [T, Hkv, D] (the new rows, k after RoPE)
import type { ModelConfig } from "../config.js";
import type { LayeredWeights } from "../weights.js";
import { type GraphQuant, linear, postAttention, preAttention, rmsNorm } from "./blocks.js";
import { GraphBuilder } from "./graph.js";

/**
 * Rotate-half RoPE of x [T, H, D] as x·cos + (x·R)·sin, with cos/sin [T, 1, D] (each half's
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
  w: Pick<LayeredWeights, "norm" | "lmHead" | "layer">,
  quant: GraphQuant | null,
  bytes: { n: number },
): GraphBuilder {
  const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D, numLayers: L } = c;
  const G = Hq / Hkv;
  const g = new GraphBuilder("decoder");
  g.fusedNorm = true;
  let resid = g.input("x", ["T", d]);
  g.input("cos", ["T", 1, D]);
  g.input("sin", ["T", 1, D]);
  const R = g.init("rope_swap", halfSwap(D), [D, D]);
  const mask = g.input("mask", ["T", "N"]);
  // Rows of the scores are (group member, query row): the mask repeats per group member.
  const maskG = g.one("Tile", [mask, g.initInt64("mask_rep", [G, 1])]);
  const scale = g.init("attn_scale", Float32Array.of(1 / Math.sqrt(D)), []);
  for (let l = 0; l < L; l++) {
    const pk = g.input(`past_k${l}`, ["P", Hkv, D]);
    const pv = g.input(`past_v${l}`, ["P", Hkv, D]);
    const [q, k, v] = preAttention(g, c, w.layer(l), l, resid, quant, bytes);
    const q3 = g.one("Reshape", [q, g.initInt64(`l${l}_q3`, [-1, Hq, D])]);
    const k3 = g.one("Reshape", [k, g.initInt64(`l${l}_k3`, [-1, Hkv, D])]);
    const v3 = g.one("Reshape", [v, g.initInt64(`l${l}_v3`, [-1, Hkv, D])]);
    const qr = rotate(g, q3, R);
    const kr = rotate(g, k3, R);
    g.output(kr, `k${l}`, ["T", Hkv, D]);
    g.output(v3, `v${l}`, ["T", Hkv, D]);
    const K = g.one("Concat", [pk, kr], { axis: 0 });
    const V = g.one("Concat", [pv, v3], { axis: 0 });
    // [T, Hq, D] -> [Hkv, G, T, D] -> [Hkv, G*T, D]: each kv head's query rows together.
    const qg = g.one("Transpose", [g.one("Reshape", [qr, g.initInt64(`l${l}_qg`, [-1, Hkv, G, D])])], {
      perm: [1, 2, 0, 3],
    });
    const qf = g.one("Reshape", [qg, g.initInt64(`l${l}_qf`, [Hkv, -1, D])]);
    const Kt = g.one("Transpose", [K], { perm: [1, 2, 0] });
    const s = g.one("Add", [g.one("Mul", [g.one("MatMul", [qf, Kt]), scale]), maskG]);
    const p = g.one("Softmax", [s], { axis: -1 });
    const o = g.one("MatMul", [p, g.one("Transpose", [V], { perm: [1, 0, 2] })]);
    const o4 = g.one("Reshape", [o, g.initInt64(`l${l}_o4`, [Hkv, G, -1, D])]);
    const attn = g.one("Reshape", [
      g.one("Transpose", [o4], { perm: [2, 0, 1, 3] }),
      g.initInt64(`l${l}_of`, [-1, Hq * D]),
    ]);
    resid = postAttention(g, c, w.layer(l), l, resid, attn, quant, bytes);
  }
  const h = rmsNorm(g, resid, w.norm, c.rmsNormEps, "final");
  const headQuant = quant && { bits: 8 as const, groupSize: Math.max(quant.groupSize, 64) };
  const logits = linear(g, h, w.lmHead, c.vocabSize, d, undefined, "lm_head", headQuant, bytes);
  g.output(logits, "logits", ["T", c.vocabSize]);
  return g;
}
