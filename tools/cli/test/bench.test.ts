import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "bin.js");

/** `smallkv <args>` in a child process. */
const smallkv = (args: string[], env: NodeJS.ProcessEnv = process.env) =>
  spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env });

describe("smallkv bench runner", () => {
  it("compares f32, int8 and int4 weights, each in its own process, and writes JSON with the weight bytes used (small synthetic model)", () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-bench-"));
    const r = smallkv(
      [
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
        "--rounds",
        "1",
        "--out",
        out,
      ],
      { ...process.env, SMALLKV_BENCH_CACHE: join(out, "cache") },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/batch-1 roofline/);
    const json = JSON.parse(readFileSync(join(out, "runner.json"), "utf8"));
    expect(json.results.map((x: { weights: string }) => x.weights)).toEqual(["f32", "int8", "int4"]);
    for (const x of json.results) {
      expect(x.prefill.tokensPerSecond).toBeGreaterThan(0);
      expect(x.decode.map((d: { batch: number }) => d.batch)).toEqual([1, 2]);
      expect(x.peakRss).toBeGreaterThan(x.weightBytes);
    }
    // Quantized weights occupy fewer bytes than float32 ones, int4 fewer than int8.
    const [f32, int8, int4] = json.results;
    expect(int8.weightBytes).toBeLessThan(f32.weightBytes);
    expect(int4.weightBytes).toBeLessThan(int8.weightBytes);
    expect(json.bandwidthBytesPerSecond).toBeGreaterThan(1e8);
  });
});

describe("smallkv bench speculative", () => {
  it("takes policy specs with options and a budget (name:k=v,k=v@budget, ';'-separated)", () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-bench-"));
    const r = smallkv([
      "bench",
      "speculative",
      "--assistants",
      "stories260K-slm-a",
      "--policies",
      "full;smallkv:recent=4,exactShare=0.8@0.2",
      "--batches",
      "1",
      "--modes",
      "none,k=2",
      "--tokens",
      "12",
      "--prompt-tokens",
      "40",
      "--repeats",
      "1",
      "--out",
      out,
    ]);
    expect(r.status, r.stderr).toBe(0);
    const json = JSON.parse(readFileSync(join(out, "speculative", "bench.json"), "utf8"));
    const rows = json.rows as { policy: string; mode: string }[];
    expect(rows.map((x) => `${x.policy} ${x.mode}`)).toEqual([
      "full none",
      "full k=2",
      "smallkv:recent=4,exactShare=0.8@0.2 none",
      "smallkv:recent=4,exactShare=0.8@0.2 k=2",
    ]);
    // A bad option is refused, not ignored.
    const bad = smallkv([
      "bench",
      "speculative",
      "--assistants",
      "stories260K-slm-a",
      "--policies",
      "smallkv:recent=-1@0.2",
      "--out",
      out,
    ]);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/recent must be/);
  });
});
