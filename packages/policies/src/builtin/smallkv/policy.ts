// SmallKV as a few named parts: the head matching, the coverage gate and the fallback
// (prepare), the ranking (ranking.ts), the split rule (rule.ts), and one native call per
// decode step that ranks and splits every list of every layer (select).
import {
  collectAttention,
  HeadMatching,
  identityOf,
  type MatchMetric,
  matchingWindow,
} from "@smallkv/matching";
import type { AssistantState, DeviceRankPlan, LayerSelection } from "@smallkv/runner";
import {
  type RankSplitArgs,
  RankSplitBuffers,
  type RankSplitResult,
  rankSplit,
  rankSplitMany,
} from "@smallkv/tensor";
import { PolicyOptionError } from "../../errors.js";
import { MeanAttention } from "../../scores.js";
import { definePolicy, type PolicyFactory } from "../../sdk.js";
import { Evictions } from "../../select.js";
import { copyState } from "../../state-copy.js";
import { PAPER_DEFAULTS, SMALLKV_DEFAULTS, type SmallKvOptions, validate } from "./options.js";
import { accumulatedScores, currentTerms, termPlanOf } from "./ranking.js";
import { layerRule } from "./rule.js";
import { hasRows, type ScoreMode } from "./scoring.js";
import type { SmallKvContext, SmallKvState } from "./state.js";

export type { SmallKvOptions } from "./options.js";

function assistantOf(ctx: SmallKvContext): AssistantState {
  const a = ctx.seq.assistant;
  if (!a)
    throw new PolicyOptionError(
      "smallkv",
      "needs an assistant model: run it through an AssistedModel (CLI: --assistant <dir>)",
    );
  return a;
}

const savedMatchings = new Map<string, HeadMatching>();

/** Per LLM (layer, head): whether the matched SLM head's measured coverage reaches `threshold`. */
function headsAbove(m: HeadMatching, threshold: number): boolean[][] {
  return Array.from({ length: m.llm.numLayers }, (_, l) =>
    Array.from({ length: m.llm.numHeads }, (_, h) => {
      if (threshold <= 0) return true;
      const c = m.coverageOf(l, h);
      return Number.isFinite(c) ? c >= threshold : true;
    }),
  );
}

function windowOf(o: SmallKvOptions, start: number): [number, number] | null {
  return matchingWindow(start, {
    minTokens: o.minContext,
    maxTokens: o.maxContext,
    size: o.window,
    from: o.windowFrom as "first" | "last",
  });
}

/** The matching of this sequence: a saved one, or made on its own tokens once they fill the window. */
async function matchingFor(ctx: SmallKvContext, a: AssistantState): Promise<HeadMatching | undefined> {
  const o = ctx.options;
  if (o.mapping) {
    let m = savedMatchings.get(o.mapping);
    if (!m) {
      m = HeadMatching.load(o.mapping, { llm: ctx.seq.model ?? undefined, slm: a.model });
      savedMatchings.set(o.mapping, m);
    }
    return m;
  }
  const win = windowOf(o, ctx.step.start);
  if (!win || !ctx.seq.model) return undefined;
  const ids = ctx.seq.tokens.slice(win[0], win[1]);
  const [la, sa] = [await collectAttention(ctx.seq.model, ids), await collectAttention(a.model, ids)];
  return HeadMatching.compute(
    la,
    sa,
    { llm: identityOf(ctx.seq.model), slm: identityOf(a.model), window: win },
    { metric: o.metric as MatchMetric, topkRatio: o.topk },
  );
}

/** Decode steps ranked layer by layer after a batch was left unfinished. */
const BATCH_BACKOFF = 16;

/** One layer's ranking, ready for the native call. */
interface LayerPlan {
  args: RankSplitArgs;
  recentOld: number;
  lists: number;
  perQuery: boolean;
}

