// A plain TypeScript forward pass of a Llama/Qwen2 decoder, written from the Hugging Face
// definition with no cache and no shared code with the runner: the ground truth for the
// synthetic-checkpoint tests.
import type { ModelConfig } from "../src/index.js";

type Tensors = Record<string, { shape: number[]; data: Float32Array }>;

function linear(
  x: Float64Array[],
  w: Float32Array,
  out: number,
  inp: number,
  bias?: Float32Array,
): Float64Array[] {
  return x.map((row) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inp; i++) s += w[o * inp + i] * row[i];
      y[o] = s;
    }
    return y;
  });
}

function rmsNorm(x: Float64Array[], w: Float32Array, eps: number): Float64Array[] {
  return x.map((row) => {
    let ms = 0;
    for (const v of row) ms += v * v;
    const r = 1 / Math.sqrt(ms / row.length + eps);
    return row.map((v, i) => v * r * w[i]);
  });
}

/** Rotate-half RoPE with frequencies `inv` and cos/sin factor `scale`. */
function rope(
  x: Float64Array,
  heads: number,
  D: number,
  pos: number,
  inv: ArrayLike<number>,
  scale: number,
): void {
  const half = D / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const a = pos * inv[i];
      const x1 = x[h * D + i];
      const x2 = x[h * D + i + half];
      x[h * D + i] = (x1 * Math.cos(a) - x2 * Math.sin(a)) * scale;
      x[h * D + i + half] = (x2 * Math.cos(a) + x1 * Math.sin(a)) * scale;
    }
  }
}

/** Each head vector of rows [T][H·D] RMS-normalised over D with weights w (Qwen3's q/k norm). */
function headNorm(x: Float64Array[], H: number, D: number, w: Float32Array, eps: number): Float64Array[] {
  return x.map((row) => {
    const out = new Float64Array(row.length);
    for (let h = 0; h < H; h++) {
      let ms = 0;
      for (let e = 0; e < D; e++) ms += row[h * D + e] ** 2;
      const r = 1 / Math.sqrt(ms / D + eps);
      for (let e = 0; e < D; e++) out[h * D + e] = row[h * D + e] * r * w[e];
    }
    return out;
  });
}

/** Dynamic NTK frequencies at length T (written from transformers' formula, independently of src/rope.ts). */
function dynamicInv(theta: number, D: number, T: number, factor: number, max: number): number[] {
  const base = T > max ? theta * ((factor * T) / max - (factor - 1)) ** (D / (D - 2)) : theta;
  return Array.from({ length: D / 2 }, (_, i) => base ** ((-2 * i) / D));
}

/** Logits [T][vocab] of the whole sequence. */
export function referenceForward(c: ModelConfig, t: Tensors, ids: number[]): Float64Array[] {
  const { hiddenSize: d, numHeads: H, numKvHeads: Hkv, headDim: D, intermediateSize: I, vocabSize: V } = c;
  const T = ids.length;
  const emb = t["model.embed_tokens.weight"].data;
  let x = ids.map((id) => Float64Array.from(emb.subarray(id * d, (id + 1) * d)));
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const g = (n: string) => t[p + n]?.data;
    const h = rmsNorm(x, g("input_layernorm.weight"), c.rmsNormEps);
    let q = linear(h, g("self_attn.q_proj.weight"), H * D, d, g("self_attn.q_proj.bias"));
    let k = linear(h, g("self_attn.k_proj.weight"), Hkv * D, d, g("self_attn.k_proj.bias"));
    const v = linear(h, g("self_attn.v_proj.weight"), Hkv * D, d, g("self_attn.v_proj.bias"));
    if (g("self_attn.q_norm.weight")) {
      q = headNorm(q, H, D, g("self_attn.q_norm.weight"), c.rmsNormEps);
      k = headNorm(k, Hkv, D, g("self_attn.k_norm.weight"), c.rmsNormEps);
    }
    // Frequencies: the config's table (scaled RoPE; dynamic NTK from the whole length), else theta^(-2i/D).
    const r = c.rope;
    const inv = r.dynamic
      ? dynamicInv(c.ropeTheta, D, T, r.dynamic.factor, r.dynamic.maxPositions)
      : (r.invFreq ?? Array.from({ length: D / 2 }, (_, i) => c.ropeTheta ** ((-2 * i) / D)));
    for (let i = 0; i < T; i++) {
      rope(q[i], H, D, i, inv, r.attentionFactor);
      rope(k[i], Hkv, D, i, inv, r.attentionFactor);
    }
    const attn = Array.from({ length: T }, () => new Float64Array(H * D));
    for (let hh = 0; hh < H; hh++) {
      const kv = Math.floor(hh / (H / Hkv));
      for (let i = 0; i < T; i++) {
        const s: number[] = [];
        // A sliding-window layer: the query at i sees keys in (i − w, i].
        const w = c.slidingWindow?.[l] ?? null;
        const lo = w !== null ? Math.max(0, i - w + 1) : 0;
        for (let j = 0; j <= i; j++) {
          if (j < lo) {
            s.push(Number.NEGATIVE_INFINITY);
            continue;
          }
          let dot = 0;
          for (let e = 0; e < D; e++) dot += q[i][hh * D + e] * k[j][kv * D + e];
          s.push(dot / Math.sqrt(D));
        }
        const m = Math.max(...s);
        const ex = s.map((z) => Math.exp(z - m));
        const sum = ex.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= i; j++)
          for (let e = 0; e < D; e++) attn[i][hh * D + e] += (ex[j] / sum) * v[j][kv * D + e];
      }
    }
    const o = linear(attn, g("self_attn.o_proj.weight"), d, H * D, g("self_attn.o_proj.bias"));
    x = x.map((row, i) => row.map((val, j) => val + o[i][j]));
    const h2 = rmsNorm(x, g("post_attention_layernorm.weight"), c.rmsNormEps);
    const gate = linear(h2, g("mlp.gate_proj.weight"), I, d, g("mlp.gate_proj.bias"));
    const up = linear(h2, g("mlp.up_proj.weight"), I, d, g("mlp.up_proj.bias"));
    const act = gate.map((row, i) => row.map((z, j) => (z / (1 + Math.exp(-z))) * up[i][j]));
    const down = linear(act, g("mlp.down_proj.weight"), d, I, g("mlp.down_proj.bias"));
    x = x.map((row, i) => row.map((val, j) => val + down[i][j]));
  }
  const hn = rmsNorm(x, t["model.norm.weight"].data, c.rmsNormEps);
  const head = (t["lm_head.weight"] ?? t["model.embed_tokens.weight"]).data;
  return linear(hn, head, V, d);
}
