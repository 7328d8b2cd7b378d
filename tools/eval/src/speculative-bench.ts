import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createPolicy } from "@smallkv/policies";
import {
  AssistedModel,
  assetsDir,
  type GenerationResult,
  Generator,
  Model,
  predictedSpeedup,
  type SpeculativeOptions,
} from "@smallkv/runner";
import { makeWindows } from "./documents.js";
import { parseSpec } from "./eval.js";
import { median } from "./table.js";

/** One configuration's measurement: a batch of requests decoded with or without speculation. */
export interface SpeculativeRow {
  assistant: string;
  policy: string;
  batch: number;
  /** "none", "k=2", "k=4", "adaptive". */
  mode: string;
  tokensPerSecond: number;
  /** Against the same policy, batch and assistant without speculation (same run). */
  speedup: number;
  acceptanceRate: number;
  meanAccepted: number;
  /** Assistant step time / LLM decode step (the plain run's, assistant included where the policy runs it). */
  c: number;
  /** (1 − α^(k+1)) / ((1 − α)(k c + 1)); adaptive: the best k ≤ 4 at the α of k = 4. */
  predicted: number | null;
  /**
   * The same with each verified row paying the policy's per-row work: p = the policy's share
   * of a plain step, a verify step costs 1 + k p steps.
   */
  predictedWithPolicy: number | null;
  /** The policy's share of a plain decode step (selection, hot set, observation). */
  p: number;
  /** Mean k per round (adaptive picks its own). */
  meanK: number;
}

export interface SpeculativeBenchOptions {
  assistants: string[];
  policies: string[];
  batches: number[];
  modes: string[];
  tokens: number;
  promptTokens: number;
  repeats: number;
  threads?: number;
  onRow?: (r: SpeculativeRow) => void;
}

/** A row's policy from its spec, `name[:k=v,...][@budget]` (budget 1 when absent). */
function policyOf(spec: string) {
  const at = spec.lastIndexOf("@");
  const { name, options } = parseSpec(at >= 0 ? spec.slice(0, at) : spec);
  return createPolicy(name, at >= 0 ? spec.slice(at + 1) : 1, options);
}

/** Decode a batch; tokens per second over the decode phase (after every first token). */
async function decode(
  model: AssistedModel,
  prompts: number[][],
  policy: string,
  tokens: number,
  speculative: SpeculativeOptions | undefined,
): Promise<{ tps: number; results: GenerationResult[] }> {
  const g = new Generator(model);
  const t0 = performance.now();
  const results = await Promise.all(
    await Promise.all(
      prompts.map(async (p) =>
        g.generate(p, {
          temperature: 0,
          maxTokens: tokens,
          stopTokens: [],
          policy: await policyOf(policy),
          speculative,
        }),
      ),
    ),
  );
  const wall = (performance.now() - t0) / 1000;
  for (const r of results) if (r.error) throw r.error;
  const first = Math.max(...results.map((r) => r.timeToFirstToken));
  const n = results.reduce((a, r) => a + r.tokens.length - 1, 0);
  return { tps: n / (wall - first), results };
}

/**
 * Speculative decoding on stories260K with each assistant: tokens/s with and without it,
 * the acceptance rate, the measured cost ratio c and the speedup the standard analysis
 * predicts from α, k and c. Greedy, prompts from the evaluation text.
 */
