import { topk } from "@smallkv/tensor";

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
