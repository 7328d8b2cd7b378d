// How a layer's old-token units become exact and V-only slots per list: adaptively from the
// predicted masses (the default), or by a fixed critical:recent:marginal ratio (the paper).
import type { RankSplitRule } from "@smallkv/tensor";
import type { SmallKvOptions } from "./options.js";
import { parseRatio, splitBudget } from "./split.js";

export interface LayerRule {
  rule: RankSplitRule;
  /** Old positions kept exact as the recent window. */
  recentOld: number;
}

/**
 * The rule for one layer step: `oldUnits` per list (a V-only token costs half a unit),
 * `marginalOk` whether V-only tokens may be made at all, `vOnlyLists` which lists may take them.
 */
export function layerRule(
  o: SmallKvOptions,
  lists: number,
  start: number,
  T: number,
  oldUnits: number,
  marginalOk: boolean,
  vOnlyLists: Uint8Array,
): LayerRule {
  const units = Math.floor(oldUnits);
  if (o.split === "adaptive") {
    const recentOld = Math.min(start, Math.floor(o.recent), units);
    const base = Math.max(0, oldUnits - recentOld);
    return {
      recentOld,
      rule: {
        kind: "adaptive",
        units: new Float64Array(lists).fill(base),
        vOnly: marginalOk ? vOnlyLists : new Uint8Array(lists),
        exactShare: o.exactShare,
        negligible: o.negligible,
      },
    };
  }
  const sizes = splitBudget(units + T, T, parseRatio(o.split)!, o.marginal && marginalOk);
  const recent = Math.min(Math.max(sizes.recent - T, Math.min(start, Math.floor(o.recent))), units);
  const critical = Math.max(0, Math.min(sizes.critical, units - recent));
  const recentOld = Math.min(start, recent);
  const k = new Int32Array(lists);
  const exact = new Int32Array(lists);
  for (let g = 0; g < lists; g++) {
    const room = Math.max(0, Math.floor(2 * (oldUnits - recentOld - critical) + 1e-9));
    const ok = marginalOk && vOnlyLists[g] === 1;
    const nM = ok ? Math.min(sizes.marginal, room) : 0;
    exact[g] = Math.min(
      critical + (ok ? 0 : Math.floor(sizes.marginal / 2)),
      Math.max(0, Math.floor(oldUnits - recentOld - nM / 2 + 1e-9)),
    );
    k[g] = exact[g] + nM;
  }
  return { recentOld, rule: { kind: "fixed", k, exact } };
}
