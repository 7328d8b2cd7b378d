import { mkdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { matchModels } from "@smallkv/matching";
import { type OptionValue, type PolicyFactory, parsePolicyOptions, resolvePolicy } from "@smallkv/policies";
import {
  AssistedModel,
  argmax,
  type HotRowsMode,
  type KvStoreType,
  logSoftmax,
  Model,
  resolveModelDir,
  type Sequence,
  type StepModel,
  type WeightType,
} from "@smallkv/runner";
import cliProgress from "cli-progress";
import { type CoverageTotals, FullRows, probe } from "./coverage.js";
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
  "reversible",
  "quest",
  "omnikv",
  "speckv",
  "smallkv",
  "smallkv-paper",
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
  /** CPU weights of the LLM and of the assistants (default f32; see Model.load). */
  weights?: WeightType;
  /** How both models store K/V on the CPU (default f32; see Model.load). */
  kvCold?: KvStoreType;
  /** How the CPU hot set holds selected rows (default indexed). */
  hotRows?: HotRowsMode;
  assistantWeights?: WeightType;
  out?: string;
  plot?: boolean;
  progress?: boolean;
  /** Already loaded models (tests, library users). */
  loaded?: { model: Model; assistants?: Model[] };
  /** Extra policy factories by name (tests, library users). */
  factories?: Record<string, PolicyFactory>;
  /** Also run the plain policies at the total resident KV of SmallKV's default rows (default true). */
  isoMemory?: boolean;
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
  /**
   * Mean bytes kept resident per decode step besides the LLM's hot KV: the assistant's
   * full KV cache and the policy's metadata (e.g. Quest's pages); and all of it together
   * (hot + these) as a share of Full's KV.
   */
  assistantKvBytes: number;
  metadataBytes: number;
  residentFraction: number;
  /** Share of Full's current attention mass (per step, layer and query head) on the tokens read exactly. */
  coverage: number;
  /** Mean L1 distance between the policy's effective attention row (exact + V-only) and Full's. */
  attentionL1: number;
  /**
   * The long-range tokens: continuation tokens (of three or more letters) that occurred
   * earlier in the window but not in the 64 tokens before them. Perplexity (and its ratio
   * to Full's on the same tokens) and top-1 agreement with the true token on them.
   */
  longRangePerplexity: number;
  longRangePplRatio: number;
  longRangeTop1: number;
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
  assistantKv: number;
  metadata: number;
  steps: number;
  coverage: CoverageTotals;
}

/** How a run takes part in the attention comparison: Full records its rows, a policy is compared. */
type Probe = { record: FullRows } | { compare: FullRows };

/** Teacher-forced continuation and greedy generation for all windows as one batch. */
async function run(
  model: StepModel,
  windows: Window[],
  prefix: number,
  cont: number,
  greedy: number,
  makePolicy: () => import("@smallkv/runner").KvPolicyHook | undefined,
  tick: () => void,
  probeWith?: Probe,
): Promise<RunOutput> {
  let hot = 0;
  let cold = 0;
  let assistantKv = 0;
  let metadata = 0;
  let steps = 0;
  const coverage: CoverageTotals = { covered: 0, l1: 0, count: 0 };
  const account = (seqs: Sequence[]) => {
    for (const s of seqs) {
      const st = s.stats();
      hot += st.hotBytes;
      cold += st.coldBytes;
      assistantKv += s.assistant ? s.assistant.seq.stats().coldBytes : 0;
      metadata += s.policy.residentBytes?.(s) ?? 0;
      steps++;
    }
  };
  // Teacher forcing (where the attention comparison happens).
  const teacherPolicy = () => {
    if (probeWith && "record" in probeWith) return probeWith.record.recorder();
    const p = makePolicy();
    return p && probeWith && "compare" in probeWith ? probe(p, probeWith.compare, coverage) : p;
  };
  const seqs = windows.map(() => model.newSequence(teacherPolicy()));
  if (probeWith) {
    const rows = "record" in probeWith ? probeWith.record : probeWith.compare;
    seqs.forEach((s, i) => rows.windowOf.set(s, i));
  }
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
  const per = (x: number) => (steps ? x / steps : 0);
  return {
    logp,
    greedy: gen,
    hot: per(hot),
    cold: per(cold),
    assistantKv: per(assistantKv),
    metadata: per(metadata),
    steps,
    coverage,
  };
}

