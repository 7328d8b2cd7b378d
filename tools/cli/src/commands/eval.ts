import { join } from "node:path";
import { DEFAULT_BUDGETS, DEFAULT_POLICIES, formatEval, formatIsoMemory, runEval } from "@smallkv/eval";
import { assetsDir } from "@smallkv/runner";
import type { Command } from "commander";
import {
  addKvOption,
  addWeightOptions,
  intArg,
  type KvCliOptions,
  type WeightCliOptions,
} from "../options.js";

interface EvalCli extends Partial<WeightCliOptions>, KvCliOptions {
  model: string;
  assistant?: string;
  text: string;
  policies: string;
  budgets: string;
  prefix: number;
  continuation: number;
  greedy: number;
  documents: number;
  windowsPerDoc: number;
  seed: number;
  threads?: number;
  out: string;
  json?: boolean;
  isoMemory: boolean;
}

export function registerEval(program: Command): void {
  const cmd = program
    .command("eval")
    .description(
      "quality vs budget of every policy against the Full run (perplexity ratio, KL, top-1 and greedy agreement, hot/cold bytes)",
    )
    .option("-m, --model <dir>", "the model", "stories260K")
    .option(
      "-a, --assistant <list>",
      "assistant(s) for policies that read one (SmallKV, SpecKV), comma-separated, each reported separately; the first is the aligned one, the other two the weak regime",
      "stories260K-slm-a,stories260K-slm,stories260K-slm-l",
    )
    .option("--text <file>", "evaluation text", join(assetsDir(), "data", "tinystories-valid.txt"))
    .option(
      "--policies <list>",
      "policy specs separated by ';' (name or name:k=v,k=v; a name may be a module path)",
      [
        ...DEFAULT_POLICIES,
        "smallkv:scores=mean",
        "smallkv:fallback=false",
        "smallkv-paper:marginal=false",
        "smallkv-paper:saliency=false",
      ].join(";"),
    )
    .option("--budgets <list>", "budgets (fractions)", DEFAULT_BUDGETS.join(","))
    .option("--prefix <n>", "prefix tokens prefilled with the policy active", intArg("--prefix", 1), 192)
    .option("--continuation <n>", "teacher-forced continuation tokens", intArg("--continuation", 2), 64)
    .option("--greedy <n>", "greedy tokens generated for the agreement metrics", intArg("--greedy", 1), 32)
    .option("--documents <n>", "documents to use", intArg("--documents", 1), 32)
    .option("--windows-per-doc <n>", "windows per document", intArg("--windows-per-doc", 1), 1)
    .option("--seed <n>", "seed (which documents)", intArg("--seed"), 0)
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option("--out <dir>", "output folder (JSON, SVG and PNG plots)", "eval-results")
    .option("--json", "print the JSON rows instead of tables")
    .option("--no-iso-memory", "skip the plain policies' runs at each assistant row's total resident KV");
  addKvOption(addWeightOptions(cmd)).action(async (o: EvalCli) => {
    const r = await runEval({
      model: o.model,
      assistants: o.assistant ? o.assistant.split(",").filter(Boolean) : [],
      textFile: o.text,
      policies: o.policies
        .split(";")
        .map((x) => x.trim())
        .filter(Boolean),
      budgets: o.budgets.split(",").map(Number),
      prefix: o.prefix,
      continuation: o.continuation,
      greedy: o.greedy,
      documents: o.documents,
      windowsPerDocument: o.windowsPerDoc,
      seed: o.seed,
      threads: o.threads,
      weights: o.weights,
      assistantWeights: o.assistantWeights,
      kvCold: o.kvCold,
      hotRows: o.hotRows,
      out: o.out,
      isoMemory: o.isoMemory,
    });
    if (o.json) {
      process.stdout.write(`${JSON.stringify(r.rows, null, 2)}\n`);
      return;
    }
    const f = r.full;
    process.stdout.write(`${r.windows} windows; Full: perplexity ${f.perplexity.toFixed(3)}\n\n`);
    for (const [metric, title] of [
      ["pplRatio", "perplexity ratio to Full (lower is better)"],
      ["kl", "KL(Full || policy), nats/token (lower is better)"],
      ["top1", "top-1 agreement with Full"],
      ["greedyMatch", "greedy token match with Full"],
      ["coverage", "share of Full's current attention read exactly"],
      ["attentionL1", "L1 distance of the effective attention row to Full's"],
      ["longRangePplRatio", "long-range tokens: perplexity ratio to Full"],
      ["hotFraction", "hot / cold KV bytes"],
      ["residentFraction", "everything resident (hot + assistant KV + metadata) / Full's KV"],
    ] as const) {
      process.stdout.write(`${title}\n${formatEval(r, metric)}\n\n`);
    }
    const iso = formatIsoMemory(r);
    if (iso)
      process.stdout.write(
        `iso-memory: plain policies at each assistant row's total resident KV (ppl ratio)\n${iso}\n\n`,
      );
    for (const m of r.matchings)
      process.stdout.write(`matched head similarity (${m.assistant}): mean Jaccard ${m.mean.toFixed(3)}\n`);
    process.stdout.write(
      `\nJSON: ${r.json}\nplots: ${r.plots.filter((p) => p.endsWith(".png")).join(", ")}\n`,
    );
  });
}
