import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { writeResultsPage } from "../src/index.js";

describe("results page", () => {
  it("keeps a section whose inputs are missing (with a note), and rebuilding is idempotent", async () => {
    const dir = mkdtempSync(join(tmpdir(), "smallkv-results-"));
    const out = join(dir, "results.md");
    writeFileSync(
      out,
      "# SmallKV results\n\n## Throughput and memory\n\n| policy | tok/s |\n| --- | --- |\n| full | 40 |\n\n## Runner\n\nRead bandwidth 33 GB/s.\n\n## Hand-written anchor\n\nours 1.02x\n\n## GPU\n\nold\n",
    );
    await writeResultsPage({ evalDir: join(dir, "none"), benchDir: join(dir, "none"), out });
    const once = readFileSync(out, "utf8");
    expect(once).toContain("| full | 40 |");
    expect(once).toContain("Read bandwidth 33 GB/s.");
    // A section the page does not make stays, before the GPU section.
    expect(once).toContain("## Hand-written anchor\n\nours 1.02x\n");
    expect(once.indexOf("## Hand-written anchor")).toBeLessThan(once.indexOf("## GPU"));
    expect(once).toMatch(/kept from the previous page/);
    expect(once).toMatch(/No eval results/);
    await writeResultsPage({ evalDir: join(dir, "none"), benchDir: join(dir, "none"), out });
    expect(readFileSync(out, "utf8")).toBe(once);
  });

  it("shows the device check's output folder (runner tables per model, the comparison) as the GPU section", async () => {
    const dir = mkdtempSync(join(tmpdir(), "smallkv-results-"));
    const gpu = join(dir, "bench", "gpu");
    const runner = (name: string, tps: number) => ({
      device: { name: "NVIDIA H100 80GB HBM3" },
      bandwidthBytesPerSecond: 3.35e12,
      model: { dtype: "bf16" },
      results: [
        {
          weights: "f32",
          weightBytes: 1e8,
          streamedBytes: 1e8,
          bandwidth: 3.35e12,
          prefill: { tokens: 512, seconds: 0.004, tokensPerSecond: 128000 },
          decode: [{ batch: 1, steps: 32, secondsPerStep: 1 / tps, tokensPerSecond: tps }],
          peakRss: 1e9,
          kvBytes: 1e6,
          loadSeconds: 1,
          rooflineTokensPerSecond: 33500,
          name,
        },
      ],
    });
    for (const [sub, tps] of [
      ["runner-100m", 9000],
      ["runner-large", 2100],
    ] as const) {
      mkdirSync(join(gpu, sub), { recursive: true });
      writeFileSync(join(gpu, sub, "runner.json"), JSON.stringify(runner(sub, tps)));
    }
    writeFileSync(
      join(gpu, "compare.txt"),
      "goals\n  met    100M batch-1 decode / bandwidth roofline: 0.269 (goal >= 0.25)\n",
    );
    const out = join(dir, "results.md");
    await writeResultsPage({ evalDir: join(dir, "none"), benchDir: join(dir, "bench"), out });
    const page = readFileSync(out, "utf8");
    const section = page.slice(page.indexOf("## GPU"));
    expect(section).toContain("~100M model on NVIDIA H100 80GB HBM3");
    expect(section).toContain("~0.45B model on NVIDIA H100 80GB HBM3");
    expect(section).toContain("0.269 (goal >= 0.25)");
    expect(section).not.toMatch(/No GPU measurements/);
  });
});
