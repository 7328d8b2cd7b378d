import { type Device, type DeviceBuffer, type PinnedBuffer, type Ptr, packAddresses } from "@smallkv/tensor";
import type { ModelConfig } from "../config.js";
import { HotSlots } from "../hot-set.js";
import { KvCache } from "../kv-cache.js";
import type { DevicePolicyForm } from "../policy-hook.js";
import type { DeviceKvBudget } from "./kv-budget.js";
import { DevicePolicyState } from "./policy-state.js";
import { Staging } from "./staging.js";

/**
 * A sequence's full K/V for the device backend. Sequences whose policy selects keep it as
 * the cold store in mapped pinned host memory (the host view k[l]/v[l] stays readable by
 * policies; the device reads only the rows a selection moves into its hot set). Sequences
 * without a selection keep it in device memory, where attention reads it directly.
 */
export class DeviceKvCache extends KvCache {
  // The device store keeps every position of every layer (sliding layers read their window
  // through the attention kernel's window; their rows are not dropped here).
  protected override readonly bounded = false;
  dk: (DeviceBuffer | PinnedBuffer)[] = [];
  dv: (DeviceBuffer | PinnedBuffer)[] = [];
  /** The device store's one allocation (null: pinned host store). */
  private arena: DeviceBuffer | null = null;
  /** How the store keeps rows. */
  readonly storeDtype: "f32" | "f16" | "bf16";
  readonly staging: Staging;
  /** The policy's device state, when the sequence runs its policy's device form. */
  readonly policy: DevicePolicyState | null;

  /** Whether the store is in pinned host memory because the device KV budget was full (the kernels read it over the bus). */
  spilled = false;

  constructor(
    config: ModelConfig,
    private readonly dev: Device,
    /** Cold store in pinned host memory (true) or device memory (false). */
    readonly pinned: boolean,
    /** Rows of a device store (a pinned store is f32: policies read it on the host). */
    deviceDtype: "f32" | "f16" | "bf16" = "f32",
    form: DevicePolicyForm | null = null,
    /** The model's device KV budget: a store that would pass it goes to pinned host memory. */
    private readonly budget: DeviceKvBudget | null = null,
  ) {
    super(config, 0);
    this.storeDtype = pinned ? "f32" : deviceDtype;
    this.staging = new Staging(dev);
    this.policy = form ? new DevicePolicyState(dev, config, form) : null;
    this.grow(Math.min(64, config.maxPositions));
  }

  protected override grow(cap: number): void {
    if (!this.dev || cap === 0) return; // the base constructor's call, before this class is set up
    const { Hkv, D } = this;
    const n = this.config.numLayers;
    const plane = Hkv * cap * D;
    const eb = this.storeDtype === "f32" ? 4 : 2;
    const olds: (DeviceBuffer | PinnedBuffer)[] = [];
    // A device store is one allocation for every layer's K and V (views per plane): one
    // cudaMalloc per growth, not one per layer and plane. Past the device KV budget the
    // store spills to pinned host memory (same layout, read by the kernels over the bus).
    const need = 2 * n * plane * eb;
    const mine = this.arena?.bytes ?? 0;
    const fits = !this.budget || this.budget.used - mine + need <= this.budget.limit;
    const arena = this.pinned || !fits ? null : this.dev.alloc(2 * n * plane, this.storeDtype);
    const oldArena = this.arena;
    for (const [side, dst, host] of [
      [0, this.dk, this.k],
      [1, this.dv, this.v],
    ] as const) {
      for (let l = 0; l < n; l++) {
        const next = arena ? arena.view((2 * l + side) * plane, plane) : this.dev.pinned((plane * eb) / 4);
        const old = dst[l];
        if (old) {
          for (let g = 0; g < Hkv; g++)
            this.dev.copy(
              next.ptr + g * cap * D * eb,
              old.ptr + g * this.cap * D * eb,
              this.length * this.rowBytes(),
            );
          if (!oldArena) olds.push(old);
        }
        dst[l] = next;
        host[l] = "f32" in next && eb === 4 ? next.f32 : new Float32Array(0);
      }
    }
    if (oldArena) olds.push(oldArena);
    this.arena = arena;
    if (this.budget) this.budget.used += (arena?.bytes ?? 0) - mine;
    this.spilled = !this.pinned && !arena;
    // The old stores are freed once the copies (stream 0) and any gather still reading them
    // (stream 1) are done: one wait for the whole growth.
    if (olds.length > 0) {
      this.dev.sync(0);
      this.dev.sync(1);
      for (const o of olds) o.free();
    }
    this.policy?.grow(cap, this.length);
    this.cap = cap;
  }

  /** Host bytes of the store (a pinned cold store, or one spilled past the device budget). */
  get hostBytes(): number {
    return this.arena ? 0 : this.dk.reduce((a, b) => a + b.bytes, 0) * 2;
  }

  /** Device bytes of the store (both planes, every layer, at its capacity) and of the policy's device state. */
  get deviceBytes(): number {
    return (this.arena?.bytes ?? 0) + (this.policy?.bytes ?? 0);
  }

  override rowBytes(): number {
    return this.D * (this.storeDtype === "f32" ? 4 : 2);
  }

