// A GGUF file's tensors as the runner's weights: llama.cpp's names mapped to the layer fields,
// shapes checked against the config, q/k rows of "llama" files put back from llama.cpp's
// interleaved RoPE order into rotate-half order (a row permutation: exact for every type), and
// each matrix given both as float32 and as the file stores it (MatMulNBits blocks, exactly).
import type { ModelConfig } from "../config.js";
import { CheckpointError } from "../errors.js";
import type {
  GraphLayer,
  LayeredWeights,
  LayerWeights,
  MatrixName,
  StoredMatrix,
  StoredRows,
} from "../weights.js";
import type { GgufFile, GgufTensor } from "./file.js";
import { dequantizeRows, GGML, rowBytes, toMatMulNBits } from "./ggml-types.js";

const MATRICES: [MatrixName, string][] = [
  ["q", "attn_q"],
  ["k", "attn_k"],
  ["v", "attn_v"],
  ["o", "attn_output"],
  ["gate", "ffn_gate"],
  ["up", "ffn_up"],
  ["down", "ffn_down"],
];

/** Row order that undoes llama.cpp's RoPE permutation of q/k: ours[h·D + half·D/2 + i] = file[h·D + 2i + half]. */
function unpermuteOrder(heads: number, D: number): Int32Array {
  const order = new Int32Array(heads * D);
  for (let h = 0; h < heads; h++)
    for (let half = 0; half < 2; half++)
      for (let i = 0; i < D / 2; i++) order[h * D + half * (D / 2) + i] = h * D + 2 * i + half;
  return order;
}

