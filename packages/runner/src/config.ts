import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CheckpointError } from "./errors.js";
import { parseRope, type RopeConfig } from "./rope.js";

export type Architecture =
  | "LlamaForCausalLM"
  | "Qwen2ForCausalLM"
  | "Qwen3ForCausalLM"
  | "MistralForCausalLM";
export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = [
  "LlamaForCausalLM",
  "Qwen2ForCausalLM",
  "Qwen3ForCausalLM",
  "MistralForCausalLM",
];

/** The model hyper-parameters the runner needs, normalised from a Hugging Face config.json. */
export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** The rotary embedding (variant, scaled frequencies, attention factor). */
  rope: RopeConfig;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2; Llama and Qwen3 with attention_bias). */
  qkvBias: boolean;
  /** o_proj carries a bias (Llama and Qwen3 with attention_bias; never Qwen2). */
  oBias: boolean;
  /** gate/up/down projections carry a bias (Llama's mlp_bias). */
  mlpBias: boolean;
  /** RMSNorm of each head's q and k over head_dim before RoPE (Qwen3). */
  qkNorm: boolean;
  /**
   * Per layer: its sliding window w (a query at position i sees keys in (i − w, i]), or null
   * for full causal attention. Policies see it here; the runner narrows their selections to it.
   */
  slidingWindow: (number | null)[];
  bosTokenId: number | null;
  eosTokenIds: number[];
}

function int(raw: Record<string, unknown>, key: string, path: string, fallback?: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new CheckpointError(
      "CONFIG_INVALID",
      `config.json: "${key}" must be a positive integer, got ${JSON.stringify(v)}`,
      path,
    );
  }
  return v;
}

function num(raw: Record<string, unknown>, key: string, path: string, fallback: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new CheckpointError(
      "CONFIG_INVALID",
      `config.json: "${key}" must be a positive number, got ${JSON.stringify(v)}`,
      path,
    );
  }
  return v;
}

function flag(r: Record<string, unknown>, key: string, path: string): boolean {
  const v = r[key] ?? false;
  if (typeof v !== "boolean")
    throw new CheckpointError("CONFIG_INVALID", `config.json: "${key}" must be true or false`, path);
  return v;
}

const refuse = (path: string, msg: string): never => {
  throw new CheckpointError("UNSUPPORTED_ARCHITECTURE", msg, path);
};

/**
 * Fields that change the forward pass in ways this runner does not implement: each is
 * refused by name rather than ignored (the runner README lists them).
 */
function refuseUnsupported(r: Record<string, unknown>, path: string): void {
  if (r.text_config != null || r.vision_config != null || r.audio_config != null)
    refuse(path, "multimodal configs (text_config / vision_config) are not supported");
  for (const k of ["num_experts", "num_local_experts", "n_routed_experts"])
    if (typeof r[k] === "number" && (r[k] as number) > 0)
      refuse(path, `mixture-of-experts layers (${k}) are not supported`);
  for (const k of ["attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"])
    if (r[k] != null) refuse(path, `${k} (Gemma-style attention) is not supported`);
  if (Array.isArray(r.layer_types)) {
    const other = (r.layer_types as unknown[]).find(
      (t) => t !== "full_attention" && t !== "sliding_attention",
    );
    if (other !== undefined)
      refuse(path, `layer type ${JSON.stringify(other)} (e.g. linear attention) is not supported`);
  }
  if (r.use_qk_norm === true) refuse(path, "use_qk_norm is only supported as Qwen3's q_norm/k_norm");
}

/**
 * Per layer, the sliding window in effect (a query at i sees keys in (i − w, i]), or null for
 * full causal attention. transformers' rules: Mistral's `sliding_window` applies to every
 * layer (null: none); Qwen2/Qwen3 slide only with `use_sliding_window`, on layers from
 * `max_window_layers` on; `layer_types` names the sliding layers when present. A window at
 * least as long as the context is no window.
 */
function slidingWindows(
  r: Record<string, unknown>,
  arch: Architecture,
  L: number,
  maxPositions: number,
  path: string,
): (number | null)[] {
  const w = r.sliding_window;
  if (w != null && !(typeof w === "number" && Number.isInteger(w) && w > 0))
    throw new CheckpointError(
      "CONFIG_INVALID",
      `config.json: "sliding_window" must be a positive integer or null`,
      path,
    );
  const window = typeof w === "number" && w < maxPositions ? w : null;
  let sliding: boolean[];
  if (Array.isArray(r.layer_types)) {
    if (r.layer_types.length !== L)
      throw new CheckpointError("CONFIG_INVALID", `config.json: "layer_types" must list ${L} layers`, path);
    sliding = (r.layer_types as unknown[]).map((t) => t === "sliding_attention");
  } else if (arch === "MistralForCausalLM") sliding = Array(L).fill(true);
  else if (arch === "Qwen2ForCausalLM" || arch === "Qwen3ForCausalLM") {
    const use = r.use_sliding_window === true;
    const from = typeof r.max_window_layers === "number" ? r.max_window_layers : L;
    sliding = Array.from({ length: L }, (_, l) => use && l >= from);
  } else sliding = Array(L).fill(false);
  return sliding.map((s) => (s ? window : null));
}

