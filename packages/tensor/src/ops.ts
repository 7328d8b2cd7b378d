import { expectDim, expectF32, expectI32, TensorShapeError } from "./errors.js";
import { native, nativeFile } from "./native.js";

/** RoPE in place on x[T][H][D] (Hugging Face rotate-half convention). */
/** Scaled RoPE: D/2 frequencies replacing theta^(-2i/D), and a factor on cos and sin. */
export interface RopeFrequencies {
  invFreq: Float32Array;
  scale: number;
}

export function rope(
  x: Float32Array,
  positions: Int32Array,
  H: number,
  D: number,
  theta = 10000,
  freq?: RopeFrequencies,
): void {
  const op = "rope";
  expectDim(op, "H", H, 1);
  expectDim(op, "D", D, 2);
  if (D % 2 !== 0) throw new TensorShapeError(op, `head dim D must be even, got ${D}`);
  const T = positions.length;
  expectI32(op, "positions", positions, T);
  expectF32(op, "x", x, T * H * D);
  if (x.length !== T * H * D)
    throw new TensorShapeError(op, `x has ${x.length} elements, expected T*H*D = ${T * H * D}`);
  if (!(theta > 0)) throw new TensorShapeError(op, `theta must be > 0, got ${theta}`);
  if (freq) {
    expectF32(op, "invFreq", freq.invFreq, D / 2);
    if (freq.invFreq.length !== D / 2)
      throw new TensorShapeError(op, `invFreq has ${freq.invFreq.length} entries, expected D/2 = ${D / 2}`);
    if (!Number.isFinite(freq.scale))
      throw new TensorShapeError(op, `scale must be finite, got ${freq.scale}`);
  }
  native.rope(x, positions, T, H, D, theta, freq?.invFreq ?? null, freq?.scale ?? 1);
}

export interface AttentionArgs {
  /** Queries q[T][Hq][D] (already rotated). */
  q: Float32Array;
  /** KV store k[Hkv][cap][D] and v[Hkv][cap][D]. */
  k: Float32Array;
  v: Float32Array;
  cap: number;
  /** Number of new query tokens. */
  T: number;
  /** Keys preceding the T new ones, per kv head (or one number for all heads). Query t sees keys [0, past+t]. */
  past: number | Int32Array;
  Hq: number;
  Hkv: number;
  D: number;
  /** Softmax scale; default 1/sqrt(D). */
  scale?: number;
  out?: Float32Array;
  /** true, or a buffer [Hq][T][Lmax] to receive the attention probabilities. */
  probs?: boolean | Float32Array;
  /** A buffer [Hq][Lmax] to which the column sums of the probabilities are added. */
  scores?: Float32Array;
  /** > 0: query t sees only its last `window` keys (a sliding-window layer; default 0 = all). */
  window?: number;
  /** The store in int8 (k and v are then not read; pass empty arrays). */
  int8?: Int8Store;
  /** Only query rows t >= scoreStart add to `scores` (an observation window; default 0). */
  scoreStart?: number;
  /** V-only rows with externally supplied weights (the SmallKV / PoD mixed step). */
  vOnly?: VOnlyRows;
}

/**
 * A KV store in int8: K row (g, r) is k[(g*cap + r)*D ..] times kScale[g*cap + r] (one scale per
 * token and head), likewise V. Kernels read it in place (no float copy).
 */
export interface Int8Store {
  k: Int8Array;
  v: Int8Array;
  kScale: Float32Array;
  vScale: Float32Array;
}

/** Tokens whose V is kept but whose attention weights come from elsewhere. */
export interface VOnlyRows {
  /** V rows [Hkv][cap][D]; kv head g uses rows [0, counts[g]). */
  v: Float32Array;
  cap: number;
  counts: Int32Array;
  /** Weights [Hq][T][vmax], vmax = max(counts): row (h, t) weights kv head g(h)'s V-only rows. */
  weights: Float32Array;
  /** "literal": O_exact + O_v (as the paper writes it); "mass": (1 - sum w) O_exact + O_v. */
  mode: "literal" | "mass";
}

export interface AttentionResult {
  out: Float32Array;
  probs?: Float32Array;
  /** Row length of probs and scores: max(past) + T. */
  Lmax: number;
}

