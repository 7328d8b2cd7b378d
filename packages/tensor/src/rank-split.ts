import { TensorShapeError } from "./errors.js";
import { native } from "./native.js";

/** How a list's ranked tokens split into exact and V-only ones. */
export type RankSplitRule =
  /**
   * Per list, `units` of budget (a V-only token costs half): the 2·⌈units⌉+1 best-ranked
   * tokens are candidates; exact tokens in rank order until they hold `exactShare` of the
   * candidates' score, then V-only ones (where `vOnly[g]`) while a token's score is at least
   * `negligible`; budget left over goes back to exact tokens.
   */
  | { kind: "adaptive"; units: Float64Array; vOnly: Uint8Array; exactShare: number; negligible: number }
  /** Per list, the `k` best-ranked tokens: the first `exact[g]` exact, the rest V-only. */
  | { kind: "fixed"; k: Int32Array; exact: Int32Array };

/**
 * One layer's ranked selection (a policy's decode-path hot spot, in one native call). Per
 * list g (a kv head, or a query head) the score of position p < n is the sum over the terms
 * [g, s, offset] of weights[t] · sources[s][offset + p]: the matched assistant heads' rows,
 * or scores made elsewhere (one term of weight 1). With `own`, a list whose assistantWeight
 * is ≥ 0 ranks by w·(its score as a distribution) + (1 − w)·(the LLM's own mean attention,
 * sums/counts, as a distribution). The newest `recent` positions are kept exact without
 * ranking; the others are ranked (score descending, ties to the earlier position, NaN last;
 * `exclude[g][p]` = 1 skips p) and split by `rule`.
 */
export interface RankSplitArgs {
  n: number;
  lists: number;
  sources: (Float32Array | Float64Array)[];
  terms: Int32Array;
  weights: Float64Array;
  own?: { assistantWeight: Float64Array; sums: Float64Array[]; counts: Float64Array[] };
  recent: number;
  /**
   * Per list, positions that are not ranked (1). With `skipExcludedRecent`, excluded positions
   * of the recent window are not kept either, and (fixed rule) their count is added to k and
   * exact. With `evict`, every position below the window that is not chosen is set to 1 here
   * (eviction for good, H2O-style).
   */
  exclude?: Uint8Array[];
  skipExcludedRecent?: boolean;
  evict?: boolean;
  rule: RankSplitRule;
}

/** Score terms that rank list g by scores[g] as it is (one source per list, weight 1). */
export function scoresAsGiven(
  scores: (Float32Array | Float64Array)[],
): Pick<RankSplitArgs, "sources" | "terms" | "weights"> {
  const terms = new Int32Array(3 * scores.length);
  for (let g = 0; g < scores.length; g++) terms.set([g, g, 0], 3 * g);
  return { sources: scores, terms, weights: new Float64Array(scores.length).fill(1) };
}

/** Per list, ascending positions: exact (the ranked ones, then the recent window) and V-only. */
export interface RankSplitResult {
  full: Int32Array[];
  vOnly: Int32Array[];
}

/** Output buffers kept between calls (a policy keeps one: no allocation per call but the result's). */
export class RankSplitBuffers {
  full = new Int32Array(0);
  vOnly = new Int32Array(0);
  fullOff = new Int32Array(0);
  vOff = new Int32Array(0);

  fit(lists: number, n: number): this {
    if (this.full.length < lists * n) {
      this.full = new Int32Array(Math.max(lists * n, 2 * this.full.length));
      this.vOnly = new Int32Array(this.full.length);
    }
    if (this.fullOff.length < lists + 1) {
      this.fullOff = new Int32Array(lists + 1);
      this.vOff = new Int32Array(lists + 1);
    }
    return this;
  }
}

const shared = new RankSplitBuffers();

