import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "bin.js");

describe("smallkv bench runner", () => {
  it("prints a table and writes JSON (small synthetic model)", () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-bench-"));
    const r = spawnSync(
      process.execPath,
      [
        bin,
        "bench",
        "runner",
        "--small",
        "--prefill",
        "64",
        "--context",
        "16",
        "--steps",
        "4",
        "--batches",
        "1,2",
        "--out",
        out,
      ],
      {
        encoding: "utf8",
        env: { ...process.env, SMALLKV_BENCH_CACHE: join(out, "cache") },
      },
    );
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/of roofline/);
    const json = JSON.parse(readFileSync(join(out, "runner.json"), "utf8"));
    expect(json.results.map((x: { phase: string; batch: number }) => `${x.phase}${x.batch}`)).toEqual([
      "prefill1",
      "decode1",
      "decode2",
    ]);
    for (const x of json.results) expect(x.tokensPerSecond).toBeGreaterThan(0);
    expect(json.bandwidthBytesPerSecond).toBeGreaterThan(1e8);
  });
});
