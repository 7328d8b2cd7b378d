import { expectF32, expectI32, TensorShapeError } from "./errors.js";
import { native } from "./native.js";

/** A small Llama-family decoder's sizes and options (see `decoderStep`). */
export interface DecoderShape {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  eps: number;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  /** Qwen3: RMSNorm of each head's q and k (weights [headDim]) before RoPE. */
  qkNorm: boolean;
}

/** One layer's weights in PyTorch Linear layout [out][in] (the runner's LayerWeights fit). */
export interface DecoderLayerWeights {
  inputNorm: Float32Array;
  postNorm: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
  qBias?: Float32Array;
  kBias?: Float32Array;
  vBias?: Float32Array;
  oBias?: Float32Array;
  gateBias?: Float32Array;
  upBias?: Float32Array;
  downBias?: Float32Array;
  qNorm?: Float32Array;
  kNorm?: Float32Array;
}

/** The parts of one packed layer, in order, with their lengths (0: absent). */
function layerParts(s: DecoderShape): [keyof DecoderLayerWeights | "qkv" | "qkvB" | "gu" | "guB", number][] {
  const { hidden: d, heads: Hq, kvHeads: Hkv, headDim: D, intermediate: I } = s;
  const qkv = (Hq + 2 * Hkv) * D;
  return [
    ["inputNorm", d],
    ["qkv", qkv * d],
    ["qkvB", s.qkvBias ? qkv : 0],
    ["qNorm", s.qkNorm ? D : 0],
    ["kNorm", s.qkNorm ? D : 0],
    ["o", d * Hq * D],
    ["oBias", s.oBias ? d : 0],
    ["postNorm", d],
    ["gu", 2 * I * d],
    ["guB", s.mlpBias ? 2 * I : 0],
    ["down", d * I],
    ["downBias", s.mlpBias ? d : 0],
  ];
}

/** Offsets of one packed layer's parts, and the floats per layer and in all. */
export function decoderLayout(s: DecoderShape): {
  offsets: Record<string, number>;
  perLayer: number;
  total: number;
} {
  const offsets: Record<string, number> = {};
  let o = 0;
  for (const [name, n] of layerParts(s)) {
    offsets[name] = o;
    o += n;
  }
  return { offsets, perLayer: o, total: s.layers * o + s.hidden + 2 * s.vocab * s.hidden };
}

/**
 * Every weight of the model in one array, as `decoderStep` reads it: per layer the input
 * norm, q|k|v rows (and biases), q/k norms, o, the post norm, gate|up rows (and biases),
 * down; then the final norm, the LM head [V][d] and the embedding [V][d].
 */
export function packDecoderWeights(
  s: DecoderShape,
  layers: DecoderLayerWeights[],
  norm: Float32Array,
  lmHead: Float32Array,
  embed: Float32Array,
): Float32Array {
  checkShape(s);
  if (layers.length !== s.layers)
    throw new TensorShapeError("packDecoderWeights", `${layers.length} layers given, shape says ${s.layers}`);
  const { offsets, perLayer, total } = decoderLayout(s);
  const out = new Float32Array(total);
  const lens = Object.fromEntries(layerParts(s));
  const put = (at: number, parts: (Float32Array | undefined)[], n: number, what: string) => {
    let o = at;
    for (const p of parts) {
      if (!p) throw new TensorShapeError("packDecoderWeights", `${what} is missing`);
      out.set(p, o);
      o += p.length;
    }
    if (o - at !== n)
      throw new TensorShapeError("packDecoderWeights", `${what} has ${o - at} floats, expected ${n}`);
  };
  layers.forEach((w, l) => {
    const at = (k: string) => l * perLayer + offsets[k];
    put(at("inputNorm"), [w.inputNorm], lens.inputNorm, `layer ${l} inputNorm`);
    put(at("qkv"), [w.q, w.k, w.v], lens.qkv, `layer ${l} q/k/v`);
    if (s.qkvBias) put(at("qkvB"), [w.qBias, w.kBias, w.vBias], lens.qkvB, `layer ${l} q/k/v bias`);
    if (s.qkNorm) {
      put(at("qNorm"), [w.qNorm], lens.qNorm, `layer ${l} qNorm`);
      put(at("kNorm"), [w.kNorm], lens.kNorm, `layer ${l} kNorm`);
    }
    put(at("o"), [w.o], lens.o, `layer ${l} o`);
    if (s.oBias) put(at("oBias"), [w.oBias], lens.oBias, `layer ${l} oBias`);
    put(at("postNorm"), [w.postNorm], lens.postNorm, `layer ${l} postNorm`);
    put(at("gu"), [w.gate, w.up], lens.gu, `layer ${l} gate/up`);
    if (s.mlpBias) put(at("guB"), [w.gateBias, w.upBias], lens.guB, `layer ${l} gate/up bias`);
    put(at("down"), [w.down], lens.down, `layer ${l} down`);
    if (s.mlpBias) put(at("downBias"), [w.downBias], lens.downBias, `layer ${l} downBias`);
  });
  const tail = s.layers * perLayer;
  put(tail, [norm], s.hidden, "norm");
  put(tail + s.hidden, [lmHead], s.vocab * s.hidden, "lmHead");
  put(tail + s.hidden + s.vocab * s.hidden, [embed], s.vocab * s.hidden, "embed");
  return out;
}