export async function benchSpeculative(o: SpeculativeBenchOptions): Promise<SpeculativeRow[]> {
  const models = join(assetsDir(), "models");
  const llm = await Model.load(join(models, "stories260K"), { threads: o.threads });
  const text = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8");
  const windows = makeWindows(text, llm.tokenizer, {
    length: o.promptTokens,
    documents: 64,
    perDocument: 1,
    seed: 3,
    maxPositions: llm.config.maxPositions,
  });
  const rows: SpeculativeRow[] = [];
  for (const name of o.assistants) {
    const slm = await Model.load(join(models, name), { threads: o.threads });
    const pair = new AssistedModel(llm, slm);
    for (const policy of o.policies) {
      for (const batch of o.batches) {
        const prompts = windows.slice(0, batch).map((w) => w.ids);
        await decode(pair, prompts, policy, 8, { k: 2 }); // warm-up
        const best = new Map<string, { tps: number; results: GenerationResult[]; draftStep: number }>();
        // Per repeat, each mode's rate against plain decoding measured beside it.
        const ratios = new Map<string, number[]>();
        let policyShare = 0;
        // Interleaved repeats (order rotating), best kept per mode.
        for (let r = 0; r < o.repeats; r++) {
          const rate = new Map<string, number>();
          // The order rotates per repeat: a run after a speculative one inherits its garbage
          // (collected during the next run), so no mode may always come right after another.
          const order = o.modes.map((_, i) => o.modes[(i + r) % o.modes.length]);
          for (const mode of order) {
            const spec: SpeculativeOptions | undefined =
              mode === "none"
                ? undefined
                : mode === "adaptive"
                  ? { k: 4, adaptive: true }
                  : { k: Number(mode.slice(2)) };
            const s0 = { t: slm.timing.forward, n: slm.timing.steps };
            const l0 = { ...llm.timing };
            const m = await decode(pair, prompts, policy, o.tokens, spec);
            if (mode === "none") {
              // The policy's share of the LLM's steps (prefill included: a slight underestimate).
              const f = llm.timing.forward - l0.forward;
              policyShare = Math.max(policyShare, f > 0 ? (llm.timing.policy - l0.policy) / f : 0);
            }
            rate.set(mode, m.tps);
            const draftStep = (slm.timing.forward - s0.t) / Math.max(1, slm.timing.steps - s0.n);
            const prev = best.get(mode);
            if (!prev || m.tps > prev.tps) best.set(mode, { ...m, draftStep });
          }
          for (const mode of o.modes) {
            const list = ratios.get(mode) ?? [];
            list.push(rate.get(mode)! / rate.get("none")!);
            ratios.set(mode, list);
          }
        }
        const plain = best.get("none")!;
        // The plain decode step: batch tokens per step over the decode rate.
        const step = batch / plain.tps;
        // One-token draft steps: a fixed-k run's (adaptive ones include catch-up prefills).
        const fixed = o.modes.filter((m) => m.startsWith("k=")).map((m) => best.get(m)!.draftStep);
        const draft = fixed.length ? Math.min(...fixed) : 0;
        const c = draft / step;
        const alphaOf = (rs: GenerationResult[]) => {
          const d = rs.reduce((a, r) => a + (r.speculative?.drafted ?? 0), 0);
          return d ? rs.reduce((a, r) => a + (r.speculative?.accepted ?? 0), 0) / d : 0;
        };
        const alpha4 = best.has("k=4") ? alphaOf(best.get("k=4")!.results) : 0;
        for (const mode of o.modes) {
          const m = best.get(mode)!;
          const alpha = alphaOf(m.results);
          const rounds = m.results.reduce((a, r) => a + (r.speculative?.rounds ?? 0), 0);
          const drafted = m.results.reduce((a, r) => a + (r.speculative?.drafted ?? 0), 0);
          const accepted = m.results.reduce((a, r) => a + (r.speculative?.accepted ?? 0), 0);
          let predicted: number | null = null;
          let predictedWithPolicy: number | null = null;
          const p = policyShare;
          const withPolicy = (a: number, k: number) =>
            (predictedSpeedup(a, k, c) * (k * c + 1)) / (k * c + 1 + k * p);
          if (mode.startsWith("k=")) {
            predicted = predictedSpeedup(alpha, Number(mode.slice(2)), c);
            predictedWithPolicy = withPolicy(alpha, Number(mode.slice(2)));
          } else if (mode === "adaptive") {
            predicted = Math.max(1, ...[1, 2, 3, 4].map((k) => predictedSpeedup(alpha4, k, c)));
            predictedWithPolicy = Math.max(1, ...[1, 2, 3, 4].map((k) => withPolicy(alpha4, k)));
          }
          const row: SpeculativeRow = {
            assistant: name,
            policy,
            batch,
            mode,
            tokensPerSecond: m.tps,
            speedup: median(ratios.get(mode)!),
            acceptanceRate: alpha,
            meanAccepted: rounds ? accepted / rounds : 0,
            c,
            predicted,
            predictedWithPolicy,
            p,
            meanK: rounds ? drafted / rounds : 0,
          };
          rows.push(row);
          o.onRow?.(row);
        }
      }
    }
  }
  return rows;
}

/** Column headers of the speculative bench table (CLI and results page). */
export const SPECULATIVE_HEADERS = [
  "assistant",
  "policy",
  "batch",
  "mode",
  "tok/s",
  "speedup",
  "predicted",
  "with policy",
  "α",
  "accepted / round",
  "mean k",
  "c",
  "p",
];

/** One row's cells under SPECULATIVE_HEADERS ("-" where a figure does not apply). */
export function speculativeCells(r: SpeculativeRow): (string | number)[] {
  const spec = r.mode !== "none";
  const or = (x: number | null, keep = true) => (x === null || !keep ? "-" : x);
  return [
    r.assistant,
    r.policy,
    r.batch,
    r.mode,
    r.tokensPerSecond,
    r.speedup,
    or(r.predicted),
    or(r.predictedWithPolicy),
    or(r.acceptanceRate, spec),
    or(r.meanAccepted, spec),
    or(r.meanK, spec),
    r.c,
    r.p,
  ];
}
