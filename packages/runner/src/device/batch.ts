import {
  ATTN_SEQ_INTS,
  type AttentionSeq,
  type Device,
  type DeviceBuffer,
  packAddresses,
  packAttentionSeqs,
} from "@smallkv/tensor";
import type { ModelConfig } from "../config.js";
import type { KvPolicyHook } from "../policy-hook.js";
import type { Sequence } from "../sequence.js";
import type { DeviceHotRows, DeviceKvCache } from "./kv.js";
import type { Staging } from "./staging.js";

/** One step's sequence: its rows in the batch, and which logits it wants. */
export interface DeviceStepPart {
  seq: Sequence;
  tokens: ArrayLike<number>;
  row: number;
}

/** Device addresses of one layer's batched work. */
interface LayerMeta {
  records: number;
  kStores: number;
  vStores: number;
}

/** Consecutive batched parts that share one attention launch (and its workspace). */
export interface AttentionGroup {
  first: number;
  count: number;
  maxT: number;
  maxKeys: number;
  /** maxKeys rounded up to a power of two (>= 256): the attention grid, fixed for a graph's life. */
  keyBucket: number;
}

/** What a step's kernels read from its one metadata upload. */
export interface StepMeta {
  ids: number;
  pos: number;
  /** Per row: its entry in the batch's KV append, or -1 (a per-sequence row). */
  entry: number;
  /** The sequences that go through the batched path (null: none this step). */
  batch: {
    parts: DeviceStepPart[];
    rows: number;
    groups: AttentionGroup[];
    caps: number;
    dst: number;
    rowIndex: number;
    layers: LayerMeta[];
  } | null;
}

/**
 * The batched path's workspace (partial outputs per query row and key chunk) is kept under
 * this many floats (256 MiB): a long prefill batch runs its attention in several launches.
 */
const PART_FLOATS_CAP = 2 ** 26;
/** Query rows per attention record: a longer step (prefill) is cut into records of this many rows. */
const CHUNK_ROWS = 256;
const keyBucket = (n: number) => Math.max(256, 2 ** Math.ceil(Math.log2(n)));

/**
 * A sequence whose policy neither selects, observes nor reads queries, with its store in device
 * memory: its attention needs nothing from the host, so it joins the batched path (one KV
 * append and one attention launch per layer for all such sequences).
 */
export function batchable(seq: Sequence): boolean {
  return passive(seq.policy) && !(seq.kv as DeviceKvCache).pinned;
}

/** A policy that neither selects, observes nor reads queries: its attention needs nothing from the host. */
export function passive(p: KvPolicyHook): boolean {
  return !p.select && !p.wantsAttention && !p.observe && !p.wantsQuery;
}

/**
 * Where a device-backend sequence's attention runs, where its store lives, and the device bytes
 * it holds (its store when that is in device memory, and its hot sets), for --stats and benches.
 */
export function devicePath(seq: Sequence): {
  path: "batched" | "per-sequence";
  store: "device" | "pinned host";
  storeDtype: string;
  deviceBytes: number;
} {
  const kv = seq.kv as DeviceKvCache;
  const planes = (h: unknown) => (h as DeviceHotRows).planesBuf.reduce((a, b) => a + b.bytes, 0);
  return {
    path: batchable(seq) ? "batched" : "per-sequence",
    store: kv.pinned ? "pinned host" : "device",
    storeDtype: kv.storeDtype,
    deviceBytes: kv.deviceBytes + seq.hot.reduce((a, h) => a + planes(h.full) + planes(h.vOnly), 0),
  };
}

const even = (n: number) => n + (n & 1);

/**
 * Packs a step's metadata (token ids, positions, and for the batched sequences every layer's
 * attention records and KV destinations) into one buffer and uploads it once: the kernels
 * then read device memory, not mapped host memory.
 */
export class StepMetadata {
  private host: Int32Array = new Int32Array(0);
  private devBuf: DeviceBuffer | null = null;
  /** Bumped when the device buffer is reallocated (graphs hold its address). */
  generation = 0;

  constructor(
    private readonly dev: Device,
    private readonly c: ModelConfig,
    private readonly staging: Staging,
  ) {}

