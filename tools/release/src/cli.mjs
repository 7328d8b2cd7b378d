#!/usr/bin/env node
// The publish dry run: pack every publishable package, check each tarball, print the sizes,
// write the report (JSON) and exit 1 on any problem. Usage: pnpm release:check [--out DIR]
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { packAll, ROOT, sizeTable } from "./pack.mjs";

const at = process.argv.indexOf("--out");
const out = at > 0 ? process.argv[at + 1] : join(ROOT, "bench-results");
const dest = mkdtempSync(join(tmpdir(), "smallkv-pack-"));
try {
  const rows = packAll(dest);
  console.log(sizeTable(rows));
  const problems = rows.flatMap((r) => r.problems);
  mkdirSync(out, { recursive: true });
  const report = join(out, "pack-report.json");
  writeFileSync(
    report,
    `${JSON.stringify(
      rows.map(({ manifest, tarball, ...r }) => ({ ...r, dependencies: manifest.dependencies ?? {} })),
      null,
      2,
    )}\n`,
  );
  console.log(`\nreport: ${report}`);
  for (const p of problems) console.log(`problem: ${p}`);
  console.log(
    problems.length
      ? `${problems.length} problems`
      : "every tarball holds what it needs and nothing it should not",
  );
  process.exitCode = problems.length ? 1 : 0;
} finally {
  rmSync(dest, { recursive: true, force: true });
}
