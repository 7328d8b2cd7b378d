import { type Int8Store, kvWrite, kvWriteQ8 } from "@smallkv/tensor";
import type { ModelConfig } from "./config.js";

/** K/V rows of every layer for a run of positions, as a store keeps them ([Hkv][n][D] per plane). */
export interface KvRows {
  type: KvStoreType;
  n: number;
  layers: {
    k: Float32Array | Int8Array;
    v: Float32Array | Int8Array;
    kScale?: Float32Array;
    vScale?: Float32Array;
  }[];
}

/** How the host store keeps K/V: float32, or int8 with a scale per token and kv head. */
export type KvStoreType = "f32" | "int8";
export const KV_STORE_TYPES: readonly KvStoreType[] = ["f32", "int8"];

/**
 * The K/V of one sequence, every layer: k[layer] and v[layer] are [Hkv][capOf(layer)][D]
 * float32 (or, for an int8 store, `int8Of(layer)`: int8 rows and a scale per row), the token
 * at position p at row p − base[layer]. A full-attention layer holds every
 * token (base 0, capacity doubling up to the model's context); a sliding-window layer holds
 * only what its window can still read (older rows are dropped as the sequence moves on), so
 * its memory stays about its window whatever the length.
 */
export class KvCache {
  readonly k: Float32Array[] = [];
  readonly v: Float32Array[] = [];
  /** The int8 store's planes per layer (empty for a float store). */
  private readonly q: Int8Store[] = [];
  /** Row capacity of the full-attention layers. */
  cap = 0;
  length = 0;
  /** Per layer: the position of row 0 (> 0 only on sliding-window layers). */
  readonly base: number[];
  /** Per sliding layer: its own row capacity (0 for full-attention layers: they use `cap`). */
  private readonly ownCap: number[];
  protected readonly Hkv: number;
  protected readonly D: number;
  /** Whether sliding-window layers drop rows their window no longer reads (the host store does). */
  protected readonly bounded: boolean = true;

  constructor(
    protected readonly config: ModelConfig,
    initialCap = 64,
    readonly type: KvStoreType = "f32",
  ) {
    this.Hkv = config.numKvHeads;
    this.D = config.headDim;
    this.base = new Array(config.numLayers).fill(0);
    this.ownCap = new Array(config.numLayers).fill(0);
    this.grow(Math.min(initialCap, config.maxPositions));
  }

  /** The sliding window this store bounds layer `l` to (null: it holds every token). */
  protected windowOf(l: number): number | null {
    return this.bounded ? (this.config.slidingWindow?.[l] ?? null) : null;
  }

  /** Row capacity of layer l. */
  capOf(l: number): number {
    return this.windowOf(l) !== null ? this.ownCap[l] : this.cap;
  }

  /** Rows layer l holds: positions base[l] .. length − 1. */
  heldRows(l: number): number {
    return this.length - this.base[l];
  }

  /** Make room for n tokens. */
  ensure(n: number): void {
    if (n <= this.cap) return;
    let cap = Math.max(this.cap, 16);
    while (cap < n) cap *= 2;
    this.grow(Math.min(cap, Math.max(n, this.config.maxPositions)));
  }

  /** A layer's store of `cap` rows per head, the first `keep` rows of each head copied from `from` (rows from `skip`). */
  private resized(l: number, cap: number, oldCap: number, keep: number, skip = 0): void {
    const { Hkv, D } = this;
    const move = <A extends Float32Array | Int8Array>(
      old: A | undefined,
      make: (n: number) => A,
      w: number,
    ): A => {
      const next = make(Hkv * cap * w);
      if (old)
        for (let g = 0; g < Hkv; g++)
          next.set(old.subarray((g * oldCap + skip) * w, (g * oldCap + skip + keep) * w), g * cap * w);
      return next;
    };
    if (this.type === "int8") {
      const o = this.q[l] as Int8Store | undefined;
      this.q[l] = {
        k: move(o?.k, (n) => new Int8Array(n), D),
        v: move(o?.v, (n) => new Int8Array(n), D),
        kScale: move(o?.kScale, (n) => new Float32Array(n), 1),
        vScale: move(o?.vScale, (n) => new Float32Array(n), 1),
      };
      return;
    }
    this.k[l] = move(this.k[l], (n) => new Float32Array(n), D);
    this.v[l] = move(this.v[l], (n) => new Float32Array(n), D);
  }

