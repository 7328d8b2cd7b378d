import { writeFileSync } from "node:fs";
import { type KvPolicyHook, type Model, readSmallTextFile } from "@smallkv/runner";
import {
  columnSums,
  type FlatRowTops,
  flatOldRowTops,
  flatOwnTops,
  flatRowCoverage,
  flatRowTops,
  jaccard,
  nnls,
  ownRows,
  rowCosine,
  topSet,
} from "./similarity.js";

/** Full attention matrices of every layer of a model on some tokens: probs[layer] is [H][T][T]. */
export interface AttentionSet {
  numLayers: number;
  numHeads: number;
  T: number;
  probs: Float32Array[];
}

/** Run `ids` through a fresh sequence of `model` and keep every layer's attention matrix. */
export async function collectAttention(model: Model, ids: number[]): Promise<AttentionSet> {
  const probs: Float32Array[] = [];
  const observer: KvPolicyHook = {
    name: "matching-observer",
    wantsAttention: () => "probs",
    observe: (_s, o) => {
      probs[o.layer] = o.probs!;
    },
  };
  const seq = model.newSequence(observer);
  try {
    await model.forward([{ seq, tokens: ids, logits: "none" }]);
  } finally {
    seq.release();
  }
  return { numLayers: model.config.numLayers, numHeads: model.config.numHeads, T: ids.length, probs };
}

/** Who a model is, so that a saved matching is only used with the pair it was made for. */
export interface ModelIdentity {
  name: string;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  hiddenSize: number;
  vocabSize: number;
  tokenizer: string;
}

export function identityOf(model: Model): ModelIdentity {
  const c = model.config;
  return {
    name: model.name,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    hiddenSize: c.hiddenSize,
    vocabSize: c.vocabSize,
    tokenizer: model.tokenizer.fingerprint,
  };
}

/**
 * "jaccard": TopK of column sums (the paper's); "cosine": mean row cosine; "coverage": share
 * of the LLM head's row mass on the SLM head's top tokens of the same row.
 */
export type MatchMetric = "jaccard" | "cosine" | "coverage";
export const MATCH_METRICS: readonly MatchMetric[] = ["jaccard", "cosine", "coverage"];

export interface MatchOptions {
  /** What picks the SLM head (default "jaccard", the paper's). */
  metric?: MatchMetric;
  /** K of the Jaccard TopK as a fraction of the window (default 0.2). */
  topkRatio?: number;
  /** Also fit each LLM head's non-negative mixture of SLM head rows (+ its own past attention). */
  fit?: boolean;
}

export interface HeadMatch {
  llmLayer: number;
  llmHead: number;
  slmLayer: number;
  slmHead: number;
  /** Jaccard of the TopK token sets and mean row cosine of the matched pair. */
  jaccard: number;
  cosine: number;
  /**
   * Share of the LLM head's attention mass (per row, averaged) on the matched SLM head's
   * top tokens of that row: what a selection by this SLM head keeps of the LLM head's
   * current attention. Missing in files saved before it existed.
   */
  coverage?: number;
  /**
   * Old-token coverage (the step's own token left out) of the LLM head's attention by the
   * matched SLM head's current row, and by the LLM head's own past mean attention: where
   * the second is higher, the assistant predicts this head worse than the LLM itself.
   */
  assistantOldCoverage?: number;
  ownOldCoverage?: number;
  /**
   * Fitted mixture (with MatchOptions.fit): non-negative weights of every SLM head's row
   * (index slmLayer * slmHeads + slmHead) and, last, of the LLM head's own past mean
   * attention, that best reproduce this head's attention over old tokens on the window.
   */
  weights?: number[];
  /** The next best SLM heads by the metric, best first (for rankings that pool several heads). */
  runnersUp?: { slmLayer: number; slmHead: number; score: number }[];
}

export interface SimilarityStats {
  mean: number;
  min: number;
  max: number;
  median: number;
}

export interface MatchingReport {
  metric: MatchMetric;
  jaccard: SimilarityStats;
  cosine: SimilarityStats;
  perLayer: { layer: number; jaccard: SimilarityStats; cosine: SimilarityStats }[];
  /** How many LLM heads map to each SLM layer. */
  slmLayerUse: number[];
}

