import type { Sequence } from "./sequence.js";

/** Positions of the tokens a step appends: [start, start + T). */
export interface StepInfo {
  start: number;
  T: number;
  /**
   * The layer's queries after RoPE, [T][Hq][D], given to `select` of a policy that sets
   * `wantsQuery` (query-aware selection such as Quest); absent otherwise.
   */
  query?: Float32Array;
}

/** What one layer's attention reads at one step, per kv head. */
export interface LayerSelection {
  /** Positions (< step start) attended exactly: K and V in the hot set. */
  full: Int32Array[];
  /** Positions (< step start) kept V-only; their weights come from `vOnlyWeights`. */
  vOnly?: Int32Array[];
  /** How the exact and V-only parts combine (default "mass"). */
  combine?: "literal" | "mass";
  /**
   * Lists are per query head (numHeads lists) instead of per kv head: each query head reads
   * its own tokens, with its own hot rows (more hot memory under GQA; the stats show it).
   */
  perQueryHead?: boolean;
}

/** What a policy asks to see of a layer's attention at a step. */
export type AttentionRequest =
  | false
  /** The probability matrix [Hq][T][Lmax]. */
  | "probs"
  /** Fused column sums of the probabilities of query rows t >= fromRow: [Hq][Lmax]. */
  | { scores: true; fromRow?: number };

/** One layer's attention at one step, handed to a KV policy that asked for it. */
export interface AttentionObservation {
  layer: number;
  start: number;
  T: number;
  /** [Hq][T][Lmax] when "probs" was asked. */
  probs?: Float32Array;
  /** [Hq][Lmax] when scores were asked. */
  scores?: Float32Array;
  Lmax: number;
  /** Per kv head, the token position of each key column (exact keys only; V-only rows are not listed). */
  keyPositions: Int32Array[];
}

/** One layer's ranked selection made on the device: `select`'s device form (rankSplit's rules). */
export interface DeviceRankPlan {
  /** The newest old positions kept exact without ranking. */
  recent: number;
  /** Per list (kv head): fixed (k ranked tokens, the first `exact` exact, the rest V-only) or adaptive. */
  rule:
    | { kind: "fixed"; k: Int32Array; exact: Int32Array }
    | { kind: "adaptive"; units: Float64Array; vOnly: Uint8Array; exactShare: number; negligible: number };
  /**
   * What ranks the tokens: the sequence's accumulated device scores (see DevicePolicyForm.accumulate),
   * or the assistant's current probability rows: per term, its list, the assistant's layer and
   * head, and its weight (at most 16 terms a list); `gate[h]`: query head h reads V-only tokens
   * (with its term's row as their weights; the terms of list g are its query heads in order).
   */
  scores: /** The list's own table (`layer`: the mean of every kv head's table, per query head, for one choice a layer). */
    | { kind: "accumulated"; over?: "list" | "layer" }
    | {
        kind: "assistant";
        terms: { list: number; layer: number; head: number; weight: number }[];
        gate: boolean[];
      };
  /**
   * Per list, blend the scores with the sequence's own mean attention (the device sums over
   * their hit counts, see DevicePolicyForm.hits): weight * scores + (1 - weight) * own, both as
   * distributions; a negative weight: no blend (rankSplit's `own`).
   */
  blend?: Float64Array;
  /** Rank by the scores' mean over [p - radius, p + radius] within [0, limit) (SnapKV's pooled votes). */
  pool?: { radius: number; limit: number };
  /** Ranked positions not chosen are excluded for good (H2O); excluded window positions are not kept. */
  evict?: boolean;
  /** How the exact and V-only parts combine (default "mass"). */
  combine?: "literal" | "mass";
}

/**
 * A policy's device form: what the device backend runs in place of `select`, `observe` and
 * `vOnlyWeights`, so that the sequence joins the batched path (its selection ranked and read
 * in place on the device, nothing read back). Plans are made on the host from shapes alone.
 */
export interface DevicePolicyForm {
  /**
   * Add the column sums of this step's attention probabilities (rows >= fromRow) to the
   * sequence's device score table, or (`replace`) make them the table's entries for the keys read.
   */
  accumulate?(seq: Sequence, layer: number, step: StepInfo): false | { fromRow: number; replace?: boolean };
  /** Also count, per position, the query rows that read it (a mean attention's divisor; for `blend`). */
  readonly hits?: boolean;
  /** Keep the step's last probability row of every head on the device (what an assistant shows its LLM). */
  readonly rows?: boolean;
  /** The layer's selection at this step, or null (every key). */
  plan?(seq: Sequence, layer: number, step: StepInfo): DeviceRankPlan | null;
}

