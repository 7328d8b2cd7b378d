import { createHash } from "node:crypto";
import type { KvRows } from "./kv-cache.js";
import type { KvPolicyHook } from "./policy-hook.js";
import type { Sequence, SequenceSnapshot } from "./sequence.js";

/**
 * Automatic prefix caching: the KV of a prompt's token blocks (the assistant's too) and the
 * policy's state after each block, kept after the request ends and keyed by the token chain,
 * so a later prompt that starts the same way prefills only the rest.
 *
 * Exactness: with a cache, every prompt is prefilled in block-aligned chunks (the last chunk
 * ends at the prompt's end), so a request that starts from cached blocks runs exactly the
 * steps a cold one would have run after them, from the same state. Entries are scoped by the
 * policy (name, budget, options): the KV of a chunk depends on what the policy let it read.
 */
export interface PrefixCacheOptions {
  /** Bytes of K/V and policy state the cache may hold (LRU eviction beyond). */
  maxBytes: number;
  /** Tokens per block (default 128): prompts are prefilled in chunks ending on block boundaries. */
  blockSize?: number;
}

export interface PrefixCacheStats {
  /** Prompt tokens served from the cache, and prompt tokens prefilled, since creation. */
  hitTokens: number;
  missTokens: number;
  bytes: number;
  blocks: number;
  evictions: number;
}

interface Block {
  key: string;
  parent: Block | null;
  /** Position after this block. */
  end: number;
  kv: KvRows;
  slmKv: KvRows | null;
  snap: SequenceSnapshot;
  assistant: Float64Array[][] | null;
  bytes: number;
  children: number;
}

/** Bytes of a snapshot's typed arrays (policy state, hot-set positions), found by walking it. */
function typedBytes(x: unknown, seen = new Set<unknown>()): number {
  if (x === null || typeof x !== "object" || seen.has(x)) return 0;
  seen.add(x);
  if (ArrayBuffer.isView(x)) return x.byteLength;
  let n = 64;
  if (x instanceof Map) for (const [k, v] of x) n += typedBytes(k, seen) + typedBytes(v, seen);
  else if (x instanceof Set) for (const v of x) n += typedBytes(v, seen);
  else for (const v of Object.values(x)) n += typeof v === "object" ? typedBytes(v, seen) : 8;
  return n;
}

const rowsBytes = (r: KvRows | null) =>
  r ? r.layers.reduce((a, l) => a + l.k.byteLength + l.v.byteLength + (l.kScale?.byteLength ?? 0) * 2, 0) : 0;

/** What identifies a policy's effect on the KV beyond the tokens: its name, budget and options. */
export function policyScope(policy: KvPolicyHook): string {
  const p = policy as KvPolicyHook & { budget?: { toString(): string }; options?: unknown };
  return `${p.name}|${p.budget?.toString() ?? ""}|${JSON.stringify(p.options ?? null)}`;
}

export class PrefixCache {
  readonly blockSize: number;
  readonly maxBytes: number;
  /** Blocks by key, least recently used first. */
  private readonly blocks = new Map<string, Block>();
  private bytes = 0;
  private counts = { hitTokens: 0, missTokens: 0, evictions: 0 };

  constructor(o: PrefixCacheOptions) {
    if (!(Number.isFinite(o.maxBytes) && o.maxBytes >= 0))
      throw new RangeError(`prefix cache maxBytes must be a number >= 0, got ${o.maxBytes}`);
    const b = o.blockSize ?? 128;
    if (!(Number.isInteger(b) && b >= 1))
      throw new RangeError(`prefix cache blockSize must be an integer >= 1, got ${b}`);
    this.blockSize = b;
    this.maxBytes = o.maxBytes;
  }

  get stats(): PrefixCacheStats {
    return { ...this.counts, bytes: this.bytes, blocks: this.blocks.size };
  }

  /** Whether a sequence's state can be cached: a host store without sliding windows, a policy that snapshots. */
  static cacheable(seq: Sequence): boolean {
    const dev = !!seq.model?.device;
    const sliding = seq.config.slidingWindow?.some((w) => w !== null) ?? false;
    return !dev && !sliding && seq.canRollBack && (!seq.assistant || !seq.assistant.seq.model?.device);
  }