/**
 * For every LLM head, the non-negative mixture of all SLM heads' rows and its own past mean
 * attention that best fits its attention over old tokens (v < u) on the window (least squares).
 */
function fitMixtures(llmAttn: AttentionSet, slmAttn: AttentionSet, matches: HeadMatch[]): void {
  const T = llmAttn.T;
  const feats: ArrayLike<number>[] = [];
  for (let l = 0; l < slmAttn.numLayers; l++)
    for (let h = 0; h < slmAttn.numHeads; h++)
      feats.push(slmAttn.probs[l].subarray(h * T * T, (h + 1) * T * T));
  const S = feats.length;
  const n = S + 1;
  // The SLM part of the Gram matrix is shared by every LLM head.
  const Gs = new Float64Array(S * S);
  for (let j = 0; j < S; j++)
    for (let k = j; k < S; k++) {
      let g = 0;
      for (let u = 1; u < T; u++) for (let v = 0; v < u; v++) g += feats[j][u * T + v] * feats[k][u * T + v];
      Gs[j * S + k] = Gs[k * S + j] = g;
    }
  for (const m of matches) {
    const A = llmAttn.probs[m.llmLayer].subarray(m.llmHead * T * T, (m.llmHead + 1) * T * T);
    const own = ownRows(A, T);
    const all = [...feats, own];
    const G = new Float64Array(n * n);
    const b = new Float64Array(n);
    for (let j = 0; j < S; j++) for (let k = 0; k < S; k++) G[j * n + k] = Gs[j * S + k];
    for (let j = 0; j < n; j++) {
      let gb = 0;
      let go = 0;
      for (let u = 1; u < T; u++)
        for (let v = 0; v < u; v++) {
          gb += all[j][u * T + v] * A[u * T + v];
          go += all[j][u * T + v] * own[u * T + v];
        }
      b[j] = gb;
      G[j * n + S] = G[S * n + j] = go;
    }
    m.weights = Array.from(nnls(G, b, n));
  }
}

/** How many next-best SLM heads a match records. */
const RUNNERS_UP = 3;

export class MatchingMismatchError extends Error {
  override readonly name = "MatchingMismatchError";
}

function stats(xs: number[]): SimilarityStats {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length
    ? s.length % 2
      ? s[(s.length - 1) / 2]
      : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
    : 0;
  return {
    mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length),
    min: s[0] ?? 0,
    max: s[s.length - 1] ?? 0,
    median: mid,
  };
}

/** The LLM-head -> SLM-head mapping (many-to-one, over all SLM layers and heads). */
export class HeadMatching {
  constructor(
    readonly llm: ModelIdentity,
    readonly slm: ModelIdentity,
    readonly metric: MatchMetric,
    readonly topkRatio: number,
    /** The token window the matching was made on. */
    readonly window: [number, number],
    /** matches[llmLayer * llmHeads + llmHead]. */
    readonly matches: HeadMatch[],
  ) {}

