// The publish dry run: every publishable package packs with what it needs (dist, README,
// CHANGELOG, LICENSE; the tensor prebuilds) and nothing it should not (tests, fixtures, build
// intermediates), with real version ranges between our packages.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { check, packAll, publishable, ROOT, sizeTable } from "../src/pack.mjs";

describe("publish dry run", () => {
  let dest;
  let rows;
  beforeAll(() => {
    dest = mkdtempSync(join(tmpdir(), "smallkv-pack-test-"));
    rows = packAll(dest);
    console.log(sizeTable(rows));
  });
  afterAll(() => rmSync(dest, { recursive: true, force: true }));

  it("packs the seven published packages", () => {
    expect(rows.map((r) => r.name).sort()).toEqual(
      ["cli", "eval", "matching", "policies", "runner", "server", "tensor"].map((n) => `@smallkv/${n}`),
    );
    expect(publishable().some((p) => p.name === "@smallkv/release")).toBe(false);
  });

  it("every tarball holds what it needs and nothing it should not", () => {
    expect(rows.flatMap((r) => r.problems)).toEqual([]);
  });

  it("dependencies between our packages publish as real ranges of the versions being released", () => {
    const versions = Object.fromEntries(rows.map((r) => [r.name, r.version]));
    for (const r of rows)
      for (const [dep, range] of Object.entries(r.manifest.dependencies ?? {}))
        if (dep.startsWith("@smallkv/")) expect(range, `${r.name} -> ${dep}`).toBe(`^${versions[dep]}`);
  });

  it("each CHANGELOG starts at the packed version", () => {
    for (const r of rows) {
      const dir = publishable().find((p) => p.name === r.name).dir;
      const log = readFileSync(join(dir, "CHANGELOG.md"), "utf8");
      expect(log.startsWith(`# ${r.name}\n\n## ${r.version}\n`), r.name).toBe(true);
    }
  });

  it("the checker itself flags a test file, a build folder, a missing LICENSE and a workspace range", () => {
    const problems = check(
      "@smallkv/runner",
      [
        "package.json",
        "README.md",
        "CHANGELOG.md",
        "dist/index.js",
        "dist/index.d.ts",
        "test/a.test.ts",
        "build/x.o",
      ],
      { dependencies: { "@smallkv/tensor": "workspace:^" } },
    );
    expect(problems.some((p) => p.includes("missing LICENSE"))).toBe(true);
    expect(problems.some((p) => p.includes("test/a.test.ts"))).toBe(true);
    expect(problems.some((p) => p.includes("build/x.o"))).toBe(true);
    expect(problems.some((p) => p.includes("workspace:^"))).toBe(true);
  });
});
