import { writeResultsPage } from "@smallkv/eval";
import type { Command } from "commander";

export function registerResults(program: Command): void {
  program
    .command("results")
    .description("write the results page (Markdown with plots) from eval and bench JSON")
    .option("--eval <dir>", "folder of smallkv eval's output", "eval-results")
    .option("--bench <dir>", "folder of smallkv bench's output", "bench-results")
    .option("--out <file>", "the page", "docs/results.md")
    .action(async (o: { eval: string; bench: string; out: string }) => {
      process.stdout.write(
        `written ${await writeResultsPage({ evalDir: o.eval, benchDir: o.bench, out: o.out })}\n`,
      );
    });
}
