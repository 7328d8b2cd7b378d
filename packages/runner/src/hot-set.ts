import { kvCopyRows } from "@smallkv/tensor";

/** A hot set's bookkeeping at one moment (see HotSlots.snapshot). */
export interface HotSnapshot {
  pos: Int32Array[];
  moved: number;
}

/**
 * The hot working set of one layer: what attention reads, separate from the cold full
 * store. Per kv head, rows in slot order with a position <-> slot map. Applying a new
 * selection moves only the difference (new rows gathered from the cold store, dropped
 * rows' slots refilled from the end). This class keeps the bookkeeping; subclasses hold
 * the rows (host arrays here, device memory in the device backend), with planes of type P.
 */
export abstract class HotSlots<P> {
  cap = 0;
  readonly count: Int32Array;
  /** slot -> position, per kv head. */
  pos: Int32Array[];
  /** position -> slot + 1 (0 = absent), per kv head. */
  protected slotOf: Int32Array[];
  /** Rows moved from the cold store since creation. */
  moved = 0;
  constructor(
    protected readonly Hkv: number,
    protected readonly D: number,
    /** Number of parallel buffers per row (2 for K and V, 1 for V only). */
    readonly planes: number,
    /**
     * Hot head -> cold kv head, when the hot set has its own rows per query head
     * (per-query-head selection); null: hot head g is cold kv head g.
     */
    protected readonly headMap: Int32Array | null = null,
    /** Kv heads of the cold store and of appended rows (defaults to Hkv). */
    protected readonly srcHeads = Hkv,
  ) {
    this.count = new Int32Array(Hkv);
    this.pos = Array.from({ length: Hkv }, () => new Int32Array(0));
    this.slotOf = Array.from({ length: Hkv }, () => new Int32Array(0));
  }

  protected ensureRows(n: number): void {
    if (n <= this.cap) return;
    let cap = Math.max(16, this.cap);
    while (cap < n) cap *= 2;
    this.resizePlanes(this.cap, cap);
    this.pos = this.pos.map((old) => {
      const next = new Int32Array(cap);
      next.set(old);
      return next;
    });
    this.cap = cap;
  }

  protected ensurePositions(n: number): void {
    for (let g = 0; g < this.Hkv; g++) {
      if (this.slotOf[g].length < n) {
        const next = new Int32Array(Math.max(n, this.slotOf[g].length * 2, 64));
        next.set(this.slotOf[g]);
        this.slotOf[g] = next;
      }
    }
  }

  /**
   * Make the rows of kv head g exactly `want[g]` (positions), moving only the difference.
   * `cold` are the cold store planes ([Hkv][ccap][D] each) for the same planes order.
   */
  /** `base`: the cold store's row 0 is position `base` (a sliding layer's store). */
  apply(want: Int32Array[], cold: P[], ccap: number, maxPosition: number, base = 0): void {
    const { Hkv } = this;
    this.ensurePositions(maxPosition);
    let need = 0;
    for (let g = 0; g < Hkv; g++) need = Math.max(need, want[g].length);
    this.ensureRows(need + 1);
    const add: number[][] = [];
    for (let g = 0; g < Hkv; g++) {
      const slotOf = this.slotOf[g];
      const keep = new Uint8Array(this.count[g]);
      const adds: number[] = [];
      for (const p of want[g]) {
        const s = slotOf[p];
        if (s) keep[s - 1] = 1;
        else adds.push(p);
      }
      // Drop unwanted slots: refill each hole with the current last row.
      let n = this.count[g];
      for (let s = n - 1; s >= 0; s--) {
        if (keep[s]) continue;
        const last = n - 1;
        slotOf[this.pos[g][s]] = 0;
        if (s !== last) {
          this.copySlot(g, s, last);
          this.pos[g][s] = this.pos[g][last];
          slotOf[this.pos[g][s]] = s + 1;
          keep[s] = keep[last];
        }
        n--;
      }
      this.count[g] = n;
      add.push(adds);
    }
    this.endCopies();
    const total = add.reduce((a, x) => a + x.length, 0);
    if (total > 0) {
      const idx = new Int32Array(total);
      const off = new Int32Array(Hkv + 1);
      const start = new Int32Array(Hkv);
      for (let g = 0; g < Hkv; g++) {
        idx.set(base ? add[g].map((p) => p - base) : add[g], off[g]);
        off[g + 1] = off[g] + add[g].length;
        start[g] = this.count[g];
      }
      this.gather(cold, ccap, idx, off, start);
    }
    for (let g = 0; g < Hkv; g++) {
      for (const p of add[g]) {
        const s = this.count[g]++;
        this.pos[g][s] = p;
        this.slotOf[g][p] = s + 1;
      }
    }
    this.moved += total;
  }