/**
 * The runner's side of the KV policy contract. At every step and layer the runner asks the
 * policy what attention reads (`select`, before the layer's attention), asks for V-only
 * weights when the selection has V-only tokens, and shows the policy the attention it
 * asked for. `@smallkv/policies` builds its SDK on this.
 */
export interface KvPolicyHook {
  readonly name: string;
  /** The policy reads the assistant model's attention (an AssistedModel runs the SLM only for such sequences). */
  readonly usesAssistant?: boolean;
  /** `select` reads the layer's current queries (`step.query`); the device backend copies them back for it. */
  readonly wantsQuery?: boolean;

  /**
   * Before layer `layer` attends at this step: the old tokens (positions < step.start)
   * each kv head reads. The step's own tokens are always read. null: every token.
   */
  select?(seq: Sequence, layer: number, step: StepInfo): LayerSelection | null;
  /** Weights [Hq][T][vmax] of the selection's V-only tokens (in selection order, vmax = the largest count). */
  vOnlyWeights?(seq: Sequence, layer: number, step: StepInfo, selection: LayerSelection): Float32Array;
  wantsAttention?(seq: Sequence, layer: number, step: StepInfo): AttentionRequest;
  observe?(seq: Sequence, obs: AttentionObservation): void;
  /**
   * Awaited before each step of the sequence, before any layer runs: the place for async
   * work such as running models to match attention heads.
   */
  prepare?(seq: Sequence, step: StepInfo): Promise<void> | void;
  /** What the policy knows about a sequence worth showing (e.g. SmallKV's head matching), JSON-serialisable. */
  describe?(seq: Sequence): Record<string, unknown>;
  /** Token counts by the policy's own classes at the last step (for stats and traces). */
  classCounts?(seq: Sequence): Record<string, number>;
  /** Bytes the policy keeps resident for the sequence besides the KV (e.g. Quest's page metadata), for honest memory reports. */
  residentBytes?(seq: Sequence): number;
  /**
   * A copy of the policy's state for the sequence, and putting such a copy back: how a
   * sequence rolls back (speculative decoding drops rejected draft tokens). A policy that
   * keeps state without these cannot roll back, and speculation is refused for it.
   */
  snapshot?(seq: Sequence): unknown;
  restore?(seq: Sequence, snapshot: unknown): void;
  /**
   * One layer's part of the policy's state (all that `select` and `observe` change at that
   * layer), and putting it back: a rollback inside a rowwise verify step then restores each
   * layer as it was after the last kept row, with no replay. Optional ("layerwise" policies).
   */
  snapshotLayer?(seq: Sequence, layer: number): unknown;
  restoreLayer?(seq: Sequence, layer: number, snapshot: unknown): void;
  /**
   * Whether `prepare` has nothing to do for steps at positions [step.start, step.start + step.T)
   * (default: a policy with `prepare` may always have work). A verify step prepares for its
   * first row only, so speculation waits while a later row would need preparing.
   */
  prepareIdle?(seq: Sequence, step: StepInfo): boolean;
  /**
   * How a multi-token verify step may run (speculative decoding): "layerwise" when a layer's
   * choices at a step depend only on that layer's own past and on earlier layers of the same
   * step (the runner interleaves the rows inside each layer: the dense work stays batched);
   * "rows" (default) when a layer reads later layers of the previous step, so the rows run
   * as one-token steps in order. Both give exactly what one-token decoding gives.
   */
  readonly verify?: "layerwise" | "rows";
  /** Called when the sequence is released (free per-sequence state). */
  release?(seq: Sequence): void;
  /**
   * The device form (absent: on the device backend the sequence takes the per-sequence path,
   * which runs `select` and `observe` on the host).
   */
  readonly device?: DevicePolicyForm;
}

/** The default: keep everything, observe nothing. */
export const fullCache: KvPolicyHook = { name: "full" };

/** A policy that neither selects, observes nor reads queries: its attention needs nothing from the host. */
export function passive(p: KvPolicyHook): boolean {
  return !p.select && !p.wantsAttention && !p.observe && !p.wantsQuery;
}

/** How a sequence is made. */
export interface SequenceOptions {
  /**
   * Device backend: run the policy on the host (`select`/`observe`, the per-sequence path) even
   * when it has a device form: what speculative decoding's rollback needs (the device form's
   * state is not snapshotted).
   */
  hostPolicy?: boolean;
}
