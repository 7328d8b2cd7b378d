import type { HeadMatching } from "@smallkv/matching";
import type { AssistantState } from "@smallkv/runner";

/**
 * How the assistant ranks the LLM's old tokens for one kv head:
 * - "sum": accumulated column sums (the paper's rule; favours early positions, which more
 *   queries could attend),
 * - "mean": accumulated sums divided by the number of queries that could attend,
 * - "current": the matched assistant heads' attention rows at this very step (the
 *   assistant runs first on the same token, so its row is known before the LLM attends),
 * - "decay": current rows accumulated with an exponential decay (half-life in steps).
 */
export type ScoreMode = "sum" | "mean" | "current" | "decay";
export const SCORE_MODES: readonly ScoreMode[] = ["sum", "mean", "current", "decay"];

/** Decayed scores per (layer, list), carried across steps for "decay". */
export class DecayedScores {
  private readonly acc: Float64Array[][];
  private readonly lastStep: number[][];

  constructor(numLayers: number, lists: number) {
    this.acc = Array.from({ length: numLayers }, () =>
      Array.from({ length: lists }, () => new Float64Array(0)),
    );
    this.lastStep = Array.from({ length: numLayers }, () => new Array(lists).fill(-1));
  }

  copyLayer(layer: number): { acc: Float64Array[]; last: number[] } {
    return { acc: this.acc[layer].map((a) => a.slice()), last: this.lastStep[layer].slice() };
  }
  putLayer(layer: number, x: { acc: Float64Array[]; last: number[] }): void {
    this.acc[layer] = x.acc.map((a) => a.slice());
    this.lastStep[layer] = x.last.slice();
  }

  /** Fold this step's row into the list's decayed scores (once per step) and return them over [0, n). */
  update(layer: number, g: number, step: number, n: number, row: Float64Array, factor: number): Float64Array {
    let a = this.acc[layer][g];
    if (a.length < n) {
      const next = new Float64Array(Math.max(n, a.length * 2));
      next.set(a);
      this.acc[layer][g] = a = next;
    }
    if (this.lastStep[layer][g] !== step) {
      const f = this.lastStep[layer][g] < 0 ? 0 : factor ** (step - this.lastStep[layer][g]);
      for (let p = 0; p < n; p++) a[p] = a[p] * f + row[p];
      this.lastStep[layer][g] = step;
    }
    return a.subarray(0, n);
  }
}

/** True when the assistant kept its attention rows of this step (T rows over n keys) in every layer. */
export function hasRows(a: AssistantState, T: number, n: number): boolean {
  return a.rowsT === T && a.rowsN >= n && a.rows.every((r) => r !== null);
}

/**
 * Predicted attention of the LLM's query heads `heads` over old positions [0, start): the
 * mean of their matched assistant heads' rows at this step (summed over the step's rows).
 */
export function currentRow(
  a: AssistantState,
  m: HeadMatching,
  layer: number,
  heads: readonly number[],
  start: number,
  T: number,
  pool = 1,
): Float64Array {
  const out = new Float64Array(start);
  for (const h of heads) {
    const shs = m.slmHeadsOf(layer, h, pool);
    for (const sh of shs) addRows(out, a, sh.layer, sh.head, T, 1 / (heads.length * shs.length));
  }
  return out;
}

/** out[p] += f * (SLM head's rows of this step, summed over the step's T rows), p < out.length. */
function addRows(
  out: Float64Array,
  a: AssistantState,
  layer: number,
  head: number,
  T: number,
  f: number,
): void {
  for (let t = 0; t < T; t++) {
    const row = a.row(layer, head, t);
    for (let p = 0; p < out.length; p++) out[p] += row[p] * f;
  }
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

/**
 * Predicted attention of query heads `heads` over old positions [0, start) from each head's
 * fitted mixture: the weighted rows of every SLM head at this step plus the weighted own
 * past mean attention (`own`, normalised), averaged over the heads.
 */
export function fittedRow(
  a: AssistantState,
  m: HeadMatching,
  layer: number,
  heads: readonly number[],
  start: number,
  T: number,
  own: Float64Array | null,
): Float64Array {
  const out = new Float64Array(start);
  const H = a.model.config.numHeads;
  for (const h of heads) {
    const w = m.weightsOf(layer, h);
    if (!w) throw new Error(`the head matching has no fitted weights for layer ${layer} head ${h}`);
    for (let j = 0; j < w.length - 1; j++) {
      if (w[j] > 0) addRows(out, a, Math.floor(j / H), j % H, T, w[j] / heads.length);
    }
    const wo = w[w.length - 1];
    if (own && wo > 0) for (let p = 0; p < start; p++) out[p] += (wo * T * own[p]) / heads.length;
  }
  return out;
}
