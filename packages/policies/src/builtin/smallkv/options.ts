import { DEFAULT_WINDOW, MATCH_METRICS, type MatchMetric } from "@smallkv/matching";
import { PolicyOptionError } from "../../errors.js";
import { SCORE_MODES, type ScoreMode } from "./scoring.js";
import { parseRatio } from "./split.js";

/**
 * SmallKV's options. Each one that remains has its measured effect in docs/smallkv-rules.md;
 * alternatives that measured worse than the default (pooled heads, fitted mixtures, blending
 * in the LLM's own view, cross-head slot allocation, decayed scores, re-ranking every N steps)
 * were removed from the code, their figures kept there.
 */
export interface SmallKvOptions {
  [k: string]: string | number | boolean;
  /** "mass": (1 - m_M) O_c + O_m; "literal": O_c + O_m (as the paper writes it). */
  mode: string;
  /** "adaptive" (per head, from the predicted masses), or a fixed critical:recent:marginal ratio like 2:1:2. */
  split: string;
  /** At least this many of the newest old tokens are read exactly (0: none). */
  recent: number;
  /** How the assistant ranks tokens: current (its rows at this step), sum (the paper) or mean. */
  scores: string;
  /** "kv": select per kv head with the mean of the matched SLM scores of its query heads; "query": per query head (same memory). */
  gqa: string;
  /** Ablation switch: false = no marginal compensation (M empty, the budget all to critical + recent). */
  marginal: boolean;
  /** Marginal (V-only) tokens only for LLM heads whose matched SLM head covers at least this share of their attention. */
  gate: number;
  /**
   * Heads whose matched SLM head predicted their attention worse than their own past mean
   * attention did (measured on the matching window) rank by the LLM's own mean attention:
   * a weak assistant degrades to the assistant-free reversible selection.
   */
  fallback: boolean;
  /** Adaptive split: exact slots until they hold this share of the predicted mass, then V-only. */
  exactShare: number;
  /** Adaptive split: V-only only for tokens with at least this predicted mass. */
  negligible: number;
  /** Ablation switch: false = no saliency-shift compensation (irreversible eviction). */
  saliency: boolean;
  metric: string;
  /** TopK (Jaccard) and per-row top share (coverage) as a fraction of the window or row. */
  topk: number;
  minContext: number;
  maxContext: number;
  window: number;
  windowFrom: string;
  /** A saved head matching (smallkv match --out); empty: match each sequence on its own tokens. */
  mapping: string;
}

export function validate(name: string, o: SmallKvOptions): void {
  const bad = (msg: string) => {
    throw new PolicyOptionError(name, msg);
  };
  if (o.mode !== "mass" && o.mode !== "literal") bad(`mode must be mass or literal, got ${o.mode}`);
  if (o.gqa !== "kv" && o.gqa !== "query") bad(`gqa must be kv or query, got ${o.gqa}`);
  if (!MATCH_METRICS.includes(o.metric as MatchMetric))
    bad(`metric must be one of ${MATCH_METRICS.join(", ")}, got ${o.metric}`);
  if (o.windowFrom !== "first" && o.windowFrom !== "last") bad("windowFrom must be first or last");
  if (!SCORE_MODES.includes(o.scores as ScoreMode))
    bad(`scores must be one of ${SCORE_MODES.join(", ")}, got ${o.scores}`);
  if (o.split !== "adaptive" && !parseRatio(o.split))
    bad(`split must be adaptive or three non-negative numbers like 2:1:2, got ${JSON.stringify(o.split)}`);
  if (!(o.recent >= 0)) bad(`recent must be >= 0, got ${o.recent}`);
  for (const k of ["gate", "exactShare", "topk"] as const)
    if (!(o[k] >= 0 && o[k] <= 1)) bad(`${k} must be in [0, 1], got ${o[k]}`);
  if (!(o.negligible >= 0)) bad(`negligible must be >= 0, got ${o.negligible}`);
  if (!(o.minContext >= 1 && o.window >= 1 && o.maxContext >= o.minContext))
    bad("minContext and window must be >= 1 and maxContext >= minContext");
}

const COMMON = {
  mode: "mass",
  gqa: "kv",
  marginal: true,
  saliency: true,
  exactShare: 0.9,
  negligible: 0.002,
  topk: 0.2,
  minContext: DEFAULT_WINDOW.minTokens,
  maxContext: DEFAULT_WINDOW.maxTokens,
  window: DEFAULT_WINDOW.size,
  windowFrom: DEFAULT_WINDOW.from,
  mapping: "",
};

/** What the evaluation found best: current-row ranking, adaptive split, coverage gate, fallback. */
export const SMALLKV_DEFAULTS: SmallKvOptions = {
  ...COMMON,
  split: "adaptive",
  recent: 2,
  scores: "current",
  gate: 0.5,
  fallback: true,
  metric: "coverage",
};

/** The paper's rules: accumulated column sums, 2:1:2, Jaccard matching, no gate or fallback. */
export const PAPER_DEFAULTS: SmallKvOptions = {
  ...COMMON,
  split: "2:1:2",
  recent: 0,
  scores: "sum",
  gate: 0,
  fallback: false,
  metric: "jaccard",
};