  prepare(parts: DeviceStepPart[], M: number): StepMeta {
    const L = this.c.numLayers;
    const { numHeads: Hq, headDim: D } = this.c;
    const batch = parts.filter((p) => batchable(p.seq));
    // Attention records: a part's rows in chunks of at most CHUNK_ROWS (a long prefill is
    // several records, each seeing the keys up to its last row: the KV append before it wrote
    // them), in groups of consecutive records whose workspace fits the cap.
    const recs: { part: DeviceStepPart; r0: number; T: number }[] = [];
    for (const part of batch)
      for (let r0 = 0; r0 < part.tokens.length; r0 += CHUNK_ROWS)
        recs.push({ part, r0, T: Math.min(CHUNK_ROWS, part.tokens.length - r0) });
    const groups: AttentionGroup[] = [];
    recs.forEach(({ part, r0, T }, i) => {
      const g = groups.at(-1);
      const keys = part.seq.length + r0 + T;
      const fits = (count: number, t: number, k: number) =>
        count * t * Hq * (keyBucket(k) / 256) * (D + 2) <= PART_FLOATS_CAP;
      if (g && fits(g.count + 1, Math.max(g.maxT, T), Math.max(g.maxKeys, keys))) {
        g.count++;
        g.maxT = Math.max(g.maxT, T);
        g.maxKeys = Math.max(g.maxKeys, keys);
        g.keyBucket = keyBucket(g.maxKeys);
      } else groups.push({ first: i, count: 1, maxT: T, maxKeys: keys, keyBucket: keyBucket(keys) });
    });
    const Mb = batch.reduce((a, p) => a + p.tokens.length, 0);
    const R = recs.length;
    const head = even(3 * M);
    const shared = even(3 * Mb);
    const perLayer = R * ATTN_SEQ_INTS + 4 * Mb;
    const total = head + (R > 0 ? shared + L * perLayer : 0);
    if (this.host.length < total) this.host = new Int32Array(Math.max(total, 2 * this.host.length));
    const h = this.host;
    let r = 0;
    for (const { seq, tokens } of parts)
      for (let i = 0; i < tokens.length; i++, r++) {
        h[r] = tokens[i];
        h[M + r] = seq.length + i;
        h[2 * M + r] = -1;
      }
    if (R > 0) {
      let i = 0;
      for (const { seq, tokens, row } of batch) {
        const kv = seq.kv as DeviceKvCache;
        for (let t = 0; t < tokens.length; t++, i++) {
          h[head + i] = kv.cap;
          h[head + Mb + i] = seq.length + t;
          h[head + 2 * Mb + i] = row + t;
          h[2 * M + row + t] = i; // the batch entry of this row (rope-append writes its K/V)
        }
      }
      const stores: number[] = new Array(Mb);
      for (let l = 0; l < L; l++) {
        const base = head + shared + l * perLayer;
        const window = this.c.slidingWindow?.[l] ?? 0;
        const seqs: AttentionSeq[] = recs.map(({ part: { seq, row }, r0, T }) => {
          const kv = seq.kv as DeviceKvCache;
          return { k: kv.dk[l], v: kv.dv[l], cap: kv.cap, n: seq.length + r0 + T, T, qRow: row + r0, window };
        });
        packAttentionSeqs(seqs, h, base);
        for (const [side, at] of [
          ["dk", base + R * ATTN_SEQ_INTS],
          ["dv", base + R * ATTN_SEQ_INTS + 2 * Mb],
        ] as const) {
          let j = 0;
          for (const { seq, tokens } of batch) {
            const p = (seq.kv as DeviceKvCache)[side][l].ptr;
            for (let t = 0; t < tokens.length; t++) stores[j++] = p;
          }
          packAddresses(stores, h, at);
        }
      }
    }
    const bytes = total * 4;
    if (!this.devBuf || this.devBuf.length < total) {
      this.devBuf?.free();
      this.devBuf = this.dev.alloc(Math.max(total, 1024), "i32");
      this.generation++;
    }
    const pinned = this.staging.ints("meta", h.subarray(0, total));
    this.dev.copy(this.devBuf, pinned, bytes);
    const at = (i: number) => this.devBuf!.at(i);
    return {
      ids: at(0),
      pos: at(M),
      entry: at(2 * M),
      batch:
        R === 0
          ? null
          : {
              parts: batch,
              rows: Mb,
              groups,
              caps: at(head),
              dst: at(head + Mb),
              rowIndex: at(head + 2 * Mb),
              layers: Array.from({ length: L }, (_, l) => {
                const base = head + shared + l * perLayer;
                const stores = base + R * ATTN_SEQ_INTS;
                return { records: at(base), kStores: at(stores), vStores: at(stores + 2 * Mb) };
              }),
            },
    };
  }

  free(): void {
    this.devBuf?.free();
    this.devBuf = null;
  }
}
