import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { benchTable } from "../src/bench.js";
import { formatBench, runBench } from "../src/index.js";

describe("smallkv bench", () => {
  it("measures every policy on the grid with ratios to Full and H2O from the same run", async () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-bench-"));
    process.env.SMALLKV_BENCH_CACHE = join(out, "cache");
    const r = await runBench({
      small: true,
      batches: [1, 2],
      contexts: [160],
      generate: 6,
      // A stated bandwidth: the bound is then exact arithmetic (and no 512 MB probe in a test).
      bandwidth: 10e9,
      out,
      log: () => {},
    });
    const policies = ["full", "h2o", "snapkv", "streamingllm", "smallkv"];
    expect(r.rows.map((x) => `${x.policy}/${x.batch}`)).toEqual(
      [1, 2].flatMap((b) => policies.map((p) => `${p}/${b}`)),
    );
    const at = (p: string, b: number) => r.rows.find((x) => x.policy === p && x.batch === b)!;
    for (const b of [1, 2]) {
      // Full reads every row; H2O at 20% reads fewer, so its bound is lower; SmallKV adds the assistant.
      expect(at("full", b).bytesPerStep).toBeGreaterThan(at("h2o", b).bytesPerStep);
      expect(at("smallkv", b).bytesPerStep).toBeGreaterThan(at("h2o", b).bytesPerStep);
      expect(at("smallkv", b).residentKvBytes).toBeGreaterThan(at("h2o", b).residentKvBytes);
    }
    for (const row of r.rows) {
      expect(row.boundSeconds).toBeCloseTo(row.bytesPerStep / 10e9, 12);
      expect(row.overBound).toBeCloseTo(row.tpot / row.boundSeconds, 6);
      expect(row.residentKvBytes).toBeGreaterThanOrEqual(row.peakColdBytes);
      expect(row.firstDecode).toBeGreaterThan(0);
      expect(row.tokensPerSecond).toBeGreaterThan(0);
      expect(row.ttft).toBeGreaterThan(0);
      if (row.policy === "full") {
        expect(row.vsFull).toBe(1);
        expect(row.decodeVsFull).toBe(1);
        expect(row.peakHotBytes).toBe(row.peakColdBytes);
      } else {
        expect(row.peakHotBytes).toBeLessThan(row.peakColdBytes * 0.3);
      }
      if (row.policy === "h2o") expect(row.vsH2o).toBe(1);
      if (row.policy === "smallkv") {
        expect(row.slmShare).toBeGreaterThan(0);
        expect(row.assistantKvBytes).toBeGreaterThan(0);
      } else expect(row.slmShare).toBe(0);
    }
    expect(formatBench(r.rows)).toMatch(/vs H2O/);
    // The last column: the step over H2O's, over the bound over H2O's (1 for H2O itself).
    const t = benchTable(r.rows);
    expect(t.headers.at(-1)).toBe("step vs H2O / bound vs H2O");
    // A CPU run has no device memory column; a device run's rows would carry deviceBytes.
    expect(t.headers).not.toContain("device MiB");
    expect(r.rows.every((row) => row.deviceBytes === undefined)).toBe(true);
    const withDevice = benchTable(r.rows.map((row, i) => ({ ...row, deviceBytes: (i + 1) * 2 ** 20 })));
    const col = withDevice.headers.indexOf("device MiB");
    expect(col).toBe(withDevice.headers.indexOf("resident KV MiB") + 1);
    expect(withDevice.rows.map((row) => row[col])).toEqual(r.rows.map((_, i) => i + 1));
    for (const [i, row] of r.rows.entries()) {
      const h = at("h2o", row.batch);
      expect(t.rows[i].at(-1)).toBeCloseTo(row.tpot / h.tpot / (row.boundSeconds / h.boundSeconds), 9);
      if (row.policy === "h2o") expect(t.rows[i].at(-1)).toBe(1);
    }
    for (const p of r.plots) expect(existsSync(p)).toBe(true);
  });

  it("runs policy specs with options, labelled by the spec, and refuses a bad option", async () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-bench-"));
    process.env.SMALLKV_BENCH_CACHE = join(out, "cache");
    const base = {
      small: true,
      batches: [1],
      contexts: [160],
      generate: 4,
      bandwidth: 10e9,
      out,
      plot: false,
      log: () => {},
    };
    const r = await runBench({ ...base, policies: ["full", "smallkv:recent=4,exactShare=0.8"] });
    expect(r.rows.map((x) => x.policy)).toEqual(["full", "smallkv:recent=4,exactShare=0.8"]);
    expect(r.rows[1].slmShare).toBeGreaterThan(0);
    expect(r.rows[1].decodeVsFull).toBeGreaterThan(0);
    await expect(runBench({ ...base, policies: ["smallkv:recent=-1"] })).rejects.toThrow(/recent must be/);
  });

  it("alternates the policies' decode steps within a scenario without mixing their state", async () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-bench-"));
    process.env.SMALLKV_BENCH_CACHE = join(out, "cache");
    const base = {
      small: true,
      batches: [2],
      contexts: [160],
      generate: 5,
      bandwidth: 10e9,
      out,
      plot: false,
      log: () => {},
      policies: ["full", "h2o", "smallkv"],
    };
    const alternated = await runBench(base);
    const sequential = await runBench({ ...base, sequential: true, out: join(out, "sequential") });
    // What each policy keeps and moves depends on its own sequences only, not on the order of steps.
    const kept = (rows: typeof alternated.rows) =>
      rows.map((x) => [
        x.policy,
        x.bytesPerStep,
        x.peakHotBytes,
        x.peakColdBytes,
        x.assistantKvBytes,
        x.residentKvBytes,
      ]);
    expect(kept(alternated.rows)).toEqual(kept(sequential.rows));
    expect(alternated.rows[0].bytesPerStep).toBeGreaterThan(alternated.rows[1].bytesPerStep);
    // The JSON says how the steps ran (the results page describes it).
    expect(JSON.parse(readFileSync(alternated.json, "utf8")).schedule).toBe("alternated");
    expect(JSON.parse(readFileSync(sequential.json, "utf8")).schedule).toBe("sequential");
  });
});
