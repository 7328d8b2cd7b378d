import type { PolicyInstance } from "@smallkv/policies";
import type { Sequence } from "@smallkv/runner";

/** Per-step KV trace for the playground: stats, policy classes, and per layer/head token classes. */
export function traceOf(seq: Sequence, policy: PolicyInstance, token: number) {
  const st = seq.stats();
  return {
    token,
    stats: st,
    policy_classes: policy.classCounts?.(seq) ?? {},
    policy_state: policy.describe?.(seq) ?? {},
    layers: layerClasses(seq),
  };
}

/** For each layer and kv head: positions in the hot set (K+V) and V-only, at the last step. */
function layerClasses(seq: Sequence) {
  return seq.hot.map((h) => ({
    active: h.active,
    perQuery: h.perQuery,
    full: h.active
      ? Array.from({ length: h.full.count.length }, (_, g) => Array.from(h.full.positions(g)))
      : null,
    vOnly: h.active
      ? Array.from({ length: h.vOnly.count.length }, (_, g) => Array.from(h.vOnly.positions(g)))
      : null,
  }));
}