/**
 * Attention that reads its keys straight from the KV store through index lists (the CPU
 * backend's selection: no hot copy). List i (a kv head, or a query head when there are Hq
 * lists) reads store head i * Hkv / lists: the K/V rows at slots idx[off[i] .. off[i+1]),
 * then the step's own T rows at slots [newAt, newAt + T) (query t sees the first t + 1).
 * Probability and score columns follow that order; Lmax = the longest list + T.
 */
export interface IndexedAttentionArgs {
  q: Float32Array;
  /** The store: k[Hkv][cap][D], v[Hkv][cap][D]. */
  k: Float32Array;
  v: Float32Array;
  cap: number;
  T: number;
  Hq: number;
  /** The store's kv heads. */
  Hkv: number;
  D: number;
  /** Number of lists: Hkv, or Hq (per-query-head selection). */
  lists: number;
  idx: Int32Array;
  off: Int32Array;
  newAt: number;
  scale?: number;
  out?: Float32Array;
  probs?: boolean | Float32Array;
  scores?: Float32Array;
  scoreStart?: number;
  /** The store in int8 (k and v are then not read; pass empty arrays). */
  int8?: Int8Store;
  /** V-only rows of the same store: V at slots vIdx[vOff[i] .. vOff[i+1]) for list i, weights [Hq][T][vmax] in list order. */
  vOnly?: { idx: Int32Array; off: Int32Array; weights: Float32Array; mode: "literal" | "mass" };
}

/** The output buffers of an attention call, checked (probs/scores as asked). */
function attentionOutputs(
  op: string,
  a: { out?: Float32Array; probs?: boolean | Float32Array; scores?: Float32Array },
  T: number,
  Hq: number,
  D: number,
  Lmax: number,
): { out: Float32Array; probs: Float32Array | undefined; scores: Float32Array | null } {
  const out = a.out ? expectF32(op, "out", a.out, T * Hq * D) : new Float32Array(T * Hq * D);
  let probs: Float32Array | undefined;
  if (a.probs instanceof Float32Array) probs = expectF32(op, "probs", a.probs, Hq * T * Lmax);
  else if (a.probs === true) probs = new Float32Array(Hq * T * Lmax);
  const scores = a.scores ? expectF32(op, "scores", a.scores, Hq * Lmax) : null;
  return { out, probs, scores };
}

/** Checks the store arguments (float k/v, or an int8 store); returns the int8 native arguments. */
function storeArgs(
  op: string,
  a: { k: unknown; v: unknown; int8?: Int8Store },
  Hkv: number,
  cap: number,
  D: number,
) {
  expectF32(op, "k", a.k, a.int8 ? 0 : Hkv * cap * D);
  expectF32(op, "v", a.v, a.int8 ? 0 : Hkv * cap * D);
  return int8Args(op, a.int8, Hkv, cap, D);
}

/** Checks an int8 store of Hkv heads x cap rows; returns its native arguments (null: a float store). */
function int8Args(op: string, q: Int8Store | undefined, Hkv: number, cap: number, D: number): unknown[] {
  if (!q) return [null, null, null, null];
  for (const [name, a] of [
    ["int8.k", q.k],
    ["int8.v", q.v],
  ] as const) {
    if (!(a instanceof Int8Array)) throw new TensorShapeError(op, `${name} must be an Int8Array`);
    if (a.length < Hkv * cap * D)
      throw new TensorShapeError(op, `${name} has ${a.length} elements, needs ${Hkv * cap * D}`);
  }
  expectF32(op, "int8.kScale", q.kScale, Hkv * cap);
  expectF32(op, "int8.vScale", q.vScale, Hkv * cap);
  return [q.k, q.v, q.kScale, q.vScale];
}

