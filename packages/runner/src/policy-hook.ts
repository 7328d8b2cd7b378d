import type { Sequence } from "./sequence.js";

/** One layer's attention at one step, handed to a KV policy that asked for it. */
export interface AttentionObservation {
  layer: number;
  /** Position of this step's first token, and the number of tokens. */
  start: number;
  T: number;
  /** Probabilities [Hq][T][Lmax]; column j of kv head g is key keyPositions[g][j]. */
  probs: Float32Array;
  Lmax: number;
  /** Per kv head, the token position of each key column attention read. */
  keyPositions: Int32Array[];
}

/**
 * The runner's side of the KV policy contract: the runner asks the policy which layers'
 * attention it wants to see, shows it, and after every step asks which tokens each kv
 * head reads at the next step. `@smallkv/policies` builds its SDK on this.
 */
export interface KvPolicyHook {
  readonly name: string;
  /** Whether the probabilities of `layer` are wanted at this step (default: no). */
  wantsAttention?(seq: Sequence, layer: number): boolean;
  observe?(seq: Sequence, obs: AttentionObservation): void;
  /**
   * After a step, per kv head, the positions (all < seq.length) that attention reads at the
   * next step besides that step's own new tokens; null keeps every token.
   */
  select?(seq: Sequence, layer: number): Int32Array[] | null;
}

/** The default: keep everything, observe nothing. */
export const fullCache: KvPolicyHook = { name: "full" };
