import type { Sequence } from "@smallkv/runner";
import { ScoreTable } from "../scores.js";
import { maskOf, range, topPositions, union } from "../select.js";

/** Per-sequence state of accumulate-and-evict policies (H2O, PyramidInfer). */
export interface EvictionState {
  scores: ScoreTable;
  /** evicted[layer][g][pos] = 1 once a token is gone for good. */
  evicted: Uint8Array[][];
}

export function evictionState(seq: Sequence): EvictionState {
  const c = seq.config;
  return {
    scores: new ScoreTable(c.numLayers, c.numKvHeads, c.numHeads / c.numKvHeads),
    evicted: Array.from({ length: c.numLayers }, () =>
      Array.from({ length: c.numKvHeads }, () => new Uint8Array(64)),
    ),
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
    let ev = state.evicted[layer][g];
    if (ev.length < start) {
      const next = new Uint8Array(Math.max(start, ev.length * 2));
      next.set(ev);
      state.evicted[layer][g] = ev = next;
    }
    const rec: number[] = [];
    for (let p = Math.max(0, start - recent); p < start; p++) if (!ev[p]) rec.push(p);
    const exclude = maskOf(start, rec);
    for (let p = 0; p < start; p++) if (ev[p]) exclude[p] = 1;
    const heavyPicks = topPositions(
      state.scores.get(layer, g, start),
      start,
      heavy + (recent - rec.length),
      exclude,
    );
    const keep = union(rec, heavyPicks);
    const keepMask = maskOf(start, keep);
    for (let p = 0; p < start; p++) if (!keepMask[p]) ev[p] = 1;
    out.push(keep);
  }
  return out;
}

export { range };