  private keyOf(scope: string, parent: string, tokens: number[]): string {
    return createHash("sha256")
      .update(scope)
      .update("\0")
      .update(parent)
      .update("\0")
      .update(Int32Array.from(tokens))
      .digest("base64url");
  }

  /** The end of the next prefill chunk after `done` of `n` prompt tokens. */
  chunkEnd(done: number, n: number): number {
    return Math.min(n, (Math.floor(done / this.blockSize) + 1) * this.blockSize);
  }

  /**
   * Start `seq` (fresh) from the longest run of cached blocks that `prompt` begins with, leaving
   * at least one token to compute (its logits are needed). Returns the tokens restored and the
   * key of the last restored block ("" when none: the chain starts at the root).
   */
  restore(seq: Sequence, scope: string, prompt: number[]): { tokens: number; key: string } {
    const B = this.blockSize;
    const chain: Block[] = [];
    let parent = "";
    for (let end = B; end < prompt.length; end += B) {
      const b = this.blocks.get(this.keyOf(scope, parent, prompt.slice(end - B, end)));
      if (!b) break;
      chain.push(b);
      parent = b.key;
    }
    const hit = chain.length * B;
    this.counts.hitTokens += hit;
    this.counts.missTokens += prompt.length - hit;
    if (chain.length === 0) return { tokens: 0, key: "" };
    // Most recently used: the chain, parents before children.
    for (const b of chain) {
      this.blocks.delete(b.key);
      this.blocks.set(b.key, b);
    }
    // The pasted rows set both stores' lengths.
    for (const b of chain) {
      seq.kv.pasteRows(b.kv, b.end - B);
      if (b.slmKv && seq.assistant) seq.assistant.seq.kv.pasteRows(b.slmKv, b.end - B);
    }
    const last = chain[chain.length - 1];
    seq.tokens.splice(0, seq.tokens.length, ...prompt.slice(0, hit));
    if (seq.assistant) {
      const a = seq.assistant.seq;
      a.tokens.splice(0, a.tokens.length, ...prompt.slice(0, hit));
      if (last.assistant) seq.assistant.restorePrefix(last.assistant);
    }
    seq.restore(last.snap);
    return { tokens: hit, key: last.key };
  }

  /**
   * After a prefill chunk that ended on a block boundary: keep the block that just ended, whose
   * parent is the block with key `parentKey` ("" for the first block). Returns the block's key,
   * or null when it is not kept (its parent was evicted meanwhile, or it is over the budget):
   * the blocks after it cannot be reached either.
   */
  store(seq: Sequence, scope: string, prompt: number[], parentKey: string): string | null {
    const B = this.blockSize;
    const end = seq.length;
    if (end % B !== 0 || end === 0 || end > prompt.length) return null;
    const parent = end > B ? this.blocks.get(parentKey) : undefined;
    if (end > B && !parent) return null;
    const key = this.keyOf(scope, parentKey, prompt.slice(end - B, end));
    const known = this.blocks.get(key);
    if (known) {
      this.blocks.delete(key);
      this.blocks.set(key, known);
      return key;
    }
    const kv = seq.kv.copyRows(end - B, end);
    const slmKv = seq.assistant ? seq.assistant.seq.kv.copyRows(end - B, end) : null;
    const snap = seq.snapshot();
    const assistant = seq.assistant ? seq.assistant.prefixState(end) : null;
    const bytes = rowsBytes(kv) + rowsBytes(slmKv) + typedBytes(snap) + typedBytes(assistant) + 256;
    if (bytes > this.maxBytes) return null;
    const block: Block = { key, parent: parent ?? null, end, kv, slmKv, snap, assistant, bytes, children: 0 };
    if (parent) parent.children++;
    this.blocks.set(key, block);
    this.bytes += bytes;
    this.evict(block);
    return key;
  }

  /** Drop least recently used leaf blocks until the budget holds (never `keep`). */
  private evict(keep: Block): void {
    while (this.bytes > this.maxBytes) {
      let victim: Block | null = null;
      for (const b of this.blocks.values())
        if (b.children === 0 && b !== keep) {
          victim = b;
          break;
        }
      if (!victim) break;
      this.blocks.delete(victim.key);
      this.bytes -= victim.bytes;
      this.counts.evictions++;
      if (victim.parent) victim.parent.children--;
    }
  }

  /** Forget everything. */
  clear(): void {
    this.blocks.clear();
    this.bytes = 0;
  }
}
