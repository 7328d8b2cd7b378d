// The conformance kit: the checks every KV policy must pass, runnable from any test runner.
//   const report = await runConformance(myPolicy);
//   expect(report.failures).toEqual([]);
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AssistedModel,
  assetsDir,
  type GenerationResult,
  Generator,
  type KvPolicyHook,
  type LayerSelection,
  Model,
  type Sequence,
  type StepInfo,
  type StepModel,
  writeSyntheticCheckpoint,
} from "@smallkv/runner";
import type { OptionValue, PolicyFactory, PolicyInstance } from "../sdk.js";

export interface ConformanceOptions {
  /** The model to run on; default: a small synthetic Llama with GQA 4 and a 96-token context. */
  model?: StepModel;
  /** Budgets to check (default 10%, 30%, 60% and 6 tokens). */
  budgets?: (string | number)[];
  /** Policy options. */
  options?: Record<string, OptionValue>;
  /** Wraps the created instance (SmallKV uses it to attach its assistant model). */
  prepare?: (instance: PolicyInstance) => KvPolicyHook;
  /** New tokens per generation (default 24). */
  maxTokens?: number;
}

export interface ConformanceCheck {
  name: string;
  passed: boolean;
  detail?: string;
}

export interface ConformanceReport {
  policy: string;
  checks: ConformanceCheck[];
  failures: string[];
  passed: boolean;
}

let syntheticModel: Promise<Model> | null = null;
let syntheticPair: Promise<AssistedModel> | null = null;

async function synthetic(
  name: string,
  o: { hiddenSize: number; numLayers: number; numHeads: number; numKvHeads: number; seed: number },
): Promise<Model> {
  const dir = mkdtempSync(join(tmpdir(), `smallkv-conformance-${name}-`));
  writeSyntheticCheckpoint(dir, {
    ...o,
    intermediateSize: o.hiddenSize * 2,
    vocabSize: 512,
    maxPositions: 96,
    scale: 0.25,
    tokenizerFrom: join(assetsDir(), "models", "stories260K"),
  });
  return Model.load(dir, { threads: 1 });
}

/** The kit's default model: small, GQA 4 (8 query heads on 2 kv heads), peaky attention, 96 positions. */
export function conformanceModel(): Promise<Model> {
  syntheticModel ??= synthetic("llm", { hiddenSize: 64, numLayers: 3, numHeads: 8, numKvHeads: 2, seed: 7 });
  return syntheticModel;
}

/** The default model with a smaller assistant of the same tokenizer (for policies that need one). */
export function conformancePair(): Promise<AssistedModel> {
  syntheticPair ??= (async () =>
    new AssistedModel(
      await conformanceModel(),
      await synthetic("slm", { hiddenSize: 32, numLayers: 2, numHeads: 4, numKvHeads: 2, seed: 8 }),
    ))();
  return syntheticPair;
}

interface Trace {
  /** Per step, per layer: the selection (or null), serialised. */
  steps: string[];
  violations: string[];
}

/** Wraps a hook to record its selections and check the budget accounting at every layer and step. */
function instrument(hook: KvPolicyHook, instance: PolicyInstance, trace: Trace): KvPolicyHook {
  const costs = new Map<Sequence, { n: number; total: number; allowed: number; layers: number }>();
  return {
    ...hook,
    name: hook.name,
    select(seq: Sequence, layer: number, step: StepInfo): LayerSelection | null {
      const sel = hook.select ? hook.select(seq, layer, step) : null;
      const c = seq.config;
      const n = step.start + step.T;
      trace.steps.push(
        `${seq.id}:${step.start}:${layer}:${sel ? JSON.stringify([sel.full.map((x) => Array.from(x)), sel.vOnly?.map((x) => Array.from(x)), sel.combine]) : "all"}`,
      );
      if (sel) {
        for (const [what, lists] of [
          ["full", sel.full],
          ["vOnly", sel.vOnly ?? []],
        ] as const) {
          for (let g = 0; g < lists.length; g++) {
            for (const p of lists[g]) {
              if (p >= step.start)
                trace.violations.push(
                  `causal: layer ${layer} ${what} head ${g} selects position ${p} >= step start ${step.start}`,
                );
              if (p < 0 || !Number.isInteger(p))
                trace.violations.push(`valid indices: layer ${layer} ${what} head ${g} selects ${p}`);
            }
            if (new Set(lists[g]).size !== lists[g].length)
              trace.violations.push(`no duplicates: layer ${layer} ${what} head ${g}`);
          }
        }
      }
      // Budget: the cost summed over layers and kv heads at a step must fit the summed budget.
      let cost = 0;
      for (let g = 0; g < c.numKvHeads; g++)
        cost += sel ? sel.full[g].length + step.T + 0.5 * (sel.vOnly?.[g]?.length ?? 0) : n;
      const allowed =
        instance.budget.coversAll(n) || step.start === 0 || n <= instance.warmupTokens
          ? c.numKvHeads * n
          : c.numKvHeads * Math.max(instance.layerBudget(layer, n, c.numLayers), step.T);
      let acc = costs.get(seq);
      if (!acc || acc.n !== n) acc = { n, total: 0, allowed: 0, layers: 0 };
      acc.total += cost;
      acc.allowed += allowed;
      acc.layers++;
      costs.set(seq, acc);
      if (acc.layers === c.numLayers && acc.total > acc.allowed + 1e-9) {
        trace.violations.push(
          `budget: at length ${n} the hot cost is ${acc.total} token-heads, the budget ${instance.budget} allows ${acc.allowed}`,
        );
      }
      return sel;
    },
  };
}

