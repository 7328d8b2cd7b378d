import { BudgetError, PolicyOptionError } from "@smallkv/policies";
import {
  AssistantMismatchError,
  CheckpointError,
  ContextLengthError,
  InvalidOptionError,
  PolicyError,
} from "@smallkv/runner";
import { TensorShapeError } from "@smallkv/tensor";
import { Command, CommanderError } from "commander";
import { registerBench } from "./commands/bench.js";
import { registerCalibratePod } from "./commands/calibrate-pod.js";
import { registerCluster } from "./commands/cluster.js";
import { registerEval } from "./commands/eval.js";
import { registerEvalWeights } from "./commands/eval-weights.js";
import { registerGenerate } from "./commands/generate.js";
import { registerMatch } from "./commands/match.js";
import { registerResults } from "./commands/results.js";
import { registerScore } from "./commands/score.js";
import { registerServe } from "./commands/serve.js";

export function buildProgram(): Command {
  const program = new Command("smallkv")
    .description("SmallKV: small-model-assisted KV cache compression for Llama-family models")
    .exitOverride()
    .showHelpAfterError();
  registerGenerate(program);
  registerScore(program);
  registerEvalWeights(program);
  registerBench(program);
  registerCalibratePod(program);
  registerMatch(program);
  registerEval(program);
  registerResults(program);
  registerServe(program);
  registerCluster(program);

  return program;
}

const KNOWN = [
  CheckpointError,
  ContextLengthError,
  InvalidOptionError,
  PolicyError,
  TensorShapeError,
  BudgetError,
  PolicyOptionError,
  AssistantMismatchError,
];

/** Run the CLI; returns the exit code. Known errors print one clear line, never a stack. */
export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (KNOWN.some((k) => e instanceof k)) {
      const err = e as Error & { code?: string };
      process.stderr.write(`error: ${err.name}${err.code ? ` [${err.code}]` : ""}: ${err.message}\n`);
      return 1;
    }
    throw e;
  }
}
