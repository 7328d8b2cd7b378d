import type { Sequence } from "@smallkv/runner";
import { rankSplit, scoresAsGiven } from "@smallkv/tensor";
import { ScoreTable } from "../scores.js";
import { Evictions } from "../select.js";

/** Per-sequence state of accumulate-and-evict policies (H2O, PyramidInfer). */
export interface EvictionState {
  scores: ScoreTable;
  evicted: Evictions;
}

export function evictionState(seq: Sequence): EvictionState {
  const c = seq.config;
  return {
    scores: new ScoreTable(c.numLayers, c.numKvHeads, c.numHeads / c.numKvHeads),
    evicted: new Evictions(c.numLayers, c.numKvHeads),
  };
}

/**
 * The heavy + recent rule's numbers at a step: the recent window (no longer than the old tokens)
 * and per kv head the heavy hitters to rank (the window's unused slots go to them). The host's
 * selection and the device form share it.
 */
export function heavyRecentRule(
  numKvHeads: number,
  start: number,
  heavy: number,
  recent: number,
): { window: number; k: Int32Array } {
  const window = Math.min(start, recent);
  return { window, k: new Int32Array(numKvHeads).fill(Math.max(0, heavy + (recent - window))) };
}

/**
 * Keep the recent window and the heaviest hitters among tokens not yet evicted; everything
 * else is evicted for good (it never returns). One native call per layer: the scores are
 * ranked in place, the eviction masks updated in place (slots of evicted window tokens go to
 * heavy hitters).
 */
export function heavyPlusRecent(
  state: EvictionState,
  layer: number,
  numKvHeads: number,
  start: number,
  heavy: number,
  recent: number,
): Int32Array[] {
  const { window, k } = heavyRecentRule(numKvHeads, start, heavy, recent);
  const { sources, terms, weights } = scoresAsGiven(
    Array.from({ length: numKvHeads }, (_, g) => state.scores.get(layer, g, start)),
  );
  // Fields written out, not spread: a spread followed by new fields is V8's slow path.
  return rankSplit({
    n: start,
    lists: numKvHeads,
    sources,
    terms,
    weights,
    recent: window,
    exclude: state.evicted.masksFor(layer, start),
    skipExcludedRecent: true,
    evict: true,
    rule: { kind: "fixed", k, exact: k },
  }).full;
}