  /** Match every LLM head to its most similar SLM head. */
  static compute(
    llmAttn: AttentionSet,
    slmAttn: AttentionSet,
    ids: { llm: ModelIdentity; slm: ModelIdentity; window?: [number, number] },
    o: MatchOptions = {},
  ): HeadMatching {
    const metric = o.metric ?? "jaccard";
    const topkRatio = o.topkRatio ?? 0.2;
    const T = llmAttn.T;
    if (slmAttn.T !== T) throw new MatchingMismatchError(`attention of ${T} vs ${slmAttn.T} tokens`);
    const k = Math.max(1, Math.round(topkRatio * T));
    const head = (a: AttentionSet, l: number, h: number) => a.probs[l].subarray(h * T * T, (h + 1) * T * T);
    const slmHeads: {
      layer: number;
      head: number;
      probs: Float32Array;
      top: Set<number>;
      rows: FlatRowTops;
      oldRows: FlatRowTops;
    }[] = [];
    for (let l = 0; l < slmAttn.numLayers; l++) {
      for (let h = 0; h < slmAttn.numHeads; h++) {
        const p = head(slmAttn, l, h);
        slmHeads.push({
          layer: l,
          head: h,
          probs: p,
          top: topSet(columnSums(p, T), k),
          rows: flatRowTops(p, T, topkRatio),
          oldRows: flatOldRowTops(p, T, topkRatio),
        });
      }
    }
    const matches: HeadMatch[] = [];
    for (let l = 0; l < llmAttn.numLayers; l++) {
      for (let h = 0; h < llmAttn.numHeads; h++) {
        const p = head(llmAttn, l, h);
        const top = topSet(columnSums(p, T), k);
        // Ties on the metric (common for Jaccard of small sets) go to the second metric,
        // then to the earlier head: never silently to the lowest index alone.
        const primary = (sh: (typeof slmHeads)[number]) =>
          metric === "jaccard"
            ? jaccard(top, sh.top)
            : metric === "cosine"
              ? rowCosine(p, sh.probs, T)
              : flatRowCoverage(p, sh.rows, T);
        const scores = slmHeads.map(primary);
        const bestScore = Math.max(...scores);
        const tied = slmHeads.filter((_, i) => scores[i] >= bestScore - 1e-12);
        let s = tied[0];
        if (tied.length > 1) {
          const second = (sh: (typeof slmHeads)[number]) =>
            metric === "cosine" ? flatRowCoverage(p, sh.rows, T) : rowCosine(p, sh.probs, T);
          let bestSecond = Number.NEGATIVE_INFINITY;
          for (const c of tied) {
            const v = second(c);
            if (v > bestSecond + 1e-12) [bestSecond, s] = [v, c];
          }
        }
        const b: HeadMatch = {
          llmLayer: l,
          llmHead: h,
          slmLayer: s.layer,
          slmHead: s.head,
          jaccard: jaccard(top, s.top),
          cosine: rowCosine(p, s.probs, T),
          coverage: flatRowCoverage(p, s.rows, T),
          assistantOldCoverage: flatRowCoverage(p, s.oldRows, T),
          ownOldCoverage: flatRowCoverage(p, flatOwnTops(p, T, topkRatio), T),
          runnersUp: slmHeads
            .map((c, i) => ({ slmLayer: c.layer, slmHead: c.head, score: scores[i] }))
            .filter((c) => c.slmLayer !== s.layer || c.slmHead !== s.head)
            .sort((x, y) => y.score - x.score)
            .slice(0, RUNNERS_UP),
        };
        matches.push(b);
      }
    }
    if (o.fit) fitMixtures(llmAttn, slmAttn, matches);
    return new HeadMatching(ids.llm, ids.slm, metric, topkRatio, ids.window ?? [0, T], matches);
  }

  /** The SLM head matched to LLM head (layer, head). */
  slmHeadOf(layer: number, head: number): { layer: number; head: number } {
    const m = this.matches[layer * this.llm.numHeads + head];
    return { layer: m.slmLayer, head: m.slmHead };
  }

  /** The best `n` SLM heads of LLM head (layer, head), best first (fewer when the file has no runners-up). */
  slmHeadsOf(layer: number, head: number, n: number): { layer: number; head: number }[] {
    const m = this.matches[layer * this.llm.numHeads + head];
    const rest = (m.runnersUp ?? [])
      .slice(0, Math.max(0, n - 1))
      .map((r) => ({ layer: r.slmLayer, head: r.slmHead }));
    return [{ layer: m.slmLayer, head: m.slmHead }, ...rest];
  }

  /** True when the matched SLM head predicts LLM head (layer, head) at least as well as its own past attention (true when unknown). */
  assistantHelps(layer: number, head: number): boolean {
    const m = this.matches[layer * this.llm.numHeads + head];
    if (m.assistantOldCoverage === undefined || m.ownOldCoverage === undefined) return true;
    return m.assistantOldCoverage >= m.ownOldCoverage;
  }

  /** The fitted mixture of LLM head (layer, head), or undefined when the matching has none. */
  weightsOf(layer: number, head: number): number[] | undefined {
    return this.matches[layer * this.llm.numHeads + head].weights;
  }