  protected grow(cap: number): void {
    for (let l = 0; l < this.config.numLayers; l++) {
      // Sliding layers size themselves (slide()); they start at the initial capacity.
      if (this.windowOf(l) !== null) {
        if (!this.k[l] && !this.q[l]) {
          this.resized(l, cap, 0, 0);
          this.ownCap[l] = cap;
        }
        continue;
      }
      this.resized(l, cap, this.cap, this.length);
    }
    this.cap = cap;
  }

  /** Layer l's int8 planes (null for a float store). */
  int8Of(l: number): Int8Store | null {
    return this.q[l] ?? null;
  }

  /** Keys of kv head g at store rows [from, to) as float rows [to − from][D] (a view for a float store). */
  keyRows(l: number, g: number, from: number, to: number): Float32Array {
    const { D } = this;
    const cap = this.capOf(l);
    const q = this.q[l];
    if (!q) return this.k[l].subarray((g * cap + from) * D, (g * cap + to) * D);
    const out = new Float32Array(Math.max(0, to - from) * D);
    for (let r = from; r < to; r++) {
      const s = q.kScale[g * cap + r];
      for (let d = 0; d < D; d++) out[(r - from) * D + d] = q.k[(g * cap + r) * D + d] * s;
    }
    return out;
  }

  /** Write T new tokens' rows k/v[T][Hkv][D] of one layer at positions start.. */
  write(layer: number, kRows: Float32Array, vRows: Float32Array, start: number, T: number): void {
    const w = this.windowOf(layer);
    if (w !== null) this.slide(layer, start, T, w);
    const base = this.base[layer];
    const dst = new Int32Array(T);
    for (let t = 0; t < T; t++) dst[t] = start + t - base;
    const q = this.q[layer];
    if (q) {
      kvWriteQ8(q.k, q.kScale, this.capOf(layer), this.Hkv, this.D, kRows, dst);
      kvWriteQ8(q.v, q.vScale, this.capOf(layer), this.Hkv, this.D, vRows, dst);
      return;
    }
    kvWrite(this.k[layer], this.capOf(layer), this.Hkv, this.D, kRows, dst);
    kvWrite(this.v[layer], this.capOf(layer), this.Hkv, this.D, vRows, dst);
  }

  /**
   * Before a step of T tokens at `start` on a sliding layer: drop the rows no query of this
   * step or later can read (positions below start − w + 1), then make room for the step.
   */
  private slide(l: number, start: number, T: number, w: number): void {
    const oldBase = this.base[l];
    const held = start - oldBase;
    const base = Math.max(oldBase, start - w + 1);
    const shift = base - oldBase;
    const cap = this.capOf(l);
    const need = start + T - base;
    // Drop the rows below the new base and make room for the step: one copy, into place or
    // into a larger store.
    if (shift > 0 || need > cap) {
      const next = need > cap ? Math.min(Math.max(need, 2 * cap), this.config.maxPositions) : cap;
      if (next === cap) this.shiftInPlace(l, cap, shift, held - shift);
      else this.resized(l, next, cap, held - shift, shift);
      this.base[l] = base;
      this.ownCap[l] = next;
    }
  }

