/** The matching window rules of the spec (section 1), all named options. */
export interface WindowOptions {
  /** Below this context length, matching (and eviction) waits (default 100). */
  minTokens: number;
  /** Above this length, the attention is truncated to `size` tokens (default 200). */
  maxTokens: number;
  /** Tokens used when truncating (default 128). */
  size: number;
  /** Which tokens when truncating: the first (default) or the last. */
  from: "first" | "last";
}

export const DEFAULT_WINDOW: WindowOptions = { minTokens: 100, maxTokens: 200, size: 128, from: "first" };

/** The token range [start, end) to match on at context length n, or null to wait. */
export function matchingWindow(n: number, o: WindowOptions = DEFAULT_WINDOW): [number, number] | null {
  if (n < o.minTokens) return null;
  if (n <= o.maxTokens) return [0, n];
  return o.from === "first" ? [0, o.size] : [n - o.size, n];
}
