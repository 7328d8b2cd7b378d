import { readFileSync } from "node:fs";
import { calibratePodBlocks, savePodBlocks } from "@smallkv/policies";
import { Model, resolveModelDir } from "@smallkv/runner";
import type { Command } from "commander";
import { addWeightOptions, intArg, type WeightCliOptions } from "../options.js";

export function registerCalibratePod(program: Command): void {
  const cmd = program
    .command("calibrate-pod")
    .description(
      "find PoD's layer blocks from attention similarity on a calibration text, and save them (JSON)",
    )
    .requiredOption("-m, --model <path>", "checkpoint folder or GGUF file")
    .requiredOption("--text <file>", "calibration text")
    .option("--tokens <n>", "calibration tokens (from the start of the text)", intArg("--tokens", 8), 256)
    .option("--block-size <n>", "largest block", intArg("--block-size", 1), 2)
    .requiredOption("--out <file>", "where to write the blocks JSON");
  addWeightOptions(cmd, false).action(
    async (
      o: { model: string; text: string; tokens: number; blockSize: number; out: string } & WeightCliOptions,
    ) => {
      const model = await Model.load(resolveModelDir(o.model), {
        weights: o.weights,
        groupSize: o.groupSize,
      });
      const ids = model.tokenizer
        .encode(readFileSync(o.text, "utf8"))
        .slice(0, Math.min(o.tokens, model.config.maxPositions));
      const b = await calibratePodBlocks(model, ids, o.blockSize);
      savePodBlocks(o.out, b);
      process.stdout.write(
        `layer similarity (l, l+1): ${b.similarity.map((x) => x.toFixed(3)).join(" ")}\nblocks: ${JSON.stringify(b.blocks)}\nwritten ${o.out}\n`,
      );
    },
  );
}
