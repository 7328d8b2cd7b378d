import { copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Architecture } from "./config.js";
import { bf16ToF32, type DType, f16ToF32, f32ToBf16, f32ToF16 } from "./dtype.js";
import { type TensorToWrite, writeSafetensors, writeShardedSafetensors } from "./safetensors.js";
import { seededRandom } from "./sampler.js";

export interface SyntheticModelOptions {
  architecture?: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim?: number;
  vocabSize: number;
  maxPositions: number;
  tieWordEmbeddings?: boolean;
  /** q/k/v bias (always on for Qwen2); for Llama and Qwen3 this is attention_bias (o_proj too). */
  qkvBias?: boolean;
  /** Llama's mlp_bias (gate/up/down biases). */
  mlpBias?: boolean;
  /** Written as config.json's rope_scaling (e.g. { rope_type: "llama3", ... }). */
  ropeScaling?: Record<string, unknown>;
  ropeTheta?: number;
  /** More config.json fields (written last). */
  extraConfig?: Record<string, unknown>;
  dtype?: DType;
  /** Split the weights into this many safetensors shards with an index (default: one file). */
  shards?: number;
  seed?: number;
  /** A checkpoint folder whose tokenizer files are copied (the synthetic model needs one). */
  tokenizerFrom: string;
  /** Std-dev-like scale of the random weights (default 0.02; larger gives peakier attention). */
  scale?: number;
}

/**
 * Write a checkpoint with random weights in Hugging Face layout (tests and benchmarks).
 * Returns the weights as the loader should see them (rounded through `dtype`).
 */
