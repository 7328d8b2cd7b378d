import { readFileSync } from "node:fs";
import { type KvStoreType, logSoftmax, Model, resolveModelDir, type WeightType } from "@smallkv/runner";
import { splitDocuments } from "./documents.js";

export interface WeightsEvalOptions {
  model: string;
  /** Variants to compare with f32 weights and an f32 KV store: weights, group size, KV store. */
  variants: { weights: WeightType; groupSize?: number; kvCold?: KvStoreType }[];
  textFile: string;
  documents?: number;
  /** Tokens per document (from its start). */
  tokens?: number;
  threads?: number;
}

export interface WeightsEvalRow {
  model: string;
  weights: string;
  groupSize: number | null;
  /** How the KV cache was stored (f32, or int8 with a scale per token and head). */
  kvCold: KvStoreType;
  weightBytes: number;
  perplexity: number;
  /** Perplexity over the f32 model's, minus 1 (0.01 = 1% worse). */
  pplIncrease: number;
  /** Mean KL(f32 ‖ quantized) of the next-token distributions, nats. */
  kl: number;
  /** Share of positions where both pick the same top token. */
  top1Agreement: number;
  tokens: number;
}

/**
 * Quality of quantized weights (or of an int8 KV store) against the f32 model on real text: teacher-forced perplexity,
 * KL of the next-token distributions and top-1 agreement, position by position.
 */
export async function runWeightsEval(o: WeightsEvalOptions): Promise<WeightsEvalRow[]> {
  const dir = resolveModelDir(o.model);
  const ref = await Model.load(dir, { threads: o.threads });
  const models = await Promise.all(
    o.variants.map((v) =>
      Model.load(dir, { threads: o.threads, weights: v.weights, groupSize: v.groupSize, kvCold: v.kvCold }),
    ),
  );
  const docs = splitDocuments(readFileSync(o.textFile, "utf8"))
    .filter((d) => d.length > 200)
    .slice(0, o.documents ?? 24);
  const V = ref.config.vocabSize;
  const acc = models.map(() => ({ nll: 0, kl: 0, top1: 0 }));
  let nllRef = 0;
  let n = 0;
  const logits = async (m: Model, ids: number[]) => {
    const seq = m.newSequence();
    const [l] = await m.forward([{ seq, tokens: ids, logits: "all" }]);
    seq.release();
    return l;
  };
  for (const d of docs) {
    const ids = ref.tokenizer.encode(d).slice(0, Math.min(o.tokens ?? 256, ref.config.maxPositions));
    const lr = await logits(ref, ids);
    const lq = await Promise.all(models.map((m) => logits(m, ids)));
    for (let i = 0; i + 1 < ids.length; i++) {
      const pr = logSoftmax(lr.subarray(i * V, (i + 1) * V));
      nllRef -= pr[ids[i + 1]];
      let top = 0;
      for (let v = 1; v < V; v++) if (pr[v] > pr[top]) top = v;
      lq.forEach((l, k) => {
        const pq = logSoftmax(l.subarray(i * V, (i + 1) * V));
        acc[k].nll -= pq[ids[i + 1]];
        let kl = 0;
        let qtop = 0;
        for (let v = 0; v < V; v++) {
          kl += Math.exp(pr[v]) * (pr[v] - pq[v]);
          if (pq[v] > pq[qtop]) qtop = v;
        }
        acc[k].kl += kl;
        if (qtop === top) acc[k].top1++;
      });
      n++;
    }
  }
  const pplRef = Math.exp(nllRef / n);
  const name = ref.name;
  return [
    {
      model: name,
      weights: "f32",
      groupSize: null,
      kvCold: "f32",
      weightBytes: ref.weightBytes,
      perplexity: pplRef,
      pplIncrease: 0,
      kl: 0,
      top1Agreement: 1,
      tokens: n,
    },
    ...models.map((m, k) => {
      const ppl = Math.exp(acc[k].nll / n);
      return {
        model: name,
        weights: m.weightType,
        groupSize:
          m.weightType === "f32" ? null : (o.variants[k].groupSize ?? (m.weightType === "int4" ? 32 : 64)),
        kvCold: m.kvCold,
        weightBytes: m.weightBytes,
        perplexity: ppl,
        pplIncrease: ppl / pplRef - 1,
        kl: acc[k].kl / n,
        top1Agreement: acc[k].top1 / n,
        tokens: n,
      };
    }),
  ];
}