function planLayer(ctx: SmallKvContext): LayerPlan {
  const st = ctx.state;
  const m = st.matching!;
  const a = assistantOf(ctx);
  const o = ctx.options;
  const { start, T } = ctx.step;
  const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
  const perQuery = o.gqa === "query";
  const lists = perQuery ? Hq : Hkv;
  const group = Hq / lists;
  // Per-query-head lists share their kv head's memory: each gets 1/(Hq/Hkv) of its old budget
  // (each list also holds the step's own rows, so those are paid Hq/Hkv times).
  const share = Hq / Hkv;
  const oldUnits = Math.max(0, perQuery ? (ctx.oldBudget - (share - 1) * T) / share : ctx.oldBudget);
  // Without the assistant's rows (a long step), V-only weights are unknown and current-row
  // scores fall back to the position-normalised accumulation.
  const rows = hasRows(a, T, start + T);
  const mode = o.scores as ScoreMode;
  const input =
    mode === "current" && rows
      ? currentTerms(ctx, a, m, lists, group, T)
      : accumulatedScores(ctx, a, m, lists, group, mode !== "sum");
  const vOnlyLists = marginalListsOf(ctx, lists, group);
  const { rule, recentOld } = layerRule(o, lists, start, T, oldUnits, o.marginal && rows, vOnlyLists);
  return {
    recentOld,
    lists,
    perQuery,
    // Fields written out, not spread: a spread followed by more fields is V8's slow path.
    args: {
      n: start,
      lists,
      sources: input.sources,
      terms: input.terms,
      weights: input.weights,
      own: input.own,
      recent: recentOld,
      // The no-saliency ablation evicts for good what it does not keep (the masks update in place).
      exclude: o.saliency ? undefined : st.evicted.masksFor(ctx.layer, start),
      evict: !o.saliency,
      rule,
    },
  };
}

function finishLayer(ctx: SmallKvContext, p: LayerPlan, r: RankSplitResult): LayerSelection {
  const { full, vOnly } = r;
  const { lists, recentOld } = p;
  ctx.state.lastRecent = recentOld;
  ctx.state.counts[ctx.layer] = {
    critical: (full.reduce((x, l) => x + l.length, 0) - recentOld * lists) / lists,
    recent: recentOld + ctx.step.T,
    marginal: vOnly.reduce((x, l) => x + l.length, 0) / lists,
  };
  return {
    full,
    vOnly: vOnly.some((l) => l.length > 0) ? vOnly : undefined,
    combine: ctx.options.mode as "mass" | "literal",
    perQueryHead: p.perQuery,
  };
}

/**
 * The device form's plan of one layer at a decode step: the same terms and rule as planLayer,
 * without the scores (the assistant's rows stay on the device). A multi-row step after the
 * matching (a second prompt chunk) reads every token: the device keeps one assistant row.
 * Lists with heads that fall back blend in the LLM's own mean attention, kept on the device.
 */
function devicePlan(ctx: SmallKvContext): DeviceRankPlan | null {
  const st = ctx.state;
  const m = st.matching;
  if (!m || ctx.step.T !== 1) return null;
  const o = ctx.options;
  const { numHeads: Hq, numKvHeads: Hkv } = ctx.config;
  const group = Hq / Hkv;
  // The host's terms of a one-row step (list, SLM layer, SLM head, row 0), as the runner takes them.
  const plan = termPlanOf(ctx, m, Hkv, group, 1);
  const terms = (st.deviceTerms[ctx.layer] ??= Array.from({ length: plan.spec.length / 4 }, (_, t) => ({
    list: plan.spec[4 * t],
    layer: plan.spec[4 * t + 1],
    head: plan.spec[4 * t + 2],
    weight: plan.weights[t],
  })));
  const vOnlyLists = marginalListsOf(ctx, Hkv, group);
  const { rule, recentOld } = layerRule(o, Hkv, ctx.step.start, 1, ctx.oldBudget, o.marginal, vOnlyLists);
  return {
    recent: recentOld,
    rule,
    scores: { kind: "assistant", terms, gate: st.gated![ctx.layer] },
    // A list whose heads do not all trust the assistant blends in the own view (while it is kept).
    blend: st.own ? plan.blend : undefined,
    combine: o.mode as "mass" | "literal",
  };
}

/** Per list of the layer: whether some query head of it passes the coverage gate (may hold V-only tokens). */
function marginalListsOf(ctx: SmallKvContext, lists: number, group: number): Uint8Array {
  const gated = ctx.state.gated![ctx.layer];
  return (ctx.state.marginalLists[ctx.layer] ??= Uint8Array.from({ length: lists }, (_, g) =>
    gated.slice(g * group, (g + 1) * group).some(Boolean) ? 1 : 0,
  ));
}

