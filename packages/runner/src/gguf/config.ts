// A GGUF file's hyper-parameters as the Hugging Face config they stand for, so that one parser
// (parseConfig) checks both kinds of checkpoint. Keys as llama.cpp reads them (llama-arch.cpp).
import { type ModelConfig, parseConfig } from "../config.js";
import { CheckpointError } from "../errors.js";
import { defaultInvFreq } from "../rope.js";
import type { GgufFile } from "./file.js";

/** GGUF architectures and the Hugging Face ones they are (Mistral's files say "llama"). */
const ARCHITECTURES: Record<string, string> = {
  llama: "LlamaForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
  mistral: "MistralForCausalLM",
};

export function ggufArchitecture(f: GgufFile): string {
  const arch = f.metadata["general.architecture"];
  if (typeof arch !== "string" || !(arch in ARCHITECTURES))
    throw new CheckpointError(
      "UNSUPPORTED_ARCHITECTURE",
      `GGUF architecture ${JSON.stringify(arch)} is not supported; supported: ${Object.keys(ARCHITECTURES).join(", ")}`,
      f.path,
    );
  return arch;
}

export function ggufConfig(f: GgufFile): ModelConfig {
  const arch = ggufArchitecture(f);
  const m = f.metadata;
  const key = (k: string) => m[`${arch}.${k}`];
  const num = (k: string) => {
    const v = key(k);
    return typeof v === "bigint" ? Number(v) : v;
  };
  for (const k of [
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "context_length",
  ]) {
    const v = num(k);
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0)
      throw new CheckpointError(
        "GGUF_INVALID",
        `GGUF metadata "${arch}.${k}" must be a positive integer, got ${String(v)}`,
        f.path,
      );
  }
  const tokens = m["tokenizer.ggml.tokens"];
  const heads = num("attention.head_count");
  const hidden = num("embedding_length");
  const raw: Record<string, unknown> = {
    architectures: [ARCHITECTURES[arch]],
    hidden_size: hidden,
    intermediate_size: num("feed_forward_length"),
    num_hidden_layers: num("block_count"),
    num_attention_heads: heads,
    num_key_value_heads: num("attention.head_count_kv") ?? heads,
    vocab_size: num("vocab_size") ?? (Array.isArray(tokens) ? tokens.length : undefined),
    max_position_embeddings: num("context_length"),
    rms_norm_eps: num("attention.layer_norm_rms_epsilon"),
    rope_theta: num("rope.freq_base") ?? 10000,
    tie_word_embeddings: !f.tensors.has("output.weight"),
    attention_bias: arch !== "qwen2" && f.tensors.has("blk.0.attn_q.bias"),
    bos_token_id: m["tokenizer.ggml.bos_token_id"] ?? null,
    eos_token_id: m["tokenizer.ggml.eos_token_id"] ?? null,
  };
  const keyLength = num("attention.key_length");
  if (keyLength !== undefined) raw.head_dim = keyLength;
  else if (typeof hidden === "number" && typeof heads === "number") raw.head_dim = hidden / heads;
  const scaling = key("rope.scaling.type");
  if (scaling === "linear" || scaling === "yarn")
    raw.rope_scaling = {
      rope_type: scaling,
      factor: num("rope.scaling.factor"),
      original_max_position_embeddings: num("rope.scaling.original_context_length"),
    };
  const window = num("attention.sliding_window");
  if (arch === "mistral" && typeof window === "number") raw.sliding_window = window;
  const c = parseConfig(raw, f.path);
  // Llama 3.x stores its scaled frequencies as factors that divide the plain ones (rope_freqs).
  const freqs = f.tensors.get("rope_freqs.weight");
  if (freqs) {
    if (freqs.ne[0] !== c.headDim / 2 || freqs.type !== 0)
      throw new CheckpointError(
        "GGUF_INVALID",
        "rope_freqs.weight must be head_dim/2 float32 values",
        f.path,
      );
    const ff = new Float32Array(f.bytes(freqs).buffer, 0, c.headDim / 2);
    const base = defaultInvFreq(c.rope.theta, c.headDim);
    c.rope = { ...c.rope, type: "llama3", invFreq: base.map((x, i) => x / ff[i]) };
  }
  return c;
}