  /** Append T new rows src[plane][T][srcHeads][D] at positions start.. to every hot head. */
  append(src: P[], start: number, T: number): void {
    const { Hkv } = this;
    this.ensurePositions(start + T);
    let need = 0;
    for (let g = 0; g < Hkv; g++) need = Math.max(need, this.count[g] + T);
    this.ensureRows(need);
    this.appendPlanes(src, T);
    for (let g = 0; g < Hkv; g++) {
      for (let t = 0; t < T; t++) {
        const s = this.count[g] + t;
        this.pos[g][s] = start + t;
        this.slotOf[g][start + t] = s + 1;
      }
      this.count[g] += T;
    }
  }

  /** The cold kv head that hot head g reads from. */
  protected source(g: number): number {
    return this.headMap ? this.headMap[g] : g;
  }

  /** Grow every plane from oldCap to cap rows per head, keeping each head's first count[g] rows. */
  protected abstract resizePlanes(oldCap: number, cap: number): void;
  /** Copy row `src` of hot head g to row `dst` in every plane (hole refill during apply). */
  protected abstract copySlot(g: number, dst: number, src: number): void;
  /** All copySlot calls of one apply have been made. */
  protected endCopies(): void {}
  /** Gather rows idx[off[g]..off[g+1]) of cold head source(g) into hot head g from row start[g]. */
  protected abstract gather(
    cold: P[],
    ccap: number,
    idx: Int32Array,
    off: Int32Array,
    start: Int32Array,
  ): void;
  /** Write T new rows src[plane][T][srcHeads][D] at rows count[g].. of each hot head. */
  protected abstract appendPlanes(src: P[], T: number): void;
  /** Free the planes' memory. */
  protected abstract freePlanes(): void;

  /** Rows of kv head g in slot order (positions). */
  positions(g: number): Int32Array {
    return this.pos[g].subarray(0, this.count[g]);
  }

  /** The bookkeeping `restore` puts back: each head's positions in slot order, and the moved count. */
  snapshot(): HotSnapshot {
    return { pos: Array.from({ length: this.Hkv }, (_, g) => this.positions(g).slice()), moved: this.moved };
  }

  /**
   * Put back a snapshot: the same positions in the same slots (slot order fixes the kernel's
   * summation order). Rows are re-gathered from the cold store when the set holds its own.
   */
  restore(s: HotSnapshot, cold: P[], ccap: number, base = 0): void {
    this.clear();
    let max = 0;
    for (const p of s.pos) for (let i = 0; i < p.length; i++) max = Math.max(max, p[i] + 1);
    this.apply(s.pos, cold, ccap, max, base);
    this.moved = s.moved;
  }

  rowsHeld(): number {
    let n = 0;
    for (let g = 0; g < this.Hkv; g++) n += this.count[g];
    return n;
  }

  clear(): void {
    for (let g = 0; g < this.Hkv; g++) {
      for (let s = 0; s < this.count[g]; s++) this.slotOf[g][this.pos[g][s]] = 0;
      this.count[g] = 0;
    }
  }

  release(): void {
    this.freePlanes();
    this.pos = this.pos.map(() => new Int32Array(0));
    this.slotOf = this.slotOf.map(() => new Int32Array(0));
    this.count.fill(0);
    this.cap = 0;
  }
}

/**
 * The CPU backend's default hot set: on a CPU both tiers sit in the same memory, so the hot
 * set holds no rows of its own. It keeps the bookkeeping (which positions each head reads, in
 * the selection's order, and how many entered since the start) and the attention kernel reads
 * those rows straight from the cold store through the index lists of `use` (no copy, no second
 * resident KV).
 */