async function generate(
  model: StepModel,
  factory: PolicyFactory,
  budget: string | number,
  o: ConformanceOptions,
  prompts: number[][],
  maxTokens: number,
  trace: Trace,
): Promise<GenerationResult[]> {
  const g = new Generator(model);
  return Promise.all(
    prompts.map((p) => {
      const instance = factory.create({ budget, options: o.options });
      const hook = o.prepare ? o.prepare(instance) : instance;
      return g.generate(p, {
        temperature: 0,
        maxTokens,
        stopTokens: [],
        policy: instrument(hook, instance, trace),
      });
    }),
  );
}

function prompt(n: number, seed: number, vocab: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return 3 + (s % (vocab - 3));
  });
}

/** Run every check on a policy; never throws for a policy failure (it is reported). */
export async function runConformance(
  factory: PolicyFactory,
  o: ConformanceOptions = {},
): Promise<ConformanceReport> {
  const model = o.model ?? (await conformanceModel());
  const V = Math.min(model.config.vocabSize, 512);
  const max = model.config.maxPositions;
  const maxTokens = o.maxTokens ?? 24;
  const budgets = o.budgets ?? [0.1, 0.3, 0.6, 6];
  const checks: ConformanceCheck[] = [];
  const check = async (name: string, fn: () => Promise<string | null>) => {
    try {
      const detail = await fn();
      checks.push({ name, passed: detail === null, detail: detail ?? undefined });
    } catch (e) {
      checks.push({ name, passed: false, detail: `threw: ${(e as Error).stack ?? e}` });
    }
  };
  const errors = (rs: GenerationResult[]) => rs.filter((r) => r.error).map((r) => r.error!.message);
  const prompts = [prompt(40, 1, V), prompt(17, 2, V), prompt(63, 3, V)];

  for (const b of budgets) {
    await check(`budget ${b}: within budget, valid and causal indices, GQA, batch of 3`, async () => {
      const trace: Trace = { steps: [], violations: [] };
      const rs = await generate(model, factory, b, o, prompts, maxTokens, trace);
      const errs = errors(rs);
      if (errs.length) return errs[0];
      if (trace.violations.length) return trace.violations.slice(0, 3).join("; ");
      return rs.every((r) => r.tokens.length === maxTokens) ? null : "a sequence stopped early";
    });
    await check(`budget ${b}: deterministic, and a batch equals each sequence alone`, async () => {
      const t1: Trace = { steps: [], violations: [] };
      const t2: Trace = { steps: [], violations: [] };
      const a = await generate(model, factory, b, o, prompts, maxTokens, t1);
      const again = await generate(model, factory, b, o, prompts, maxTokens, t2);
      for (let i = 0; i < prompts.length; i++) {
        if (JSON.stringify(a[i].tokens) !== JSON.stringify(again[i].tokens))
          return `sequence ${i}: two runs differ`;
      }
      const strip = (s: string[]) => s.map((x) => x.slice(x.indexOf(":"))).sort();
      if (JSON.stringify(strip(t1.steps)) !== JSON.stringify(strip(t2.steps)))
        return "two runs made different selections";
      for (let i = 0; i < prompts.length; i++) {
        const alone = await generate(model, factory, b, o, [prompts[i]], maxTokens, {
          steps: [],
          violations: [],
        });
        if (JSON.stringify(alone[0].tokens) !== JSON.stringify(a[i].tokens))
          return `sequence ${i}: batched output differs from running alone`;
      }
      return null;
    });
  }

  await check("context from 1 token to the model maximum", async () => {
    const trace: Trace = { steps: [], violations: [] };
    const short = await generate(model, factory, budgets[0], o, [prompt(1, 9, V)], max - 1, trace);
    const long = await generate(model, factory, budgets[0], o, [prompt(max - 2, 10, V)], 5, trace);
    const errs = [...errors(short), ...errors(long)];
    if (errs.length) return errs[0];
    if (trace.violations.length) return trace.violations[0];
    if (short[0].tokens.length !== max - 1)
      return `from 1 token: generated ${short[0].tokens.length} of ${max - 1}`;
    if (long[0].tokens.length !== 2)
      return `from ${max - 2} tokens: expected 2 tokens up to the context end, got ${long[0].tokens.length}`;
    return null;
  });

  await check("budgets larger than the context reproduce the full cache", async () => {
    const none = { steps: [], violations: [] };
    const g = new Generator(model);
    const fullRuns = await Promise.all(
      prompts.map((p) => g.generate(p, { temperature: 0, maxTokens, stopTokens: [] })),
    );
    for (const b of [1, 10_000]) {
      const rs = await generate(model, factory, b, o, prompts, maxTokens, none);
      const errs = errors(rs);
      if (errs.length) return errs[0];
      for (let i = 0; i < prompts.length; i++) {
        if (JSON.stringify(rs[i].tokens) !== JSON.stringify(fullRuns[i].tokens))
          return `budget ${b}: sequence ${i} differs from the full cache`;
      }
    }
    return null;
  });

  const failures = checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.detail}`);
  return { policy: factory.name, checks, failures, passed: failures.length === 0 };
}
