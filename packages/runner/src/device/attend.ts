import type { Device, DeviceBuffer } from "@smallkv/tensor";
import { observeAttention, observedPositions, planLayer, vOnlyWeightsInSlotOrder } from "../attend-policy.js";
import type { ModelConfig } from "../config.js";
import type { Sequence } from "../sequence.js";
import type { DeviceHotRows, DeviceKvCache } from "./kv.js";

/** What the per-sequence path needs from the runner: the device, the shape, scratch buffers. */
export interface AttendContext {
  readonly dev: Device;
  readonly c: ModelConfig;
  buf(name: string, n: number): DeviceBuffer;
  /** This step's query buffer (query-aware policies read their rows back). */
  readonly queryBuf: DeviceBuffer;
}

/** Read-backs up to this many floats wait for the layer's other sequences (one wait a layer). */
const DEFERRED_FLOATS = 1 << 22;

/**
 * One sequence's attention at one layer, through its policy (the device twin of Model.attend):
 * the path of policies that select or observe. Its KV write and its selection's hot-set moves
 * are its own. A small read-back (scores, one row's probabilities) is returned as a function
 * for the caller to run after every sequence of the layer has launched: the layer then waits
 * for the device once, not once per sequence. `slot` keeps the sequences' outputs apart.
 */
export function attendOne(
  ctx: AttendContext,
  seq: Sequence,
  layer: number,
  T: number,
  q: number,
  k: number,
  v: number,
  out: number,
  slot = 0,
): (() => void) | null {
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = ctx.c;
  const dev = ctx.dev;
  const kv = seq.kv as DeviceKvCache;
  const start = seq.length;
  const step = { start, T };
  kv.writeDevice(layer, k, v, start, T);
  // A query-aware policy reads this sequence's queries on the host (T x Hq x D floats).
  let query: Float32Array | undefined;
  if (seq.policy.wantsQuery) {
    query = dev.read(ctx.queryBuf, new Float32Array(T * Hq * D), (q - ctx.queryBuf.ptr) / 4);
  }
  const { sel, request, wantProbs, scoreStart, window } = planLayer(
    seq,
    layer,
    query ? { start, T, query } : step,
  );
  const hot = seq.hot[layer];
  const st = kv.staging;
  let Lmax: number;
  // Probabilities and scores land in device memory (atomics on mapped host memory are not
  // safe on every platform) and are read back once, after the kernel.
  type Out = { buf: DeviceBuffer; n: number } | null;
  let probs: Out = null;
  let scores: Out = null;
  const outputs = (L: number): [Out, Out] => {
    // Small outputs get a buffer of this sequence's slot (read after the layer's other
    // launches); a large one shares one buffer, read at once (no slot-many large buffers).
    const np = wantProbs ? Hq * T * L : 0;
    const ns = typeof request === "object" ? Hq * L : 0;
    const tag = np + ns > DEFERRED_FLOATS ? "" : String(slot);
    const p = np > 0 ? { buf: ctx.buf(`probs${tag}`, np), n: np } : null;
    const sc = ns > 0 ? { buf: ctx.buf(`scores${tag}`, ns), n: ns } : null;
    if (sc) dev.zero(sc.buf, 0, sc.n);
    return [p, sc];
  };
  // A form that keeps its probability rows (an assistant's) writes them here at one-row steps:
  // straight into its device state, [Hq][start + 1], read by its LLM's ranking.
  const rows = seq.deviceForm?.rows && T === 1 && !sel && !wantProbs ? kv.policy : null;
  if (!sel) {
    Lmax = start + T;
    [probs, scores] = outputs(Lmax);
    if (rows) rows.rowStride = Lmax;
    dev.attention({
      q,
      k: kv.dk[layer],
      v: kv.dv[layer],
      cap: kv.cap,
      T,
      past: st.ints(`past${layer}`, new Array(Hkv).fill(start)),
      maxPast: start,
      Hq,
      Hkv,
      D,
      out,
      probs: rows ? rows.rowsOf(layer) : probs?.buf,
      scores: scores?.buf,
      scoreStart,
      window,
    });
  } else {
    const HkvHot = sel.perQueryHead ? Hq : Hkv;
    const full = hot.full as DeviceHotRows;
    const vOnlyRows = hot.vOnly as DeviceHotRows;
    full.apply(sel.full, [kv.dk[layer].ptr, kv.dv[layer].ptr], kv.cap, start + T);
    full.append([k, v], start, T);
    const past = sel.full.map((s) => s.length);
    let vOnly = null;
    const vsel = sel.vOnly;
    if (vsel?.some((x) => x.length > 0)) {
      vOnlyRows.apply(vsel, [kv.dv[layer].ptr], kv.cap, start + T);
      try {
        const weights = vOnlyWeightsInSlotOrder(seq, layer, step, sel, vOnlyRows);
        const vmax = Math.max(...vsel.map((x) => x.length));
        vOnly = {
          v: vOnlyRows.planesBuf[0],
          cap: vOnlyRows.cap,
          counts: st.ints(`vcount${layer}`, vOnlyRows.count),
          vmax,
          weights: st.floats(`vw${layer}`, weights),
          mode: sel.combine ?? "mass",
        };
      } catch (e) {
        seq.fault = e as Error;
      }
    } else vOnlyRows.clear();
    const maxPast = Math.max(...past);
    Lmax = maxPast + T;
    [probs, scores] = outputs(Lmax);
    dev.attention({
      q,
      k: full.planesBuf[0],
      v: full.planesBuf[1],
      cap: full.cap,
      T,
      past: st.ints(`past${layer}`, past),
      maxPast,
      Hq,
      Hkv: HkvHot,
      D,
      out,
      probs: probs?.buf,
      scores: scores?.buf,
      scoreStart,
      vOnly,
    });
  }
  if (!request || !seq.policy.observe) return null;
  const p: Out = probs;
  const sc: Out = scores;
  const observe = () => {
    if (seq.fault) return;
    // The policy reads this layer's probabilities or scores (a read waits for stream 0).
    observeAttention(seq, {
      layer,
      start,
      T,
      probs: p ? dev.read(p.buf, new Float32Array(p.n)) : undefined,
      scores: sc ? dev.read(sc.buf, new Float32Array(sc.n)) : undefined,
      Lmax,
      keyPositions: observedPositions(seq, layer, sel, Lmax),
    });
  };
  if ((p?.n ?? 0) + (sc?.n ?? 0) > DEFERRED_FLOATS) {
    observe(); // a large read-back (a prefill's probabilities) is read before the buffer is reused
    return null;
  }
  return observe;
}