export function writeSyntheticCheckpoint(
  dir: string,
  o: SyntheticModelOptions,
): Record<string, TensorToWrite> {
  mkdirSync(dir, { recursive: true });
  const arch = o.architecture ?? "LlamaForCausalLM";
  const headDim = o.headDim ?? o.hiddenSize / o.numHeads;
  const qkvBias = arch === "Qwen2ForCausalLM" || (o.qkvBias ?? false);
  // Llama and Qwen3's attention_bias puts a bias on o_proj as well; Qwen2 never has one.
  const oBias = arch !== "Qwen2ForCausalLM" && (o.qkvBias ?? false);
  const mlpBias = arch === "LlamaForCausalLM" && (o.mlpBias ?? false);
  const tied = o.tieWordEmbeddings ?? false;
  const dtype = o.dtype ?? "F32";
  const rand = seededRandom(o.seed ?? 1);
  const scale = o.scale ?? 0.02;
  // Uniform with the given std-dev (sqrt(3) * s), cheap and reproducible.
  const randn = (n: number, s = scale) => {
    const a = new Float32Array(n);
    const w = s * Math.sqrt(3);
    for (let i = 0; i < n; i++) a[i] = (rand() * 2 - 1) * w;
    return a;
  };
  const ones = (n: number) => {
    const a = randn(n, 0.1);
    for (let i = 0; i < n; i++) a[i] += 1;
    return a;
  };
  const d = o.hiddenSize;
  const qd = o.numHeads * headDim;
  const kvd = o.numKvHeads * headDim;
  const I = o.intermediateSize;
  const t: Record<string, TensorToWrite> = {};
  const put = (name: string, shape: number[], data: Float32Array) => (t[name] = { shape, data });
  put("model.embed_tokens.weight", [o.vocabSize, d], randn(o.vocabSize * d, 1));
  for (let l = 0; l < o.numLayers; l++) {
    const p = `model.layers.${l}.`;
    put(`${p}input_layernorm.weight`, [d], ones(d));
    put(`${p}post_attention_layernorm.weight`, [d], ones(d));
    put(`${p}self_attn.q_proj.weight`, [qd, d], randn(qd * d));
    put(`${p}self_attn.k_proj.weight`, [kvd, d], randn(kvd * d));
    put(`${p}self_attn.v_proj.weight`, [kvd, d], randn(kvd * d));
    if (qkvBias) {
      put(`${p}self_attn.q_proj.bias`, [qd], randn(qd));
      put(`${p}self_attn.k_proj.bias`, [kvd], randn(kvd));
      put(`${p}self_attn.v_proj.bias`, [kvd], randn(kvd));
    }
    if (arch === "Qwen3ForCausalLM") {
      put(`${p}self_attn.q_norm.weight`, [headDim], ones(headDim));
      put(`${p}self_attn.k_norm.weight`, [headDim], ones(headDim));
    }
    put(`${p}self_attn.o_proj.weight`, [d, qd], randn(d * qd));
    if (oBias) put(`${p}self_attn.o_proj.bias`, [d], randn(d));
    put(`${p}mlp.gate_proj.weight`, [I, d], randn(I * d));
    put(`${p}mlp.up_proj.weight`, [I, d], randn(I * d));
    put(`${p}mlp.down_proj.weight`, [d, I], randn(d * I));
    if (mlpBias) {
      put(`${p}mlp.gate_proj.bias`, [I], randn(I));
      put(`${p}mlp.up_proj.bias`, [I], randn(I));
      put(`${p}mlp.down_proj.bias`, [d], randn(d));
    }
  }
  put("model.norm.weight", [d], ones(d));
  if (!tied) put("lm_head.weight", [o.vocabSize, d], randn(o.vocabSize * d));

  // What the loader will read back: the values rounded to the stored dtype.
  if (dtype !== "F32") {
    for (const v of Object.values(t)) {
      v.data = dtype === "F16" ? f16ToF32(f32ToF16(v.data)) : bf16ToF32(f32ToBf16(v.data));
    }
  }
  if (o.shards && o.shards > 1) writeShardedSafetensors(dir, t, o.shards, dtype);
  else writeSafetensors(join(dir, "model.safetensors"), t, dtype);

  const config: Record<string, unknown> = {
    architectures: [arch],
    model_type:
      { Qwen2ForCausalLM: "qwen2", Qwen3ForCausalLM: "qwen3", MistralForCausalLM: "mistral" }[
        arch as string
      ] ?? "llama",
    hidden_size: d,
    intermediate_size: I,
    num_hidden_layers: o.numLayers,
    num_attention_heads: o.numHeads,
    num_key_value_heads: o.numKvHeads,
    head_dim: headDim,
    vocab_size: o.vocabSize,
    max_position_embeddings: o.maxPositions,
    rms_norm_eps: 1e-5,
    rope_theta: o.ropeTheta ?? 10000,
    rope_scaling: o.ropeScaling ?? null,
    hidden_act: "silu",
    tie_word_embeddings: tied,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: dtype === "F32" ? "float32" : dtype === "F16" ? "float16" : "bfloat16",
  };
  if (arch === "LlamaForCausalLM" || arch === "Qwen3ForCausalLM") config.attention_bias = qkvBias;
  if (arch === "LlamaForCausalLM") config.mlp_bias = mlpBias;
  Object.assign(config, o.extraConfig ?? {});
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  for (const f of ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
    const src = join(o.tokenizerFrom, f);
    if (existsSync(src)) copyFileSync(src, join(dir, f));
  }
  return t;
}

/**
 * A randomly initialised checkpoint with the shape and tokenizer of a loaded model (a control
 * for similarity measurements: same architecture, nothing learned). Returns its folder.
 */
export function writeRandomTwin(
  dir: string,
  model: { dir: string; config: import("./config.js").ModelConfig },
  seed = 12345,
): string {
  const c = model.config;
  writeSyntheticCheckpoint(dir, {
    architecture: c.architecture,
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    vocabSize: c.vocabSize,
    maxPositions: c.maxPositions,
    tieWordEmbeddings: c.tieWordEmbeddings,
    qkvBias: c.qkvBias,
    mlpBias: c.mlpBias,
    ropeTheta: c.ropeTheta,
    seed,
    tokenizerFrom: model.dir,
  });
  return dir;
}