/** Parse and validate a config.json object. */
export function parseConfig(raw: unknown, path = "config.json"): ModelConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new CheckpointError("CONFIG_INVALID", "config.json must hold a JSON object", path);
  }
  const r = raw as Record<string, unknown>;
  const archs = Array.isArray(r.architectures) ? (r.architectures as unknown[]) : [];
  const byType: Record<string, Architecture> = {
    llama: "LlamaForCausalLM",
    qwen2: "Qwen2ForCausalLM",
    qwen3: "Qwen3ForCausalLM",
    mistral: "MistralForCausalLM",
  };
  refuseUnsupported(r, path);
  const arch =
    (archs.find((a) => SUPPORTED_ARCHITECTURES.includes(a as Architecture)) as Architecture | undefined) ??
    (archs.length === 0 && typeof r.model_type === "string" ? byType[r.model_type] : undefined);
  if (!arch) {
    const named = archs.length ? archs.join(", ") : String(r.model_type ?? "none");
    throw new CheckpointError(
      "UNSUPPORTED_ARCHITECTURE",
      `unsupported architecture ${named}; supported: ${SUPPORTED_ARCHITECTURES.join(", ")}`,
      path,
    );
  }
  if (r.hidden_act != null && r.hidden_act !== "silu") {
    throw new CheckpointError(
      "UNSUPPORTED_ARCHITECTURE",
      `hidden_act ${JSON.stringify(r.hidden_act)} is not supported (only silu)`,
      path,
    );
  }
  const hiddenSize = int(r, "hidden_size", path);
  const numHeads = int(r, "num_attention_heads", path);
  const numKvHeads = int(r, "num_key_value_heads", path, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new CheckpointError(
      "CONFIG_INVALID",
      `num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`,
      path,
    );
  }
  // Qwen3's config defaults head_dim to 128 when absent; the others to hidden / heads.
  const headDim = int(r, "head_dim", path, arch === "Qwen3ForCausalLM" ? 128 : hiddenSize / numHeads);
  if (headDim % 2 !== 0)
    throw new CheckpointError("CONFIG_INVALID", `head_dim must be even for RoPE, got ${headDim}`, path);
  const eos = r.eos_token_id;
  const eosTokenIds = Array.isArray(eos)
    ? eos.filter((x): x is number => Number.isInteger(x))
    : Number.isInteger(eos)
      ? [eos as number]
      : [];
  const maxPositions = int(r, "max_position_embeddings", path);
  const rope = parseRope(r, headDim, maxPositions, path);
  const numLayers = int(r, "num_hidden_layers", path);
  const slidingWindow = slidingWindows(r, arch, numLayers, maxPositions, path);
  const attentionBias = flag(r, "attention_bias", path);
  if (arch === "MistralForCausalLM" && attentionBias)
    throw new CheckpointError("UNSUPPORTED_ARCHITECTURE", "Mistral has no attention biases", path);
  return {
    architecture: arch,
    hiddenSize,
    intermediateSize: int(r, "intermediate_size", path),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int(r, "vocab_size", path),
    maxPositions,
    rmsNormEps: num(r, "rms_norm_eps", path, 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: flag(r, "tie_word_embeddings", path),
    qkvBias: arch === "Qwen2ForCausalLM" ? true : attentionBias,
    oBias: arch === "Qwen2ForCausalLM" ? false : attentionBias,
    mlpBias: arch === "LlamaForCausalLM" ? flag(r, "mlp_bias", path) : false,
    qkNorm: arch === "Qwen3ForCausalLM",
    slidingWindow,
    bosTokenId: Number.isInteger(r.bos_token_id) ? (r.bos_token_id as number) : null,
    eosTokenIds,
  };
}

/** Read config.json from a checkpoint directory. */
export function readConfig(dir: string): ModelConfig {
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    throw new CheckpointError("CONFIG_MISSING", "config.json not found in the checkpoint directory", path);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(
      "CONFIG_INVALID",
      `config.json is not valid JSON: ${(e as Error).message}`,
      path,
    );
  }
  return parseConfig(raw, path);
}
