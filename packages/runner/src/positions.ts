let identity = new Int32Array(0);

/** [0, 1, …, n - 1] as a read-only view of one shared array, grown (doubling) as needed. */
export function positionsUpTo(n: number): Int32Array {
  if (identity.length < n)
    identity = Int32Array.from({ length: Math.max(n, 2 * identity.length) }, (_, i) => i);
  return identity.subarray(0, n);
}
