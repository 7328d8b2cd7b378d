import { kvWrite } from "@smallkv/tensor";
import type { ModelConfig } from "./config.js";

/**
 * The K/V of one sequence, every layer: k[layer] and v[layer] are [Hkv][capOf(layer)][D]
 * float32, the token at position p at row p − base[layer]. A full-attention layer holds every
 * token (base 0, capacity doubling up to the model's context); a sliding-window layer holds
 * only what its window can still read (older rows are dropped as the sequence moves on), so
 * its memory stays about its window whatever the length.
 */
export class KvCache {
  readonly k: Float32Array[] = [];
  readonly v: Float32Array[] = [];
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

  protected grow(cap: number): void {
    const { Hkv, D } = this;
    for (let l = 0; l < this.config.numLayers; l++) {
      // Sliding layers size themselves (slide()); they start at the initial capacity.
      if (this.windowOf(l) !== null) {
        if (!this.k[l]) {
          this.k[l] = new Float32Array(Hkv * cap * D);
          this.v[l] = new Float32Array(Hkv * cap * D);
          this.ownCap[l] = cap;
        }
        continue;
      }
      for (const store of [this.k, this.v]) {
        const next = new Float32Array(Hkv * cap * D);
        const old = store[l];
        if (old)
          for (let g = 0; g < Hkv; g++)
            next.set(old.subarray(g * this.cap * D, (g * this.cap + this.length) * D), g * cap * D);
        store[l] = next;
      }
    }
    this.cap = cap;
  }

  /** Write T new tokens' rows k/v[T][Hkv][D] of one layer at positions start.. */
  write(layer: number, kRows: Float32Array, vRows: Float32Array, start: number, T: number): void {
    const w = this.windowOf(layer);
    if (w !== null) this.slide(layer, start, T, w);
    const base = this.base[layer];
    const dst = new Int32Array(T);
    for (let t = 0; t < T; t++) dst[t] = start + t - base;
    kvWrite(this.k[layer], this.capOf(layer), this.Hkv, this.D, kRows, dst);
    kvWrite(this.v[layer], this.capOf(layer), this.Hkv, this.D, vRows, dst);
  }

  /**
   * Before a step of T tokens at `start` on a sliding layer: drop the rows no query of this
   * step or later can read (positions below start − w + 1), then make room for the step.
   */
  private slide(l: number, start: number, T: number, w: number): void {
    const { Hkv, D } = this;
    const oldBase = this.base[l];
    const held = start - oldBase;
    const base = Math.max(oldBase, start - w + 1);
    const shift = base - oldBase;
    let cap = this.capOf(l);
    if (shift > 0) {
      for (const a of [this.k[l], this.v[l]])
        for (let g = 0; g < Hkv; g++) a.copyWithin(g * cap * D, (g * cap + shift) * D, (g * cap + held) * D);
      this.base[l] = base;
    }
    const need = start + T - base;
    if (need > cap) {
      const next = Math.min(Math.max(need, 2 * cap), this.config.maxPositions);
      for (const store of [this.k, this.v]) {
        const a = new Float32Array(Hkv * next * D);
        for (let g = 0; g < Hkv; g++)
          a.set(store[l].subarray(g * cap * D, (g * cap + held - shift) * D), g * next * D);
        store[l] = a;
      }
      cap = next;
    }
    this.ownCap[l] = cap;
  }

  /** Bytes of K/V held for the current length (not the allocated capacity). */
  usedBytes(): number {
    let rows = 0;
    for (let l = 0; l < this.config.numLayers; l++) rows += this.heldRows(l);
    return 2 * this.Hkv * rows * this.D * 4;
  }

  allocatedBytes(): number {
    let rows = 0;
    for (let l = 0; l < this.config.numLayers; l++) rows += this.capOf(l);
    return 2 * this.Hkv * rows * this.D * 4;
  }

  release(): void {
    this.k.length = 0;
    this.v.length = 0;
    this.cap = 0;
    this.length = 0;
  }
}
