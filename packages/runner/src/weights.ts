import type { DecoderLayerWeights } from "@smallkv/tensor";
import type { ModelConfig } from "./config.js";
import type { QuantizedMatrix } from "./quant.js";
import { SafetensorsStore } from "./safetensors.js";

/**
 * One layer's weights, PyTorch Linear layout [out][in] (optional biases; Qwen3's per-head q/k
 * RMSNorm weights [head_dim]): the shape the native decoder packs.
 */
export type LayerWeights = DecoderLayerWeights;

export interface ModelWeights {
  embed: Float32Array;
  norm: Float32Array;
  /** The classifier [vocab][hidden]; the same array as `embed` when tied. */
  lmHead: Float32Array;
  layers: LayerWeights[];
  /** Parameters of the whole model. */
  parameters: number;
}

/** Layer l's weights, read from the checkpoint (names and shapes checked); 16-bit weights become float32. */
function readLayer(st: SafetensorsStore, c: ModelConfig, l: number): LayerWeights {
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const p = `model.layers.${l}.`;
  const w: LayerWeights = {
    inputNorm: st.read(`${p}input_layernorm.weight`, [d]),
    postNorm: st.read(`${p}post_attention_layernorm.weight`, [d]),
    q: st.read(`${p}self_attn.q_proj.weight`, [qd, d]),
    k: st.read(`${p}self_attn.k_proj.weight`, [kvd, d]),
    v: st.read(`${p}self_attn.v_proj.weight`, [kvd, d]),
    o: st.read(`${p}self_attn.o_proj.weight`, [d, qd]),
    gate: st.read(`${p}mlp.gate_proj.weight`, [I, d]),
    up: st.read(`${p}mlp.up_proj.weight`, [I, d]),
    down: st.read(`${p}mlp.down_proj.weight`, [d, I]),
  };
  if (c.qkvBias) {
    w.qBias = st.read(`${p}self_attn.q_proj.bias`, [qd]);
    w.kBias = st.read(`${p}self_attn.k_proj.bias`, [kvd]);
    w.vBias = st.read(`${p}self_attn.v_proj.bias`, [kvd]);
  }
  if (c.oBias) w.oBias = st.read(`${p}self_attn.o_proj.bias`, [d]);
  if (c.mlpBias) {
    w.gateBias = st.read(`${p}mlp.gate_proj.bias`, [I]);
    w.upBias = st.read(`${p}mlp.up_proj.bias`, [I]);
    w.downBias = st.read(`${p}mlp.down_proj.bias`, [d]);
  }
  if (c.qkNorm) {
    w.qNorm = st.read(`${p}self_attn.q_norm.weight`, [c.headDim]);
    w.kNorm = st.read(`${p}self_attn.k_norm.weight`, [c.headDim]);
  }
  return w;
}

/** A matrix as a checkpoint stores it: float32, or a GGUF file's quantized blocks (exactly). */
export type StoredMatrix = Float32Array | QuantizedMatrix;

/** The projection and MLP matrices of a layer. */
export type MatrixName = "q" | "k" | "v" | "o" | "gate" | "up" | "down";

/** A matrix's rows as a GGUF file stores them (ggml type id; F16/BF16 come as F32 bytes). */
export interface StoredRows {
  type: number;
  bytes: Uint8Array;
  N: number;
  K: number;
}

/** A layer for the dense graphs: its matrices as stored, the rest (norms, biases) float32. */
export type GraphLayer = Omit<LayerWeights, MatrixName> & Record<MatrixName, StoredMatrix>;

/** The weights outside the layers, and the layers read on demand (a loader holds few at a time). */
export interface LayeredWeights {
  embed: Float32Array;
  norm: Float32Array;
  /** The classifier [vocab][hidden]; the same array as `embed` when tied. */
  lmHead: Float32Array;
  layer(l: number): LayerWeights;
  /** Parameters of the whole model (from the checkpoint's tensor shapes). */
  parameters: number;
  /** Layer l with its matrices as the file stores them (GGUF); absent: `layer` serves. */
  graphLayer?(l: number): GraphLayer;
  /** The classifier as the file stores it (GGUF); absent: `lmHead`. */
  graphHead?(): StoredMatrix;
  /** Layer l's matrices' ggml types and shapes (GGUF), read from the header only. */
  storedTypes?(l: number): Record<MatrixName, { type: number; N: number; K: number }>;
  /** Layer l's matrices as the file's rows (GGUF; q/k in rotate-half order). */
  storedRows?(l: number): Record<MatrixName, StoredRows>;
  /** The classifier as the file's rows (GGUF). */
  storedHeadRows?(): StoredRows;
  /** Layer l's norms and biases only (its matrices empty): what a native dense stack needs beside its rows. */
  layerVectors?(l: number): LayerWeights;
}

/** Only the embedding table (the lookup a CPU model keeps in JS). */
export function readEmbedding(dir: string, c: ModelConfig): Float32Array {
  return new SafetensorsStore(dir).read("model.embed_tokens.weight", [c.vocabSize, c.hiddenSize]);
}

/** Open a checkpoint; layer l is read when asked for (the last two asked for are kept). */
export function openWeights(dir: string, c: ModelConfig): LayeredWeights {
  const st = new SafetensorsStore(dir);
  const embed = st.read("model.embed_tokens.weight", [c.vocabSize, c.hiddenSize]);
  const lmHead = c.tieWordEmbeddings ? embed : st.read("lm_head.weight", [c.vocabSize, c.hiddenSize]);
  const norm = st.read("model.norm.weight", [c.hiddenSize]);
  const cache = new Map<number, LayerWeights>();
  let parameters = embed.length + norm.length + (lmHead === embed ? 0 : lmHead.length);
  for (const [name, info] of st.tensors)
    if (name.startsWith("model.layers.")) parameters += info.shape.reduce((a, x) => a * x, 1);
  return {
    embed,
    norm,
    lmHead,
    parameters,
    layer(l) {
      let w = cache.get(l);
      if (!w) {
        w = readLayer(st, c, l);
        cache.set(l, w);
        for (const k of cache.keys()) if (k < l - 1) cache.delete(k);
      }
      return w;
    },
  };
}

/** Load every weight the config implies, checking names and shapes; 16-bit weights become float32. */
export function loadWeights(dir: string, c: ModelConfig): ModelWeights {
  return loadAll(openWeights(dir, c), c);
}

/** Every layer of opened weights, read now. */
export function loadAll(w: LayeredWeights, c: ModelConfig): ModelWeights {
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numLayers; l++) layers.push(w.layer(l));
  return { embed: w.embed, norm: w.norm, lmHead: w.lmHead, layers, parameters: w.parameters };
}
