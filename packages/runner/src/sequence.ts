import type { ModelConfig } from "./config.js";
import { HotRows } from "./hot-set.js";
import { KvCache } from "./kv-cache.js";
import { fullCache, type KvPolicyHook } from "./policy-hook.js";

let nextId = 1;

/** What a sequence's KV occupies: the cold full store, the hot working set, and token classes. */
export interface KvStats {
  /** Tokens in the sequence. */
  tokens: number;
  /** Bytes of the cold full store (every token's K and V, every layer). */
  coldBytes: number;
  /** Bytes attention read at the last step: K+V of full-class rows and V of V-only rows (the cold store itself for layers without a selection). */
  hotBytes: number;
  /** Token-slots (layer x kv head x token) by class at the last step. */
  classes: { full: number; vOnly: number; dropped: number };
  /** Hot cost in tokens per layer and kv head at the last step (V-only counts half). */
  hotTokensPerHead: number;
  /** Rows moved from the cold store into the hot set since the start. */
  movedRows: number;
}

/** One sequence's state in a model: cold KV store, hot working set per layer, policy. */
export class Sequence {
  readonly id = nextId++;
  readonly kv: KvCache;
  /** Token ids seen so far (prompt and generated). */
  readonly tokens: number[] = [];
  /** Per layer: the K+V working set and the V-only rows, when the policy selects. */
  readonly hot: { full: HotRows; vOnly: HotRows; active: boolean }[];
  released = false;
  /** Set when the sequence's policy failed; the generator ends the request with this error. */
  fault: Error | null = null;
  /** Free-form per-sequence state for the policy (the SDK keeps its accumulators here). */
  policyState: unknown = undefined;
  private finalStats: KvStats | null = null;

  constructor(
    readonly config: ModelConfig,
    readonly policy: KvPolicyHook = fullCache,
  ) {
    this.kv = new KvCache(config);
    this.hot = Array.from({ length: config.numLayers }, () => ({
      full: new HotRows(config.numKvHeads, config.headDim, 2),
      vOnly: new HotRows(config.numKvHeads, config.headDim, 1),
      active: false,
    }));
  }

  get length(): number {
    return this.kv.length;
  }

  /** The KV footprint now (or, once released, at the moment of release). */
  stats(): KvStats {
    if (this.finalStats) return this.finalStats;
    const c = this.config;
    const n = this.length;
    const rowBytes = c.headDim * 4;
    let hotBytes = 0;
    let full = 0;
    let vOnly = 0;
    let moved = 0;
    for (const h of this.hot) {
      moved += h.full.moved + h.vOnly.moved;
      if (!h.active) {
        full += c.numKvHeads * n;
        hotBytes += 2 * c.numKvHeads * n * rowBytes;
        continue;
      }
      const f = h.full.rowsHeld();
      const v = h.vOnly.rowsHeld();
      full += f;
      vOnly += v;
      hotBytes += (2 * f + v) * rowBytes;
    }
    const slots = c.numLayers * c.numKvHeads * n;
    return {
      tokens: n,
      coldBytes: this.kv.usedBytes(),
      hotBytes,
      classes: { full, vOnly, dropped: slots - full - vOnly },
      hotTokensPerHead: (full + vOnly / 2) / (c.numLayers * c.numKvHeads),
      movedRows: moved,
    };
  }

  /** Free the KV memory at once (cancelled or finished requests). */
  release(): void {
    if (this.released) return;
    this.finalStats = this.stats();
    this.kv.release();
    for (const h of this.hot) {
      h.full.release();
      h.vOnly.release();
    }
    this.released = true;
    try {
      this.policy.release?.(this);
    } catch {
      // A policy's cleanup failing must not break the release of memory.
    }
    this.policyState = undefined;
  }
}
