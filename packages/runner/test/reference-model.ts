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

function rope(x: Float64Array, heads: number, D: number, pos: number, theta: number): void {
  const half = D / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const a = pos * theta ** ((-2 * i) / D);
      const x1 = x[h * D + i];
      const x2 = x[h * D + i + half];
      x[h * D + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
      x[h * D + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
    }
  }
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
    const q = linear(h, g("self_attn.q_proj.weight"), H * D, d, g("self_attn.q_proj.bias"));
    const k = linear(h, g("self_attn.k_proj.weight"), Hkv * D, d, g("self_attn.k_proj.bias"));
    const v = linear(h, g("self_attn.v_proj.weight"), Hkv * D, d, g("self_attn.v_proj.bias"));
    for (let i = 0; i < T; i++) {
      rope(q[i], H, D, i, c.ropeTheta);
      rope(k[i], Hkv, D, i, c.ropeTheta);
    }
    const attn = Array.from({ length: T }, () => new Float64Array(H * D));
    for (let hh = 0; hh < H; hh++) {
      const kv = Math.floor(hh / (H / Hkv));
      for (let i = 0; i < T; i++) {
        const s: number[] = [];
        for (let j = 0; j <= i; j++) {
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
    const o = linear(attn, g("self_attn.o_proj.weight"), d, H * D);
    x = x.map((row, i) => row.map((val, j) => val + o[i][j]));
    const h2 = rmsNorm(x, g("post_attention_layernorm.weight"), c.rmsNormEps);
    const gate = linear(h2, g("mlp.gate_proj.weight"), I, d);
    const up = linear(h2, g("mlp.up_proj.weight"), I, d);
    const act = gate.map((row, i) => row.map((z, j) => (z / (1 + Math.exp(-z))) * up[i][j]));
    const down = linear(act, g("mlp.down_proj.weight"), d, I);
    x = x.map((row, i) => row.map((val, j) => val + down[i][j]));
  }
  const hn = rmsNorm(x, t["model.norm.weight"].data, c.rmsNormEps);
  const head = (t["lm_head.weight"] ?? t["model.embed_tokens.weight"]).data;
  return linear(hn, head, V, d);
}
