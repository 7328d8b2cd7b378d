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

// biome-ignore lint/suspicious/noExplicitAny: a raw config.json, read as transformers reads it
type RawConfig = Record<string, any>;

/**
 * RoPE frequencies and attention factor from a raw config.json, written out from transformers'
 * `modeling_rope_utils` (default, linear, dynamic, yarn, llama3) with no code from src/rope.ts:
 * the independent check of the runner's scaled-RoPE tables.
 */
export function transformersRope(
  raw: RawConfig,
  D: number,
  T: number,
): { inv: number[]; attentionFactor: number } {
  const params = raw.rope_parameters ?? raw.rope_scaling ?? {};
  const base: number = params.rope_theta ?? raw.rope_theta ?? 10000;
  const type: string = params.rope_type ?? params.type ?? "default";
  const maxPos: number = raw.max_position_embeddings;
  const plain = (b: number) => Array.from({ length: D / 2 }, (_, i) => 1 / b ** ((2 * i) / D));
  if (type === "default") return { inv: plain(base), attentionFactor: 1 };
  const factor: number = params.factor;
  if (type === "linear") return { inv: plain(base).map((f) => f / factor), attentionFactor: 1 };
  if (type === "dynamic") {
    const max: number = params.original_max_position_embeddings ?? maxPos;
    const b = T > max ? base * ((factor * T) / max - (factor - 1)) ** (D / (D - 2)) : base;
    return { inv: plain(b), attentionFactor: 1 };
  }
  if (type === "yarn") {
    const original: number = params.original_max_position_embeddings ?? maxPos;
    const f = params.original_max_position_embeddings !== undefined ? maxPos / original : factor;
    const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
    const attentionFactor: number =
      params.attention_factor ??
      (params.mscale && params.mscale_all_dim
        ? mscale(f, params.mscale) / mscale(f, params.mscale_all_dim)
        : mscale(f));
    const betaFast: number = params.beta_fast || 32;
    const betaSlow: number = params.beta_slow || 1;
    const corrDim = (rot: number) => (D * Math.log(original / (rot * 2 * Math.PI))) / (2 * Math.log(base));
    const truncate = params.truncate ?? true;
    let low = corrDim(betaFast);
    let high = corrDim(betaSlow);
    if (truncate) {
      low = Math.floor(low);
      high = Math.ceil(high);
    }
    low = Math.max(low, 0);
    high = Math.min(high, D - 1);
    if (low === high) high += 0.001;
    const inv = Array.from({ length: D / 2 }, (_, i) => {
      const pos = base ** ((2 * i) / D);
      const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
      const extrapolation = 1 - ramp;
      return (1 / (f * pos)) * (1 - extrapolation) + (1 / pos) * extrapolation;
    });
    return { inv, attentionFactor };
  }
  if (type === "llama3") {
    const low = params.low_freq_factor;
    const high = params.high_freq_factor;
    const old = params.original_max_position_embeddings;
    const inv = plain(base).map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < old / high) return f;
      if (wavelen > old / low) return f / factor;
      const smooth = (old / wavelen - low) / (high - low);
      return ((1 - smooth) * f) / factor + smooth * f;
    });
    return { inv, attentionFactor: 1 };
  }
  throw new Error(`the reference has no formula for rope_type ${type}`);
}

/**
 * Logits [T][vocab] of the whole sequence. With `raw` (the checkpoint's config.json) the RoPE
 * frequencies come from `transformersRope`, not from the runner's parsed config.
 */
export function referenceForward(c: ModelConfig, t: Tensors, ids: number[], raw?: RawConfig): Float64Array[] {
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
    const { inv, attentionFactor } = raw
      ? transformersRope(raw, D, T)
      : {
          inv: r.dynamic
            ? dynamicInv(c.ropeTheta, D, T, r.dynamic.factor, r.dynamic.maxPositions)
            : (r.invFreq ?? Array.from({ length: D / 2 }, (_, i) => c.ropeTheta ** ((-2 * i) / D))),
          attentionFactor: r.attentionFactor,
        };
    for (let i = 0; i < T; i++) {
      rope(q[i], H, D, i, inv, attentionFactor);
      rope(k[i], Hkv, D, i, inv, attentionFactor);
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
