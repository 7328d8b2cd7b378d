import type { DeviceRankPlan } from "@smallkv/runner";
import { optionChecks } from "../option-checks.js";
import type { PolicyContext } from "../sdk.js";
import { definePolicy } from "../sdk.js";
import { avgPool, range, topPositions, union } from "../select.js";

export interface SnapState {
  /** Prompt length (the first step's token count). */
  prompt: number;
  /** votes[layer][g][pos]: pooled attention of the observation window, prompt positions. */
  votes: Float64Array[][];
}

type SnapOptions = { window: number; kernel: number };

export function snapValidate(name: string, o: SnapOptions): void {
  const c = optionChecks(name, o);
  c.number("window", 1, 1 << 20, true);
  c.number("kernel", 1, 1023, true);
  if (o.kernel % 2 !== 1) c.bad(`kernel must be odd, got ${o.kernel}`);
}

function snapInit(seq: { config: { numLayers: number } }): SnapState {
  return { prompt: 0, votes: Array.from({ length: seq.config.numLayers }, () => []) };
}

/** The first prompt row of the observation window (its queries vote). */
function windowFrom(ctx: PolicyContext<SnapState, SnapOptions>): number {
  return Math.max(0, ctx.step.T - ctx.options.window);
}

function snapWants(ctx: PolicyContext<SnapState, SnapOptions>) {
  // Only the prompt is voted on: the last `window` prompt queries, in the prefill step.
  return ctx.step.start === 0 ? { scores: true as const, fromRow: windowFrom(ctx) } : false;
}

function snapObserve(
  ctx: PolicyContext<SnapState, SnapOptions>,
  obs: import("@smallkv/runner").AttentionObservation,
): void {
  const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
  const group = Hq / Hkv;
  const P = obs.T;
  ctx.state.prompt = P;
  const votes: Float64Array[] = [];
  for (let g = 0; g < Hkv; g++) {
    const v = new Float64Array(P);
    for (let h = g * group; h < (g + 1) * group; h++)
      for (let j = 0; j < P; j++) v[j] += obs.scores![h * obs.Lmax + j];
    votes.push(avgPool(v, P, ctx.options.kernel));
  }
  ctx.state.votes[obs.layer] = votes;
}

/** The prompt seen, where its observation window starts, the old budget and what is always kept (window + generated). */
function snapSpan(ctx: PolicyContext<SnapState, SnapOptions>) {
  const P = Math.min(ctx.state.prompt, ctx.step.start);
  const winStart = Math.max(0, P - ctx.options.window);
  return { P, winStart, B: ctx.oldBudget, mandatory: ctx.step.start - winStart };
}

/**
 * Keep the observation window, every generated token, and the best-voted earlier prompt
 * tokens; when the budget no longer holds all of them, the prompt picks go first, then
 * the oldest generated tokens.
 */
export function snapSelect(ctx: PolicyContext<SnapState, SnapOptions>) {
  const { start } = ctx.step;
  const { P, winStart, B, mandatory } = snapSpan(ctx);
  const full: Int32Array[] = [];
  for (let g = 0; g < ctx.config.numKvHeads; g++) {
    if (mandatory >= B) {
      full.push(range(start - B, start));
      continue;
    }
    const votes = ctx.state.votes[ctx.layer][g] ?? new Float64Array(P);
    full.push(union(topPositions(votes, winStart, B - mandatory), range(winStart, start)));
  }
  return { full };
}

/**
 * SnapKV's device form: the prompt's last `window` rows add their column sums to a device table
 * at the first step (the prompt length noted here), and each step ranks the table's pooled votes
 * below the observation window, keeping the window and every generated token.
 */
export const snapDevice = {
  accumulate(ctx: PolicyContext<SnapState, SnapOptions>) {
    if (ctx.step.start !== 0) return false as const;
    ctx.state.prompt = ctx.step.T;
    return { fromRow: windowFrom(ctx) };
  },
  plan(ctx: PolicyContext<SnapState, SnapOptions>): DeviceRankPlan {
    const { B, mandatory } = snapSpan(ctx);
    const k = new Int32Array(ctx.config.numKvHeads).fill(mandatory >= B ? 0 : B - mandatory);
    return {
      recent: Math.min(mandatory, B),
      rule: { kind: "fixed", k, exact: k },
      scores: { kind: "accumulated" },
      pool: { radius: Math.floor(ctx.options.kernel / 2), limit: ctx.state.prompt },
    };
  },
};

/** SnapKV (Li et al. 2024): the last prompt queries vote (pooled), prefill-time selection per kv head. */
export const snapKv = definePolicy<SnapState, SnapOptions>({
  name: "snapkv",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["votes"],
  description: "observation-window votes with 1-D pooling at prefill; window and generated tokens kept",
  options: { window: 32, kernel: 5 },
  validate: (o) => snapValidate("snapkv", o),
  init: snapInit,
  wantsAttention: snapWants,
  observe: snapObserve,
  select: snapSelect,
  device: snapDevice,
});

/** PyramidKV (Cai et al. 2024): SnapKV scoring with per-layer budgets decreasing linearly with depth. */
export const pyramidKv = definePolicy<SnapState, SnapOptions & { beta: number }>({
  name: "pyramidkv",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: ["votes"],
  description: "SnapKV votes; layer budgets decreasing linearly from the bottom layer to the top (beta)",
  options: { window: 32, kernel: 5, beta: 20 },
  validate(o) {
    snapValidate("pyramidkv", o);
    optionChecks("pyramidkv", o).number("beta", 1, 1e6);
  },
  init: snapInit,
  layerShare(layer, L, o) {
    if (L === 1) return 1;
    const min = 1 / o.beta;
    const max = 2 - min;
    return max - ((max - min) * layer) / (L - 1);
  },
  wantsAttention: snapWants,
  observe: snapObserve,
  select: snapSelect,
  device: snapDevice,
});
