// Every ```js block of every README runs as written, from where the READMEs say to put it:
// a file at the repository root (here a scratch folder under it: the same module
// resolution), run with `node <file>` from the root. A block preceded by
// `<!-- save as NAME -->` is saved under that name (so another block can import it).
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const run = promisify(execFile);

function readmes(): string[] {
  const out = [join(root, "README.md")];
  for (const group of ["packages", "apps", "tools"])
    for (const d of readdirSync(join(root, group))) {
      const f = join(root, group, d, "README.md");
      if (existsSync(f)) out.push(f);
    }
  return out;
}

function examples(file: string): { name: string; code: string }[] {
  const lines = readFileSync(file, "utf8").split("\n");
  const out: { name: string; code: string }[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== "```js") continue;
    const save = /<!-- save as (\S+) -->/.exec(lines[i - 1] ?? "")?.[1];
    const end = lines.indexOf("```", i + 1);
    out.push({ name: save ?? `example-${out.length + 1}.mjs`, code: lines.slice(i + 1, end).join("\n") });
    i = end;
  }
  return out;
}

const cases = readmes()
  .map((f) => [relative(root, f), examples(f)] as const)
  .filter(([, ex]) => ex.length > 0);

let statedSeen = 0;

describe("README examples run as written", () => {
  it("every package README has at least one runnable example", () => {
    const withExamples = new Set(cases.map(([f]) => dirname(f)));
    for (const pkg of [
      "packages/tensor",
      "packages/runner",
      "packages/matching",
      "packages/policies",
      "tools/eval",
    ])
      expect(withExamples.has(pkg), pkg).toBe(true);
  });

  it.each(cases)("%s", { timeout: 300_000 }, async (readme, ex) => {
    const dir = join(root, ".scratch", "readme-examples", readme.replace(/[/.]/g, "_"));
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    for (const e of ex) writeFileSync(join(dir, e.name), `${e.code}\n`);
    const made = new Set(readdirSync(root));
    try {
      for (const e of ex) {
        const r = await run(process.execPath, [join(dir, e.name)], { cwd: root, maxBuffer: 1 << 26 }).catch(
          (err) => {
            throw new Error(`${readme} ${e.name} failed:\n${err.stderr ?? err.message}`);
          },
        );
        // A trailing "// a b" comment on a console.log line states the line it prints: every
        // such statement must be a printed line, word for word.
        const stated = [...e.code.matchAll(/console\.log\([^;]*\);\s*\/\/ ([^\n]+)$/gm)].map((m) =>
          m[1].trim(),
        );
        const printed = r.stdout.split("\n").map((l) => l.trim());
        for (const s of stated) expect(printed, `${readme} ${e.name} states "${s}"`).toContain(s);
        statedSeen += stated.length;
      }
    } finally {
      // Files an example wrote at the root (e.g. mapping.json) are removed.
      for (const f of readdirSync(root)) if (!made.has(f)) rmSync(join(root, f), { force: true });
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("stated outputs", () => {
  it("the READMEs state outputs, and the examples above compared every one", () => {
    const all = cases.flatMap(([, ex]) =>
      ex.flatMap((e) => [...e.code.matchAll(/console\.log\([^;]*\);\s*\/\/ ([^\n]+)$/gm)]),
    );
    expect(all.length).toBeGreaterThanOrEqual(4);
    expect(statedSeen).toBe(all.length);
  });
});
