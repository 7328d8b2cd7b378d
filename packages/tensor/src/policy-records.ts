import type { DeviceBuffer, PinnedBuffer } from "./device.js";
import { PROB_OUT_BYTES, RANK_LIST_BYTES } from "./device.js";

type Addr = DeviceBuffer | PinnedBuffer | number;
const addr = (x: Addr | undefined): number => (x === undefined ? 0 : typeof x === "number" ? x : x.ptr);

/** Int32 slots of one packed probability-pass output record. */
export const PROB_OUT_INTS = PROB_OUT_BYTES / 4;
/** Int32 slots of one packed ranked-selection list record. */
export const RANK_LIST_INTS = RANK_LIST_BYTES / 4;
/** Score terms (and V-only weight rows) a list record holds. */
export const RANK_TERMS = 16;

/** Where the probability pass puts one sequence's probabilities (SkvProbOut in dev_api.h). */
export type ProbOut =
  /** Rows t >= rowFrom of every query head: float dst[(h * (T - rowFrom) + t - rowFrom) * stride + key]. */
  | { kind: "rows"; dst: Addr; stride: number; rowFrom?: number }
  /**
   * Per kv head g, the group's probabilities (rows t >= rowFrom) added to float dst[g * stride +
   * position]; with `counts`, the number of those rows that see each key added there alike.
   */
  | { kind: "columnSums"; dst: Addr; stride: number; rowFrom?: number; counts?: Addr }
  /** As columnSums, but this step's sums replace the entries of the listed keys (others keep theirs). */
  | { kind: "columnValues"; dst: Addr; stride: number; rowFrom?: number; counts?: Addr }
  /** Nothing for this sequence. */
  | null;

function view(into: Int32Array | undefined, end: number): Int32Array {
  return into && into.length >= end ? into : new Int32Array(end);
}

/** Packs probability-pass records, one per attention record, from int32 slot `at` of `into`. */
export function packProbOuts(outs: ProbOut[], into?: Int32Array, at = 0): Int32Array {
  const out = view(into, at + outs.length * PROB_OUT_INTS);
  outs.forEach((o, i) => {
    const b = at + i * PROB_OUT_INTS;
    const what = `packProbOuts: record ${i}`;
    put(out, b, addr(o?.dst), what);
    put(out, b + 2, o?.stride ?? 0, what);
    put(out, b + 4, o?.rowFrom ?? 0, what);
    put(out, b + 6, o?.kind === "columnSums" ? 1 : o?.kind === "columnValues" ? 2 : 0, what);
    put(out, b + 8, o && o.kind !== "rows" ? addr(o.counts) : 0, what);
    put(out, b + 10, 0, what);
  });
  return out;
}

/** One list's ranked selection on the device (SkvRankList; rankSplit's semantics for one list). */
export interface RankList {
  /** Positions [0, n) are kept or ranked; this step's T rows (positions n..n+T-1) end the exact list. */
  n: number;
  T: number;
  recent: number;
  rule:
    | { kind: "fixed"; k: number; exact: number }
    | { kind: "adaptive"; units: number; vOnly: boolean; exactShare: number; negligible: number };
  /** uint8 [n]: 1 = not ranked; `evict` sets it for every ranked position not chosen. */
  exclude?: Addr;
  skipExcludedRecent?: boolean;
  evict?: boolean;
  /** Score of position p: sum of weight * (float row)[p] over the terms (at most RANK_TERMS). */
  terms: { row: Addr; weight: number }[];
  /** int32 outputs: exact positions and their count (one int), V-only positions and their count. */
  full: Addr;
  fullCount: Addr;
  vOnly?: Addr;
  vOnlyCount?: Addr;
  /** V-only weights: term t's row at each V-only position to float w + t * stride (0 unless gate[t]). */
  weights?: { w: Addr; stride: number; gate: boolean[] };
  /**
   * Rank by weight * (the terms' score as a distribution over [0, n)) + (1 - weight) * (the mean
   * attention sums / counts, float rows, as a distribution): rankSplit's `own` blend.
   */
  blend?: { weight: number; sums: Addr; counts: Addr };
  /** Rank by the terms' mean over [p - radius, p + radius] within [0, limit) (zero padding): pooled votes. */
  pool?: { radius: number; limit: number };
}

/** x (a non-negative safe integer) as an int64 in out[at], out[at + 1]. */
function put(out: Int32Array, at: number, x: number, what: string): void {
  if (!Number.isSafeInteger(x) || x < 0) throw new RangeError(`${what}: ${x} is not an address or count`);
  const hi = Math.floor(x / 4294967296);
  out[at] = x - hi * 4294967296; // wraps to int32; the device reads the bits
  out[at + 1] = hi;
}

/**
 * Packs list records from int32 slot `at` (even: records hold doubles) of `into` (a new array
 * when absent or short). Typed-array writes only: a step packs one record per list of every
 * layer of every sequence.
 */