/** Per window, the continuation offsets t whose token needs context more than `gap` tokens back. */
export function longRangePositions(
  windows: Window[],
  prefix: number,
  cont: number,
  isWord: (id: number) => boolean,
  gap = 64,
): number[][] {
  return windows.map((w) => {
    const out: number[] = [];
    for (let t = 0; t < cont; t++) {
      const P = prefix + t;
      const id = w.ids[P];
      if (!isWord(id)) continue;
      let far = false;
      let near = false;
      for (let j = 0; j < P; j++) {
        if (w.ids[j] !== id) continue;
        if (j < P - gap) far = true;
        else near = true;
      }
      if (far && !near) out.push(t);
    }
    return out;
  });
}

function metrics(
  ref: RunOutput,
  r: RunOutput,
  windows: Window[],
  prefix: number,
  refPpl: number | null,
  longRange: number[][],
  refLongPpl: number | null,
): Metrics {
  let lrNll = 0;
  let lrTop1 = 0;
  let lrN = 0;
  longRange.forEach((ts, i) => {
    for (const t of ts) {
      const lp = r.logp[i][t];
      const id = windows[i].ids[prefix + t];
      lrNll -= lp[id];
      if (argmax(lp) === id) lrTop1++;
      lrN++;
    }
  });
  const lrPpl = lrN ? Math.exp(lrNll / lrN) : Number.NaN;
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
    assistantKvBytes: r.assistantKv,
    metadataBytes: r.metadata,
    residentFraction: r.cold ? (r.hot + r.assistantKv + r.metadata) / r.cold : 1,
    coverage: r.coverage.count ? r.coverage.covered / r.coverage.count : 1,
    attentionL1: r.coverage.count ? r.coverage.l1 / r.coverage.count : 0,
    longRangePerplexity: lrPpl,
    longRangePplRatio: refLongPpl ? lrPpl / refLongPpl : 1,
    longRangeTop1: lrN ? lrTop1 / lrN : Number.NaN,
  };
}

export interface EvalResult {
  rows: EvalRow[];
  full: Metrics;
  windows: number;
  json?: string;
  plots: string[];
  matchings: { assistant: string; jaccard: number[][]; mean: number }[];
  /** Each assistant-reading row beside the plain policies run at the same total resident KV. */
  isoMemory: IsoRow[];
}

/** One comparison at equal total resident KV (share of Full's KV). */
export interface IsoRow {
  /** The assistant-reading row (label, LLM budget) and its total resident KV (hot + assistant KV + metadata). */
  label: string;
  budget: number;
  resident: number;
  pplRatio: number;
  kl: number;
  /** Plain policies at LLM budget = that resident share: label -> [pplRatio, kl, their resident share]. */
  rivals: Record<string, [number, number, number]>;
}

