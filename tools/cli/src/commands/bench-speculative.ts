import { benchSpeculative, SPECULATIVE_HEADERS, speculativeCells, table, writeJson } from "@smallkv/eval";
import { policySpecs } from "../options.js";

interface Opts {
  assistants: string;
  policies: string;
  batches: string;
  modes: string;
  tokens: number;
  promptTokens: number;
  repeats: number;
  threads?: number;
  out: string;
}

/** `smallkv bench speculative`: speculative decoding with each shipped assistant as the draft. */
export async function benchSpeculativeCommand(o: Opts): Promise<void> {
  const list = (s: string) =>
    s
      .split(",")
      .map((x) => x.trim())
      .filter(Boolean);
  const rows = await benchSpeculative({
    assistants: list(o.assistants),
    // Specs with options (name:k=v,k=v@budget) are separated by ';'.
    policies: policySpecs(o.policies),
    batches: list(o.batches).map(Number),
    modes: list(o.modes),
    tokens: o.tokens,
    promptTokens: o.promptTokens,
    repeats: o.repeats,
    threads: o.threads,
    onRow: (r) => process.stderr.write(`${speculativeCells(r).join(" ")}\n`),
  });
  process.stdout.write(`${table(SPECULATIVE_HEADERS, rows.map(speculativeCells))}\n`);
  const path = writeJson(`${o.out}/speculative`, "bench.json", { config: o, rows });
  process.stdout.write(`wrote ${path}\n`);
}
