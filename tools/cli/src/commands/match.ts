import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatReport, type MatchMetric, matchingWindow, matchModels } from "@smallkv/matching";
import { InvalidOptionError, Model, resolveModelDir, writeRandomTwin } from "@smallkv/runner";
import type { Command } from "commander";
import { addWeightOptions, floatArg, intArg, type WeightCliOptions } from "../options.js";

interface MatchCli {
  model: string;
  assistant: string;
  text: string;
  out?: string;
  window: number;
  from: string;
  metric: string;
  topk: number;
  control?: boolean;
  json?: boolean;
}

export function registerMatch(program: Command): void {
  const cmd = program
    .command("match")
    .description(
      "match every LLM attention head to an assistant head on a text, print the similarity report, save the mapping",
    )
    .requiredOption("-m, --model <dir>", "the large model")
    .requiredOption("-a, --assistant <dir>", "the assistant model (same tokenizer)")
    .requiredOption("--text <file>", "text to match on")
    .option("--out <file>", "write the mapping (JSON, with both models' identities)")
    .option("--window <n>", "matching window in tokens (100-200 in the paper)", intArg("--window", 2), 128)
    .option("--from <first|last>", "which tokens of a longer text", "first")
    .option("--metric <jaccard|cosine>", "similarity that picks the SLM head", "jaccard")
    .option("--topk <fraction>", "Jaccard TopK as a fraction of the window", floatArg("--topk"), 0.2)
    .option("--control", "also match a randomly initialised assistant of the same shape, for comparison")
    .option("--json", "print the report as JSON");
  addWeightOptions(cmd).action(async (o: MatchCli & WeightCliOptions) => {
    if (o.metric !== "jaccard" && o.metric !== "cosine")
      throw new InvalidOptionError("--metric", "must be jaccard or cosine");
    if (o.from !== "first" && o.from !== "last")
      throw new InvalidOptionError("--from", "must be first or last");
    const llm = await Model.load(resolveModelDir(o.model), { weights: o.weights, groupSize: o.groupSize });
    const slm = await Model.load(resolveModelDir(o.assistant), {
      weights: o.assistantWeights ?? o.weights,
      groupSize: o.groupSize,
    });
    const all = llm.tokenizer.encode(readFileSync(o.text, "utf8"));
    const win = matchingWindow(all.length, {
      minTokens: Math.min(100, o.window),
      maxTokens: o.window,
      size: o.window,
      from: o.from,
    });
    if (!win)
      throw new InvalidOptionError(
        "--text",
        `the text has ${all.length} tokens; matching needs at least ${Math.min(100, o.window)}`,
      );
    const ids = all.slice(win[0], win[1]);
    const opts = { metric: o.metric as MatchMetric, topkRatio: o.topk };
    const matching = await matchModels(llm, slm, ids, opts);
    const report = matching.report();
    let control: ReturnType<typeof matching.report> | null = null;
    if (o.control) {
      const dir = writeRandomTwin(mkdtempSync(join(tmpdir(), "smallkv-control-")), slm);
      control = (await matchModels(llm, await Model.load(dir), ids, opts)).report();
    }
    if (o.out) matching.save(o.out);
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({ llm: llm.name, assistant: slm.name, tokens: ids.length, window: win, report, control }, null, 2)}\n`,
      );
    } else {
      process.stdout.write(
        `${formatReport(report, `${llm.name} -> ${slm.name} on ${ids.length} tokens [${win[0]}, ${win[1]})`)}\n`,
      );
      if (control)
        process.stdout.write(
          `\n${formatReport(control, `${llm.name} -> random-init ${slm.name} architecture (control)`)}\n`,
        );
      if (o.out) process.stdout.write(`\nmapping written to ${o.out}\n`);
    }
  });
}
