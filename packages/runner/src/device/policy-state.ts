import type { Device, DeviceBuffer } from "@smallkv/tensor";
import type { ModelConfig } from "../config.js";
import type { DevicePolicyForm } from "../policy-hook.js";

/**
 * A sequence's policy state in device memory, for a policy that runs its device form: the
 * accumulated score table and eviction masks (kept across steps, moved on growth), the
 * selection's index lists and V-only weights (made by each step's ranking, read in place by
 * its attention), and the last probability rows an assistant shows its LLM. Planes are
 * [layer][head][cap], like the store.
 */
export class DevicePolicyState {
  /** f32 [L][Hkv][cap]: accumulated column sums (null: the form does not accumulate). */
  scores: DeviceBuffer | null = null;
  /** f32 [L][Hkv][cap]: query rows that read each position (with the sums, a mean attention). */
  hits: DeviceBuffer | null = null;
  /** uint8 [L][Hkv][cap] in an i32 buffer: positions excluded for good. */
  exclude: DeviceBuffer | null = null;
  /** i32 [L][Hkv][cap] exact positions and [L][Hkv] their counts. */
  idx: DeviceBuffer | null = null;
  counts: DeviceBuffer | null = null;
  /** i32 [L][Hkv][cap] V-only positions, [L][Hkv] counts, f32 [L][Hq][cap] weights (one query row). */
  vIdx: DeviceBuffer | null = null;
  vCounts: DeviceBuffer | null = null;
  weights: DeviceBuffer | null = null;
  /** f32 [L][Hq][cap]: each head's probability row of the last step's last query row. */
  rows: DeviceBuffer | null = null;
  /**
   * Floats between heads' rows: cap (set at each growth) on the batched path; the step's key
   * count on the per-sequence path (an assistant whose head dim the batched kernels cannot read).
   */
  rowStride = 0;
  cap = 0;
  /** Per layer: whether its last step ranked a selection (else it read every key). */
  readonly planned: boolean[];
  /** Per layer: its packed ranked lists, reused while `key` (capacity, score source) and the terms hold. */
  readonly records: ({ key: string; terms: unknown; packed: Int32Array } | undefined)[] = [];

  constructor(
    private readonly dev: Device,
    private readonly c: ModelConfig,
    readonly form: DevicePolicyForm,
  ) {
    this.planned = new Array(c.numLayers).fill(false);
  }

  /**
   * Per layer, what the last step's selection read: exact and V-only tokens per kv head (null
   * where the layer read every key). A read-back (it waits for the device): for stats only.
   */
  selection(): ({ full: number; vOnly: number } | null)[] {
    const { numLayers: L, numKvHeads: Hkv } = this.c;
    const read = (b: DeviceBuffer | null) => {
      const out = new Int32Array(L * Hkv);
      if (b) this.dev.read(b, new Float32Array(out.buffer));
      return out;
    };
    if (!this.planned.some(Boolean)) return this.planned.map(() => null);
    const full = read(this.counts);
    const v = read(this.vCounts);
    const sum = (a: Int32Array, l: number) => a.subarray(l * Hkv, (l + 1) * Hkv).reduce((x, y) => x + y, 0);
    return this.planned.map((p, l) =>
      p ? { full: sum(full, l), vOnly: this.weights ? sum(v, l) : 0 } : null,
    );
  }

  /** Resize to `cap` rows a head; the score table and masks keep their first `keep` rows. */
  grow(cap: number, keep: number): void {
    const { numLayers: L, numKvHeads: Hkv, numHeads: Hq } = this.c;
    const f = this.form;
    const lists = L * Hkv;
    const old = { scores: this.scores, hits: this.hits, exclude: this.exclude, cap: this.cap };
    const fresh = (n: number, dtype: "f32" | "i32" = "f32") => {
      const b = this.dev.alloc(Math.max(1, n), dtype);
      this.dev.zero(b);
      return b;
    };
    for (const b of [this.idx, this.counts, this.vIdx, this.vCounts, this.weights, this.rows]) b?.free();
    if (f.accumulate) this.scores = fresh(lists * cap);
    if (f.accumulate && f.hits) this.hits = fresh(lists * cap);
    if (f.plan) {
      this.exclude = fresh(Math.ceil((lists * cap) / 4), "i32");
      this.idx = fresh(lists * cap, "i32");
      this.counts = fresh(lists, "i32");
      this.vIdx = fresh(lists * cap, "i32");
      this.vCounts = fresh(lists, "i32");
      this.weights = fresh(L * Hq * cap);
    }
    if (f.rows) this.rows = fresh(L * Hq * cap);
    this.rowStride = cap;
    // The kept planes, head by head (their rows start at each plane's new offset).
    for (const [next, prev, bytes] of [
      [this.scores, old.scores, 4],
      [this.hits, old.hits, 4],
      [this.exclude, old.exclude, 1],
    ] as const) {
      if (!next || !prev || keep === 0) continue;
      for (let p = 0; p < lists; p++)
        this.dev.copy(next.ptr + p * cap * bytes, prev.ptr + p * old.cap * bytes, keep * bytes);
    }
    if (old.scores || old.hits || old.exclude) {
      this.dev.sync(0);
      old.scores?.free();
      old.hits?.free();
      old.exclude?.free();
    }
    this.cap = cap;
  }

  /** Every buffer the state may hold. */
  private buffers(): (DeviceBuffer | null)[] {
    return [
      this.scores,
      this.hits,
      this.exclude,
      this.idx,
      this.counts,
      this.vIdx,
      this.vCounts,
      this.weights,
      this.rows,
    ];
  }

  /** Device bytes held. */
  get bytes(): number {
    return this.buffers().reduce((a, b) => a + (b?.bytes ?? 0), 0);
  }

  /** Address of head h's probability row at `layer` (the assistant's current row). */
  rowAt(layer: number, h: number): number {
    return this.rowsOf(layer) + h * this.rowStride * 4;
  }

  /** Address of the layer's rows ([Hq][rowStride] floats). */
  rowsOf(layer: number): number {
    if (!this.rows) throw new Error("this sequence keeps no probability rows on the device");
    return this.rows.ptr + layer * this.c.numHeads * this.cap * 4;
  }

  release(): void {
    for (const b of this.buffers()) b?.free();
    this.scores = this.hits = this.exclude = this.idx = this.counts = null;
    this.vIdx = this.vCounts = this.weights = this.rows = null;
  }
}
