import type { Sequence } from "@smallkv/runner";
import { ScoreTable } from "../scores.js";
import { Evictions, maskOf, topPositions, union } from "../select.js";

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
 * Keep the recent window and the heaviest hitters among tokens not yet evicted; everything
 * else is evicted for good (it never returns).
 */
export function heavyPlusRecent(
  state: EvictionState,
  layer: number,
  numKvHeads: number,
  start: number,
  heavy: number,
  recent: number,
): Int32Array[] {
  const out: Int32Array[] = [];
  for (let g = 0; g < numKvHeads; g++) {
    const rec: number[] = [];
    for (let p = Math.max(0, start - recent); p < start; p++)
      if (!state.evicted.isEvicted(layer, g, p)) rec.push(p);
    const exclude = state.evicted.excludeInto(layer, g, maskOf(start, rec), start);
    const heavyPicks = topPositions(
      state.scores.get(layer, g, start),
      start,
      heavy + (recent - rec.length),
      exclude,
    );
    const keep = union(rec, heavyPicks);
    state.evicted.keepOnly(layer, g, start, keep);
    out.push(keep);
  }
  return out;
}
