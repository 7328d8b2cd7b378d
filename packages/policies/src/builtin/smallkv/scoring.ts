import type { HeadMatching } from "@smallkv/matching";
import type { AssistantState } from "@smallkv/runner";

/**
 * How the assistant ranks the LLM's old tokens for one kv head:
 * - "sum": accumulated column sums (the paper's rule; favours early positions, which more
 *   queries could attend),
 * - "mean": accumulated sums divided by the number of queries that could attend,
 * - "current": the matched assistant heads' attention rows at this very step (the
 *   assistant runs first on the same token, so its row is known before the LLM attends).
 * ("decay", current rows with an exponential decay, measured worse and was removed: see
 * docs/smallkv-rules.md.)
 */
export type ScoreMode = "sum" | "mean" | "current";
export const SCORE_MODES: readonly ScoreMode[] = ["sum", "mean", "current"];

/** True when the assistant kept its attention rows of this step (T rows over n keys) in every layer. */
export function hasRows(a: AssistantState, T: number, n: number): boolean {
  return a.rowsT === T && a.rowsN >= n && a.rows.every((r) => r !== null);
}

/** Accumulated assistant attention of the matched heads over [0, start), raw or per attending query. */
export function accumulated(
  a: AssistantState,
  m: HeadMatching,
  layer: number,
  heads: readonly number[],
  start: number,
  mean: boolean,
): Float64Array {
  const out = new Float64Array(start);
  // Rows the assistant has seen (this step's included): position p had rows - p queries.
  const rows = a.length;
  for (const h of heads) {
    const sh = m.slmHeadOf(layer, h);
    const s = a.score(sh.layer, sh.head, start);
    for (let p = 0; p < start; p++) out[p] += (mean ? s[p] / (rows - p) : s[p]) / heads.length;
  }
  return out;
}
