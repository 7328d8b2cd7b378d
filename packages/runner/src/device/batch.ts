import {
  type AttentionSeq,
  type Device,
  type DeviceBuffer,
  packAddresses,
  packAttentionSeqs,
} from "@smallkv/tensor";
import type { ModelConfig } from "../config.js";
import type { Sequence } from "../sequence.js";
import type { DeviceKvCache } from "./kv.js";
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

/** What a step's kernels read from its one metadata upload. */
export interface StepMeta {
  ids: number;
  pos: number;
  /** The sequences that go through the batched path (null: none this step). */
  batch: {
    parts: DeviceStepPart[];
    rows: number;
    maxT: number;
    maxKeys: number;
    /** maxKeys rounded up to a power of two (>= 256): the attention grid, fixed for a graph's life. */
    keyBucket: number;
    caps: number;
    dst: number;
    rowIndex: number;
    layers: LayerMeta[];
  } | null;
}

/**
 * The batched path's workspace (partial outputs per query row and key chunk) is kept under
 * this many floats (256 MiB): sequences that would pass it (long prefills) take the
 * per-sequence kernel instead.
 */
const PART_FLOATS_CAP = 2 ** 26;
const keyBucket = (n: number) => Math.max(256, 2 ** Math.ceil(Math.log2(n)));

/**
 * A decode-sized part whose policy neither selects, observes nor reads queries, with its
 * store in device memory: its attention needs nothing from the host, so it joins the batched
 * path (one KV append and one attention launch per layer for all such sequences).
 */
export function batchable({ seq }: DeviceStepPart): boolean {
  const p = seq.policy;
  return (
    !p.select &&
    !p.wantsAttention &&
    !p.observe &&
    !p.wantsQuery &&
    !seq.fault &&
    !(seq.kv as DeviceKvCache).pinned
  );
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
  private records: Int32Array = new Int32Array(0);
  /** Bumped when the device buffer is reallocated (graphs hold its address). */
  generation = 0;

  constructor(
    private readonly dev: Device,
    private readonly c: ModelConfig,
    private readonly staging: Staging,
  ) {}

  prepare(parts: DeviceStepPart[], M: number): StepMeta {
    const L = this.c.numLayers;
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.c;
    const batch: DeviceStepPart[] = [];
    let maxT = 0;
    let maxKeys = 0;
    let rows = 0;
    for (const p of parts) {
      if (!batchable(p)) continue;
      const t = Math.max(maxT, p.tokens.length);
      const keys = Math.max(maxKeys, p.seq.length + p.tokens.length);
      if ((batch.length + 1) * t * Hq * (keyBucket(keys) / 256) * (D + 2) > PART_FLOATS_CAP) continue;
      // Launch limits: 65535 appended rows, 65535 query blocks per kv head (8 queries each).
      if (rows + p.tokens.length > 65535 || Math.ceil((t * Hq) / Hkv / 8) * Hkv > 65535) continue;
      rows += p.tokens.length;
      batch.push(p);
      maxT = t;
      maxKeys = keys;
    }
    const Mb = batch.reduce((a, p) => a + p.tokens.length, 0);
    const Bb = batch.length;
    const head = even(2 * M);
    const shared = even(3 * Mb);
    const perLayer = Bb * 32 + 4 * Mb;
    const total = head + (Bb > 0 ? shared + L * perLayer : 0);
    if (this.host.length < total) this.host = new Int32Array(Math.max(total, 2 * this.host.length));
    const h = this.host;
    let r = 0;
    for (const { seq, tokens } of parts)
      for (let i = 0; i < tokens.length; i++, r++) {
        h[r] = tokens[i];
        h[M + r] = seq.length + i;
      }
    if (Bb > 0) {
      let i = 0;
      for (const { seq, tokens, row } of batch) {
        const kv = seq.kv as DeviceKvCache;
        for (let t = 0; t < tokens.length; t++, i++) {
          h[head + i] = kv.cap;
          h[head + Mb + i] = seq.length + t;
          h[head + 2 * Mb + i] = row + t;
        }
      }
      const stores: number[] = new Array(Mb);
      for (let l = 0; l < L; l++) {
        const base = head + shared + l * perLayer;
        const seqs: AttentionSeq[] = batch.map(({ seq, tokens, row }) => {
          const kv = seq.kv as DeviceKvCache;
          return {
            k: kv.dk[l],
            v: kv.dv[l],
            cap: kv.cap,
            n: seq.length + tokens.length,
            T: tokens.length,
            qRow: row,
            window: this.c.slidingWindow?.[l] ?? 0,
          };
        });
        this.records = packAttentionSeqs(seqs, this.records);
        h.set(this.records.subarray(0, Bb * 32), base);
        for (const [side, at] of [
          ["dk", base + Bb * 32],
          ["dv", base + Bb * 32 + 2 * Mb],
        ] as const) {
          let j = 0;
          for (const { seq, tokens } of batch) {
            const p = (seq.kv as DeviceKvCache)[side][l].ptr;
            for (let t = 0; t < tokens.length; t++) stores[j++] = p;
          }
          h.set(packAddresses(stores), at);
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
      batch:
        Bb === 0
          ? null
          : {
              parts: batch,
              rows: Mb,
              maxT,
              maxKeys,
              keyBucket: keyBucket(maxKeys),
              caps: at(head),
              dst: at(head + Mb),
              rowIndex: at(head + 2 * Mb),
              layers: Array.from({ length: L }, (_, l) => {
                const base = head + shared + l * perLayer;
                return {
                  records: at(base),
                  kStores: at(base + Bb * 32),
                  vStores: at(base + Bb * 32 + 2 * Mb),
                };
              }),
            },
    };
  }

  free(): void {
    this.devBuf?.free();
    this.devBuf = null;
  }
}