/** Checks an index list (offsets from 0, non-decreasing, within idx, slots in [0, limit)); returns the counts. */
function listCounts(
  op: string,
  name: string,
  idx: unknown,
  off: unknown,
  lists: number,
  limit: number,
): Int32Array {
  const o = expectI32(op, `${name} offsets`, off, lists + 1);
  const x = expectI32(op, name, idx, 0);
  if (o[0] !== 0) throw new TensorShapeError(op, `${name} offsets must start at 0`);
  const counts = new Int32Array(lists);
  for (let i = 0; i < lists; i++) {
    if (o[i + 1] < o[i] || o[i + 1] > x.length)
      throw new TensorShapeError(op, `${name} offsets out of order or beyond the list (${x.length})`);
    counts[i] = o[i + 1] - o[i];
  }
  for (let j = 0; j < o[lists]; j++)
    if (x[j] < 0 || x[j] >= limit)
      throw new TensorShapeError(
        op,
        `${name}: slot ${x[j]} is outside the rows before the step [0, ${limit})`,
      );
  return counts;
}

/** A one-slot list standing for "no slots" (see indexedCall). */
const NO_SLOTS = new Int32Array(1);

/** The native argument list of an indexed attention, checked. */
function indexedCall(a: IndexedAttentionArgs, op: string): { args: unknown[]; result: AttentionResult } {
  const T = expectDim(op, "T", a.T, 1);
  const Hq = expectDim(op, "Hq", a.Hq, 1);
  const Hkv = expectDim(op, "Hkv", a.Hkv, 1);
  const D = expectDim(op, "D", a.D, 1);
  const cap = expectDim(op, "cap", a.cap, 0);
  const lists = expectDim(op, "lists", a.lists, 1);
  if (lists % Hkv !== 0 || Hq % lists !== 0)
    throw new TensorShapeError(
      op,
      `lists (${lists}) must be a multiple of Hkv (${Hkv}) and divide Hq (${Hq})`,
    );
  const newAt = expectDim(op, "newAt", a.newAt);
  if (newAt + T > cap)
    throw new TensorShapeError(op, `newAt + T = ${newAt + T} exceeds the store capacity ${cap}`);
  const past = listCounts(op, "idx", a.idx, a.off, lists, newAt);
  const Lmax = Math.max(...past) + T;
  expectF32(op, "q", a.q, T * Hq * D);
  const q8 = storeArgs(op, a, Hkv, cap, D);
  const { out, probs, scores } = attentionOutputs(op, a, T, Hq, D, Lmax);
  const vo = a.vOnly;
  let nV: Int32Array | null = null;
  if (vo) {
    nV = listCounts(op, "vOnly.idx", vo.idx, vo.off, lists, newAt);
    expectF32(op, "vOnly.weights", vo.weights, Hq * T * Math.max(0, ...nV));
    if (vo.mode !== "literal" && vo.mode !== "mass")
      throw new TensorShapeError(op, `vOnly.mode must be "literal" or "mass"`);
  }
  const args = [
    a.q,
    a.k,
    a.v,
    cap,
    T,
    past,
    Hq,
    lists,
    D,
    a.scale ?? 1 / Math.sqrt(D),
    out,
    probs ?? null,
    scores,
    expectDim(op, "scoreStart", a.scoreStart ?? 0),
    vo && !a.int8 ? a.v : null,
    vo ? cap : 0,
    nV,
    vo ? vo.weights : null,
    vo?.mode === "mass" ? 1 : 0,
    0,
    // An empty typed array reaches the addon as a null pointer, which reads as "not indexed":
    // lists that are all empty (no old token kept) pass a slot that is never read.
    a.idx.length > 0 ? a.idx : NO_SLOTS,
    a.off,
    newAt,
    vo ? (vo.idx.length > 0 ? vo.idx : NO_SLOTS) : null,
    vo ? vo.off : null,
    Hkv,
    ...q8,
  ];
  return { args, result: { out, probs, Lmax } };
}

/** Attention through index lists into the store (see IndexedAttentionArgs). */
export function indexedAttention(a: IndexedAttentionArgs): AttentionResult {
  const { args, result } = indexedCall(a, "indexedAttention");
  native.attentionBatch([args]);
  return result;
}

