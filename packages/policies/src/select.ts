import { topPositions as nativeTopPositions } from "@smallkv/tensor";

/** Positions [from, to) as an Int32Array. */
export function range(from: number, to: number): Int32Array {
  const n = Math.max(0, to - from);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = from + i;
  return out;
}

/**
 * The k positions in [0, n) with the highest scores, skipping excluded ones (mask = 1), in
 * ascending position order. Ties go to the earlier position. Typed scores go to the native
 * selection as they are (no copy); other array-likes are copied once.
 */
export function topPositions(
  scores: ArrayLike<number>,
  n: number,
  k: number,
  exclude?: Uint8Array,
  /** Highest score first instead of ascending positions. */
  byScore = false,
): Int32Array {
  if (k <= 0 || n <= 0) return new Int32Array(0);
  return nativeTopPositions(typedScores(scores, n), n, k, exclude, byScore);
}

/** Scores as the native selection takes them: typed arrays as they are, others copied once (n values). */
export function typedScores(scores: ArrayLike<number>, n: number): Float32Array | Float64Array {
  return scores instanceof Float64Array || scores instanceof Float32Array
    ? scores
    : Float64Array.from({ length: n }, (_, i) => scores[i]);
}

/** A mask of length n with ones at the given positions. */
export function maskOf(n: number, ...lists: ArrayLike<number>[]): Uint8Array {
  const m = new Uint8Array(n);
  for (const l of lists) for (let i = 0; i < l.length; i++) m[l[i]] = 1;
  return m;
}

/** Merge sorted-or-not position lists into one ascending, duplicate-free list. */
export function union(...lists: ArrayLike<number>[]): Int32Array {
  let total = 0;
  for (const l of lists) total += l.length;
  const all = new Int32Array(total);
  let at = 0;
  for (const l of lists) for (let i = 0; i < l.length; i++) all[at++] = l[i];
  all.sort();
  let m = 0;
  for (let i = 0; i < total; i++) if (i === 0 || all[i] !== all[i - 1]) all[m++] = all[i];
  return m === total ? all : all.slice(0, m);
}

/** The same list for every kv head. */
export function everyHead(numKvHeads: number, list: Int32Array): Int32Array[] {
  return Array.from({ length: numKvHeads }, () => list);
}

/** 1-D average pooling with an odd kernel (SnapKV smooths its votes this way). */
export function avgPool(x: ArrayLike<number>, n: number, kernel: number): Float64Array {
  const out = new Float64Array(n);
  const r = Math.floor(kernel / 2);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = Math.max(0, i - r); j <= Math.min(n - 1, i + r); j++) {
      s += x[j];
    }
    out[i] = s / kernel; // zero padding, as SnapKV's avg_pool1d (count_include_pad)
  }
  return out;
}

/**
 * Tokens evicted for good, per layer and head (H2O-style policies and SmallKV's
 * no-saliency ablation): once out, a position is never selected again.
 */
export class Evictions {
  private readonly masks: Uint8Array[][];

  constructor(numLayers: number, heads: number) {
    this.masks = Array.from({ length: numLayers }, () =>
      Array.from({ length: heads }, () => new Uint8Array(64)),
    );
  }

  private mask(layer: number, g: number, n: number): Uint8Array {
    let m = this.masks[layer][g];
    if (m.length < n) {
      const next = new Uint8Array(Math.max(n, m.length * 2));
      next.set(m);
      this.masks[layer][g] = m = next;
    }
    return m;
  }

  copyLayer(layer: number): Uint8Array[] {
    return this.masks[layer].map((m) => m.slice());
  }
  putLayer(layer: number, x: Uint8Array[]): void {
    this.masks[layer] = x.map((m) => m.slice());
  }

  /** The layer's masks (1 = evicted), each covering at least [0, n): live, for native updates. */
  masksFor(layer: number, n: number): Uint8Array[] {
    return this.masks[layer].map((_, g) => this.mask(layer, g, n));
  }

  isEvicted(layer: number, g: number, p: number): boolean {
    return this.mask(layer, g, p + 1)[p] === 1;
  }

  /** Set the evicted positions below `n` in `exclude` (a mask for topPositions). */
  excludeInto(layer: number, g: number, exclude: Uint8Array, n: number): Uint8Array {
    const m = this.mask(layer, g, n);
    for (let p = 0; p < n; p++) if (m[p]) exclude[p] = 1;
    return exclude;
  }

  /** Evict every position below `n` that is in none of the `kept` lists. */
  keepOnly(layer: number, g: number, n: number, ...kept: ArrayLike<number>[]): void {
    const m = this.mask(layer, g, n);
    const keep = maskOf(n, ...kept);
    for (let p = 0; p < n; p++) if (!keep[p]) m[p] = 1;
  }
}
