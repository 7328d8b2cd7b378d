import type { LayerSelection } from "@smallkv/runner";
import { optionChecks } from "../option-checks.js";
import { loadPodBlocks, validateBlocks } from "../pod-blocks.js";
import { ScoreTable } from "../scores.js";
import { definePolicy } from "../sdk.js";
import { maskOf, range, topPositions, union } from "../select.js";

interface PodState {
  blocks: number[][];
  blockOf: number[];
  /** Accumulated attention of each block's first layer (ranks the distant tokens). */
  scores: ScoreTable;
  /** distant[b][g]: the distant tokens block b keeps at this step (chosen by its first layer). */
  distant: Int32Array[][];
  /** The first layer's attention probabilities at this step, with its key positions. */
  firstProbs: { probs: Float32Array; Lmax: number; T: number; keyPositions: Int32Array[] }[];
}

/** Layer-block files by path, read once (a server preloads them at start). */
const loadedBlocks = new Map<string, number[][]>();
function blocksFile(path: string): number[][] {
  let b = loadedBlocks.get(path);
  if (!b) {
    b = loadPodBlocks(path).blocks;
    loadedBlocks.set(path, b);
  }
  return b;
}

type PodOptions = { sinks: number; recentRatio: number; blocks: string; blockSize: number };

/**
 * PoD (Ma et al. 2024, arXiv 2412.02252), training-free form: proximal tokens (the first
 * `sinks` and a recent window) keep K and V in every layer; for distant tokens, layers are
 * grouped into blocks of similar attention, the block's first layer attends to them exactly
 * and the other layers keep only their V, reusing the first layer's attention weights
 * (the runner's V-only class, the same mechanism as SmallKV's marginal tokens). Distant
 * tokens are ranked by the first layer's accumulated attention and re-chosen every step
 * from the cold store, to fit the same budget accounting as the other policies.
 */
export const pod = definePolicy<PodState, PodOptions>({
  name: "pod",
  description:
    "proximal tokens full; distant tokens: one K per layer block, V everywhere, weights shared in the block",
  options: { sinks: 4, recentRatio: 0.25, blocks: "", blockSize: 2 },
  fileOptions: ["blocks"],
  validate(o, config) {
    const c = optionChecks("pod", o);
    c.number("sinks", 0, 1 << 20, true);
    c.number("recentRatio", 0, 1);
    c.number("blockSize", 1, 1024, true);
    if (o.blocks && config) validateBlocks(blocksFile(o.blocks), config.numLayers);
  },
  preload(_option, path, models) {
    validateBlocks(blocksFile(path), models.llm.config.numLayers);
  },
  init(seq, o) {
    const c = seq.config;
    let blocks: number[][];
    if (o.blocks) blocks = blocksFile(o.blocks);
    else
      blocks = Array.from({ length: Math.ceil(c.numLayers / o.blockSize) }, (_, b) =>
        range(b * o.blockSize, Math.min(c.numLayers, (b + 1) * o.blockSize)),
      ).map((r) => Array.from(r));
    validateBlocks(blocks, c.numLayers);
    const blockOf: number[] = [];
    blocks.forEach((b, i) => b.forEach((l) => (blockOf[l] = i)));
    return {
      blocks,
      blockOf,
      scores: new ScoreTable(c.numLayers, c.numKvHeads, c.numHeads / c.numKvHeads),
      distant: blocks.map(() => []),
      firstProbs: [],
    };
  },
  wantsAttention(ctx) {
    const b = ctx.state.blocks[ctx.state.blockOf[ctx.layer]];
    if (b[0] !== ctx.layer) return false;
    // Decode steps: the probabilities themselves (shared with the block); prefill: fused sums only.
    return ctx.step.T === 1 ? "probs" : { scores: true };
  },
  observe(ctx, obs) {
    const { numHeads: Hq } = ctx.config;
    let scores = obs.scores;
    if (!scores && obs.probs) {
      scores = new Float32Array(Hq * obs.Lmax);
      for (let h = 0; h < Hq; h++) {
        for (let t = 0; t < obs.T; t++)
          for (let j = 0; j < obs.Lmax; j++)
            scores[h * obs.Lmax + j] += obs.probs[(h * obs.T + t) * obs.Lmax + j];
      }
      ctx.state.firstProbs[ctx.state.blockOf[obs.layer]] = {
        probs: obs.probs,
        Lmax: obs.Lmax,
        T: obs.T,
        keyPositions: obs.keyPositions,
      };
    }
    ctx.state.scores.add({ ...obs, scores });
  },
  select(ctx): LayerSelection {
    const { start } = ctx.step;
    const Hkv = ctx.config.numKvHeads;
    const bi = ctx.state.blockOf[ctx.layer];
    const block = ctx.state.blocks[bi];
    const first = block[0];
    const B = ctx.oldBudget;
    const sinks = Math.min(ctx.options.sinks, B, start);
    const recent = Math.min(Math.floor(B * ctx.options.recentRatio), B - sinks);
    const proximal = union(range(0, sinks), range(Math.max(sinks, start - recent), start));
    // Block cost: first layer P + k, each other layer P + k/2; the mean must fit B.
    const m = block.length;
    const k = Math.max(0, Math.floor(((B - proximal.length) * m) / (1 + (m - 1) / 2)));
    if (ctx.layer === first) {
      const exclude = maskOf(start, proximal);
      ctx.state.distant[bi] = Array.from({ length: Hkv }, (_, g) =>
        topPositions(ctx.state.scores.get(first, g, start), start, k, exclude),
      );
      return { full: Array.from({ length: Hkv }, (_, g) => union(proximal, ctx.state.distant[bi][g])) };
    }
    return {
      full: Array.from({ length: Hkv }, () => proximal),
      vOnly: ctx.state.distant[bi],
      combine: "mass",
    };
  },
  vOnlyWeights(ctx, sel) {
    const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
    const group = Hq / Hkv;
    const T = ctx.step.T;
    const fp = ctx.state.firstProbs[ctx.state.blockOf[ctx.layer]];
    const vsel = sel.vOnly!;
    const vmax = Math.max(...vsel.map((x) => x.length));
    const w = new Float32Array(Hq * T * vmax);
    for (let g = 0; g < Hkv; g++) {
      const col = new Map<number, number>();
      fp.keyPositions[g].forEach((p, j) => col.set(p, j));
      for (let h = g * group; h < (g + 1) * group; h++) {
        for (let t = 0; t < T; t++) {
          vsel[g].forEach((p, i) => {
            const j = col.get(p);
            w[(h * T + t) * vmax + i] = j === undefined ? 0 : fp.probs[(h * fp.T + t) * fp.Lmax + j];
          });
        }
      }
    }
    return w;
  },
});
