import { PolicyError } from "./errors.js";
import type { HotSlots } from "./hot-set.js";
import type { AttentionRequest, LayerSelection, StepInfo } from "./policy-hook.js";
import { positionsUpTo } from "./positions.js";
import type { Sequence } from "./sequence.js";

// The policy side of one layer's attention, shared by the CPU and device backends: asking
// for the selection and the attention outputs, checking what comes back, and reporting
// the outcome. A failing policy faults its own sequence only.

/** The policy's selection for this layer and step, validated; a broken one faults the sequence. */
function selectFor(seq: Sequence, layer: number, step: StepInfo): LayerSelection | null {
  const config = seq.config;
  const policy = seq.policy;
  if (!policy.select) return null;
  try {
    const sel = policy.select(seq, layer, step);
    if (sel) validateSelection(seq, sel, sel.perQueryHead ? config.numHeads : config.numKvHeads, step.start);
    return sel;
  } catch (e) {
    seq.fault = e instanceof PolicyError ? e : new PolicyError(policy.name, "select", (e as Error).message);
    return null;
  }
}

/** The policy's V-only weights [Hq][T][vmax] in selection order, checked. */
export function vOnlyWeights(
  seq: Sequence,
  layer: number,
  step: StepInfo,
  sel: LayerSelection,
): Float32Array {
  const Hq = seq.config.numHeads;
  const vmax = Math.max(...sel.vOnly!.map((x) => x.length));
  const name = seq.policy.name;
  if (!seq.policy.vOnlyWeights)
    throw new PolicyError(
      name,
      "V-only weights",
      "selection has V-only tokens but the policy has no vOnlyWeights",
    );
  let w: Float32Array;
  try {
    w = seq.policy.vOnlyWeights(seq, layer, step, sel);
  } catch (e) {
    throw new PolicyError(name, "vOnlyWeights", (e as Error).message);
  }
  if (!(w instanceof Float32Array) || w.length !== Hq * step.T * vmax) {
    throw new PolicyError(
      name,
      "V-only weights",
      `expected a Float32Array of Hq*T*vmax = ${Hq * step.T * vmax} weights`,
    );
  }
  for (let i = 0; i < w.length; i++) {
    const x = w[i];
    if (!(x >= 0) || x === Number.POSITIVE_INFINITY)
      throw new PolicyError(name, "V-only weights", `weight ${x} is not a finite non-negative number`);
  }
  return w;
}

/** vOnlyWeights reordered to a hot set's slot order (a hot set that keeps rows in place). */
export function vOnlyWeightsInSlotOrder(
  seq: Sequence,
  layer: number,
  step: StepInfo,
  sel: LayerSelection,
  rows: HotSlots<unknown>,
): Float32Array {
  const Hq = seq.config.numHeads;
  const Hkv = sel.perQueryHead ? Hq : seq.config.numKvHeads;
  const group = Hq / Hkv;
  const vsel = sel.vOnly!;
  const vmax = Math.max(...vsel.map((x) => x.length));
  const w = vOnlyWeights(seq, layer, step, sel);
  const T = step.T;
  const out = new Float32Array(Hq * T * vmax);
  for (let g = 0; g < Hkv; g++) {
    const order = new Map<number, number>();
    vsel[g].forEach((p, i) => order.set(p, i));
    const slots = rows.positions(g);
    for (let h = g * group; h < (g + 1) * group; h++) {
      for (let t = 0; t < T; t++) {
        const base = (h * T + t) * vmax;
        for (let s = 0; s < slots.length; s++) out[base + s] = w[base + order.get(slots[s])!];
      }
    }
  }
  return out;
}

/** What one layer's attention does for a sequence, as its policy decided. */
export interface LayerPlan {
  /** The selection (validated), or null: attend over the whole cold store. */
  sel: LayerSelection | null;
  request: AttentionRequest;
  wantProbs: boolean;
  scoreStart: number;
  /** The attention kernel's sliding window (0: none), for the no-selection path. */
  window: number;
}

/**
 * Ask the policy about this layer: the selection and what it wants to observe. The layer's
 * hot set follows the selection's mode, and is emptied when there is no selection.
 */
export function planLayer(seq: Sequence, layer: number, step: StepInfo): LayerPlan {
  let sel = seq.fault ? null : selectFor(seq, layer, step);
  const window = seq.config.slidingWindow?.[layer] ?? null;
  if (sel && window !== null) sel = withinWindow(sel, step, window);
  const request = attentionRequest(seq, layer, step);
  matchHotMode(seq, layer, sel);
  const hot = seq.hot[layer];
  if (sel) hot.active = true;
  else if (hot.active) {
    hot.full.clear();
    hot.vOnly.clear();
    hot.active = false;
  }
  return {
    sel,
    request,
    wantProbs: request === "probs",
    scoreStart: typeof request === "object" ? (request.fromRow ?? 0) : 0,
    // Without a selection the kernel applies the window over the whole store.
    window: sel ? 0 : (window ?? 0),
  };
}