export function packRankLists(lists: RankList[], into?: Int32Array, at = 0): Int32Array {
  if (at % 2 !== 0) throw new RangeError("packRankLists: records start at an even int32 slot");
  const out = view(into, at + lists.length * RANK_LIST_INTS);
  if (out.byteOffset % 8 !== 0) throw new RangeError("packRankLists: the array must be 8-byte aligned");
  const f64 = new Float64Array(out.buffer, out.byteOffset, Math.floor(out.length / 2));
  lists.forEach((l, i) => {
    const what = `packRankLists: list ${i}`;
    if (l.terms.length > RANK_TERMS)
      throw new RangeError(`${what} has ${l.terms.length} terms (at most ${RANK_TERMS})`);
    const b = at + i * RANK_LIST_INTS;
    const r = l.rule;
    const fixed = r.kind === "fixed";
    const flags =
      (fixed ? 0 : 1) | (!fixed && r.vOnly ? 2 : 0) | (l.skipExcludedRecent ? 4 : 0) | (l.evict ? 8 : 0);
    put(out, b, l.n, what);
    put(out, b + 2, l.T, what);
    put(out, b + 4, l.recent, what);
    put(out, b + 6, flags, what);
    put(out, b + 8, fixed ? r.k : 0, what);
    put(out, b + 10, fixed ? r.exact : 0, what);
    f64[b / 2 + 6] = fixed ? 0 : r.units;
    f64[b / 2 + 7] = fixed ? 0 : r.exactShare;
    f64[b / 2 + 8] = fixed ? 0 : r.negligible;
    put(out, b + 18, addr(l.exclude), what);
    put(out, b + 20, addr(l.full), what);
    put(out, b + 22, addr(l.fullCount), what);
    put(out, b + 24, addr(l.vOnly), what);
    put(out, b + 26, addr(l.vOnlyCount), what);
    put(out, b + 28, l.terms.length, what);
    for (let t = 0; t < RANK_TERMS; t++) {
      const term = l.terms[t];
      put(out, b + 30 + 2 * t, term ? addr(term.row) : 0, what);
      f64[b / 2 + 31 + t] = term ? term.weight : 0;
    }
    const w = l.weights;
    let gate = 0;
    if (w) for (let t = 0; t < w.gate.length; t++) if (w.gate[t]) gate += 2 ** t;
    put(out, b + 94, addr(w?.w), what);
    put(out, b + 96, w?.stride ?? 0, what);
    put(out, b + 98, gate, what);
    f64[b / 2 + 50] = l.blend ? l.blend.weight : -1;
    put(out, b + 102, addr(l.blend?.sums), what);
    put(out, b + 104, addr(l.blend?.counts), what);
    put(out, b + 106, l.pool?.radius ?? 0, what);
    put(out, b + 108, l.pool?.limit ?? 0, what);
  });
  return out;
}

/**
 * Rewrites the per-step fields of packed list record `i` of `out` (from slot `at`): what a
 * step changes (n, T, the window, the rule's numbers) while the addresses stay. The rule's
 * kind and flags must be those it was packed with.
 */
export function patchRankList(
  out: Int32Array,
  at: number,
  i: number,
  l: Pick<RankList, "n" | "T" | "recent" | "rule">,
): void {
  const b = at + i * RANK_LIST_INTS;
  const what = `patchRankList: list ${i}`;
  put(out, b, l.n, what);
  put(out, b + 2, l.T, what);
  put(out, b + 4, l.recent, what);
  const r = l.rule;
  if (r.kind === "fixed") {
    put(out, b + 8, r.k, what);
    put(out, b + 10, r.exact, what);
  } else {
    const f64 = new Float64Array(out.buffer, out.byteOffset + b * 4, 9);
    f64[6] = r.units;
  }
}

/** One row's sampling on the device (SkvSample): temperature 0 is the argmax; u is the host's draw. */
export interface SampleParams {
  temperature: number;
  topK: number;
  topP: number;
  u: number;
}

/** Packs per-row sampling parameters, 4 int32 slots a row from slot `at` of `into`. */
export function packSampling(rows: SampleParams[], into?: Int32Array, at = 0): Int32Array {
  const out = view(into, at + 4 * rows.length);
  const f32 = new Float32Array(out.buffer, out.byteOffset, out.length);
  rows.forEach((r, i) => {
    if (
      !(
        r.temperature >= 0 &&
        r.topP > 0 &&
        r.topP <= 1 &&
        r.u >= 0 &&
        r.u < 1 &&
        Number.isInteger(r.topK) &&
        r.topK >= 0
      )
    )
      throw new RangeError(`packSampling: row ${i} has parameters out of range`);
    const b = at + 4 * i;
    f32[b] = r.temperature;
    f32[b + 1] = r.topP;
    out[b + 2] = r.topK;
    f32[b + 3] = r.u;
  });
  return out;
}