function checkShape(s: DecoderShape): void {
  const ints = [s.layers, s.hidden, s.heads, s.kvHeads, s.headDim, s.intermediate, s.vocab];
  if (!ints.every((x) => Number.isInteger(x) && x >= 1) || s.headDim % 2 !== 0 || s.heads % s.kvHeads !== 0)
    throw new TensorShapeError(
      "decoderStep",
      "shape: need positive integer sizes, an even head dim and heads a multiple of kvHeads",
    );
  if (!(s.eps > 0)) throw new TensorShapeError("decoderStep", `eps must be > 0, got ${s.eps}`);
}

/** Floats of a cache of `cap` positions: [layers][K, V][kvHeads][cap][headDim]. */
export function decoderCacheFloats(s: DecoderShape, cap: number): number {
  return s.layers * 2 * s.kvHeads * cap * s.headDim;
}

export interface DecoderStepArgs {
  shape: DecoderShape;
  /** From `packDecoderWeights`. */
  weights: Float32Array;
  /** The sequence's cache, `decoderCacheFloats(shape, cap)` floats. */
  kv: Float32Array;
  cap: number;
  /** Positions already in the cache; the tokens go at past, past + 1, ... */
  past: number;
  tokens: Int32Array;
  theta: number;
  /** Scaled RoPE: the frequency table and the cos/sin factor (see `rope`). */
  rope?: { invFreq: Float32Array; scale: number };
  /** Receives the last token's logits [vocab] (allocated when absent). */
  logits?: Float32Array;
}

/**
 * One step of a small decoder in one native call: the tokens' K/V rows go into the cache and
 * the last token's logits come back. For draft models, whose steps are mostly per-call cost.
 */
export function decoderStep(a: DecoderStepArgs): Float32Array {
  const op = "decoderStep";
  const s = a.shape;
  checkShape(s);
  const { total } = decoderLayout(s);
  expectF32(op, "weights", a.weights, total);
  if (!(Number.isInteger(a.cap) && a.cap >= 1))
    throw new TensorShapeError(op, `cap must be >= 1, got ${a.cap}`);
  expectF32(op, "kv", a.kv, decoderCacheFloats(s, a.cap));
  expectI32(op, "tokens", a.tokens, 1);
  if (!(Number.isInteger(a.past) && a.past >= 0 && a.past + a.tokens.length <= a.cap))
    throw new TensorShapeError(op, `past (${a.past}) + tokens (${a.tokens.length}) must fit cap ${a.cap}`);
  for (const t of a.tokens)
    if (t < 0 || t >= s.vocab) throw new TensorShapeError(op, `token ${t} is outside [0, ${s.vocab})`);
  const logits = a.logits ? expectF32(op, "logits", a.logits, s.vocab) : new Float32Array(s.vocab);
  if (a.rope) expectF32(op, "rope.invFreq", a.rope.invFreq, s.headDim / 2);
  native.decoderStep(
    Int32Array.of(
      s.layers,
      s.hidden,
      s.heads,
      s.kvHeads,
      s.headDim,
      s.intermediate,
      s.vocab,
      +s.qkvBias,
      +s.oBias,
      +s.mlpBias,
      +s.qkNorm,
    ),
    s.eps,
    a.weights,
    a.kv,
    a.cap,
    a.past,
    a.tokens,
    a.rope?.invFreq ?? null,
    a.theta,
    a.rope?.scale ?? 1,
    logits,
  );
  return logits;
}
