import { attentionBatch } from "@smallkv/tensor";
import { InvalidOptionError } from "./errors.js";
import { planAt } from "./host-attend.js";
import type { Journal, Sequence } from "./sequence.js";

/**
 * Replay the policy's part of the journaled rows [from, length) of a sequence restored to
 * its snapshot at `from`: every row's selection, hot-set moves, attention and observation,
 * in the order the steps ran them (a rowwise step layer by layer, row by row inside each
 * layer; a plain step whole, layer by layer), from the queries the journal kept. The
 * attention outputs are thrown away: the rows' K/V are in the store, only the state counts.
 */
export function replaySteps(seq: Sequence, j: Journal, from: number, length: number): void {
  const { numHeads: Hq, headDim: D, numLayers: L } = seq.config;
  const w = Hq * D;
  for (const s of j.steps) {
    if (s.start + s.T <= from) continue;
    if (s.start >= length) break;
    if (s.start < from)
      throw new InvalidOptionError("rollback", `a snapshot at ${from} falls inside the step at ${s.start}`);
    const rows = Math.min(s.T, length - s.start);
    if (!s.rowwise && rows < s.T)
      throw new InvalidOptionError(
        "rollback",
        `length ${length} falls inside a ${s.T}-token step that was not planned row by row`,
      );
    const out = new Float32Array(s.T * w);
    const q = (l: number, t: number, n: number) =>
      j.q[l].subarray((s.start - j.start + t) * w, (s.start - j.start + t + n) * w);
    const run = (l: number, t: number, n: number) => {
      const p = planAt(seq, l, s.start + t, n, q(l, t, n), out.subarray(t * w, (t + n) * w));
      p.finish(attentionBatch([p.args])[0]);
    };
    for (let l = 0; l < L; l++) {
      if (s.rowwise) for (let t = 0; t < rows; t++) run(l, t, 1);
      else run(l, 0, s.T);
    }
  }
}
