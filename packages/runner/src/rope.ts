import { CheckpointError } from "./errors.js";

/** RoPE variants of Hugging Face transformers (`modeling_rope_utils.py`). */
export type RopeType = "default" | "linear" | "dynamic" | "llama3" | "yarn";
export const ROPE_TYPES: readonly RopeType[] = ["default", "linear", "dynamic", "llama3", "yarn"];

/** A model's rotary embedding, resolved from its config. */
export interface RopeConfig {
  type: RopeType;
  theta: number;
  /**
   * head_dim/2 frequencies (float64) replacing theta^(-2i/D); null for plain RoPE (the
   * kernels compute those themselves, as before).
   */
  invFreq: Float64Array | null;
  /** Multiplies cos and sin (YaRN's attention factor); 1 otherwise. */
  attentionFactor: number;
  /** Dynamic NTK: the frequencies depend on the sequence length (see `dynamicInvFreq`). */
  dynamic?: { factor: number; maxPositions: number };
}

const bad = (path: string, msg: string): never => {
  throw new CheckpointError("CONFIG_INVALID", `config.json: ${msg}`, path);
};

function positive(p: Record<string, unknown>, key: string, path: string, fallback?: number): number {
  const v = p[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
    return bad(path, `rope parameter "${key}" must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

/** theta^(-2i/D) for i < D/2, in float64. */
export function defaultInvFreq(theta: number, D: number): Float64Array {
  return Float64Array.from({ length: D / 2 }, (_, i) => theta ** ((-2 * i) / D));
}

/**
 * Dynamic NTK frequencies at sequence length `seqLen`: beyond the trained context the base
 * grows as theta · (factor·seqLen/max − (factor − 1))^(D/(D−2)); within it, plain RoPE.
 */
export function dynamicInvFreq(r: RopeConfig, D: number, seqLen: number): Float64Array {
  const { factor, maxPositions } = r.dynamic!;
  if (seqLen <= maxPositions) return defaultInvFreq(r.theta, D);
  const base = r.theta * ((factor * seqLen) / maxPositions - (factor - 1)) ** (D / (D - 2));
  return defaultInvFreq(base, D);
}

/**
 * The RoPE of a config: the classic `rope_scaling` dict (`rope_type` or legacy `type`) with a
 * top-level `rope_theta`, or the newer `rope_parameters` (which holds `rope_theta` itself).
 */
export function parseRope(
  r: Record<string, unknown>,
  D: number,
  maxPositions: number,
  path: string,
): RopeConfig {
  const params = (r.rope_parameters ?? r.rope_scaling ?? null) as Record<string, unknown> | null;
  if (params !== null && (typeof params !== "object" || Array.isArray(params)))
    bad(path, "rope_scaling / rope_parameters must be an object or null");
  const p = params ?? {};
  const partial = p.partial_rotary_factor ?? r.partial_rotary_factor;
  if (partial != null && partial !== 1)
    throw new CheckpointError(
      "UNSUPPORTED_ARCHITECTURE",
      "partial_rotary_factor other than 1 is not supported",
      path,
    );
  const theta = positive({ ...r, ...p }, "rope_theta", path, 10000);
  const type = (p.rope_type ?? p.type ?? "default") as string;
  if (!ROPE_TYPES.includes(type as RopeType))
    throw new CheckpointError(
      "UNSUPPORTED_ARCHITECTURE",
      `rope type ${JSON.stringify(type)} is not supported; supported: ${ROPE_TYPES.join(", ")}`,
      path,
    );
  const base = defaultInvFreq(theta, D);
  switch (type as RopeType) {
    case "default":
      return { type: "default", theta, invFreq: null, attentionFactor: 1 };
    case "linear": {
      const factor = positive(p, "factor", path);
      return { type: "linear", theta, invFreq: base.map((f) => f / factor), attentionFactor: 1 };
    }
    case "dynamic": {
      const factor = positive(p, "factor", path);
      const max = positive(p, "original_max_position_embeddings", path, maxPositions);
      return {
        type: "dynamic",
        theta,
        invFreq: null,
        attentionFactor: 1,
        dynamic: { factor, maxPositions: max },
      };
    }
    case "llama3": {
      const factor = positive(p, "factor", path);
      const low = positive(p, "low_freq_factor", path);
      const high = positive(p, "high_freq_factor", path);
      const old = positive(p, "original_max_position_embeddings", path);
      if (!(high > low)) bad(path, "llama3 rope: high_freq_factor must be greater than low_freq_factor");
      const lowWavelen = old / low;
      const highWavelen = old / high;
      const inv = base.map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highWavelen) return f;
        if (wavelen > lowWavelen) return f / factor;
        const smooth = (old / wavelen - low) / (high - low);
        return (1 - smooth) * (f / factor) + smooth * f;
      });
      return { type: "llama3", theta, invFreq: inv, attentionFactor: 1 };
    }
    case "yarn": {
      // transformers 4.5x: with original_max_position_embeddings given, the factor becomes
      // max_position_embeddings / original (DeepSeek-V3 style configs).
      let factor = positive(p, "factor", path);
      const original = p.original_max_position_embeddings as number | undefined;
      const origMax = original ?? maxPositions;
      if (original !== undefined)
        factor = maxPositions / positive(p, "original_max_position_embeddings", path);
      const mscaleOf = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      let attentionFactor = p.attention_factor as number | undefined;
      if (attentionFactor == null) {
        const m = p.mscale as number | undefined;
        const mAll = p.mscale_all_dim as number | undefined;
        attentionFactor = m && mAll ? mscaleOf(factor, m) / mscaleOf(factor, mAll) : mscaleOf(factor);
      }
      const betaFast = (p.beta_fast as number | undefined) || 32;
      const betaSlow = (p.beta_slow as number | undefined) || 1;
      const truncate = p.truncate !== false;
      const corrDim = (rot: number) => (D * Math.log(origMax / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
      let lo = corrDim(betaFast);
      let hi = corrDim(betaSlow);
      if (truncate) {
        lo = Math.floor(lo);
        hi = Math.ceil(hi);
      }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, D - 1);
      if (lo === hi) hi += 0.001;
      // Interpolated (f / factor) where the ramp is 1, extrapolated (f) where it is 0.
      const inv = base.map((f, i) => {
        const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
        return (f / factor) * ramp + f * (1 - ramp);
      });
      return { type: "yarn", theta, invFreq: inv, attentionFactor };
    }
  }
  return bad(path, `rope type ${type}`);
}

export type RopeKernelArgs = { invFreq: Float32Array; scale: number } | undefined;

/** Tables already made, per RoPE config and effective length (0: independent of the length). */
const madeTables = new WeakMap<RopeConfig, Map<number, RopeKernelArgs>>();

/**
 * What the RoPE kernels take for a sequence of length `seqLen`: a float32 frequency table and
 * the cos/sin factor, or undefined for plain RoPE (the kernels' own theta^(-2i/D)). Made once
 * per config (and per length for dynamic NTK), not at every layer of every step.
 */
export function ropeKernelArgs(r: RopeConfig, D: number, seqLen: number): RopeKernelArgs {
  const key = r.dynamic && seqLen > r.dynamic.maxPositions ? seqLen : 0;
  let made = madeTables.get(r);
  if (!made) madeTables.set(r, (made = new Map()));
  if (made.has(key)) return made.get(key);
  if (made.size > 64) made.clear();
  let args: RopeKernelArgs;
  if (r.dynamic) args = key ? { invFreq: Float32Array.from(dynamicInvFreq(r, D, key)), scale: 1 } : undefined;
  else if (r.invFreq || r.attentionFactor !== 1)
    args = { invFreq: Float32Array.from(r.invFreq ?? defaultInvFreq(r.theta, D)), scale: r.attentionFactor };
  made.set(key, args);
  return args;
}
