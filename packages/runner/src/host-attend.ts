import type { AttentionArgs, AttentionResult, IndexedAttentionArgs } from "@smallkv/tensor";
import {
  observeAttention,
  observedPositions,
  planLayer,
  vOnlyWeights,
  vOnlyWeightsInSlotOrder,
} from "./attend-policy.js";
import { HostRows, type HostStore, type IndexedRows } from "./hot-set.js";
import type { LayerSelection, StepInfo } from "./policy-hook.js";
import type { HostHot, Sequence } from "./sequence.js";

// The CPU backend's attention of one sequence at one layer, in two halves around the kernel:
// `planHostAttention` asks the policy, moves hot rows and returns the kernel's arguments;
// the returned `finish` shows the policy what it asked to observe. The model runs the
// kernels of every sequence of a layer in one call between the halves.

const EMPTY = new Float32Array(0);

/** One sequence's attention at one layer: the kernel's arguments, and what follows the kernel. */
export interface PlannedAttention {
  args: AttentionArgs | IndexedAttentionArgs;
  finish(result: AttentionResult): void;
}

/** Plan the attention of `seq` at `layer` for its T new query rows (their K/V already in its store). */
export function planHostAttention(
  seq: Sequence,
  layer: number,
  T: number,
  q: Float32Array,
  out: Float32Array,
): PlannedAttention {
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = seq.config;
  const start = seq.length;
  const step = { start, T };
  const { sel, request, wantProbs, scoreStart, window } = planLayer(
    seq,
    layer,
    seq.policy.wantsQuery ? { start, T, query: q } : step,
  );
  const hot = seq.hot[layer] as HostHot;
  // An int8 store is read in place by the kernels (its float planes are empty).
  const int8 = seq.kv.int8Of(layer) ?? undefined;
  const kStore = int8 ? EMPTY : seq.kv.k[layer];
  const vStore = int8 ? EMPTY : seq.kv.v[layer];
  // A sliding layer's store starts at position `base` (older rows were dropped).
  const base = seq.kv.base[layer];
  let scores: Float32Array | undefined;
  let args: AttentionArgs | IndexedAttentionArgs;
  if (!sel) {
    const L = start + T - base;
    if (typeof request === "object") scores = new Float32Array(Hq * L);
    args = {
      q,
      k: kStore,
      v: vStore,
      int8,
      cap: seq.kv.capOf(layer),
      T,
      past: start - base,
      Hq,
      Hkv,
      D,
      out,
      probs: wantProbs,
      scores,
      scoreStart,
      window,
    };
  } else {
    const store: HostStore = { k: kStore, v: vStore, int8, cap: seq.kv.capOf(layer) };
    const common = { q, out, probs: wantProbs, scoreStart };
    args =
      hot.full instanceof HostRows
        ? heldRowsArgs(seq, layer, step, sel, hot as HeldHot, store, base, common)
        : indexedArgs(seq, layer, step, sel, hot as IndexedHot, store, base, common);
    if (typeof request === "object") {
      const lists = sel.perQueryHead ? Hq : Hkv;
      let Lmax = T;
      for (let g = 0; g < lists; g++) Lmax = Math.max(Lmax, hot.full.positions(g).length);
      scores = new Float32Array(Hq * Lmax);
      args.scores = scores;
    }
  }
  const finish = (result: AttentionResult) => {
    if (!request) return;
    // Policies see positions: a sliding layer's rows from `base` are shifted back in place.
    const o = !sel && base > 0 ? toPositions(result.probs, scores, Hq, T, result.Lmax, base) : null;
    const Lmax = o ? result.Lmax + base : result.Lmax;
    observeAttention(seq, {
      layer,
      start,
      T,
      probs: o ? o.probs : result.probs,
      scores: o ? o.scores : scores,
      Lmax,
      keyPositions: observedPositions(seq, layer, sel, Lmax),
    });
  };
  return { args, finish };
}

type HeldHot = HostHot & { full: HostRows; vOnly: HostRows };
type IndexedHot = HostHot & { full: IndexedRows; vOnly: IndexedRows };
/** The kernel arguments every selection path shares. */
type CommonArgs = Pick<AttentionArgs, "q" | "out" | "probs" | "scoreStart">;

/** The policy's V-only weights, or none with the sequence faulted: its neighbours in the batch are unaffected. */
function weightsOrFault(seq: Sequence, weights: () => Float32Array): Float32Array | null {
  try {
    return weights();
  } catch (e) {
    // The request fails at the end of this step.
    seq.fault = e as Error;
    return null;
  }
}

/**
 * A selection through a hot set that holds rows: the difference is copied in, the step's own
 * rows appended, and attention streams the hot rows (per hot head: past rows, then the own).
 */