/** Checks one attention's arguments; returns the native argument list and the result it will fill. */
function attentionCall(a: AttentionArgs, op: string): { args: unknown[]; result: AttentionResult } {
  const T = expectDim(op, "T", a.T, 1);
  const Hq = expectDim(op, "Hq", a.Hq, 1);
  const Hkv = expectDim(op, "Hkv", a.Hkv, 1);
  const D = expectDim(op, "D", a.D, 1);
  const cap = expectDim(op, "cap", a.cap, 0);
  if (Hq % Hkv !== 0) throw new TensorShapeError(op, `Hq (${Hq}) must be a multiple of Hkv (${Hkv})`);
  const past =
    typeof a.past === "number" ? new Int32Array(Hkv).fill(a.past) : expectI32(op, "past", a.past, Hkv);
  let maxPast = 0;
  for (let g = 0; g < Hkv; g++) {
    if (past[g] < 0 || past[g] + T > cap) {
      throw new TensorShapeError(op, `past[${g}] + T = ${past[g] + T} exceeds the store capacity ${cap}`);
    }
    maxPast = Math.max(maxPast, past[g]);
  }
  const Lmax = maxPast + T;
  expectF32(op, "q", a.q, T * Hq * D);
  const q8 = storeArgs(op, a, Hkv, cap, D);
  if (a.int8 && a.vOnly)
    throw new TensorShapeError(op, "V-only rows with an int8 store go through indexedAttention");
  const { out, probs, scores } = attentionOutputs(op, a, T, Hq, D, Lmax);
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const scoreStart = expectDim(op, "scoreStart", a.scoreStart ?? 0);
  const vo = a.vOnly;
  if (vo) {
    expectDim(op, "vOnly.cap", vo.cap);
    expectI32(op, "vOnly.counts", vo.counts, Hkv);
    let vmax = 0;
    for (let g = 0; g < Hkv; g++) {
      if (vo.counts[g] < 0 || vo.counts[g] > vo.cap)
        throw new TensorShapeError(op, `vOnly.counts[${g}] = ${vo.counts[g]} is outside [0, ${vo.cap}]`);
      vmax = Math.max(vmax, vo.counts[g]);
    }
    expectF32(op, "vOnly.v", vo.v, Hkv * vo.cap * D);
    expectF32(op, "vOnly.weights", vo.weights, Hq * T * vmax);
    if (vo.mode !== "literal" && vo.mode !== "mass")
      throw new TensorShapeError(op, `vOnly.mode must be "literal" or "mass"`);
  }
  const args = [
    a.q,
    a.k,
    a.v,
    cap,
    T,
    past,
    Hq,
    Hkv,
    D,
    scale,
    out,
    probs ?? null,
    scores,
    scoreStart,
    vo ? vo.v : null,
    vo ? vo.cap : 0,
    vo ? vo.counts : null,
    vo ? vo.weights : null,
    vo?.mode === "mass" ? 1 : 0,
    expectDim(op, "window", a.window ?? 0),
    null,
    null,
    0,
    null,
    null,
    Hkv,
    ...q8,
  ];
  return { args, result: { out, probs, Lmax } };
}

/** Causal grouped-query attention of T new queries over a KV store (prefill and decode). */
export function attention(a: AttentionArgs): AttentionResult {
  const { args, result } = attentionCall(a, "attention");
  (native.attention as (...x: unknown[]) => void)(...args);
  return result;
}

/**
 * Several independent attentions (e.g. every sequence of a batch at one layer) in one
 * native call and one parallel region: each result equals `attention` of its arguments.
 * Outputs must not overlap.
 */
export function attentionBatch(jobs: (AttentionArgs | IndexedAttentionArgs)[]): AttentionResult[] {
  const calls = jobs.map((a, i) =>
    "lists" in a ? indexedCall(a, `attentionBatch[${i}]`) : attentionCall(a, `attentionBatch[${i}]`),
  );
  if (calls.length > 0) native.attentionBatch(calls.map((c) => c.args));
  return calls.map((c) => c.result);
}

/** The mixed step: exact attention over the K+V rows plus V-only rows with given weights. */
export function mixedAttention(a: AttentionArgs & { vOnly: VOnlyRows }): AttentionResult {
  if (!a.vOnly) throw new TensorShapeError("mixedAttention", "vOnly is required");
  return attention(a);
}