/** Quality of every policy and budget against the Full run of the same invocation. */
export async function runEval(o: EvalOptions): Promise<EvalResult> {
  const prefix = o.prefix ?? 192;
  const cont = o.continuation ?? 64;
  const greedy = o.greedy ?? 32;
  const budgets = o.budgets ?? DEFAULT_BUDGETS;
  const model =
    o.loaded?.model ??
    (await Model.load(resolveModelDir(o.model), {
      threads: o.threads,
      weights: o.weights,
      kvCold: o.kvCold,
      hotRows: o.hotRows,
    }));
  const assistants =
    o.loaded?.assistants ??
    (await Promise.all(
      (o.assistants ?? []).map((a) =>
        Model.load(resolveModelDir(a), {
          threads: o.threads,
          weights: o.assistantWeights ?? o.weights,
          kvCold: o.kvCold,
          hotRows: o.hotRows,
        }),
      ),
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
    if (factory.usesAssistant) {
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

  const fullRows = new FullRows();
  const ref = await run(model, windows, prefix, cont, greedy, () => undefined, tick, { record: fullRows });
  const isWord = (id: number) => (model.tokenizer.decode([id]).match(/[A-Za-z]/g)?.length ?? 0) >= 3;
  const longRange = longRangePositions(windows, prefix, cont, isWord);
  const fullMetrics = metrics(ref, ref, windows, prefix, null, longRange, null);
  const rowOf = (e: Entry, budget: number, r: RunOutput): EvalRow => ({
    label: e.label,
    policy: e.factory.name,
    assistant: e.assistant?.name ?? null,
    options: e.options,
    budget,
    ...metrics(ref, r, windows, prefix, fullMetrics.perplexity, longRange, fullMetrics.longRangePerplexity),
  });
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
        { compare: fullRows },
      );
      rows.push(rowOf(e, b, r));
    }
  }
  // Iso-memory: the plain policies get the whole resident share an assistant row uses.
  const isoMemory: IsoRow[] = [];
  if (o.isoMemory !== false) {
    const plain = entries.filter((e) => !e.assistant);
    const cache = new Map<string, EvalRow>();
    // SmallKV's default rows (one per assistant and budget) against every plain policy.
    for (const row of rows.filter(
      (x) => x.assistant && x.policy === "smallkv" && Object.keys(x.options).length === 0,
    )) {
      const total = Math.min(1, Math.round(row.residentFraction * 100) / 100);
      const rivals: IsoRow["rivals"] = {};
      for (const e of plain) {
        const key = `${e.label}@${total}`;
        let hit = cache.get(key);
        if (!hit) {
          bar?.update({ label: `iso-memory ${e.label} @ ${total}` });
          const r = await run(
            model,
            windows,
            prefix,
            cont,
            greedy,
            () => e.factory.create({ budget: total, options: e.options }),
            () => {},
          );
          hit = rowOf(e, total, r);
          cache.set(key, hit);
        }
        rivals[e.label] = [hit.pplRatio, hit.kl, hit.residentFraction];
      }
      isoMemory.push({
        label: row.label,
        budget: row.budget,
        resident: row.residentFraction,
        pplRatio: row.pplRatio,
        kl: row.kl,
        rivals,
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

  const result: EvalResult = {
    rows,
    full: fullMetrics,
    windows: windows.length,
    plots: [],
    matchings,
    isoMemory,
  };
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
      isoMemory,
      longRangeTokens: longRange.reduce((a, x) => a + x.length, 0),
      // What each model keeps resident besides its hot KV: fp32 weights and KV bytes per token.
      residents: [model, ...assistants].map((m) => ({
        model: m.name,
        role: m === model ? "llm" : "assistant",
        parameters: m.parameters,
        weightBytes: m.parameters * 4,
        kvBytesPerToken: 2 * m.config.numLayers * m.config.numKvHeads * m.config.headDim * 4,
      })),
    });
    if (o.plot !== false) result.plots = await plotEval(result, o.out);
  }
  return result;
}

/** Draw the eval plots (SVG + PNG) from a result into `out`. */
export async function plotEval(r: EvalResult, out: string): Promise<string[]> {
  const all = r.rows.map((x) => ({ ...x, budgetPct: x.budget * 100 }));
  // The readable view: every policy with its defaults, assistant-reading ones with the first assistant.
  const first = r.rows.find((x) => x.assistant)?.assistant;
  const main = all.filter((x) => !x.label.includes(":") && (!x.assistant || x.assistant === first));
  const files: string[] = [];
  const plots: [string, string, string, boolean, boolean?][] = [
    [
      "eval-ppl-ratio",
      "pplRatio",
      `perplexity / Full's (lower is better)${first ? `; assistant ${first}` : ""}`,
      true,
    ],
    ["eval-ppl-ratio-all", "pplRatio", "perplexity / Full's, every row (lower is better)", true, true],
    ["eval-kl", "kl", "KL(Full || policy), nats (lower is better)", false],
    ["eval-top1", "top1", "top-1 agreement with Full (higher is better)", false],
    ["eval-greedy-match", "greedyMatch", "greedy token match with Full (higher is better)", false],
    ["eval-coverage", "coverage", "share of Full's current attention read exactly (higher is better)", false],
    [
      "eval-long-range",
      "longRangePplRatio",
      "long-range tokens: perplexity / Full's (lower is better)",
      true,
    ],
  ];
  for (const [file, y, title, logY, everything] of plots) {
    const p = await renderPlot(
      lineSpec({
        title,
        values: everything ? all : main,
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

/** The iso-memory comparison as a table: each assistant row beside the plain policies at its total resident KV. */
export function formatIsoMemory(r: EvalResult, markdown = false): string {
  if (!r.isoMemory.length) return "";
  const rivals = Object.keys(r.isoMemory[0].rivals);
  const headers = [
    "policy @ LLM budget",
    "total resident KV",
    "ppl ratio",
    ...rivals.map((x) => `${x} (ppl ratio)`),
  ];
  const rows = r.isoMemory.map((x) => [
    `${x.label} @ ${+(x.budget * 100).toFixed(2)}%`,
    `${(x.resident * 100).toFixed(1)}%`,
    x.pplRatio,
    ...rivals.map((k) => x.rivals[k]?.[0] ?? null),
  ]);
  return markdown ? markdownTable(headers, rows) : table(headers, rows);
}