export class IndexedRows extends HotSlots<Float32Array> {
  /** Scratch membership marks by position (zero between calls). */
  private member = new Uint8Array(0);
  protected resizePlanes(): void {}
  protected copySlot(): void {}
  protected gather(): void {}
  protected appendPlanes(): void {}
  protected freePlanes(): void {}

  /**
   * Read exactly `want[g]` (in the selection's order) and then the step's own T rows at
   * positions start.. in every head; rows not read at the last step count as moved. Returns
   * the kernel's index lists (store slots, position − base) without the own rows. With no
   * rows of its own there is nothing to keep in place, so no slot diff is needed.
   */
  use(want: Int32Array[], start: number, T: number, base: number): { idx: Int32Array; off: Int32Array } {
    const Hkv = this.Hkv;
    const off = new Int32Array(Hkv + 1);
    let need = 0;
    for (let g = 0; g < Hkv; g++) {
      off[g + 1] = off[g] + want[g].length;
      need = Math.max(need, want[g].length + T);
    }
    this.ensureRows(need);
    if (this.member.length < start + T)
      this.member = new Uint8Array(Math.max(start + T, 2 * this.member.length));
    const mark = this.member;
    const idx = new Int32Array(off[Hkv]);
    let moved = 0;
    for (let g = 0; g < Hkv; g++) {
      const pos = this.pos[g];
      const had = this.count[g];
      for (let s = 0; s < had; s++) mark[pos[s]] = 1;
      const w = want[g];
      for (let i = 0, at = off[g]; i < w.length; i++, at++) {
        const p = w[i];
        moved += 1 - mark[p];
        idx[at] = p - base;
      }
      for (let s = 0; s < had; s++) mark[pos[s]] = 0;
      pos.set(w, 0);
      for (let t = 0; t < T; t++) pos[w.length + t] = start + t;
      this.count[g] = w.length + T;
    }
    this.moved += moved;
    return { idx, off };
  }

  /** The same positions in the same order (nothing to gather). */
  override restore(s: HotSnapshot): void {
    let need = 0;
    for (const p of s.pos) need = Math.max(need, p.length);
    this.ensureRows(need);
    s.pos.forEach((p, g) => {
      this.pos[g].set(p, 0);
      this.count[g] = p.length;
    });
    this.moved = s.moved;
  }

  override clear(): void {
    this.count.fill(0);
  }
}

/** Where HostRows reads the rows it gathers and appends: one layer's cold store. */
export interface HostStore {
  /** Float planes [Hkv][cap][D] (empty for an int8 store). */
  k: Float32Array;
  v: Float32Array;
  /** An int8 store (rows are dequantised as they are copied in). */
  int8?: { k: Int8Array; v: Int8Array; kScale: Float32Array; vScale: Float32Array };
  cap: number;
}

/**
 * A CPU hot set that holds its rows: per hot head, float32 K/V rows in slot order, refilled
 * by the difference each step (the rows that entered are copied from the cold store, dequantised
 * from an int8 one). Attention then streams contiguous rows instead of gathering scattered
 * ones from the store, at the price of the hot rows' memory beside the cold store.
 */
export class HostRows extends HotSlots<HostStore> {
  /** planes[i]: [Hkv][cap][D] (K then V, or V alone). */
  planesF32: Float32Array[] = [];

  protected resizePlanes(oldCap: number, cap: number): void {
    const { Hkv, D } = this;
    this.planesF32 = Array.from({ length: this.planes }, (_, i) => {
      const next = new Float32Array(Hkv * cap * D);
      const old = this.planesF32[i];
      if (old)
        for (let g = 0; g < Hkv; g++)
          next.set(old.subarray(g * oldCap * D, (g * oldCap + this.count[g]) * D), g * cap * D);
      return next;
    });
  }

  protected copySlot(g: number, dst: number, src: number): void {
    const { D, cap } = this;
    for (const p of this.planesF32)
      p.copyWithin((g * cap + dst) * D, (g * cap + src) * D, (g * cap + src + 1) * D);
  }