/** Checks the shared arguments of a KV write (dims, source rows, destination slots); returns T. */
function kvWriteRows(
  op: string,
  cap: number,
  Hkv: number,
  D: number,
  src: Float32Array,
  dst: Int32Array,
): number {
  expectDim(op, "cap", cap);
  expectDim(op, "Hkv", Hkv, 1);
  expectDim(op, "D", D, 1);
  const T = dst.length;
  expectI32(op, "dst", dst, T);
  expectF32(op, "src", src, T * Hkv * D);
  for (let t = 0; t < T; t++)
    if (dst[t] < 0 || dst[t] >= cap)
      throw new TensorShapeError(op, `dst[${t}] = ${dst[t]} is outside [0, ${cap})`);
  return T;
}

/** Write rows src[T][Hkv][D] into an int8 store at slots dst[T]: each row scaled by max|x| / 127. */
export function kvWriteQ8(
  store: Int8Array,
  scales: Float32Array,
  cap: number,
  Hkv: number,
  D: number,
  src: Float32Array,
  dst: Int32Array,
): void {
  const op = "kvWriteQ8";
  const T = kvWriteRows(op, cap, Hkv, D, src, dst);
  if (!(store instanceof Int8Array) || store.length < Hkv * cap * D)
    throw new TensorShapeError(op, `store must be an Int8Array of at least Hkv*cap*D = ${Hkv * cap * D}`);
  expectF32(op, "scales", scales, Hkv * cap);
  native.kvWriteQ8(store, scales, cap, Hkv, D, src, T, dst);
}

/** Write rows src[T][Hkv][D] into store[Hkv][cap][D] at slots dst[T] (KV append). */
export function kvWrite(
  store: Float32Array,
  cap: number,
  Hkv: number,
  D: number,
  src: Float32Array,
  dst: Int32Array,
): void {
  const op = "kvWrite";
  const T = kvWriteRows(op, cap, Hkv, D, src, dst);
  expectF32(op, "store", store, Hkv * cap * D);
  native.kvWrite(store, cap, Hkv, D, src, T, dst);
}

/**
 * Per kv head g, copy rows idx[off[g]..off[g+1]) of src[Hkv][scap][D] into
 * dst[Hkv][dcap][D] starting at row dstStart[g] (default 0). Used to move tokens
 * between the cold store and the hot working set.
 */
export function kvGather(
  src: Float32Array,
  scap: number,
  dst: Float32Array,
  dcap: number,
  Hkv: number,
  D: number,
  idx: Int32Array,
  off: Int32Array,
  dstStart?: Int32Array,
): void {
  const op = "kvGather";
  expectDim(op, "Hkv", Hkv, 1);
  expectDim(op, "D", D, 1);
  expectDim(op, "scap", scap);
  expectDim(op, "dcap", dcap);
  expectI32(op, "off", off, Hkv + 1);
  const start = dstStart ? expectI32(op, "dstStart", dstStart, Hkv) : new Int32Array(Hkv);
  if (off[0] !== 0) throw new TensorShapeError(op, "off[0] must be 0");
  for (let g = 0; g < Hkv; g++) {
    if (off[g + 1] < off[g]) throw new TensorShapeError(op, "off must be non-decreasing");
    if (start[g] < 0 || start[g] + off[g + 1] - off[g] > dcap) {
      throw new TensorShapeError(op, `head ${g}: gathered rows exceed dst capacity ${dcap}`);
    }
  }
  expectI32(op, "idx", idx, off[Hkv]);
  for (let i = 0; i < off[Hkv]; i++) {
    if (idx[i] < 0 || idx[i] >= scap)
      throw new TensorShapeError(op, `idx[${i}] = ${idx[i]} is outside [0, ${scap})`);
  }
  expectF32(op, "src", src, Hkv * scap * D);
  expectF32(op, "dst", dst, Hkv * dcap * D);
  native.kvGather(src, scap, dst, dcap, Hkv, D, idx, off, start);
}

/**
 * Row copies between two stores, one call for a whole step's moves: for each quad
 * (dstHead, dstRow, srcHead, srcRow) in `moves`, dst[dstHead][dstRow] = src[srcHead][srcRow]
 * (src [srcHeads][scap][D], dst [dstHeads][dcap][D]). An int8 source (`scales` per row) is
 * dequantised on the way.
 */
