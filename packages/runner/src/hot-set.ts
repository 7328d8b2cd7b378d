import { kvGather } from "@smallkv/tensor";

/**
 * The hot working set of one layer: what attention reads, separate from the cold full
 * store. Per kv head, rows in slot order with a position <-> slot map. Applying a new
 * selection moves only the difference (new rows gathered from the cold store, dropped
 * rows' slots refilled from the end).
 */
export class HotRows {
  buf: Float32Array[];
  cap = 0;
  readonly count: Int32Array;
  /** slot -> position, per kv head. */
  pos: Int32Array[];
  /** position -> slot + 1 (0 = absent), per kv head. */
  private slotOf: Int32Array[];
  /** Rows moved from the cold store since creation. */
  moved = 0;

  constructor(
    private readonly Hkv: number,
    private readonly D: number,
    /** Number of parallel buffers per row (2 for K and V, 1 for V only). */
    readonly planes: number,
    /**
     * Hot head -> cold kv head, when the hot set has its own rows per query head
     * (per-query-head selection); null: hot head g is cold kv head g.
     */
    private readonly headMap: Int32Array | null = null,
    /** Kv heads of the cold store and of appended rows (defaults to Hkv). */
    private readonly srcHeads = Hkv,
  ) {
    this.count = new Int32Array(Hkv);
    this.buf = Array.from({ length: planes }, () => new Float32Array(0));
    this.pos = Array.from({ length: Hkv }, () => new Int32Array(0));
    this.slotOf = Array.from({ length: Hkv }, () => new Int32Array(0));
  }

  private ensureRows(n: number): void {
    if (n <= this.cap) return;
    let cap = Math.max(16, this.cap);
    while (cap < n) cap *= 2;
    const { Hkv, D } = this;
    this.buf = this.buf.map((old) => {
      const next = new Float32Array(Hkv * cap * D);
      for (let g = 0; g < Hkv; g++)
        next.set(old.subarray(g * this.cap * D, (g * this.cap + this.count[g]) * D), g * cap * D);
      return next;
    });
    this.pos = this.pos.map((old) => {
      const next = new Int32Array(cap);
      next.set(old);
      return next;
    });
    this.cap = cap;
  }

  private ensurePositions(n: number): void {
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
  apply(want: Int32Array[], cold: Float32Array[], ccap: number, maxPosition: number): void {
    const { Hkv, D } = this;
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
          for (const b of this.buf)
            b.copyWithin((g * this.cap + s) * D, (g * this.cap + last) * D, (g * this.cap + last + 1) * D);
          this.pos[g][s] = this.pos[g][last];
          slotOf[this.pos[g][s]] = s + 1;
          keep[s] = keep[last];
        }
        n--;
      }
      this.count[g] = n;
      add.push(adds);
    }
    const total = add.reduce((a, x) => a + x.length, 0);
    if (total > 0) {
      const idx = new Int32Array(total);
      const off = new Int32Array(Hkv + 1);
      const start = new Int32Array(Hkv);
      for (let g = 0; g < Hkv; g++) {
        idx.set(add[g], off[g]);
        off[g + 1] = off[g] + add[g].length;
        start[g] = this.count[g];
      }
      if (!this.headMap)
        this.buf.forEach((b, i) => kvGather(cold[i], ccap, b, this.cap, Hkv, D, idx, off, start));
      else {
        // Each hot head gathers from its own cold kv head: one single-head gather per head.
        for (let g = 0; g < Hkv; g++) {
          const src = this.headMap[g];
          const one = Int32Array.of(0, off[g + 1] - off[g]);
          this.buf.forEach((b, i) =>
            kvGather(
              cold[i].subarray(src * ccap * D, (src + 1) * ccap * D),
              ccap,
              b.subarray(g * this.cap * D, (g + 1) * this.cap * D),
              this.cap,
              1,
              D,
              idx.subarray(off[g], off[g + 1]),
              one,
              start.subarray(g, g + 1),
            ),
          );
        }
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
  }

  /** Append T new rows src[plane][T][srcHeads][D] at positions start.. to every hot head. */
  append(src: Float32Array[], start: number, T: number): void {
    const { Hkv, D } = this;
    this.ensurePositions(start + T);
    let need = 0;
    for (let g = 0; g < Hkv; g++) need = Math.max(need, this.count[g] + T);
    this.ensureRows(need);
    for (let g = 0; g < Hkv; g++) {
      for (let t = 0; t < T; t++) {
        const s = this.count[g] + t;
        const sg = this.headMap ? this.headMap[g] : g;
        src.forEach((rows, i) => {
          this.buf[i].set(
            rows.subarray((t * this.srcHeads + sg) * D, (t * this.srcHeads + sg + 1) * D),
            (g * this.cap + s) * D,
          );
        });
        this.pos[g][s] = start + t;
        this.slotOf[g][start + t] = s + 1;
      }
      this.count[g] += T;
    }
  }

  /** Rows of kv head g in slot order (positions). */
  positions(g: number): Int32Array {
    return this.pos[g].subarray(0, this.count[g]);
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
    this.buf = this.buf.map(() => new Float32Array(0));
    this.pos = this.pos.map(() => new Int32Array(0));
    this.slotOf = this.slotOf.map(() => new Int32Array(0));
    this.count.fill(0);
    this.cap = 0;
  }
}
