import { mkdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { matchModels } from "@smallkv/matching";
import { type OptionValue, type PolicyFactory, parsePolicyOptions, resolvePolicy } from "@smallkv/policies";
import {
  AssistedModel,
  argmax,
  logSoftmax,
  Model,
  resolveModelDir,
  type Sequence,
  type StepModel,
} from "@smallkv/runner";
import cliProgress from "cli-progress";
import { makeWindows, type Window } from "./documents.js";
import { heatmapSpec, lineSpec, renderPlot } from "./plots.js";
import { markdownTable, table, writeJson } from "./table.js";

export const DEFAULT_POLICIES = [
  "streamingllm",
  "h2o",
  "snapkv",
  "pyramidkv",
  "pyramidinfer",
  "tova",
  "pod",
  "smallkv",
];
export const DEFAULT_BUDGETS = [0.05, 0.1, 0.2, 0.4, 1];

export interface EvalOptions {
  model: string;
  /** Assistant checkpoints; SmallKV entries run once per assistant. */
  assistants?: string[];
  /** Text file (or `text`). */
  textFile?: string;
  text?: string;
  /** Policy specs: "name" or "name:k=v,k=v" (a name may be a module path). */
  policies?: string[];
  budgets?: number[];
  prefix?: number;
  continuation?: number;
  /** Greedy tokens generated from the prefix for the agreement metrics. */
  greedy?: number;
  documents?: number;
  windowsPerDocument?: number;
  seed?: number;
  threads?: number;
  out?: string;
  plot?: boolean;
  progress?: boolean;
  /** Already loaded models (tests, library users). */
  loaded?: { model: Model; assistants?: Model[] };
  /** Extra policy factories by name (tests, library users). */
  factories?: Record<string, PolicyFactory>;
}

export interface Metrics {
  /** Perplexity of the true continuation, and its ratio to Full's. */
  perplexity: number;
  pplRatio: number;
  /** Mean KL(Full || policy) of next-token distributions (nats). */
  kl: number;
  /** Share of positions whose argmax equals Full's. */
  top1: number;
  /** Greedy generation from the prefix: tokens until the first divergence from Full (mean), and the share of matching positions. */
  greedyPrefix: number;
  greedyMatch: number;
  /** Mean hot / cold KV bytes per decode step, and their ratio. */
  hotBytes: number;
  coldBytes: number;
  hotFraction: number;
}

export interface EvalRow extends Metrics {
  label: string;
  policy: string;
  assistant: string | null;
  options: Record<string, OptionValue>;
  budget: number;
}

interface Entry {
  label: string;
  factory: PolicyFactory;
  options: Record<string, OptionValue>;
  assistant: Model | null;
}

/** "name:k=v,k=v" -> name and options. */
export function parseSpec(spec: string): { name: string; options: Record<string, OptionValue> } {
  const i = spec.indexOf(":", spec.startsWith(".") || spec.startsWith("/") ? spec.lastIndexOf("/") : 0);
  if (i < 0) return { name: spec, options: {} };
  const name = spec.slice(0, i);
  return {
    name,
    options: parsePolicyOptions(
      spec
        .slice(i + 1)
        .split(",")
        .filter(Boolean),
      name,
    ),
  };
}

interface RunOutput {
  /** Per window: log-softmax rows predicting each continuation token. */
  logp: Float64Array[][];
  greedy: number[][];
  hot: number;
  cold: number;
  steps: number;
}

/** Teacher-forced continuation and greedy generation for all windows as one batch. */
async function run(
  model: StepModel,
  windows: Window[],
  prefix: number,
  cont: number,
  greedy: number,
  makePolicy: () => import("@smallkv/runner").KvPolicyHook | undefined,
  tick: () => void,
): Promise<RunOutput> {
  const V = model.config.vocabSize;
  let hot = 0;
  let cold = 0;
  let steps = 0;
  const account = (seqs: Sequence[]) => {
    for (const s of seqs) {
      const st = s.stats();
      hot += st.hotBytes;
      cold += st.coldBytes;
      steps++;
    }
  };
  // Teacher forcing.
  const seqs = windows.map(() => model.newSequence(makePolicy()));
  const logp: Float64Array[][] = windows.map(() => []);
  let out = await model.forward(seqs.map((seq, i) => ({ seq, tokens: windows[i].ids.slice(0, prefix) })));
  tick();
  for (let t = 0; t < cont; t++) {
    out.forEach((l, i) => logp[i].push(logSoftmax(l)));
    if (t === cont - 1) break;
    out = await model.forward(seqs.map((seq, i) => ({ seq, tokens: [windows[i].ids[prefix + t]] })));
    account(seqs);
    tick();
  }
  const fault = seqs.find((s) => s.fault)?.fault;
  for (const s of seqs) s.release();
  if (fault) throw fault;
  // Greedy generation.
  const gseqs = windows.map(() => model.newSequence(makePolicy()));
  const gen: number[][] = windows.map(() => []);
  out = await model.forward(gseqs.map((seq, i) => ({ seq, tokens: windows[i].ids.slice(0, prefix) })));
  for (let t = 0; t < greedy; t++) {
    out.forEach((l, i) => gen[i].push(argmax(l)));
    tick();
    if (t === greedy - 1) break;
    out = await model.forward(gseqs.map((seq, i) => ({ seq, tokens: [gen[i][t]] })));
    account(gseqs);
  }
  for (const s of gseqs) s.release();
  void V;
  return { logp, greedy: gen, hot: steps ? hot / steps : 0, cold: steps ? cold / steps : 0, steps };
}

function metrics(
  ref: RunOutput,
  r: RunOutput,
  windows: Window[],
  prefix: number,
  refPpl: number | null,
): Metrics {
  let nll = 0;
  let kl = 0;
  let top1 = 0;
  let n = 0;
  windows.forEach((w, i) => {
    r.logp[i].forEach((lp, t) => {
      const lf = ref.logp[i][t];
      nll -= lp[w.ids[prefix + t]];
      let k = 0;
      for (let v = 0; v < lp.length; v++) k += Math.exp(lf[v]) * (lf[v] - lp[v]);
      kl += Math.max(0, k);
      if (argmax(lp) === argmax(lf)) top1++;
      n++;
    });
  });
  let prefixLen = 0;
  let match = 0;
  let total = 0;
  windows.forEach((_, i) => {
    const a = ref.greedy[i];
    const b = r.greedy[i];
    let j = 0;
    while (j < a.length && a[j] === b[j]) j++;
    prefixLen += j;
    for (let t = 0; t < a.length; t++) if (a[t] === b[t]) match++;
    total += a.length;
  });
  const ppl = Math.exp(nll / n);
  return {
    perplexity: ppl,
    pplRatio: refPpl ? ppl / refPpl : 1,
    kl: kl / n,
    top1: top1 / n,
    greedyPrefix: prefixLen / windows.length,
    greedyMatch: match / total,
    hotBytes: r.hot,
    coldBytes: r.cold,
    hotFraction: r.cold ? r.hot / r.cold : 1,
  };
}

export interface EvalResult {
  rows: EvalRow[];
  full: Metrics;
  windows: number;
  json?: string;
  plots: string[];
  matchings: { assistant: string; jaccard: number[][]; mean: number }[];
}

/** Quality of every policy and budget against the Full run of the same invocation. */
export async function runEval(o: EvalOptions): Promise<EvalResult> {
  const prefix = o.prefix ?? 192;
  const cont = o.continuation ?? 64;
  const greedy = o.greedy ?? 32;
  const budgets = o.budgets ?? DEFAULT_BUDGETS;
  const model = o.loaded?.model ?? (await Model.load(resolveModelDir(o.model), { threads: o.threads }));
  const assistants =
    o.loaded?.assistants ??
    (await Promise.all(
      (o.assistants ?? []).map((a) => Model.load(resolveModelDir(a), { threads: o.threads })),
    ));
  const pairs = new Map(assistants.map((a) => [a, new AssistedModel(model, a)]));
  const text = o.text ?? readFileSync(o.textFile!, "utf8");
  const windows = makeWindows(text, model.tokenizer, {
    length: prefix + cont,
    documents: o.documents ?? 32,
    perDocument: o.windowsPerDocument ?? 1,
    seed: o.seed ?? 0,
    maxPositions: model.config.maxPositions,
  });
  if (windows.length === 0)
    throw new Error(`no document has ${prefix + cont} tokens: lower --prefix/--continuation`);

  const entries: Entry[] = [];
  for (const spec of o.policies ?? DEFAULT_POLICIES) {
    const { name, options } = parseSpec(spec);
    const factory = o.factories?.[name] ?? (await resolvePolicy(name));
    // Policies that read an assistant run once per assistant.
    if (factory.create({ budget: 1, options }).usesAssistant) {
      if (assistants.length === 0) throw new Error(`policy ${spec} needs --assistant`);
      for (const a of assistants)
        entries.push({
          label: assistants.length > 1 ? `${spec}[${a.name}]` : spec,
          factory,
          options,
          assistant: a,
        });
    } else entries.push({ label: spec, factory, options, assistant: null });
  }

  const totalTicks = (1 + entries.length * budgets.length) * (cont + greedy);
  const bar =
    o.progress === false
      ? null
      : new cliProgress.SingleBar(
          {
            format: "eval [{bar}] {percentage}% | ETA {eta_formatted} | {label}",
            noTTYOutput: true,
            notTTYSchedule: 5000,
            stream: process.stderr,
          },
          cliProgress.Presets.shades_classic,
        );
  bar?.start(totalTicks, 0, { label: "full" });
  const tick = () => bar?.increment();

  const ref = await run(model, windows, prefix, cont, greedy, () => undefined, tick);
  const fullMetrics = metrics(ref, ref, windows, prefix, null);
  const rows: EvalRow[] = [];
  for (const e of entries) {
    for (const b of budgets) {
      bar?.update({ label: `${e.label} @ ${b}` });
      const m = e.assistant ? pairs.get(e.assistant)! : model;
      const r = await run(
        m,
        windows,
        prefix,
        cont,
        greedy,
        () => e.factory.create({ budget: b, options: e.options }),
        tick,
      );
      rows.push({
        label: e.label,
        policy: e.factory.name,
        assistant: e.assistant?.name ?? null,
        options: e.options,
        budget: b,
        ...metrics(ref, r, windows, prefix, fullMetrics.perplexity),
      });
    }
  }
  bar?.stop();

  // Matched head similarity per assistant (on the first window's matching span) for the heatmap.
  const matchings: EvalResult["matchings"] = [];
  for (const a of assistants) {
    const ids = windows[0].ids.slice(0, Math.min(128, prefix));
    const mm = await matchModels(model, a, ids);
    const c = model.config;
    const jac = Array.from({ length: c.numLayers }, (_, l) =>
      Array.from({ length: c.numHeads }, (_, h) => mm.matches[l * c.numHeads + h].jaccard),
    );
    matchings.push({ assistant: a.name, jaccard: jac, mean: mm.report().jaccard.mean });
  }

  const result: EvalResult = { rows, full: fullMetrics, windows: windows.length, plots: [], matchings };
  if (o.out) {
    mkdirSync(o.out, { recursive: true });
    result.json = writeJson(o.out, "eval.json", {
      kind: "smallkv.eval",
      model: model.name,
      assistants: assistants.map((a) => a.name),
      text: o.textFile ? basename(o.textFile) : "(inline)",
      settings: {
        prefix,
        continuation: cont,
        greedy,
        budgets,
        documents: o.documents ?? 32,
        windowsPerDocument: o.windowsPerDocument ?? 1,
        seed: o.seed ?? 0,
        windows: windows.length,
      },
      full: fullMetrics,
      rows,
      matchings,
    });
    if (o.plot !== false) result.plots = await plotEval(result, o.out);
  }
  return result;
}

/** Draw the eval plots (SVG + PNG) from a result into `out`. */
export async function plotEval(r: EvalResult, out: string): Promise<string[]> {
  const values = r.rows.map((x) => ({ ...x, budgetPct: x.budget * 100 }));
  const files: string[] = [];
  const plots: [string, string, string, boolean][] = [
    ["eval-ppl-ratio", "pplRatio", "perplexity / Full's (lower is better)", true],
    ["eval-kl", "kl", "KL(Full || policy), nats (lower is better)", false],
    ["eval-top1", "top1", "top-1 agreement with Full (higher is better)", false],
    ["eval-greedy-match", "greedyMatch", "greedy token match with Full (higher is better)", false],
  ];
  for (const [file, y, title, logY] of plots) {
    const p = await renderPlot(
      lineSpec({
        title,
        values,
        x: "budgetPct",
        y,
        series: "label",
        xTitle: "KV budget (% of the sequence)",
        yTitle: y,
        logY,
      }),
      join(out, file),
    );
    files.push(p.svg, p.png);
  }
  if (r.matchings.length) {
    const hv = r.matchings.flatMap((m) =>
      m.jaccard.flatMap((row, layer) =>
        row.map((j, head) => ({ assistant: m.assistant, layer, head, jaccard: j })),
      ),
    );
    const p = await renderPlot(
      heatmapSpec({
        title: "matched SLM head similarity (Jaccard of top-20% tokens) per LLM head",
        values: hv,
        x: "head",
        y: "layer",
        value: "jaccard",
        facet: "assistant",
      }),
      join(out, "eval-matching-heatmap"),
    );
    files.push(p.svg, p.png);
  }
  return files;
}

/** The eval as a table: one row per policy, perplexity ratio (and KL) per budget. */
export function formatEval(r: EvalResult, metric: keyof Metrics = "pplRatio", markdown = false): string {
  const budgets = [...new Set(r.rows.map((x) => x.budget))];
  const labels = [...new Set(r.rows.map((x) => x.label))];
  const rows = labels.map(
    (l) =>
      [l, ...budgets.map((b) => r.rows.find((x) => x.label === l && x.budget === b)?.[metric] ?? null)] as (
        | string
        | number
        | null
      )[],
  );
  const headers = ["policy", ...budgets.map((b) => `${+(b * 100).toFixed(2)}%`)];
  return markdown ? markdownTable(headers, rows) : table(headers, rows);
}