export function kvCopyRows(
  src: Float32Array | Int8Array,
  scales: Float32Array | null,
  srcHeads: number,
  scap: number,
  dst: Float32Array,
  dstHeads: number,
  dcap: number,
  D: number,
  moves: Int32Array,
  count = moves.length / 4,
): void {
  const op = "kvCopyRows";
  expectDim(op, "srcHeads", srcHeads, 1);
  expectDim(op, "dstHeads", dstHeads, 1);
  expectDim(op, "D", D, 1);
  expectDim(op, "count", count);
  expectI32(op, "moves", moves, 4 * count);
  if (src instanceof Int8Array) {
    if (!(scales instanceof Float32Array) || scales.length < srcHeads * scap)
      throw new TensorShapeError(op, "an int8 source needs its Float32Array scales (one per row)");
  } else expectF32(op, "src", src, srcHeads * scap * D);
  if (src.length < srcHeads * scap * D)
    throw new TensorShapeError(op, "src is shorter than srcHeads * scap * D");
  expectF32(op, "dst", dst, dstHeads * dcap * D);
  for (let i = 0; i < count; i++) {
    const [dh, dr, sh, sr] = [moves[4 * i], moves[4 * i + 1], moves[4 * i + 2], moves[4 * i + 3]];
    if (dh < 0 || dh >= dstHeads || dr < 0 || dr >= dcap || sh < 0 || sh >= srcHeads || sr < 0 || sr >= scap)
      throw new TensorShapeError(op, `move ${i} (${dh}, ${dr}, ${sh}, ${sr}) is outside the stores`);
  }
  if (count > 0) native.kvCopyRows(src, scales, srcHeads, scap, dst, dstHeads, dcap, D, moves, count);
}

/** Indices of the k largest values of each row of x[rows][n], by descending value (ties: lower index first). */
export function topk(x: Float32Array, n: number, k: number, rows = 1): Int32Array {
  const op = "topk";
  expectDim(op, "rows", rows);
  expectDim(op, "n", n);
  expectDim(op, "k", k);
  if (k > n) throw new TensorShapeError(op, `k (${k}) > n (${n})`);
  expectF32(op, "x", x, rows * n);
  const out = new Int32Array(rows * k);
  if (k > 0 && rows > 0) native.topk(x, rows, n, k, out);
  return out;
}

/**
 * The k highest-scoring positions of [0, n), skipping those with exclude[i] = 1, in
 * ascending position order (fewer when fewer are left). Chosen by float32 rank, ties to
 * the earlier position, NaN last. O(n): a selection, not a sort (the policies' hot path).
 * `byScore`: return them highest score first instead (in the scores' own precision, ties
 * to the earlier position).
 */
export function topPositions(
  scores: Float32Array | Float64Array,
  n: number,
  k: number,
  exclude?: Uint8Array,
  byScore = false,
): Int32Array {
  const op = "topPositions";
  expectDim(op, "n", n);
  expectDim(op, "k", k);
  if (!(scores instanceof Float32Array || scores instanceof Float64Array))
    throw new TensorShapeError(op, "scores must be a Float32Array or a Float64Array");
  if (scores.length < n) throw new TensorShapeError(op, `scores has ${scores.length} elements, needs ${n}`);
  if (exclude !== undefined && (!(exclude instanceof Uint8Array) || exclude.length < n))
    throw new TensorShapeError(op, `exclude must be a Uint8Array of at least ${n} elements`);
  if (k === 0 || n === 0) return new Int32Array(0);
  const out = new Int32Array(Math.min(n, k));
  const m = native.topPositions(scores, n, k, exclude ?? null, out, byScore);
  return m === out.length ? out : out.slice(0, m);
}

/**
 * `topk` of many rows of different lengths in one call: row r is x[r*stride .. r*stride +
 * lens[r]) and keeps its ks[r] largest (descending, ties to the lower index). Returns one
 * index array per row.
 */
