import type { AttentionObservation, KvPolicyHook, LayerSelection, Sequence, StepInfo } from "@smallkv/runner";

// Attention coverage: at each teacher-forced decode step, how much of Full's current
// attention a policy reads exactly, and how far its effective attention row is from Full's.

/** Full's decode-step attention rows [Hq][n], by window, step start and layer. */
export class FullRows {
  private readonly rows = new Map<string, Float32Array>();
  windowOf = new WeakMap<Sequence, number>();

  key(seq: Sequence, start: number, layer: number): string {
    return `${this.windowOf.get(seq)}:${start}:${layer}`;
  }

  /** A hook for the Full run: keeps every layer's row at single-token steps. */
  recorder(): KvPolicyHook {
    return {
      name: "full",
      wantsAttention: (_s, _l, step) => (step.T === 1 ? "probs" : false),
      observe: (seq, o) => {
        if (o.T !== 1 || !o.probs) return;
        const Hq = o.probs.length / o.Lmax;
        const n = o.start + 1;
        const row = new Float32Array(Hq * n);
        // Without a selection every kv head's keys are positions 0..n-1 in order.
        for (let h = 0; h < Hq; h++) row.set(o.probs.subarray(h * o.Lmax, h * o.Lmax + n), h * n);
        this.rows.set(this.key(seq, o.start, o.layer), row);
      },
    };
  }

  get(key: string): Float32Array | undefined {
    return this.rows.get(key);
  }
}

export interface CoverageTotals {
  /** Sum over (step, layer, query head) of Full's mass on exactly read tokens, and of the L1 distance. */
  covered: number;
  l1: number;
  count: number;
}

/**
 * Wrap a policy so that its decode-step attention is compared with Full's: it asks the
 * runner for probabilities and hands the policy what it asked for (probabilities, fused
 * scores, or nothing), so the policy behaves exactly as unwrapped.
 */
export function probe(inner: KvPolicyHook, full: FullRows, totals: CoverageTotals): KvPolicyHook {
  const lastSel = new Map<string, LayerSelection | null>();
  const lastW = new Map<string, Float32Array>();
  const asked = new Map<string, ReturnType<NonNullable<KvPolicyHook["wantsAttention"]>>>();
  const k = (seq: Sequence, start: number, layer: number) => `${seq.id}:${start}:${layer}`;
  const hook: KvPolicyHook = {
    name: inner.name,
    usesAssistant: inner.usesAssistant,
    wantsQuery: inner.wantsQuery,
    select(seq, layer, step) {
      const sel = inner.select ? inner.select(seq, layer, step) : null;
      lastSel.set(k(seq, step.start, layer), sel);
      return sel;
    },
    wantsAttention(seq, layer, step) {
      const want = inner.wantsAttention ? inner.wantsAttention(seq, layer, step) : false;
      asked.set(k(seq, step.start, layer), want);
      return step.T === 1 ? "probs" : want;
    },
    observe(seq, o) {
      const key = k(seq, o.start, o.layer);
      const want = asked.get(key) ?? false;
      if (o.T === 1 && o.probs) {
        measure(seq, o, lastSel.get(key) ?? null, lastW.get(key));
        if (want === "probs") inner.observe?.(seq, o);
        else if (want && typeof want === "object") {
          const from = want.fromRow ?? 0;
          // One row: the fused scores are that row (or nothing when fromRow skips it).
          const scores = from <= 0 ? o.probs.slice() : new Float32Array(o.probs.length);
          inner.observe?.(seq, { ...o, probs: undefined, scores });
        }
      } else if (want) inner.observe?.(seq, o);
      asked.delete(key);
      lastSel.delete(key);
      lastW.delete(key);
    },
    prepare: inner.prepare ? (seq, step) => inner.prepare!(seq, step) : undefined,
    describe: inner.describe ? (seq) => inner.describe!(seq) : undefined,
    classCounts: inner.classCounts ? (seq) => inner.classCounts!(seq) : undefined,
    residentBytes: inner.residentBytes ? (seq) => inner.residentBytes!(seq) : undefined,
    release: inner.release ? (seq) => inner.release!(seq) : undefined,
  };
  if (inner.vOnlyWeights) {
    hook.vOnlyWeights = (seq: Sequence, layer: number, step: StepInfo, sel: LayerSelection) => {
      const w = inner.vOnlyWeights!(seq, layer, step, sel);
      lastW.set(k(seq, step.start, layer), w);
      return w;
    };
  }

  function measure(seq: Sequence, o: AttentionObservation, sel: LayerSelection | null, w?: Float32Array) {
    const ref = full.get(full.key(seq, o.start, o.layer));
    if (!ref) return;
    const n = o.start + 1;
    const Hq = ref.length / n;
    const lists = o.keyPositions.length;
    const group = Hq / lists;
    const vOnly = sel?.vOnly;
    const vmax = vOnly ? Math.max(0, ...vOnly.map((l) => l.length)) : 0;
    const eff = new Float64Array(n);
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / group);
      const pos = o.keyPositions[g];
      let mass = 0;
      if (vOnly && w) for (let i = 0; i < vOnly[g].length; i++) mass += w[h * vmax + i];
      const scale = vOnly && sel?.combine !== "literal" ? 1 - mass : 1;
      eff.fill(0);
      let covered = 0;
      for (let j = 0; j < pos.length; j++) {
        eff[pos[j]] += scale * o.probs![h * o.Lmax + j];
        covered += ref[h * n + pos[j]];
      }
      if (vOnly && w) for (let i = 0; i < vOnly[g].length; i++) eff[vOnly[g][i]] += w[h * vmax + i];
      let l1 = 0;
      for (let p = 0; p < n; p++) l1 += Math.abs(eff[p] - ref[h * n + p]);
      totals.covered += covered;
      totals.l1 += l1;
      totals.count++;
    }
  }
  return hook;
}