export function ggufWeights(f: GgufFile, c: ModelConfig): LayeredWeights {
  const permuted = c.architecture === "LlamaForCausalLM" || c.architecture === "MistralForCausalLM";
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const shapes: Record<MatrixName, [number, number]> = {
    q: [qd, d],
    k: [kvd, d],
    v: [kvd, d],
    o: [d, qd],
    gate: [I, d],
    up: [I, d],
    down: [d, I],
  };
  const rowOrder: Partial<Record<MatrixName, Int32Array>> = permuted
    ? { q: unpermuteOrder(c.numHeads, c.headDim), k: unpermuteOrder(c.numKvHeads, c.headDim) }
    : {};

  const check = (name: string, N: number, K: number): GgufTensor => {
    const t = f.tensor(name);
    const ok =
      K === 1 ? t.ne.length === 1 && t.ne[0] === N : t.ne.length === 2 && t.ne[0] === K && t.ne[1] === N;
    if (!ok)
      throw new CheckpointError(
        "SHAPE_MISMATCH",
        `tensor "${name}" has ne [${t.ne.join(", ")}], expected [${K === 1 ? N : `${K}, ${N}`}]`,
        f.path,
      );
    return t;
  };
  /** The tensor's bytes with its rows in our order. */
  const rows = (t: GgufTensor, N: number, K: number, order?: Int32Array): Uint8Array => {
    const b = f.bytes(t);
    if (!order) return b;
    const rb = rowBytes(t.info, K);
    const out = new Uint8Array(b.length);
    for (let r = 0; r < N; r++) out.set(b.subarray(order[r] * rb, (order[r] + 1) * rb), r * rb);
    return out;
  };
  const floats = (name: string, N: number, K = 1, order?: Int32Array): Float32Array => {
    const t = check(name, N, K);
    return dequantizeRows(t.type, rows(t, N, K, order), N, K);
  };
  const stored = (name: string, N: number, K: number, order?: Int32Array): StoredMatrix => {
    const t = check(name, N, K);
    const b = rows(t, N, K, order);
    return toMatMulNBits(t.type, b, N, K) ?? dequantizeRows(t.type, b, N, K);
  };
  /** Rows as stored; F16/BF16 widened to F32 bytes (the kernels read F32, Q8_0, Q4_0). */
  const storedRows = (name: string, N: number, K: number, order?: Int32Array): StoredRows => {
    const t = check(name, N, K);
    const b = rows(t, N, K, order);
    if (t.type === GGML.F16 || t.type === GGML.BF16) {
      const f = dequantizeRows(t.type, b, N, K);
      return { type: GGML.F32, bytes: new Uint8Array(f.buffer), N, K };
    }
    return { type: t.type, bytes: b, N, K };
  };
  /** A bias or norm vector (a q bias follows its rows' permutation). */
  const vector = (name: string, n: number, order?: Int32Array) => {
    const v = floats(name, n);
    return order ? Float32Array.from(order, (i) => v[i]) : v;
  };

  const rest = (l: number) => {
    const p = `blk.${l}.`;
    const w: Partial<LayerWeights> = {
      inputNorm: vector(`${p}attn_norm.weight`, d),
      postNorm: vector(`${p}ffn_norm.weight`, d),
    };
    if (c.qkvBias) {
      w.qBias = vector(`${p}attn_q.bias`, qd, rowOrder.q);
      w.kBias = vector(`${p}attn_k.bias`, kvd, rowOrder.k);
      w.vBias = vector(`${p}attn_v.bias`, kvd);
    }
    if (c.oBias) w.oBias = vector(`${p}attn_output.bias`, d);
    if (c.qkNorm) {
      w.qNorm = vector(`${p}attn_q_norm.weight`, c.headDim);
      w.kNorm = vector(`${p}attn_k_norm.weight`, c.headDim);
    }
    return w;
  };

  // The float tables are made only when asked for (a native or cached load never asks).
  let embedF: Float32Array | null = null;
  const embed = () => {
    const t = check("token_embd.weight", c.vocabSize, d);
    embedF ??= dequantizeRows(t.type, f.bytes(t), c.vocabSize, d);
    return embedF;
  };
  const norm = vector("output_norm.weight", d);
  let lmHead: Float32Array | null = null;
  let parameters = 0;
  for (const t of f.tensors.values())
    if (t.name !== "rope_freqs.weight") parameters += t.ne.reduce((a, n) => a * n, 1);
  const cache = new Map<number, LayerWeights>();
  return {
    get embed() {
      return embed();
    },
    norm,
    get lmHead() {
      if (c.tieWordEmbeddings) return embed();
      lmHead ??= floats("output.weight", c.vocabSize, d);
      return lmHead;
    },
    parameters,
    layer(l) {
      let w = cache.get(l);
      if (!w) {
        const m = {} as Record<MatrixName, Float32Array>;
        for (const [field, name] of MATRICES) {
          const [N, K] = shapes[field];
          m[field] = floats(`blk.${l}.${name}.weight`, N, K, rowOrder[field]);
        }
        w = { ...rest(l), ...m } as LayerWeights;
        cache.set(l, w);
        for (const k of cache.keys()) if (k < l - 1) cache.delete(k);
      }
      return w;
    },
    graphLayer(l): GraphLayer {
      const m = {} as Record<MatrixName, StoredMatrix>;
      for (const [field, name] of MATRICES) {
        const [N, K] = shapes[field];
        m[field] = stored(`blk.${l}.${name}.weight`, N, K, rowOrder[field]);
      }
      return { ...rest(l), ...m } as GraphLayer;
    },
    storedTypes(l) {
      const m = {} as Record<MatrixName, { type: number; N: number; K: number }>;
      for (const [field, name] of MATRICES) {
        const [N, K] = shapes[field];
        const t = check(`blk.${l}.${name}.weight`, N, K);
        // F16/BF16 are widened to F32 rows (storedRows).
        m[field] = { type: t.type === GGML.F16 || t.type === GGML.BF16 ? GGML.F32 : t.type, N, K };
      }
      return m;
    },
    storedRows(l) {
      const m = {} as Record<MatrixName, StoredRows>;
      for (const [field, name] of MATRICES) {
        const [N, K] = shapes[field];
        m[field] = storedRows(`blk.${l}.${name}.weight`, N, K, rowOrder[field]);
      }
      return m;
    },
    storedHeadRows() {
      return storedRows(c.tieWordEmbeddings ? "token_embd.weight" : "output.weight", c.vocabSize, d);
    },
    layerVectors(l) {
      const none = new Float32Array(0);
      return {
        ...rest(l),
        q: none,
        k: none,
        v: none,
        o: none,
        gate: none,
        up: none,
        down: none,
      } as LayerWeights;
    },
    graphHead(): StoredMatrix {
      return stored(c.tieWordEmbeddings ? "token_embd.weight" : "output.weight", c.vocabSize, d);
    },
  };
}