  /** Copy cold rows into hot slots: quads (hot head, slot, cold head, store row), every plane. */
  private copyIn(store: HostStore, moves: Int32Array, count: number): void {
    if (count === 0) return;
    const { D, cap } = this;
    const heads = this.srcHeads;
    const q = store.int8;
    const kv: [Float32Array | Int8Array, Float32Array | null][] = q
      ? [
          [q.k, q.kScale],
          [q.v, q.vScale],
        ]
      : [
          [store.k, null],
          [store.v, null],
        ];
    const from = this.planes === 2 ? kv : [kv[1]];
    from.forEach(([src, scales], i) =>
      kvCopyRows(src, scales, heads, store.cap, this.planesF32[i], this.Hkv, cap, D, moves, count),
    );
  }

  // Rows enter through apply (overridden below), never through the base class's gather.
  protected gather(): void {}

  /**
   * The difference as few copies as possible: rows that entered go straight into the slots of
   * rows that left (no refill moves when the set keeps its size, as a re-chosen selection
   * does); only a shrinking set moves its last rows down.
   */
  override apply(want: Int32Array[], cold: HostStore[], _ccap: number, maxPosition: number, base = 0): void {
    const { Hkv } = this;
    this.ensurePositions(maxPosition);
    let need = 0;
    for (let g = 0; g < Hkv; g++) need = Math.max(need, want[g].length, this.count[g]);
    this.ensureRows(need + 1);
    let total = 0;
    for (let g = 0; g < Hkv; g++) total += want[g].length;
    const moves = new Int32Array(4 * total);
    let m = 0;
    for (let g = 0; g < Hkv; g++) {
      const slotOf = this.slotOf[g];
      const pos = this.pos[g];
      let n = this.count[g];
      const keep = new Uint8Array(n);
      const adds: number[] = [];
      const w = want[g];
      for (let i = 0; i < w.length; i++) {
        const s = slotOf[w[i]];
        if (s) keep[s - 1] = 1;
        else adds.push(w[i]);
      }
      let holes = 0;
      for (let s = 0; s < n; s++) if (!keep[s]) holes++;
      // A shrinking set: close the highest holes with its last kept rows first.
      for (let s = n - 1; s >= 0 && holes > adds.length; s--) {
        if (keep[s]) continue;
        const last = n - 1;
        slotOf[pos[s]] = 0;
        if (s !== last) {
          this.copySlot(g, s, last);
          pos[s] = pos[last];
          slotOf[pos[s]] = s + 1;
          keep[s] = 1;
        }
        n--;
        holes--;
      }
      // Entering rows fill the remaining holes, then go at the end.
      let a = 0;
      for (let s = 0; s < n && a < adds.length; s++) {
        if (keep[s]) continue;
        slotOf[pos[s]] = 0;
        pos[s] = adds[a];
        slotOf[adds[a]] = s + 1;
        moves.set([g, s, this.source(g), adds[a] - base], 4 * m++);
        a++;
      }
      for (; a < adds.length; a++, n++) {
        pos[n] = adds[a];
        slotOf[adds[a]] = n + 1;
        moves.set([g, n, this.source(g), adds[a] - base], 4 * m++);
      }
      this.count[g] = n;
      this.moved += adds.length;
    }
    this.copyIn(cold[0], moves, m);
  }

  /** src[0]: the store, whose rows `appendRow`.. are the step's own (see appendFrom). */
  private appendRow = 0;
  protected appendPlanes(src: HostStore[], T: number): void {
    const moves = new Int32Array(4 * this.Hkv * T);
    let m = 0;
    for (let g = 0; g < this.Hkv; g++)
      for (let t = 0; t < T; t++)
        moves.set([g, this.count[g] + t, this.source(g), this.appendRow + t], 4 * m++);
    this.copyIn(src[0], moves, m);
  }

  /** Append the step's T own rows, which sit at store row `row` onward, at positions start... */
  appendFrom(store: HostStore, row: number, start: number, T: number): void {
    this.appendRow = row;
    this.append([store], start, T);
  }

  protected freePlanes(): void {
    this.planesF32 = [];
  }

  /** Rows held before the step's own T, per hot head. */
  pastCounts(T: number): Int32Array {
    return Int32Array.from(this.count, (n) => n - T);
  }
}