function check(a: RankSplitArgs): void {
  const op = "rankSplit";
  const bad = (m: string) => {
    throw new TensorShapeError(op, m);
  };
  const { n, lists } = a;
  if (!Number.isInteger(n) || n < 0) bad(`n must be a non-negative integer, got ${n}`);
  if (!Number.isInteger(lists) || lists < 1) bad(`lists must be a positive integer, got ${lists}`);
  if (!Number.isInteger(a.recent) || a.recent < 0)
    bad(`recent must be a non-negative integer, got ${a.recent}`);
  if (!(a.terms instanceof Int32Array) || a.terms.length % 3 !== 0)
    bad("terms must be an Int32Array of [list, source, offset] triples");
  if (!(a.weights instanceof Float64Array) || a.weights.length < a.terms.length / 3)
    bad("weights must be a Float64Array with one weight per term");
  for (let t = 0; t < a.terms.length / 3; t++) {
    const [g, s, off] = [a.terms[3 * t], a.terms[3 * t + 1], a.terms[3 * t + 2]];
    const src = a.sources[s];
    if (g < 0 || g >= lists) bad(`term ${t}: list ${g} is outside [0, ${lists})`);
    if (!(src instanceof Float32Array || src instanceof Float64Array))
      bad(`term ${t}: source ${s} is not a Float32Array or Float64Array`);
    if (off < 0 || off + n > src.length)
      bad(`term ${t}: offset ${off} + n ${n} exceeds source ${s} (${src.length})`);
  }
  const perList = <T>(x: T[] | undefined, what: string, ok: (v: T) => boolean) => {
    if (x === undefined) return;
    if (!Array.isArray(x) || x.length !== lists || !x.every(ok)) bad(`${what} must hold one array per list`);
  };
  if (a.own) {
    if (!(a.own.assistantWeight instanceof Float64Array) || a.own.assistantWeight.length < lists)
      bad("own.assistantWeight must be a Float64Array per list");
    perList(a.own.sums, "own.sums", (v) => v instanceof Float64Array && v.length >= n);
    perList(a.own.counts, "own.counts", (v) => v instanceof Float64Array);
  }
  perList(a.exclude, "exclude", (v) => v instanceof Uint8Array && v.length >= n);
  const r = a.rule;
  if (r.kind === "adaptive") {
    if (!(r.units instanceof Float64Array) || r.units.length < lists)
      bad("rule.units must be a Float64Array per list");
    if (!(r.vOnly instanceof Uint8Array) || r.vOnly.length < lists)
      bad("rule.vOnly must be a Uint8Array per list");
    for (let g = 0; g < lists; g++)
      if (!(r.units[g] >= 0 && r.units[g] <= 1e9))
        bad(`rule.units[${g}] = ${r.units[g]} is outside [0, 1e9]`);
  } else if (r.kind === "fixed") {
    if (
      !(r.k instanceof Int32Array) ||
      !(r.exact instanceof Int32Array) ||
      r.k.length < lists ||
      r.exact.length < lists
    )
      bad("rule.k and rule.exact must be Int32Arrays per list");
    for (let g = 0; g < lists; g++)
      if (r.k[g] < 0 || r.exact[g] < 0) bad("rule.k and rule.exact must be >= 0");
  } else bad(`rule.kind must be "adaptive" or "fixed"`);
}

/** The native call's positional arguments for one selection, its outputs in `b`. */
function nativeArgs(a: RankSplitArgs, b: RankSplitBuffers): unknown[] {
  const r = a.rule;
  return [
    a.sources,
    a.terms,
    a.weights,
    a.n,
    a.lists,
    a.own?.assistantWeight ?? null,
    a.own?.sums ?? null,
    a.own?.counts ?? null,
    a.recent,
    a.exclude ?? null,
    r.kind === "adaptive",
    r.kind === "adaptive" ? r.units : null,
    r.kind === "adaptive" ? r.vOnly : null,
    r.kind === "fixed" ? r.k : null,
    r.kind === "fixed" ? r.exact : null,
    r.kind === "adaptive" ? r.exactShare : 0,
    r.kind === "adaptive" ? r.negligible : 0,
    b.full,
    b.fullOff,
    b.vOnly,
    b.vOff,
    a.skipExcludedRecent ?? false,
    a.evict ?? false,
  ];
}

/** The lists out of the reused buffers: one copy per kind, the lists views into it. */
function results(b: RankSplitBuffers, lists: number): RankSplitResult {
  const full = b.full.slice(0, b.fullOff[lists]);
  const vOnly = b.vOnly.slice(0, b.vOff[lists]);
  return {
    full: Array.from({ length: lists }, (_, g) => full.subarray(b.fullOff[g], b.fullOff[g + 1])),
    vOnly: Array.from({ length: lists }, (_, g) => vOnly.subarray(b.vOff[g], b.vOff[g + 1])),
  };
}

/**
 * Several selections (a step's layers) in one native call: each as `rankSplit` makes it, all
 * their lists on one team of threads when the work is large enough (one wake-up per step
 * instead of one per layer). Each call needs its own buffers.
 */
export function rankSplitMany(calls: RankSplitArgs[], buffers: RankSplitBuffers[]): RankSplitResult[] {
  if (buffers.length < calls.length) throw new TensorShapeError("rankSplitMany", "one buffer set per call");
  for (const a of calls) check(a);
  const bs = calls.map((a, i) => buffers[i].fit(a.lists, a.n));
  native.rankSplitMany(calls.map((a, i) => nativeArgs(a, bs[i])));
  return calls.map((a, i) => results(bs[i], a.lists));
}

/** The selection of one layer (see RankSplitArgs): argument checks, then one native call. */
export function rankSplit(a: RankSplitArgs, buffers: RankSplitBuffers = shared): RankSplitResult {
  check(a);
  const { n, lists } = a;
  const b = buffers.fit(lists, n);
  native.rankSplit(...nativeArgs(a, b));
  return results(b, lists);
}
