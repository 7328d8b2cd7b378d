import type { AttentionObservation } from "@smallkv/runner";
import { scatterAdd } from "@smallkv/tensor";

/**
 * Accumulated attention per layer and kv head over token positions (H2O-style column
 * sums), fed from the runner's fused score observations: a query head adds into its kv
 * head, so GQA selection uses the sum over the group.
 */
export class ScoreTable {
  private readonly acc: Float64Array[][];

  constructor(
    numLayers: number,
    private readonly numKvHeads: number,
    private readonly group: number,
  ) {
    this.acc = Array.from({ length: numLayers }, () =>
      Array.from({ length: numKvHeads }, () => new Float64Array(64)),
    );
  }

  private ensure(layer: number, n: number): void {
    const row = this.acc[layer];
    for (let g = 0; g < this.numKvHeads; g++) {
      if (row[g].length < n) {
        const next = new Float64Array(Math.max(n, row[g].length * 2));
        next.set(row[g]);
        row[g] = next;
      }
    }
  }

  /** Add an observation's scores (or its probabilities' column sums) to the layer's table. */
  add(obs: AttentionObservation, weight = 1): void {
    const { layer, keyPositions, Lmax } = obs;
    this.ensure(layer, obs.start + obs.T);
    const src = obs.scores;
    if (!src) throw new Error("ScoreTable.add needs an observation with scores");
    // The group's rows of each kv head, summed onto its positions in one native call.
    for (let g = 0; g < this.numKvHeads; g++)
      scatterAdd(this.acc[layer][g], keyPositions[g], src, g * this.group * Lmax, this.group, Lmax, weight);
  }

  /** Multiply the layer's scores by f (exponential decay: recent attention weighs more). */
  scale(layer: number, f: number): void {
    for (const a of this.acc[layer]) for (let i = 0; i < a.length; i++) a[i] *= f;
  }

  /** Zero the layer's scores. */
  reset(layer: number): void {
    for (const a of this.acc[layer]) a.fill(0);
  }

  /** A copy of one layer's scores (a rollback puts it back with putLayer). */
  copyLayer(layer: number): Float64Array[] {
    return this.acc[layer].map((a) => a.slice());
  }
  putLayer(layer: number, x: Float64Array[]): void {
    this.acc[layer] = x.map((a) => a.slice());
  }

  /** Scores of kv head g over positions [0, n). */
  get(layer: number, g: number, n: number): Float64Array {
    this.ensure(layer, n);
    return this.acc[layer][g].subarray(0, n);
  }
}

/**
 * The LLM's own attention per layer and kv head, normalised by how many queries actually
 * saw each token: accumulated column sums over the rows that attended it exactly, divided
 * by the number of such rows. Unlike raw sums it has no positional bias, and a token that
 * was dropped keeps the mean it earned while it was read (reversible policies re-select it).
 */
export class MeanAttention {
  private readonly sums: ScoreTable;
  private readonly counts: Float64Array[][];

  constructor(
    numLayers: number,
    private readonly numKvHeads: number,
    group: number,
  ) {
    this.sums = new ScoreTable(numLayers, numKvHeads, group);
    this.counts = Array.from({ length: numLayers }, () =>
      Array.from({ length: numKvHeads }, () => new Float64Array(64)),
    );
  }

  /** Add an observation made with `{ scores: true, fromRow }`. */
  add(obs: AttentionObservation, fromRow = 0): void {
    this.sums.add(obs);
    const { layer, keyPositions, start, T } = obs;
    for (let g = 0; g < this.numKvHeads; g++) {
      let c = this.counts[layer][g];
      if (c.length < start + T) {
        const next = new Float64Array(Math.max(start + T, c.length * 2));
        next.set(c);
        this.counts[layer][g] = c = next;
      }
      const pos = keyPositions[g];
      for (let j = 0; j < pos.length; j++) c[pos[j]] += T - Math.max(fromRow, pos[j] - start);
    }
  }

  copyLayer(layer: number): { sums: Float64Array[]; counts: Float64Array[] } {
    return { sums: this.sums.copyLayer(layer), counts: this.counts[layer].map((c) => c.slice()) };
  }
  putLayer(layer: number, x: { sums: Float64Array[]; counts: Float64Array[] }): void {
    this.sums.putLayer(layer, x.sums);
    this.counts[layer] = x.counts.map((c) => c.slice());
  }

  /** The sums over [0, n) and the counts (any length; past it, none) behind `get`, uncopied. */
  raw(layer: number, g: number, n: number): { sums: Float64Array; counts: Float64Array } {
    return { sums: this.sums.get(layer, g, n), counts: this.counts[layer][g] };
  }

  /** Mean attention of kv head g's tokens [0, n) (summed over the group's query heads). */
  get(layer: number, g: number, n: number): Float64Array {
    const s = this.sums.get(layer, g, n);
    const c = this.counts[layer][g];
    const out = new Float64Array(n);
    for (let p = 0; p < n; p++) out[p] = p < c.length && c[p] > 0 ? s[p] / c[p] : 0;
    return out;
  }
}
