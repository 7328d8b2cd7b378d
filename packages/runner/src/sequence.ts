import type { ModelConfig } from "./config.js";
import { KvCache } from "./kv-cache.js";
import { fullCache, type KvPolicyHook } from "./policy-hook.js";

let nextId = 1;

/** One sequence's state in a model: its KV cache, its policy and its selection. */
export class Sequence {
  readonly id = nextId++;
  readonly kv: KvCache;
  /** Token ids seen so far (prompt and generated). */
  readonly tokens: number[] = [];
  /** Per layer, per kv head, the positions attention reads (besides new tokens); null = all. */
  readonly selection: (Int32Array[] | null)[];
  released = false;
  /** Set when the sequence's policy failed; the generator ends the request with this error. */
  fault: Error | null = null;

  constructor(
    readonly config: ModelConfig,
    readonly policy: KvPolicyHook = fullCache,
  ) {
    this.kv = new KvCache(config);
    this.selection = new Array(config.numLayers).fill(null);
  }

  get length(): number {
    return this.kv.length;
  }

  /** Free the KV memory at once (cancelled or finished requests). */
  release(): void {
    this.kv.release();
    this.released = true;
  }
}