  /** The measured coverage of LLM head (layer, head) by its SLM head (NaN when unknown). */
  coverageOf(layer: number, head: number): number {
    return this.matches[layer * this.llm.numHeads + head].coverage ?? Number.NaN;
  }

  report(): MatchingReport {
    const perLayer = Array.from({ length: this.llm.numLayers }, (_, layer) => {
      const ms = this.matches.filter((m) => m.llmLayer === layer);
      return { layer, jaccard: stats(ms.map((m) => m.jaccard)), cosine: stats(ms.map((m) => m.cosine)) };
    });
    const slmLayerUse = new Array(this.slm.numLayers).fill(0);
    for (const m of this.matches) slmLayerUse[m.slmLayer]++;
    return {
      metric: this.metric,
      jaccard: stats(this.matches.map((m) => m.jaccard)),
      cosine: stats(this.matches.map((m) => m.cosine)),
      perLayer,
      slmLayerUse,
    };
  }

  toJSON() {
    return {
      kind: "smallkv.head-matching",
      version: 1,
      llm: this.llm,
      slm: this.slm,
      metric: this.metric,
      topkRatio: this.topkRatio,
      window: this.window,
      matches: this.matches,
    };
  }

  save(path: string): void {
    writeFileSync(path, `${JSON.stringify(this.toJSON(), null, 2)}\n`);
  }

  /** Load a saved matching; with models given, refuse one made for another pair. */
  static load(path: string, check?: { llm?: Model; slm?: Model }): HeadMatching {
    let j: ReturnType<HeadMatching["toJSON"]>;
    try {
      j = JSON.parse(readSmallTextFile(path));
    } catch (e) {
      throw new MatchingMismatchError(`cannot read the head matching ${path}: ${(e as Error).message}`);
    }
    if (!j || typeof j !== "object" || j.kind !== "smallkv.head-matching" || !Array.isArray(j.matches))
      throw new MatchingMismatchError(`${path} is not a head-matching file`);
    const same = (a: ModelIdentity, b: ModelIdentity) =>
      a.numLayers === b.numLayers &&
      a.numHeads === b.numHeads &&
      a.numKvHeads === b.numKvHeads &&
      a.hiddenSize === b.hiddenSize &&
      a.vocabSize === b.vocabSize &&
      a.tokenizer === b.tokenizer;
    for (const [role, m] of [
      ["llm", check?.llm],
      ["slm", check?.slm],
    ] as const) {
      if (m && (!j[role] || !same(j[role], identityOf(m)))) {
        throw new MatchingMismatchError(
          `${path} was made for ${role} ${j[role]?.name}, not for ${m.name} (shapes or tokenizer differ)`,
        );
      }
    }
    return new HeadMatching(j.llm, j.slm, j.metric, j.topkRatio, j.window, j.matches);
  }
}

/** Match an LLM to an SLM on token ids (run both, then compute). */
export async function matchModels(
  llm: Model,
  slm: Model,
  ids: number[],
  o: MatchOptions = {},
): Promise<HeadMatching> {
  const [a, b] = [await collectAttention(llm, ids), await collectAttention(slm, ids)];
  return HeadMatching.compute(a, b, { llm: identityOf(llm), slm: identityOf(slm) }, o);
}

/** The report as a text table (per LLM layer). */
export function formatReport(r: MatchingReport, title = ""): string {
  const f = (s: SimilarityStats) => `${s.mean.toFixed(3)} / ${s.min.toFixed(3)} / ${s.max.toFixed(3)}`;
  const lines = [
    title,
    `matched by ${r.metric}; mean / min / max over LLM heads`,
    `  all layers  jaccard ${f(r.jaccard)}   cosine ${f(r.cosine)}`,
    ...r.perLayer.map(
      (p) => `  layer ${String(p.layer).padStart(3)}   jaccard ${f(p.jaccard)}   cosine ${f(p.cosine)}`,
    ),
    `  LLM heads per SLM layer: ${r.slmLayerUse.join(" ")}`,
  ];
  return lines.filter((x) => x !== "").join("\n");
}
