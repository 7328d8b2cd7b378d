import type { AssistantState } from "./assisted.js";
import type { ModelConfig } from "./config.js";
import { DeviceHotRows, DeviceKvCache } from "./device/kv.js";
import { type HotSlots, IndexedRows } from "./hot-set.js";
import { KvCache } from "./kv-cache.js";
import type { Model } from "./model.js";
import { fullCache, type KvPolicyHook } from "./policy-hook.js";

let nextId = 1;

/** One layer's hot set: K+V rows, V-only rows (host arrays or device memory, per backend). */
export interface HotLayer {
  full: HotSlots<unknown>;
  vOnly: HotSlots<unknown>;
  active: boolean;
  perQuery: boolean;
}

/** A hot layer of the CPU backend (read through index lists into the cold store). */
export type HostHot = HotLayer & { full: IndexedRows; vOnly: IndexedRows };

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
  readonly hot: HotLayer[];
  released = false;
  /** Set when the sequence's policy failed; the generator ends the request with this error. */
  fault: Error | null = null;
  /** Free-form per-sequence state for the policy (the SDK keeps its accumulators here). */
  policyState: unknown = undefined;
  private finalStats: KvStats | null = null;
  /** The assistant model's view, when the sequence belongs to an AssistedModel. */
  assistant: AssistantState | null = null;

  constructor(
    readonly config: ModelConfig,
    readonly policy: KvPolicyHook = fullCache,
    /** The model that owns this sequence's cache. */
    readonly model: Model | null = null,
  ) {
    const dev = model?.device;
    this.kv = dev
      ? new DeviceKvCache(config, dev, policy.select !== undefined)
      : new KvCache(config, 64, model?.kvCold ?? "f32");
    this.hot = Array.from({ length: config.numLayers }, () => this.newHot(false));
  }

  /** A layer's hot rows: per kv head, or per query head (each mapped to its kv head). */
  newHot(perQuery: boolean): HotLayer {
    const c = this.config;
    const dev = this.model?.device;
    const rows = (heads: number, planes: number, map: Int32Array | null): HotSlots<unknown> =>
      dev
        ? (new DeviceHotRows(dev, heads, c.headDim, planes, map, c.numKvHeads) as HotSlots<unknown>)
        : (new IndexedRows(heads, c.headDim, planes, map, c.numKvHeads) as HotSlots<unknown>);
    if (!perQuery) {
      return {
        full: rows(c.numKvHeads, 2, null),
        vOnly: rows(c.numKvHeads, 1, null),
        active: false,
        perQuery,
      };
    }
    const group = c.numHeads / c.numKvHeads;
    const map = Int32Array.from({ length: c.numHeads }, (_, h) => Math.floor(h / group));
    return { full: rows(c.numHeads, 2, map), vOnly: rows(c.numHeads, 1, map), active: false, perQuery };
  }

  get length(): number {
    return this.kv.length;
  }

  /** The KV footprint now (or, once released, at the moment of release). */
  stats(): KvStats {
    if (this.finalStats) return this.finalStats;
    const c = this.config;
    const n = this.length;
    // Bytes of one K or V row as attention reads it (an int8 store's rows carry a scale).
    const rowBytes = this.kv.rowBytes();
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
      const per = h.perQuery ? c.numHeads / c.numKvHeads : 1;
      const f = h.full.rowsHeld() / per;
      const v = h.vOnly.rowsHeld() / per;
      hotBytes += (2 * f + v) * rowBytes * (per - 1);
      full += f;
      vOnly += v;
      hotBytes += (2 * f + v) * rowBytes;
    }
    // Per-query-head layers hold group-many lists per kv head: count them per kv head.
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
    this.assistant?.seq.release();
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