  /** Move each head's rows [shift, shift + keep) to row 0 (every plane). */
  private shiftInPlace(l: number, cap: number, shift: number, keep: number): void {
    const { Hkv, D } = this;
    const planes: [Float32Array | Int8Array, number][] = this.q[l]
      ? [
          [this.q[l].k, D],
          [this.q[l].v, D],
          [this.q[l].kScale, 1],
          [this.q[l].vScale, 1],
        ]
      : [
          [this.k[l], D],
          [this.v[l], D],
        ];
    for (const [a, w] of planes)
      for (let g = 0; g < Hkv; g++)
        a.copyWithin(g * cap * w, (g * cap + shift) * w, (g * cap + shift + keep) * w);
  }

  /**
   * Copies of every layer's K/V rows at positions [from, to), as stored (float, or int8 with
   * scales): what a prefix cache keeps of a block. Full-attention layers only (a sliding layer
   * has dropped its old rows).
   */
  copyRows(from: number, to: number): KvRows {
    const { Hkv, D } = this;
    const n = to - from;
    const take = <A extends Float32Array | Int8Array>(a: A, cap: number, w: number): A => {
      const out = new (a.constructor as { new (n: number): A })(Hkv * n * w);
      for (let g = 0; g < Hkv; g++) out.set(a.subarray((g * cap + from) * w, (g * cap + to) * w), g * n * w);
      return out;
    };
    const layers: KvRows["layers"] = [];
    for (let l = 0; l < this.config.numLayers; l++) {
      if (this.windowOf(l) !== null) throw new Error("copyRows: sliding-window layers drop their rows");
      const cap = this.capOf(l);
      const q = this.q[l];
      layers.push(
        q
          ? {
              k: take(q.k, cap, D),
              v: take(q.v, cap, D),
              kScale: take(q.kScale, cap, 1),
              vScale: take(q.vScale, cap, 1),
            }
          : { k: take(this.k[l], cap, D), v: take(this.v[l], cap, D) },
      );
    }
    return { type: this.type, n, layers };
  }

  /** Put rows copied by `copyRows` back at positions [at, at + rows.n) (the store grows to hold them; the length covers them). */
  pasteRows(rows: KvRows, at: number): void {
    if (rows.type !== this.type) throw new Error(`pasteRows: ${rows.type} rows into a ${this.type} store`);
    const { Hkv, D } = this;
    const n = rows.n;
    // Growing keeps the first `length` rows: the rows below `at` are held (pasted before).
    this.length = Math.max(this.length, at);
    this.ensure(at + n);
    const put = <A extends Float32Array | Int8Array>(dst: A, src: A, cap: number, w: number) => {
      for (let g = 0; g < Hkv; g++) dst.set(src.subarray(g * n * w, (g + 1) * n * w), (g * cap + at) * w);
    };
    rows.layers.forEach((r, l) => {
      const cap = this.capOf(l);
      const q = this.q[l];
      if (q) {
        put(q.k, r.k as Int8Array, cap, D);
        put(q.v, r.v as Int8Array, cap, D);
        put(q.kScale, r.kScale!, cap, 1);
        put(q.vScale, r.vScale!, cap, 1);
      } else {
        put(this.k[l], r.k as Float32Array, cap, D);
        put(this.v[l], r.v as Float32Array, cap, D);
      }
    });
    this.length = Math.max(this.length, at + n);
  }

  /** Bytes of one K or V row as stored (int8 rows carry a float32 scale). */
  rowBytes(): number {
    return this.type === "int8" ? this.D + 4 : this.D * 4;
  }

  /** Bytes of K/V held for the current length (not the allocated capacity). */
  usedBytes(): number {
    let rows = 0;
    for (let l = 0; l < this.config.numLayers; l++) rows += this.heldRows(l);
    return 2 * this.Hkv * rows * this.rowBytes();
  }

  allocatedBytes(): number {
    let rows = 0;
    for (let l = 0; l < this.config.numLayers; l++) rows += this.capOf(l);
    return 2 * this.Hkv * rows * this.rowBytes();
  }

  release(): void {
    this.k.length = 0;
    this.v.length = 0;
    this.q.length = 0;
    this.cap = 0;
    this.length = 0;
  }
}
