import type { HeadMatching } from "@smallkv/matching";
import type { LayerSelection } from "@smallkv/runner";
import type { RankSplitBuffers } from "@smallkv/tensor";
import type { MeanAttention } from "../../scores.js";
import type { PolicyContext } from "../../sdk.js";
import type { Evictions } from "../../select.js";
import type { SmallKvOptions } from "./options.js";
import type { TermPlan } from "./ranking.js";

export interface SmallKvState {
  matching: HeadMatching | null;
  evicted: Evictions;
  /** The LLM's own mean attention (for heads that fall back; null once none does). */
  own: MeanAttention | null;
  /** Per layer: token counts by class at its last step (per kv head or query head list). */
  counts: { critical: number; recent: number; marginal: number }[];
  layers: number;
  /** Positions in the recent window at the last step (for traces). */
  lastRecent: number;
  /** Per LLM layer and query head: may use V-only tokens / trusts its matched SLM head. */
  gated: boolean[][] | null;
  trusted: boolean[][] | null;
  /** Per layer: the native score terms of the default ranking (made on first use). */
  plans: (TermPlan | undefined)[];
  /** Per layer: lists that may hold V-only tokens (some query head passes the gate). */
  marginalLists: (Uint8Array | undefined)[];
  /** Every layer's selection of a decode step, ranked at layer 0 (`next`: the layer due). */
  batch: { start: number; next: number; sels: LayerSelection[] } | null;
  /** No batch before this position (a batch was left unfinished: layers interleaved). */
  batchAfter: number;
  /** The native ranking's output buffers, one set per layer of a batch. */
  buffers: RankSplitBuffers[];
  /** Per layer: the device form's score terms (fixed once matched: the runner reuses its packed lists while they hold). */
  deviceTerms: ({ list: number; layer: number; head: number; weight: number }[] | undefined)[];
}

export type SmallKvContext = PolicyContext<SmallKvState, SmallKvOptions>;

/** The kv head behind list g (a list is a kv head, or with gqa=query one of its query heads). */
export function kvHeadOf(ctx: SmallKvContext, g: number): number {
  return ctx.options.gqa === "query" ? Math.floor(g / (ctx.config.numHeads / ctx.config.numKvHeads)) : g;
}
