import { readFileSync, writeFileSync } from "node:fs";
import type { KvPolicyHook, Model } from "@smallkv/runner";
import { columnSums, jaccard, rowCosine, topSet } from "./similarity.js";

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

export type MatchMetric = "jaccard" | "cosine";

export interface MatchOptions {
  /** What picks the SLM head (default "jaccard", the paper's). */
  metric?: MatchMetric;
  /** K of the Jaccard TopK as a fraction of the window (default 0.2). */
  topkRatio?: number;
}

export interface HeadMatch {
  llmLayer: number;
  llmHead: number;
  slmLayer: number;
  slmHead: number;
  /** Jaccard of the TopK token sets and mean row cosine of the matched pair. */
  jaccard: number;
  cosine: number;
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
    const slmHeads: { layer: number; head: number; probs: Float32Array; top: Set<number> }[] = [];
    for (let l = 0; l < slmAttn.numLayers; l++) {
      for (let h = 0; h < slmAttn.numHeads; h++) {
        const p = head(slmAttn, l, h);
        slmHeads.push({ layer: l, head: h, probs: p, top: topSet(columnSums(p, T), k) });
      }
    }
    const matches: HeadMatch[] = [];
    for (let l = 0; l < llmAttn.numLayers; l++) {
      for (let h = 0; h < llmAttn.numHeads; h++) {
        const p = head(llmAttn, l, h);
        const top = topSet(columnSums(p, T), k);
        let best: HeadMatch | null = null;
        let bestScore = Number.NEGATIVE_INFINITY;
        for (const s of slmHeads) {
          const j = jaccard(top, s.top);
          // Cosine is computed for the winner only under the Jaccard metric (it is O(T^2) per pair).
          const c = metric === "cosine" ? rowCosine(p, s.probs, T) : Number.NaN;
          const score = metric === "jaccard" ? j : c;
          if (score > bestScore) {
            bestScore = score;
            best = { llmLayer: l, llmHead: h, slmLayer: s.layer, slmHead: s.head, jaccard: j, cosine: c };
          }
        }
        const b = best!;
        if (Number.isNaN(b.cosine)) b.cosine = rowCosine(p, head(slmAttn, b.slmLayer, b.slmHead), T);
        matches.push(b);
      }
    }
    return new HeadMatching(ids.llm, ids.slm, metric, topkRatio, ids.window ?? [0, T], matches);
  }

  /** The SLM head matched to LLM head (layer, head). */
  slmHeadOf(layer: number, head: number): { layer: number; head: number } {
    const m = this.matches[layer * this.llm.numHeads + head];
    return { layer: m.slmLayer, head: m.slmHead };
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
      j = JSON.parse(readFileSync(path, "utf8"));
    } catch (e) {
      throw new MatchingMismatchError(`cannot read the head matching ${path}: ${(e as Error).message}`);
    }
    if (j.kind !== "smallkv.head-matching" || !Array.isArray(j.matches))
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
      if (m && !same(j[role], identityOf(m))) {
        throw new MatchingMismatchError(
          `${path} was made for ${role} ${j[role].name}, not for ${m.name} (shapes or tokenizer differ)`,
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
