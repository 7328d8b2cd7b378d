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
  /** Per kv head g, the group's probabilities (rows t >= rowFrom) added to float dst[g * stride + position]. */
  | { kind: "columnSums"; dst: Addr; stride: number; rowFrom?: number }
  /** Nothing for this sequence. */
  | null;

function view(into: Int32Array | undefined, end: number): Int32Array {
  return into && into.length >= end ? into : new Int32Array(end);
}

function int64(dv: DataView, byte: number, x: number, what: string): void {
  if (!Number.isSafeInteger(x) || x < 0) throw new RangeError(`${what} is ${x}`);
  dv.setBigInt64(byte, BigInt(x), true);
}

/** Packs probability-pass records, one per attention record, from int32 slot `at` of `into`. */
export function packProbOuts(outs: ProbOut[], into?: Int32Array, at = 0): Int32Array {
  const out = view(into, at + outs.length * PROB_OUT_INTS);
  const dv = new DataView(out.buffer, out.byteOffset);
  outs.forEach((o, i) => {
    const b = (at + i * PROB_OUT_INTS) * 4;
    const what = `packProbOuts: record ${i}`;
    int64(dv, b, addr(o?.dst), what);
    int64(dv, b + 8, o?.stride ?? 0, what);
    int64(dv, b + 16, o?.rowFrom ?? 0, what);
    int64(dv, b + 24, o?.kind === "columnSums" ? 1 : 0, what);
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
}

/** Packs list records from int32 slot `at` of `into` (a new array when absent or short). */
export function packRankLists(lists: RankList[], into?: Int32Array, at = 0): Int32Array {
  const out = view(into, at + lists.length * RANK_LIST_INTS);
  const dv = new DataView(out.buffer, out.byteOffset);
  lists.forEach((l, i) => {
    const what = `packRankLists: list ${i}`;
    if (l.terms.length > RANK_TERMS)
      throw new RangeError(`${what} has ${l.terms.length} terms (at most ${RANK_TERMS})`);
    const b = (at + i * RANK_LIST_INTS) * 4;
    const r = l.rule;
    const flags =
      (r.kind === "adaptive" ? 1 : 0) |
      (r.kind === "adaptive" && r.vOnly ? 2 : 0) |
      (l.skipExcludedRecent ? 4 : 0) |
      (l.evict ? 8 : 0);
    const ints = [l.n, l.T, l.recent, flags, r.kind === "fixed" ? r.k : 0, r.kind === "fixed" ? r.exact : 0];
    ints.forEach((x, j) => int64(dv, b + 8 * j, x, what));
    dv.setFloat64(b + 48, r.kind === "adaptive" ? r.units : 0, true);
    dv.setFloat64(b + 56, r.kind === "adaptive" ? r.exactShare : 0, true);
    dv.setFloat64(b + 64, r.kind === "adaptive" ? r.negligible : 0, true);
    [
      addr(l.exclude),
      addr(l.full),
      addr(l.fullCount),
      addr(l.vOnly),
      addr(l.vOnlyCount),
      l.terms.length,
    ].forEach((x, j) => int64(dv, b + 72 + 8 * j, x, what));
    for (let t = 0; t < RANK_TERMS; t++) {
      int64(dv, b + 120 + 8 * t, t < l.terms.length ? addr(l.terms[t].row) : 0, what);
      dv.setFloat64(b + 248 + 8 * t, t < l.terms.length ? l.terms[t].weight : 0, true);
    }
    const w = l.weights;
    let gate = 0;
    w?.gate.forEach((g, t) => {
      if (g) gate += 2 ** t;
    });
    [addr(w?.w), w?.stride ?? 0, gate].forEach((x, j) => int64(dv, b + 376 + 8 * j, x, what));
  });
  return out;
}
