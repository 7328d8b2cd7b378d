import { join } from "node:path";
import { runWeightsEval, table, writeJson } from "@smallkv/eval";
import { assetsDir, type KvStoreType, type WeightType } from "@smallkv/runner";
import type { Command } from "commander";
import { intArg } from "../options.js";

/** `smallkv eval-weights`: quantized weights against f32 on real text, per model. */
export function registerEvalWeights(program: Command): void {
  program
    .command("eval-weights")
    .description("quality of int8/int4 weights against f32: perplexity, KL and top-1 agreement on real text")
    .option("--models <list>", "models", "stories260K,stories260K-slm-a,stories260K-slm,stories260K-slm-l")
    .option(
      "--variants <list>",
      "weights[:groupSize][@kv] to compare with f32 weights and KV (f32@int8: an int8 KV store)",
      "int8,int4,f32@int8",
    )
    .option("--text <file>", "evaluation text", join(assetsDir(), "data", "tinystories-valid.txt"))
    .option("--documents <n>", "documents", intArg("--documents", 1), 24)
    .option("--tokens <n>", "tokens per document", intArg("--tokens", 2), 256)
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option("--out <dir>", "output folder", "eval-results")
    .action(
      async (o: {
        models: string;
        variants: string;
        text: string;
        documents: number;
        tokens: number;
        threads?: number;
        out: string;
      }) => {
        const variants = o.variants.split(",").map((v) => {
          const [w, kv] = v.split("@");
          const [weights, g] = w.split(":");
          return {
            weights: weights as WeightType,
            groupSize: g ? Number(g) : undefined,
            kvCold: (kv ?? "f32") as KvStoreType,
          };
        });
        const rows = [];
        for (const model of o.models.split(","))
          rows.push(
            ...(await runWeightsEval({
              model,
              variants,
              textFile: o.text,
              documents: o.documents,
              tokens: o.tokens,
              threads: o.threads,
            })),
          );
        process.stdout.write(
          `${table(
            [
              "model",
              "weights",
              "group",
              "KV",
              "weights KiB",
              "perplexity",
              "vs f32",
              "KL (nats)",
              "top-1 agree",
              "tokens",
            ],
            rows.map((r) => [
              r.model,
              r.weights,
              r.groupSize ?? "-",
              r.kvCold,
              (r.weightBytes / 1024).toFixed(0),
              r.perplexity,
              `${(r.pplIncrease * 100).toFixed(2)}%`,
              r.kl,
              `${(r.top1Agreement * 100).toFixed(1)}%`,
              r.tokens,
            ]),
          )}\n`,
        );
        process.stdout.write(
          `\nJSON: ${writeJson(o.out, "weights.json", { kind: "smallkv.eval-weights", rows })}\n`,
        );
      },
    );
}
