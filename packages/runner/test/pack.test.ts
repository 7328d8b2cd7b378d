import { execFileSync } from "node:child_process";
import { readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { golden, LLM, tempDir } from "./helpers.js";

const here = dirname(fileURLToPath(import.meta.url));
const packages = join(here, "..", "..");

describe("packages are importable à la carte", () => {
  it("packs @smallkv/tensor and @smallkv/runner, installs the tarballs outside the workspace (the addon builds there) and generates", () => {
    const out = tempDir("smallkv-pack-");
    for (const pkg of ["tensor", "runner"]) {
      execFileSync("pnpm", ["pack", "--pack-destination", out], { cwd: join(packages, pkg), stdio: "pipe" });
    }
    const tgz = readdirSync(out).filter((f) => f.endsWith(".tgz"));
    const tensor = tgz.find((f) => f.includes("tensor"))!;
    const runner = tgz.find((f) => f.includes("runner"))!;
    const app = join(out, "app");
    execFileSync("mkdir", ["-p", app]);
    writeFileSync(
      join(app, "package.json"),
      JSON.stringify({
        name: "smallkv-consumer",
        private: true,
        type: "module",
        dependencies: { "@smallkv/tensor": `file:../${tensor}`, "@smallkv/runner": `file:../${runner}` },
        // The runner tarball depends on @smallkv/tensor by version: point it at the local tarball.
        overrides: { "@smallkv/tensor": `file:../${tensor}` },
      }),
    );
    // onnxruntime-node's postinstall would fetch the CUDA provider from the network; the CPU one is bundled.
    writeFileSync(join(app, ".npmrc"), "onnxruntime-node-install=skip\n");
    writeFileSync(
      join(app, "main.js"),
      `import { Generator, Model } from "@smallkv/runner";
const model = await Model.load(process.argv[2]);
const r = await new Generator(model).generate("", { temperature: 0, maxTokens: 12 });
console.log(JSON.stringify({ tokens: r.tokens, text: r.text }));
`,
    );
    // A plain npm install, as a user outside our workspace would do it.
    execFileSync("npm", ["install", "--no-audit", "--no-fund"], { cwd: app, stdio: "pipe" });
    const built = readdirSync(join(app, "node_modules", "@smallkv", "tensor", "build", "Release"));
    expect(built).toContain("smallkv_tensor.node");
    const res = JSON.parse(execFileSync("node", ["main.js", LLM], { cwd: app, encoding: "utf8" }));
    // The golden greedy run from BOS (an independent implementation): its first 12 ids and text.
    const bos = golden("stories260K").prompts.find((p) => p.name === "bos")!;
    expect(res.tokens).toEqual(bos.greedy_ids.slice(0, 12));
    expect(res.text.length).toBeGreaterThan(30);
    expect(bos.greedy_text.startsWith(res.text)).toBe(true);
  }, 300_000);
});
