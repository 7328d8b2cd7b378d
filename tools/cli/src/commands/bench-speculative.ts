import { benchSpeculative, type SpeculativeRow, table, writeJson } from "@smallkv/eval";

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

const HEADERS = [
  "assistant",
  "policy",
  "batch",
  "mode",
  "tok/s",
  "speedup",
  "predicted",
  "pred.+policy",
  "alpha",
  "accepted/round",
  "mean k",
  "c",
  "p",
];

function cells(r: SpeculativeRow): (string | number | null)[] {
  return [
    r.assistant,
    r.policy,
    r.batch,
    r.mode,
    Number(r.tokensPerSecond.toFixed(1)),
    Number(r.speedup.toFixed(3)),
    r.predicted === null ? "-" : Number(r.predicted.toFixed(3)),
    r.predictedWithPolicy === null ? "-" : Number(r.predictedWithPolicy.toFixed(3)),
    r.mode === "none" ? "-" : Number(r.acceptanceRate.toFixed(3)),
    r.mode === "none" ? "-" : Number(r.meanAccepted.toFixed(2)),
    r.mode === "none" ? "-" : Number(r.meanK.toFixed(2)),
    Number(r.c.toFixed(3)),
    Number(r.p.toFixed(3)),
  ];
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
    policies: list(o.policies),
    batches: list(o.batches).map(Number),
    modes: list(o.modes),
    tokens: o.tokens,
    promptTokens: o.promptTokens,
    repeats: o.repeats,
    threads: o.threads,
    onRow: (r) => process.stderr.write(`${cells(r).join(" ")}\n`),
  });
  process.stdout.write(`${table(HEADERS, rows.map(cells))}\n`);
  const md = [
    `| ${HEADERS.join(" | ")} |`,
    `|${HEADERS.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${cells(r).join(" | ")} |`),
  ].join("\n");
  const path = writeJson(`${o.out}/speculative`, "bench.json", { config: o, rows });
  writeJson(`${o.out}/speculative`, "table.md.json", { markdown: md });
  process.stdout.write(`wrote ${path}\n`);
}
