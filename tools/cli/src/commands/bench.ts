import type { Command } from "commander";
import { intArg } from "../options.js";
import { benchRunner } from "./bench-runner.js";

export function registerBench(program: Command): void {
  const bench = program.command("bench").description("benchmarks (tables on stdout, JSON under --out)");
  bench
    .command("runner")
    .description(
      "prefill and decode throughput of the runner on a synthetic ~100M Llama checkpoint, with the batch-1 roofline ratio",
    )
    .option("--small", "use a small synthetic model (quick check)")
    .option("--prefill <n>", "prompt tokens for the prefill measurement", intArg("--prefill", 1), 512)
    .option("--context <n>", "context tokens before the decode measurement", intArg("--context", 1), 128)
    .option("--steps <n>", "decode steps measured", intArg("--steps", 1), 32)
    .option("--batches <list>", "decode batch sizes", "1,4,16")
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option("--out <dir>", "output folder", "bench-results")
    .action(benchRunner);
}
