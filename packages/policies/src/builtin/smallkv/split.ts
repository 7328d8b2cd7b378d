/** Token counts per class for one kv head at one step. */
export interface ClassSizes {
  critical: number;
  recent: number;
  marginal: number;
}

/**
 * Sizes (tokens) of the three classes for a budget of `total` cost units, `T` of them the
 * step's own tokens (they are always read and count as recent). A marginal token costs half.
 * When the step's own tokens exceed the recent share they take it from marginal first, then
 * from critical: never a negative count, never over the budget.
 */
export function splitBudget(
  total: number,
  T: number,
  split: [number, number, number],
  marginal: boolean,
): ClassSizes {
  const [c, r, m] = split;
  const costM = marginal ? m / 2 : 0;
  const unit = total / (c + r + costM);
  let critical = Math.floor(unit * c + 1e-9);
  let recent = Math.max(T, Math.floor(unit * r + 1e-9));
  if (!marginal) {
    recent = Math.max(T, total - critical);
    return { critical: Math.max(0, Math.min(critical, total - recent)), recent, marginal: 0 };
  }
  let marg = Math.floor(unit * m + 1e-9);
  // Too small a budget: recent and marginal shrink first (proportionally), critical keeps its share.
  if (critical + recent + marg / 2 > total) {
    const rest = Math.max(0, total - critical);
    const want = recent + marg / 2;
    recent = Math.max(T, Math.floor((recent * rest) / Math.max(want, 1e-9)));
    if (critical + recent > total) critical = Math.max(0, total - recent);
    marg = Math.max(0, Math.floor(2 * (total - critical - recent) + 1e-9));
  } else {
    // Rounding leftovers go to marginal tokens (half a unit each).
    marg = Math.max(0, Math.floor(2 * (total - critical - recent) + 1e-9));
  }
  return { critical, recent, marginal: marg };
}

/** "2:1:2" -> [2, 1, 2], or null when the string is not three non-negative numbers with c + r > 0. */
export function parseRatio(s: string): [number, number, number] | null {
  const parts = s.split(":").map((x) => (x.trim() === "" ? Number.NaN : Number(x)));
  if (parts.length !== 3 || parts.some((x) => !(x >= 0) || !Number.isFinite(x)) || parts[0] + parts[1] === 0)
    return null;
  return parts as [number, number, number];
}
