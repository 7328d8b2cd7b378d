import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CheckpointError } from "./errors.js";

export type Architecture = "LlamaForCausalLM" | "Qwen2ForCausalLM";
export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ["LlamaForCausalLM", "Qwen2ForCausalLM"];

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
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2, or Llama with attention_bias). */
  qkvBias: boolean;
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

/** Parse and validate a config.json object. */
export function parseConfig(raw: unknown, path = "config.json"): ModelConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new CheckpointError("CONFIG_INVALID", "config.json must hold a JSON object", path);
  }
  const r = raw as Record<string, unknown>;
  const archs = Array.isArray(r.architectures) ? (r.architectures as unknown[]) : [];
  const byType: Record<string, Architecture> = { llama: "LlamaForCausalLM", qwen2: "Qwen2ForCausalLM" };
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
  if (r.rope_scaling != null) {
    const t =
      (r.rope_scaling as Record<string, unknown>).rope_type ??
      (r.rope_scaling as Record<string, unknown>).type;
    if (t !== "default") {
      throw new CheckpointError(
        "UNSUPPORTED_ARCHITECTURE",
        `rope_scaling of type ${JSON.stringify(t)} is not supported`,
        path,
      );
    }
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
  const headDim = int(r, "head_dim", path, hiddenSize / numHeads);
  if (headDim % 2 !== 0)
    throw new CheckpointError("CONFIG_INVALID", `head_dim must be even for RoPE, got ${headDim}`, path);
  const eos = r.eos_token_id;
  const eosTokenIds = Array.isArray(eos)
    ? eos.filter((x): x is number => Number.isInteger(x))
    : Number.isInteger(eos)
      ? [eos as number]
      : [];
  return {
    architecture: arch,
    hiddenSize,
    intermediateSize: int(r, "intermediate_size", path),
    numLayers: int(r, "num_hidden_layers", path),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int(r, "vocab_size", path),
    maxPositions: int(r, "max_position_embeddings", path),
    rmsNormEps: num(r, "rms_norm_eps", path, 1e-6),
    ropeTheta: num(r, "rope_theta", path, 10000),
    tieWordEmbeddings: Boolean(r.tie_word_embeddings ?? false),
    qkvBias: arch === "Qwen2ForCausalLM" ? true : Boolean(r.attention_bias),
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
