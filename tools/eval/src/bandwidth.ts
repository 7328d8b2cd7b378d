import { sum } from "@smallkv/tensor";

/** Read bandwidth in bytes/s: best of several passes over a buffer far larger than the caches. */
export function measureReadBandwidth(bytes = 512 * 1024 * 1024, passes = 5): number {
  const x = new Float32Array(bytes / 4).fill(1);
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < passes; i++) {
    const t0 = performance.now();
    sum(x);
    best = Math.min(best, performance.now() - t0);
  }
  return bytes / (best / 1000);
}