function heldRowsArgs(
  seq: Sequence,
  layer: number,
  step: StepInfo,
  sel: LayerSelection,
  hot: HeldHot,
  store: HostStore,
  base: number,
  common: CommonArgs,
): AttentionArgs {
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = seq.config;
  const { start, T } = step;
  hot.full.apply(sel.full, [store], store.cap, start + T, base);
  hot.full.appendFrom(store, start - base, start, T);
  let vOnly: AttentionArgs["vOnly"];
  const vsel = sel.vOnly;
  if (vsel?.some((x) => x.length > 0)) {
    hot.vOnly.apply(vsel, [store], store.cap, start + T, base);
    // The hot set keeps its own slot order; weights come in selection order, so reorder.
    const weights = weightsOrFault(seq, () => vOnlyWeightsInSlotOrder(seq, layer, step, sel, hot.vOnly));
    if (weights)
      vOnly = {
        v: hot.vOnly.planesF32[0],
        cap: hot.vOnly.cap,
        counts: hot.vOnly.count.slice(),
        weights,
        mode: sel.combine ?? "mass",
      };
  } else hot.vOnly.clear();
  // Every field written out: a spread followed by more fields takes V8's slow path
  // (microseconds per object in Node 20), once per sequence and layer.
  return {
    q: common.q,
    out: common.out,
    probs: common.probs,
    scoreStart: common.scoreStart,
    k: hot.full.planesF32[0],
    v: hot.full.planesF32[1],
    cap: hot.full.cap,
    T,
    past: hot.full.pastCounts(T),
    Hq,
    Hkv: sel.perQueryHead ? Hq : Hkv,
    D,
    vOnly,
  };
}

/** A selection read in place: index lists into the store, in the selection's order. */
function indexedArgs(
  seq: Sequence,
  layer: number,
  step: StepInfo,
  sel: LayerSelection,
  hot: IndexedHot,
  store: HostStore,
  base: number,
  common: CommonArgs,
): IndexedAttentionArgs {
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = seq.config;
  const { start, T } = step;
  const full = hot.full.use(sel.full, start, T, base);
  let vOnly: IndexedAttentionArgs["vOnly"];
  const vsel = sel.vOnly;
  if (vsel?.some((x) => x.length > 0)) {
    const rows = hot.vOnly.use(vsel, start, 0, base);
    const weights = weightsOrFault(seq, () => vOnlyWeights(seq, layer, step, sel));
    if (weights) vOnly = { idx: rows.idx, off: rows.off, weights, mode: sel.combine ?? "mass" };
  } else hot.vOnly.clear();
  return {
    q: common.q,
    out: common.out,
    probs: common.probs,
    scoreStart: common.scoreStart,
    k: store.k,
    v: store.v,
    int8: store.int8,
    cap: store.cap,
    T,
    Hq,
    Hkv,
    D,
    lists: sel.perQueryHead ? Hq : Hkv,
    idx: full.idx,
    off: full.off,
    newAt: start - base,
    vOnly,
  };
}

/** Probabilities [Hq][T][L] and scores [Hq][L] over rows from position `base`, as [.][base + L] over positions. */
function toPositions(
  probs: Float32Array | undefined,
  scores: Float32Array | undefined,
  Hq: number,
  T: number,
  L: number,
  base: number,
): { probs?: Float32Array; scores?: Float32Array } {
  const P = L + base;
  let p: Float32Array | undefined;
  if (probs) {
    p = new Float32Array(Hq * T * P);
    for (let r = 0; r < Hq * T; r++) p.set(probs.subarray(r * L, (r + 1) * L), r * P + base);
  }
  let s: Float32Array | undefined;
  if (scores) {
    s = new Float32Array(Hq * P);
    for (let h = 0; h < Hq; h++) s.set(scores.subarray(h * L, (h + 1) * L), h * P + base);
  }
  return { probs: p, scores: s };
}

/**
 * Plan T rows of `seq` at `layer` from position `start` (at or past its length): while the
 * policy plans and observes, the sequence and its assistant look as they did at that
 * position, so a row of a verify step (or of a replay) is planned as its one-token step was.
 */
export function planAt(
  seq: Sequence,
  layer: number,
  start: number,
  T: number,
  q: Float32Array,
  out: Float32Array,
): PlannedAttention {
  const length = seq.kv.length;
  const show = () => {
    seq.kv.length = start;
    seq.assistant?.viewAt(start + T - 1);
  };
  show();
  try {
    const p = planHostAttention(seq, layer, T, q, out);
    return {
      args: p.args,
      finish(result) {
        show();
        try {
          p.finish(result);
        } finally {
          seq.kv.length = length;
        }
      },
    };
  } finally {
    seq.kv.length = length;
  }
}
