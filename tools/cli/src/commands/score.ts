import { readFileSync } from "node:fs";
import { logSoftmax, Model, resolveModelDir } from "@smallkv/runner";
import type { Command } from "commander";
import {
  addKvOption,
  addWeightOptions,
  intArg,
  type KvCliOptions,
  readStdin,
  type WeightCliOptions,
} from "../options.js";

export function registerScore(program: Command): void {
  const cmd = program
    .command("score")
    .description("per-token log-probabilities of a text under the model")
    .requiredOption("-m, --model <path>", "checkpoint folder or GGUF file")
    .option("--text <text>", "text to score (default: --file or stdin)")
    .option("--file <path>", "read the text from a file")
    .option("--json", "print JSON")
    .option("--threads <n>", "CPU threads", intArg("--threads", 1));
  addKvOption(addWeightOptions(cmd, false)).action(
    async (
      o: {
        model: string;
        text?: string;
        file?: string;
        json?: boolean;
        threads?: number;
      } & WeightCliOptions &
        KvCliOptions,
    ) => {
      const model = await Model.load(resolveModelDir(o.model), {
        threads: o.threads,
        weights: o.weights,
        groupSize: o.groupSize,
        kvCold: o.kvCold,
        hotRows: o.hotRows,
      });
      const text = o.text ?? (o.file ? readFileSync(o.file, "utf8") : await readStdin());
      const ids = model.tokenizer.encode(text);
      const seq = model.newSequence();
      const [logits] = await model.forward([{ seq, tokens: ids, logits: "all" }]);
      const V = model.config.vocabSize;
      const tokens: { id: number; token: string; logprob: number | null }[] = [
        { id: ids[0], token: model.tokenizer.idToToken(ids[0]) ?? "", logprob: null },
      ];
      let nll = 0;
      for (let i = 1; i < ids.length; i++) {
        const lp = logSoftmax(logits.subarray((i - 1) * V, i * V))[ids[i]];
        nll -= lp;
        tokens.push({ id: ids[i], token: model.tokenizer.idToToken(ids[i]) ?? "", logprob: lp });
      }
      const n = ids.length - 1;
      const summary = {
        model: model.name,
        tokens: ids.length,
        scored: n,
        nll: n ? nll / n : 0,
        perplexity: n ? Math.exp(nll / n) : 1,
      };
      if (o.json) process.stdout.write(`${JSON.stringify({ ...summary, per_token: tokens })}\n`);
      else {
        for (const t of tokens)
          process.stdout.write(
            `${String(t.id).padStart(6)}  ${t.logprob === null ? "     -" : t.logprob.toFixed(4).padStart(8)}  ${JSON.stringify(t.token)}\n`,
          );
        process.stdout.write(
          `\n${summary.scored} tokens scored, mean NLL ${summary.nll.toFixed(4)} nats, perplexity ${summary.perplexity.toFixed(3)}\n`,
        );
      }
      seq.release();
    },
  );
}