export function topkRagged(x: Float32Array, stride: number, lens: Int32Array, ks: Int32Array): Int32Array[] {
  const op = "topkRagged";
  expectDim(op, "stride", stride);
  const rows = lens.length;
  expectI32(op, "lens", lens, 0);
  expectI32(op, "ks", ks, rows);
  expectF32(op, "x", x, rows * stride);
  const off = new Int32Array(rows + 1);
  for (let r = 0; r < rows; r++) {
    if (!(lens[r] >= 0 && lens[r] <= stride && ks[r] >= 0 && ks[r] <= lens[r]))
      throw new TensorShapeError(
        op,
        `row ${r}: need 0 <= k (${ks[r]}) <= len (${lens[r]}) <= stride (${stride})`,
      );
    off[r + 1] = off[r] + ks[r];
  }
  const out = new Int32Array(off[rows]);
  if (rows > 0) native.topkRagged(x, rows, stride, lens, ks, off, out);
  return Array.from({ length: rows }, (_, r) => out.subarray(off[r], off[r + 1]));
}

/** Which scores `attentionRowTops` ranks in row u of a causal attention matrix. */
export type RowTopsMode = "row" | "old" | "own";
const ROW_TOPS_MODES: Record<RowTopsMode, number> = { row: 0, old: 1, own: 2 };

/**
 * Per row u (1..T-1) of a causal attention matrix probs[T][T], the top positions (descending,
 * ties to the lower position) of: "row" the row itself (positions 0..u, k = round(ratio (u+1))),
 * "old" its old tokens (0..u-1, k = round(ratio u)), "own" the head's own past mean attention
 * over old tokens (column sums of rows < u over the rows that could attend each token;
 * k = round(ratio u)); k at least 1. Row u's positions are idx[off[u] .. off[u+1]); row 0 has none.
 */
export function attentionRowTops(
  probs: Float32Array,
  T: number,
  ratio: number,
  mode: RowTopsMode,
): { idx: Int32Array; off: Int32Array } {
  const op = "attentionRowTops";
  expectDim(op, "T", T, 1);
  expectF32(op, "probs", probs, T * T);
  if (!(ratio > 0 && ratio <= 1)) throw new TensorShapeError(op, `ratio must be in (0, 1], got ${ratio}`);
  const m = ROW_TOPS_MODES[mode];
  if (m === undefined) throw new TensorShapeError(op, `mode must be row, old or own, got ${String(mode)}`);
  const off = new Int32Array(T + 1);
  for (let u = 1; u < T; u++) {
    const n = mode === "row" ? u + 1 : u;
    off[u + 1] = off[u] + Math.max(1, Math.round(ratio * n));
  }
  const idx = new Int32Array(off[T]);
  if (T > 1) native.attentionRowTops(probs, T, m, off, idx);
  return { idx, off };
}

/**
 * Column sums of attention rows scattered to token positions: for rows h < rows and j <
 * pos.length, acc[pos[j]] += weight * src[offset + h * stride + j] (h outer, in double).
 */
export function scatterAdd(
  acc: Float64Array,
  pos: Int32Array,
  src: Float32Array,
  offset: number,
  rows: number,
  stride: number,
  weight = 1,
): void {
  native.scatterAdd(acc, pos, src, offset, rows, stride, weight);
}

/** Sum of a float32 array (OpenMP, SIMD); it streams the array once, so benchmarks use it to measure read bandwidth. */
export function sum(x: Float32Array): number {
  expectF32("sum", "x", x, 0);
  return native.sum(x);
}

export interface CudaInfo {
  /** The addon was compiled with nvcc. */
  built: boolean;
  /** Usable CUDA devices (0 without a driver or device). */
  deviceCount: number;
  code: number;
  message: string;
}

export function cudaInfo(): CudaInfo {
  return native.cudaInfo();
}

/** How the loaded CPU addon was built, and which file it is (a source build or a prebuilt one). */
export function buildInfo(): {
  threads: number;
  simd: string;
  portable: boolean;
  addon: string;
  prebuilt: boolean;
} {
  return { ...native.buildInfo(), addon: nativeFile, prebuilt: /[/\\]prebuilds[/\\]/.test(nativeFile) };
}

/** Set the OpenMP thread count used by the kernels. */
export function setThreads(n: number): void {
  expectDim("setThreads", "n", n, 1);
  native.setThreads(n);
}
