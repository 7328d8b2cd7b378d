import { kvWrite } from "@smallkv/tensor";
import type { ModelConfig } from "./config.js";

/**
 * The full K/V of one sequence, every layer: k[layer] and v[layer] are [Hkv][cap][D]
 * float32, token t at row t. Capacity grows by doubling up to the model's context.
 */
export class KvCache {
  readonly k: Float32Array[] = [];
  readonly v: Float32Array[] = [];
  cap = 0;
  length = 0;
  protected readonly Hkv: number;
  protected readonly D: number;

  constructor(
    protected readonly config: ModelConfig,
    initialCap = 64,
  ) {
    this.Hkv = config.numKvHeads;
    this.D = config.headDim;
    this.grow(Math.min(initialCap, config.maxPositions));
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
    const dst = new Int32Array(T);
    for (let t = 0; t < T; t++) dst[t] = start + t;
    kvWrite(this.k[layer], this.cap, this.Hkv, this.D, kRows, dst);
    kvWrite(this.v[layer], this.cap, this.Hkv, this.D, vRows, dst);
  }

  /** Bytes of K/V held for the current length (not the allocated capacity). */
  usedBytes(): number {
    return 2 * this.config.numLayers * this.Hkv * this.length * this.D * 4;
  }

  allocatedBytes(): number {
    return 2 * this.config.numLayers * this.Hkv * this.cap * this.D * 4;
  }

  release(): void {
    this.k.length = 0;
    this.v.length = 0;
    this.cap = 0;
    this.length = 0;
  }
}
