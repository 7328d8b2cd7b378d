import type { AssistantState } from "./assisted.js";
import type { ModelConfig } from "./config.js";
import { DeviceHotRows, DeviceKvCache } from "./device/kv.js";
import { PolicyError } from "./errors.js";
import { HostRows, type HotSlots, type HotSnapshot, IndexedRows } from "./hot-set.js";
import { KvCache } from "./kv-cache.js";
import type { Model } from "./model.js";
import {
  type DevicePolicyForm,
  fullCache,
  type KvPolicyHook,
  passive,
  type SequenceOptions,
} from "./policy-hook.js";

let nextId = 1;

/** One layer's hot set: K+V rows, V-only rows (host arrays or device memory, per backend). */
export interface HotLayer {
  full: HotSlots<unknown>;
  vOnly: HotSlots<unknown>;
  active: boolean;
  perQuery: boolean;
}

const EMPTY = new Float32Array(0);

/** A hot layer of the CPU backend: its own float rows, or index lists into the cold store. */
export type HostHot = HotLayer & { full: IndexedRows | HostRows; vOnly: IndexedRows | HostRows };

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

/** A sequence's state at one length, for `Sequence.restore` (speculative decoding's rollback). */
/** One layer's hot set at one moment. */
export interface HotLayerSnapshot {
  perQuery: boolean;
  active: boolean;
  full: HotSnapshot;
  vOnly: HotSnapshot;
}

export interface SequenceSnapshot {
  length: number;
  hot: HotLayerSnapshot[];
  /** The policy's own copy of its state (KvPolicyHook.snapshot). */
  policy: unknown;
}

/**
 * What a sequence with an open checkpoint keeps to roll back: snapshots by length (taken
 * before a step's layers, after its policy prepared), and every later step's queries per
 * layer (after RoPE) so that a rollback between snapshots replays the policy's part.
 */
export interface Journal {
  snaps: Map<number, SequenceSnapshot>;
  /** Position of q row 0. */
  start: number;
  /** q[layer]: [position - start][Hq][D] (host backend only). */
  q: Float32Array[];
  /** The steps since the first snapshot, in order, and whether their rows were planned one by one. */
  steps: { start: number; T: number; rowwise: boolean }[];
  /**
   * Rowwise steps of a policy with layer snapshots: per position, every layer's hot set and
   * policy part after that row (a rollback to it needs no replay).
   */
  rows: Map<number, { hot: HotLayerSnapshot; policy: unknown }[]>;
}

