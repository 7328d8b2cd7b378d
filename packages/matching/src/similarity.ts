import { attentionRowTops, topk } from "@smallkv/tensor";

/**
 * Token scores of one head: column sums of its attention matrix probs[T][T] (row-major,
 * causal), s[v] = sum_u A[u, v].
 */
export function columnSums(probs: ArrayLike<number>, T: number): Float64Array {
  const s = new Float64Array(T);
  for (let u = 0; u < T; u++) for (let v = 0; v <= u; v++) s[v] += probs[u * T + v];
  return s;
}

/** The k highest-scoring token indices (ties to the earlier token). */
export function topSet(scores: ArrayLike<number>, k: number): Set<number> {
  const x = Float32Array.from(scores as ArrayLike<number>);
  return new Set(topk(x, x.length, Math.min(k, x.length)));
}

/** |A ∩ B| / |A ∪ B|. */
export function jaccard(a: Set<number>, b: Set<number>): number {
  let inter = 0;
  for (const x of a) if (b.has(x)) inter++;
  const uni = a.size + b.size - inter;
  return uni === 0 ? 1 : inter / uni;
}

/** Mean cosine similarity of attention rows 1..T-1 of two heads (row 0 is trivially [1]). */
export function rowCosine(a: ArrayLike<number>, b: ArrayLike<number>, T: number): number {
  let total = 0;
  for (let u = 1; u < T; u++) {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let v = 0; v <= u; v++) {
      const x = a[u * T + v];
      const y = b[u * T + v];
      ab += x * y;
      aa += x * x;
      bb += y * y;
    }
    total += aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
  }
  return T > 1 ? total / (T - 1) : 1;
}

/** Per-row top positions, flat: row u's are idx[off[u] .. off[u+1]) (row 0 has none). */
export interface FlatRowTops {
  idx: Int32Array;
  off: Int32Array;
}

const asF32 = (probs: ArrayLike<number>) =>
  probs instanceof Float32Array ? probs : Float32Array.from(probs as ArrayLike<number>);

function perRow({ idx, off }: FlatRowTops): Int32Array[] {
  return Array.from({ length: off.length - 1 }, (_, u) => idx.subarray(off[u], off[u + 1]));
}

/**
 * Per row u (1..T-1) of an attention matrix, the indices of its k highest weights (k = ratio
 * of the row's length, at least 1; ties to the earlier token). One native call per head.
 */
export function flatRowTops(probs: ArrayLike<number>, T: number, ratio: number): FlatRowTops {
  return attentionRowTops(asF32(probs), T, ratio, "row");
}

/** `flatRowTops` as one array per row. */
export function rowTops(probs: ArrayLike<number>, T: number, ratio: number): Int32Array[] {
  return perRow(flatRowTops(probs, T, ratio));
}

/**
 * Mean share of head a's attention mass that falls on head b's top tokens, row by row
 * (rows 1..T-1, b's tops from `rowTops`): how much of a's current attention b's choice of
 * tokens would keep exactly.
 */
export function rowCoverage(a: ArrayLike<number>, bTops: Int32Array[], T: number): number {
  let total = 0;
  for (let u = 1; u < T; u++) {
    const top = bTops[u];
    for (let i = 0; i < top.length; i++) total += a[u * T + top[i]];
  }
  return T > 1 ? total / (T - 1) : 1;
}

/** `rowCoverage` over flat tops (the matching's inner loop: no per-row arrays). */
export function flatRowCoverage(a: ArrayLike<number>, b: FlatRowTops, T: number): number {
  const { idx, off } = b;
  let total = 0;
  for (let u = 1; u < T; u++) {
    const base = u * T;
    for (let i = off[u]; i < off[u + 1]; i++) total += a[base + idx[i]];
  }
  return T > 1 ? total / (T - 1) : 1;
}

/**
 * Per row u (1..T-1), the top old tokens (v < u; k = ratio of u, at least 1) that the
 * head's own past attention predicts: column sums over rows < u divided by the number of
 * those rows that could attend each token (the reversible control's ranking).
 */
export function flatOwnTops(probs: ArrayLike<number>, T: number, ratio: number): FlatRowTops {
  return attentionRowTops(asF32(probs), T, ratio, "own");
}

/** `flatOwnTops` as one array per row. */
export function ownTops(probs: ArrayLike<number>, T: number, ratio: number): Int32Array[] {
  return perRow(flatOwnTops(probs, T, ratio));
}

/** Per row u (1..T-1), the top old tokens (v < u) of the row itself (k = ratio of u, at least 1). */
export function flatOldRowTops(probs: ArrayLike<number>, T: number, ratio: number): FlatRowTops {
  return attentionRowTops(asF32(probs), T, ratio, "old");
}

/** `flatOldRowTops` as one array per row. */
export function oldRowTops(probs: ArrayLike<number>, T: number, ratio: number): Int32Array[] {
  return perRow(flatOldRowTops(probs, T, ratio));
}

/**
 * Non-negative least squares by coordinate descent: min ||X w - y||^2 subject to w >= 0,
 * given the Gram matrix G = X'X (n x n, row-major) and b = X'y.
 */
export function nnls(G: Float64Array, b: Float64Array, n: number, iterations = 200): Float64Array {
  const w = new Float64Array(n);
  // Gradient of 0.5 w'Gw - b'w is Gw - b; keep r = b - Gw up to date.
  const r = Float64Array.from(b);
  for (let it = 0; it < iterations; it++) {
    let change = 0;
    for (let j = 0; j < n; j++) {
      const gjj = G[j * n + j];
      if (gjj <= 0) continue;
      const next = Math.max(0, w[j] + r[j] / gjj);
      const d = next - w[j];
      if (d === 0) continue;
      w[j] = next;
      for (let k = 0; k < n; k++) r[k] -= d * G[k * n + j];
      change = Math.max(change, Math.abs(d));
    }
    if (change < 1e-9) break;
  }
  return w;
}

/**
 * Per row u (1..T-1), the head's own past mean attention over old tokens v < u (column sums
 * over rows < u divided by the rows that could attend), normalised to sum 1: the feature the
 * reversible control ranks by. Returned as one [T][T] matrix (zeros elsewhere).
 */
export function ownRows(probs: ArrayLike<number>, T: number): Float32Array {
  const out = new Float32Array(T * T);
  const cs = new Float64Array(T);
  for (let u = 1; u < T; u++) {
    let sum = 0;
    for (let v = 0; v < u; v++) {
      cs[v] += probs[(u - 1) * T + v];
      sum += cs[v] / (u - v);
    }
    if (sum > 0) for (let v = 0; v < u; v++) out[u * T + v] = cs[v] / (u - v) / sum;
  }
  return out;
}