  /** Write T new rows (device k/v [T][Hkv][D]) of one layer at positions start.. (stream 0). */
  writeDevice(layer: number, kRows: Ptr, vRows: Ptr, start: number, T: number): void {
    if (this.storeDtype !== "f32")
      throw new Error(
        `the per-sequence path writes f32 stores, not ${this.storeDtype} (a batched-path store)`,
      );
    // K and V in one launch: per row, both stores' addresses, the capacity and the position.
    const meta = new Int32Array(6 * T);
    packAddresses(new Array(T).fill(this.dk[layer].ptr), meta, 0);
    packAddresses(new Array(T).fill(this.dv[layer].ptr), meta, 2 * T);
    for (let t = 0; t < T; t++) {
      meta[4 * T + t] = this.cap;
      meta[5 * T + t] = start + t;
    }
    const at = this.staging.ints(`append${layer}`, meta);
    this.dev.kvAppend({
      kStores: at,
      vStores: at + 8 * T,
      caps: at + 16 * T,
      dst: at + 20 * T,
      k: kRows,
      v: vRows,
      n: T,
      Hkv: this.Hkv,
      D: this.D,
      kvDtype: "f32",
    });
  }

  override release(): void {
    for (const b of [...this.dk, ...this.dv]) b.free();
    if (this.budget && this.arena) this.budget.used -= this.arena.bytes;
    this.arena?.free();
    this.arena = null;
    this.policy?.release();
    this.dk = [];
    this.dv = [];
    this.staging.free();
    super.release();
  }
}

/**
 * A layer's hot set in device memory. Only the difference between consecutive selections
 * moves: hole refills within the set (one launch, made order-free by composing chains), then
 * the new rows from the pinned cold store on the copy stream, which compute waits for.
 */
export class DeviceHotRows extends HotSlots<Ptr> {
  planesBuf: DeviceBuffer[] = [];
  private pending = new Map<number, number>();
  private readonly staging: Staging;

  constructor(
    private readonly dev: Device,
    Hkv: number,
    D: number,
    planes: number,
    headMap: Int32Array | null = null,
    srcHeads = Hkv,
  ) {
    super(Hkv, D, planes, headMap, srcHeads);
    this.staging = new Staging(dev);
  }

  protected resizePlanes(oldCap: number, cap: number): void {
    const { Hkv, D } = this;
    const olds = this.planesBuf;
    this.planesBuf = Array.from({ length: this.planes }, (_, i) => {
      const next = this.dev.alloc(Hkv * cap * D);
      const old = olds[i];
      if (old)
        for (let g = 0; g < Hkv; g++)
          if (this.count[g] > 0)
            this.dev.copy(next.at(g * cap * D), old.at(g * oldCap * D), this.count[g] * D * 4);
      return next;
    });
    if (olds.length > 0) {
      this.dev.sync(0); // the copies are done (stream 0 already waited for any gather into the old rows)
      for (const o of olds) o.free();
    }
  }

  protected copySlot(g: number, dst: number, src: number): void {
    // Every source slot lies past the set's final size and every destination before it, so
    // moves with their original sources can run in parallel.
    const key = (s: number) => g * this.cap + s;
    const origin = this.pending.get(key(src)) ?? src;
    this.pending.delete(key(src));
    this.pending.set(key(dst), origin);
  }

  protected override endCopies(): void {
    if (this.pending.size === 0) return;
    const moves: number[] = [];
    for (const [k, origin] of this.pending) {
      const g = Math.floor(k / this.cap);
      moves.push(g, k - g * this.cap, g, origin);
    }
    this.pending.clear();
    const ptr = this.staging.ints("refill", moves);
    this.movePlanes(this.planesBuf, this.cap, ptr, moves.length / 4, 0);
  }

  /** The same moves on every plane (K and V) in one launch; `src` as the planes (default: in place). */
  private movePlanes(src: Ptr[], scap: number, moves: number, n: number, stream: number): void {
    const [k, v] = this.planesBuf;
    this.dev.kvMove(
      k,
      this.cap,
      src[0],
      scap,
      this.D,
      moves,
      n,
      stream,
      v ? { dst: v, src: src[1] } : undefined,
    );
  }

  protected gather(cold: Ptr[], ccap: number, idx: Int32Array, off: Int32Array, start: Int32Array): void {
    const moves: number[] = [];
    for (let g = 0; g < this.Hkv; g++)
      for (let i = off[g]; i < off[g + 1]; i++) moves.push(g, start[g] + i - off[g], this.source(g), idx[i]);
    const ptr = this.staging.ints("gather", moves);
    this.dev.streamWait(1, 0);
    this.movePlanes(cold, ccap, ptr, moves.length / 4, 1);
    this.dev.streamWait(0, 1);
  }

  protected appendPlanes(src: Ptr[], T: number): void {
    const moves: number[] = [];
    for (let g = 0; g < this.Hkv; g++)
      for (let t = 0; t < T; t++) moves.push(g, this.count[g] + t, 0, t * this.srcHeads + this.source(g));
    const ptr = this.staging.ints("append", moves);
    this.movePlanes(src, 0, ptr, moves.length / 4, 0);
  }

  protected freePlanes(): void {
    for (const b of this.planesBuf) b.free();
    this.planesBuf = [];
    this.staging.free();
  }
}