/** Whether a policy keeps per-sequence state (it decides, observes or prepares). */
export function policyHasState(p: KvPolicyHook): boolean {
  return !!(p.select || p.observe || p.prepare || p.wantsAttention);
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
  /** Open checkpoint (speculative decoding), managed by the model. */
  journal: Journal | null = null;
  /** The assistant model's view, when the sequence belongs to an AssistedModel. */
  assistant: AssistantState | null = null;

  /** The policy's device form this sequence runs (null: none, or the host path was asked for). */
  readonly deviceForm: DevicePolicyForm | null;

  constructor(
    readonly config: ModelConfig,
    readonly policy: KvPolicyHook = fullCache,
    /** The model that owns this sequence's cache. */
    readonly model: Model | null = null,
    opts: SequenceOptions = {},
  ) {
    const dev = model?.device;
    const runner = model?.runner;
    const d = policy.device;
    // A form that ranks or accumulates needs the batched path's kernels; one that only keeps
    // probability rows (an assistant) also runs per sequence.
    const fits = !!runner?.batchedHeads || (!!d && !d.plan && !d.accumulate);
    const form = dev && runner?.devicePolicies && !opts.hostPolicy && d && fits ? d : null;
    this.deviceForm = form;
    this.kv = dev
      ? new DeviceKvCache(
          config,
          dev,
          policy.select !== undefined && !form,
          // Only the batched path reads 16-bit stores; the per-sequence path runs on f32 rows.
          (passive(policy) || form) && runner?.batchedHeads ? runner.kvDtype : "f32",
          form,
          runner?.kvBudget ?? null,
        )
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
        : this.model?.hotRows === "copy"
          ? (new HostRows(heads, c.headDim, planes, map, c.numKvHeads) as HotSlots<unknown>)
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
    // Hot rows held as copies are float32; index lists read the store's own rows.
    const rowBytes = this.hot[0]?.full instanceof IndexedRows ? this.kv.rowBytes() : this.config.headDim * 4;
    let hotBytes = 0;
    let full = 0;
    let vOnly = 0;
    let moved = 0;
    // A device form's selection is read in place on the device: what its last step read.
    const onDevice = this.kv instanceof DeviceKvCache ? this.kv.policy?.selection() : undefined;
    for (const [l, h] of this.hot.entries()) {
      moved += h.full.moved + h.vOnly.moved;
      const d = onDevice?.[l];
      if (d) {
        full += d.full;
        vOnly += d.vOnly;
        hotBytes += (2 * d.full + d.vOnly) * rowBytes;
        continue;
      }
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

  /**
   * Whether the sequence can be rolled back (speculative decoding): a policy with state must
   * copy it (KvPolicyHook.snapshot and restore).
   */
  get canRollBack(): boolean {
    // A device form's state (scores, masks) lives on the device and is not snapshotted.
    if (this.deviceForm && policyHasState(this.policy)) return false;
    return !policyHasState(this.policy) || (!!this.policy.snapshot && !!this.policy.restore);
  }

  /** Everything `restore` needs to bring the sequence back to its current length. */
  snapshot(): SequenceSnapshot {
    if (!this.canRollBack)
      throw new PolicyError(
        this.policy.name,
        "snapshot",
        "the policy keeps state but cannot copy it (no snapshot/restore), so its sequences cannot roll back",
      );
    return {
      length: this.length,
      hot: this.hot.map((_, l) => this.hotSnapshot(l)),
      policy: this.policy.snapshot?.(this),
    };
  }

  /**
   * Bring the sequence back to a snapshot: length and tokens, the hot sets (same rows in the
   * same slots) and the policy's state. K/V rows past the length stay in the store unread
   * until new tokens overwrite them. The assistant's view is rolled back by its owner.
   */
  restore(s: SequenceSnapshot): void {
    if (s.length > this.length)
      throw new PolicyError(
        this.policy.name,
        "restore",
        `cannot restore length ${s.length} > ${this.length}`,
      );
    this.truncateTo(s.length);
    s.hot.forEach((h, l) => this.restoreHot(l, h));
    if (this.policy.restore) this.policy.restore(this, s.policy);
  }

  /** Layer l's hot set bookkeeping now. */
  hotSnapshot(l: number): HotLayerSnapshot {
    const h = this.hot[l];
    return { perQuery: h.perQuery, active: h.active, full: h.full.snapshot(), vOnly: h.vOnly.snapshot() };
  }

  /** Put layer l's hot set back (same rows in the same slots). */
  restoreHot(l: number, h: HotLayerSnapshot): void {
    if (this.hot[l].perQuery !== h.perQuery) {
      this.hot[l].full.release();
      this.hot[l].vOnly.release();
      this.hot[l] = this.newHot(h.perQuery);
    }
    const dev = this.kv instanceof DeviceKvCache ? this.kv : null;
    const hot = this.hot[l];
    hot.active = h.active;
    const ccap = this.kv.capOf(l);
    const base = this.kv.base[l];
    // Held rows are copied back from the cold store.
    const int8 = this.kv.int8Of(l) ?? undefined;
    const host = [{ k: this.kv.k[l] ?? EMPTY, v: this.kv.v[l] ?? EMPTY, int8, cap: ccap }];
    hot.full.restore(h.full, dev ? [dev.dk[l].ptr, dev.dv[l].ptr] : host, ccap, base);
    hot.vOnly.restore(h.vOnly, dev ? [dev.dv[l].ptr] : host, ccap, base);
  }

  /** Cut the sequence to its first n tokens (the store keeps the rows; they are overwritten later). */
  truncateTo(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.length))
      throw new PolicyError(this.policy.name, "truncate", `length ${n} is outside [0, ${this.length}]`);
    this.kv.length = n;
    this.tokens.length = n;
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
    this.journal = null;
    try {
      this.policy.release?.(this);
    } catch {
      // A policy's cleanup failing must not break the release of memory.
    }
    this.policyState = undefined;
  }
}