/**
 * SmallKV (Zhao, Peng et al. 2025, arXiv 2508.02751): an assistant SLM with a full cache
 * decides, every step and for every head, which tokens the LLM attends to exactly, which it
 * approximates with the SLM's current attention weights (marginal, V only), and which it
 * skips; dropped tokens come back from the cold store when they matter again.
 * `smallkv` ranks by the matched SLM heads' attention at the current step with an adaptive
 * split (what the evaluation found best); `smallkv-paper` keeps the paper's rules.
 */
function makeSmallKv(
  name: string,
  description: string,
  defaults: SmallKvOptions,
): PolicyFactory<SmallKvOptions> {
  return definePolicy<SmallKvState, SmallKvOptions>({
    name,
    // Each layer reads only its own past and the assistant's view at the row's position: a
    // verify step interleaves its rows inside each layer.
    verify: "layerwise",
    layerFields: ["evicted", "own", "counts"],
    description,
    options: defaults,
    usesAssistant: true,
    warmupTokens: (o) => o.minContext,
    fileOptions: ["mapping"],
    validate: (o) => validate(name, o),
    preload(_option, path, models) {
      if (!models.assistant)
        throw new PolicyOptionError(name, "a saved matching needs the assistant model it was made for");
      savedMatchings.set(path, HeadMatching.load(path, { llm: models.llm, slm: models.assistant }));
    },

    init(seq, o) {
      const c = seq.config;
      const lists = o.gqa === "query" ? c.numHeads : c.numKvHeads;
      return {
        matching: null,
        evicted: new Evictions(c.numLayers, lists),
        own: o.fallback ? new MeanAttention(c.numLayers, c.numKvHeads, c.numHeads / c.numKvHeads) : null,
        counts: Array.from({ length: c.numLayers }, () => ({ critical: 0, recent: 0, marginal: 0 })),
        layers: c.numLayers,
        lastRecent: 0,
        gated: null,
        trusted: null,
        plans: [],
        marginalLists: [],
        batch: null,
        batchAfter: 0,
        buffers: [],
        deviceTerms: [],
      };
    },
    // The matching and the gates are fixed once made: shared, not copied.
    copyState: (s) => ({
      ...s,
      evicted: copyState(s.evicted),
      own: s.own ? copyState(s.own) : null,
      counts: s.counts.map((c) => ({ ...c })),
      plans: [],
      marginalLists: [],
      batch: null,
      buffers: [],
      deviceTerms: [],
    }),
    // Nothing to prepare once matched, or while no step of these positions reaches the window.
    prepareIdle(ctx) {
      const o = ctx.options;
      if (ctx.state.matching) return true;
      if (o.mapping) return false;
      for (let p = ctx.step.start; p < ctx.step.start + ctx.step.T; p++) if (windowOf(o, p)) return false;
      return true;
    },
    async prepare(ctx) {
      if (ctx.state.matching) return;
      const m = await matchingFor(ctx, assistantOf(ctx));
      if (!m) return;
      const o = ctx.options;
      const st = ctx.state;
      st.matching = m;
      // The coverage gate (V-only tokens) and the fallback (heads the assistant predicts worse
      // than their own past attention rank by that instead).
      st.gated = headsAbove(m, o.gate);
      st.trusted = st.gated.map((row, l) => row.map((_, h) => !o.fallback || m.assistantHelps(l, h)));
      // Every head trusts its assistant: stop collecting the LLM's own view.
      if (st.trusted.every((row) => row.every(Boolean))) st.own = null;
    },
    wantsAttention: (ctx) => (ctx.state.own ? { scores: true } : false),
    observe: (ctx, obs) => ctx.state.own?.add(obs),
    describe: (s) => ({
      matched: s.matching !== null,
      // matching[layer][head] = [slmLayer, slmHead]
      matching: s.matching
        ? Array.from({ length: s.matching.llm.numLayers }, (_, l) =>
            Array.from({ length: s.matching!.llm.numHeads }, (_, h) => {
              const m = s.matching!.slmHeadOf(l, h);
              return [m.layer, m.head];
            }),
          )
        : null,
      recent: s.lastRecent,
      // LLM heads that rank by their own mean attention (their assistant predicted worse).
      fallbackHeads: s.trusted ? s.trusted.flat().filter((t) => !t).length : 0,
    }),
    // Per layer and kv head (or query head), averaged over layers.
    classCounts: (s) => {
      const sum = (k: "critical" | "recent" | "marginal") =>
        s.counts.reduce((a, c) => a + c[k], 0) / s.layers;
      return { critical: sum("critical"), recent: sum("recent"), marginal: sum("marginal") };
    },
    device: {
      // The default ranking (the matched heads' current rows) over kv-head lists; the paper's
      // accumulated sums, per-query-head lists and the eviction ablation stay on the host.
      available: (o) => o.scores === "current" && o.gqa === "kv" && o.saliency,
      // The LLM's own mean attention, while some head may fall back to it (as wantsAttention).
      accumulate: (ctx) => (ctx.state.own ? { fromRow: 0 } : false),
      hits: (o) => o.fallback,
      plan: devicePlan,
    },
    select(ctx): LayerSelection | null {
      const st = ctx.state;
      if (!st.matching) return null;
      const { start, T } = ctx.step;
      // A plain decode step: layer 0 ranked every layer at once (one native call, one team
      // of threads); the others take theirs, in order.
      const b = st.batch;
      if (b && b.start === start && b.next === ctx.layer && T === 1) return b.sels[b.next++];
      // A batch left unfinished means these steps interleave layers (a row-by-row verify):
      // rank layer by layer for a while.
      if (b && b.next < b.sels.length) st.batchAfter = start + BATCH_BACKOFF;
      st.batch = null;
      const L = ctx.config.numLayers;
      if (T === 1 && ctx.layer === 0 && L > 1 && start >= st.batchAfter) {
        const ctxs = Array.from({ length: L }, (_, l) => (l === 0 ? ctx : { ...ctx, layer: l }));
        const plans = ctxs.map(planLayer);
        while (st.buffers.length < L) st.buffers.push(new RankSplitBuffers());
        const res = rankSplitMany(
          plans.map((p) => p.args),
          st.buffers,
        );
        const sels = plans.map((p, l) => finishLayer(ctxs[l], p, res[l]));
        st.batch = { start, next: 1, sels };
        return sels[0];
      }
      const p = planLayer(ctx);
      return finishLayer(ctx, p, rankSplit(p.args));
    },
    vOnlyWeights(ctx, sel) {
      const st = ctx.state;
      const m = st.matching!;
      const a = assistantOf(ctx);
      const { numHeads: Hq } = ctx.config;
      const T = ctx.step.T;
      const lists = sel.vOnly!;
      const group = Hq / lists.length;
      const vmax = Math.max(...lists.map((l) => l.length));
      const w = new Float32Array(Hq * T * vmax);
      for (let h = 0; h < Hq; h++) {
        // A head whose match does not cover its attention ignores the V-only tokens (weight 0).
        if (!st.gated![ctx.layer][h]) continue;
        const sh = m.slmHeadOf(ctx.layer, h);
        const list = lists[Math.floor(h / group)];
        for (let t = 0; t < T; t++) {
          // The matched SLM head's softmax row at this step (it ran on the same token first).
          const row = a.row(sh.layer, sh.head, t);
          for (let i = 0; i < list.length; i++) w[(h * T + t) * vmax + i] = row[list[i]];
        }
      }
      return w;
    },
  });
}

/** SmallKV with the rules the evaluation found best (see docs/smallkv-rules.md). */
export const smallKv = makeSmallKv(
  "smallkv",
  "assistant-guided selection re-chosen every step: the matched SLM heads' current attention ranks tokens, exact / V-only / dropped by predicted mass",
  SMALLKV_DEFAULTS,
);

/** SmallKV exactly as the paper writes it: accumulated column sums, 2:1:2 split, Jaccard matching. */
export const smallKvPaper = makeSmallKv(
  "smallkv-paper",
  "SmallKV as the paper gives it: accumulated column sums, critical:recent:marginal 2:1:2, Jaccard matching",
  PAPER_DEFAULTS,
);