/**
 * A policy's selection on a sliding-window layer, narrowed to the window: at a one-token step
 * the query at `start` sees keys from start − window + 1, so older selected tokens are
 * dropped (a policy can only narrow what the window keeps). A multi-token step reads its
 * whole window from the store (null: each query row has its own window there).
 */
function withinWindow(sel: LayerSelection, step: StepInfo, window: number): LayerSelection | null {
  if (step.T > 1) return null;
  const lo = step.start - window + 1;
  const keep = (xs: Int32Array) => xs.filter((p) => p >= lo);
  return { ...sel, full: sel.full.map(keep), vOnly: sel.vOnly?.map(keep) };
}

/** The key positions behind each attended head's scores: all L without a selection, else the hot rows in slot order. */
export function observedPositions(
  seq: Sequence,
  layer: number,
  sel: LayerSelection | null,
  L: number,
): Int32Array[] {
  const c = seq.config;
  if (!sel) {
    const all = positionsUpTo(L);
    return Array.from({ length: c.numKvHeads }, () => all);
  }
  const full = seq.hot[layer].full;
  return Array.from({ length: sel.perQueryHead ? c.numHeads : c.numKvHeads }, (_, g) =>
    full.positions(g).slice(),
  );
}

/** What the policy wants to observe of this layer's attention (false when nothing, or faulted). */
function attentionRequest(seq: Sequence, layer: number, step: StepInfo): AttentionRequest {
  const policy = seq.policy;
  if (seq.fault || !policy.wantsAttention) return false;
  try {
    return policy.wantsAttention(seq, layer, step);
  } catch (e) {
    seq.fault = new PolicyError(policy.name, "wantsAttention", (e as Error).message);
    return false;
  }
}

/** Hand the attention outputs to the policy. */
export function observeAttention(
  seq: Sequence,
  obs: Parameters<NonNullable<Sequence["policy"]["observe"]>>[1],
): void {
  const policy = seq.policy;
  if (!policy.observe || seq.fault) return;
  try {
    policy.observe(seq, obs);
  } catch (e) {
    seq.fault = new PolicyError(policy.name, "observe", (e as Error).message);
  }
}

/** A selection switching between per-kv-head and per-query-head rows gets a fresh hot set. */
function matchHotMode(seq: Sequence, layer: number, sel: LayerSelection | null): void {
  if (sel && (sel.perQueryHead ?? false) !== seq.hot[layer].perQuery) {
    seq.hot[layer].full.release();
    seq.hot[layer].vOnly.release();
    seq.hot[layer] = seq.newHot(sel.perQueryHead ?? false);
  }
}

// Marks for the duplicate check: position p is taken in the current list when marks[p] equals
// the current epoch (no Set per head and step on the decode path).
let marks = new Uint32Array(1024);
let epoch = 0;

function validateSelection(seq: Sequence, sel: LayerSelection, Hkv: number, start: number): void {
  const name = seq.policy.name;
  const lists = (x: Int32Array[], what: string) => {
    if (!Array.isArray(x) || x.length !== Hkv) {
      throw new PolicyError(
        name,
        "one list per kv head",
        `${what}: got ${Array.isArray(x) ? x.length : typeof x} lists for ${Hkv} kv heads`,
      );
    }
  };
  const check = (list: Int32Array, what: string, g: number) => {
    for (let i = 0; i < list.length; i++) {
      const p = list[i];
      if (!Number.isInteger(p) || p < 0 || p >= start) {
        throw new PolicyError(
          name,
          "valid indices",
          `${what}, kv head ${g}: position ${p} is outside the past tokens [0, ${start})`,
        );
      }
      if (marks[p] === epoch)
        throw new PolicyError(name, "no duplicates", `${what}, kv head ${g}: position ${p} selected twice`);
      marks[p] = epoch;
    }
  };
  lists(sel.full, "full");
  if (sel.vOnly) lists(sel.vOnly, "vOnly");
  if (marks.length < start) marks = new Uint32Array(Math.max(start, 2 * marks.length));
  for (let g = 0; g < Hkv; g++) {
    if (++epoch === 0xffffffff) {
      marks.fill(0);
      epoch = 1;
    }
    check(sel.full[g], "full", g);
    if (sel.vOnly) check(sel.vOnly[g], "vOnly", g);
  }
  if (sel.combine !== undefined && sel.combine !== "literal" && sel.combine !== "mass") {
    throw new PolicyError(
      name,
      "combine mode",
      `combine must be "literal" or "mass", got ${String(sel.combine)}`,
    );
  }
}
