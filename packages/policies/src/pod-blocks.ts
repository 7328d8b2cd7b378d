import { writeFileSync } from "node:fs";
import { type AttentionObservation, type KvPolicyHook, type Model, readSmallTextFile } from "@smallkv/runner";
import { PolicyOptionError } from "./errors.js";

/** PoD's layer blocks for one model: consecutive layers sharing the attention weights of distant tokens. */
export interface PodBlocks {
  kind: "smallkv.pod-blocks";
  model: { name: string; numLayers: number; numHeads: number };
  /** Each block is a run of consecutive layers; its first layer computes the shared weights. */
  blocks: number[][];
  /** similarity[l]: mean cosine of attention rows between layers l and l+1 on the calibration text. */
  similarity: number[];
  calibrationTokens: number;
}

/** Mean (over query heads and query rows 1..T-1) cosine similarity of attention rows between consecutive layers. */
export async function layerSimilarity(model: Model, ids: number[]): Promise<number[]> {
  const probs: Float32Array[] = [];
  let T = 0;
  const observer: KvPolicyHook = {
    name: "pod-calibration",
    wantsAttention: () => "probs",
    observe: (_s, o: AttentionObservation) => {
      probs[o.layer] = o.probs!.slice();
      T = o.T;
    },
  };
  const seq = model.newSequence(observer);
  await model.forward([{ seq, tokens: ids, logits: "none" }]);
  seq.release();
  const { numLayers: L, numHeads: H } = model.config;
  const sims: number[] = [];
  for (let l = 0; l + 1 < L; l++) {
    let total = 0;
    let n = 0;
    for (let h = 0; h < H; h++) {
      for (let t = 1; t < T; t++) {
        const a = probs[l].subarray((h * T + t) * T, (h * T + t + 1) * T);
        const b = probs[l + 1].subarray((h * T + t) * T, (h * T + t + 1) * T);
        let ab = 0;
        let aa = 0;
        let bb = 0;
        for (let j = 0; j <= t; j++) {
          ab += a[j] * b[j];
          aa += a[j] * a[j];
          bb += b[j] * b[j];
        }
        total += ab / Math.sqrt(aa * bb);
        n++;
      }
    }
    sims.push(n ? total / n : 0);
  }
  return sims;
}

/**
 * Partition layers into runs of at most `maxBlock` consecutive layers maximising the
 * similarity inside blocks (dynamic programming over the chain of layers).
 */
export function partitionLayers(similarity: number[], numLayers: number, maxBlock: number): number[][] {
  const best = new Array(numLayers + 1).fill(Number.NEGATIVE_INFINITY);
  const from = new Array(numLayers + 1).fill(0);
  best[0] = 0;
  for (let end = 1; end <= numLayers; end++) {
    for (let size = 1; size <= Math.min(maxBlock, end); size++) {
      const s = end - size;
      let inside = 0;
      for (let l = s; l + 1 < end; l++) inside += similarity[l];
      if (best[s] + inside > best[end]) {
        best[end] = best[s] + inside;
        from[end] = s;
      }
    }
  }
  const blocks: number[][] = [];
  for (let end = numLayers; end > 0; end = from[end])
    blocks.unshift(Array.from({ length: end - from[end] }, (_, i) => from[end] + i));
  return blocks;
}

/** Calibrate PoD's layer blocks for a model on a text (token ids). */
export async function calibratePodBlocks(model: Model, ids: number[], maxBlock = 2): Promise<PodBlocks> {
  const c = model.config;
  const similarity = await layerSimilarity(model, ids);
  return {
    kind: "smallkv.pod-blocks",
    model: { name: model.name, numLayers: c.numLayers, numHeads: c.numHeads },
    blocks: partitionLayers(similarity, c.numLayers, maxBlock),
    similarity,
    calibrationTokens: ids.length,
  };
}

export function savePodBlocks(path: string, b: PodBlocks): void {
  writeFileSync(path, `${JSON.stringify(b, null, 2)}\n`);
}

export function loadPodBlocks(path: string): PodBlocks {
  let b: PodBlocks;
  try {
    b = JSON.parse(readSmallTextFile(path));
  } catch (e) {
    throw new PolicyOptionError("pod", `cannot read layer blocks from ${path}: ${(e as Error).message}`);
  }
  if (!b || typeof b !== "object" || b.kind !== "smallkv.pod-blocks" || !Array.isArray(b.blocks))
    throw new PolicyOptionError("pod", `${path} is not a PoD layer-block file`);
  return b;
}

/** Check that blocks cover layers 0..L-1 once each, as consecutive runs. */
export function validateBlocks(blocks: number[][], numLayers: number): void {
  const flat = blocks.flat();
  const ok = flat.length === numLayers && flat.every((l, i) => l === i) && blocks.every((b) => b.length > 0);
  if (!ok)
    throw new PolicyOptionError(
      "pod",
      `layer blocks ${JSON.stringify(blocks)} do not cover layers 0..${numLayers - 1} as consecutive runs`,
    );
}
