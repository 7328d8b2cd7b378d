import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
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
});
