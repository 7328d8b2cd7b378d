// The packages as a user installs them: packed tarballs, a plain `npm install` in a folder
// outside the workspace, on a PATH without a compiler, make or Python.
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pack, ROOT } from "../src/pack.mjs";

const SHARED = process.env.SMALLKV_ASSETS ?? join(ROOT, "..", "shared");
const PACKAGES = ["tensor", "runner", "matching", "policies"];

/** The first ```js example of a README. */
function firstExample(readme) {
  const m = /```js\n([\s\S]*?)```/.exec(readFileSync(readme, "utf8"));
  if (!m) throw new Error(`no js example in ${readme}`);
  return m[1];
}

/** Tools a native build needs, which the install must not: compilers, make, Python, the linker. */
const HIDDEN =
  /^(g\+\+|gcc|cc|c\+\+|c89|c99|cpp|clang.*|make|gmake|python[\d.]*|nvcc|ld(\..*)?|as|x86_64-linux-gnu-.*)$/;

/** A folder of links to every tool on PATH except HIDDEN ones: this machine without a compiler. */
function binWithoutCompilers(dir) {
  mkdirSync(dir, { recursive: true });
  const seen = new Set();
  for (const d of (process.env.PATH ?? "").split(":")) {
    let names = [];
    try {
      names = readdirSync(d);
    } catch {
      continue;
    }
    for (const n of names) {
      if (seen.has(n) || HIDDEN.test(n)) continue;
      seen.add(n);
      symlinkSync(join(d, n), join(dir, n));
    }
  }
  return dir;
}

const npmCli = realpathSync(execFileSync("sh", ["-c", "command -v npm"], { encoding: "utf8" }).trim());

/** `npm install` in `cwd` with `env`, scripts' output shown; the result of spawnSync. */
const npmInstall = (cwd, env) =>
  spawnSync(process.execPath, [npmCli, "install", "--no-audit", "--no-fund", "--foreground-scripts"], {
    cwd,
    env,
    encoding: "utf8",
  });

describe("tarballs install and run where no compiler is on PATH", () => {
  let work;
  let app;
  let env;
  let installLog = "";
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), "smallkv-install-"));
    const tgz = Object.fromEntries(
      PACKAGES.map((p) => [p, basename(pack(join(ROOT, "packages", p), join(work, "tarballs")))]),
    );
    app = join(work, "app");
    mkdirSync(app);
    // The README examples name models as ../shared/...: the same layout beside the app.
    symlinkSync(SHARED, join(work, "shared"));
    const local = Object.fromEntries(PACKAGES.map((p) => [`@smallkv/${p}`, `file:../tarballs/${tgz[p]}`]));
    writeFileSync(
      join(app, "package.json"),
      JSON.stringify({
        name: "smallkv-consumer",
        private: true,
        type: "module",
        dependencies: local,
        // The tarballs depend on each other by version (not yet on the registry): the local files.
        overrides: local,
      }),
    );
    // onnxruntime-node's postinstall would fetch the CUDA provider from the network; the CPU one is bundled.
    writeFileSync(join(app, ".npmrc"), "onnxruntime-node-install=skip\n");
    env = {
      HOME: process.env.HOME,
      PATH: binWithoutCompilers(join(work, "bin")),
      npm_config_cache: process.env.npm_config_cache,
    };
    if (!env.npm_config_cache) delete env.npm_config_cache;
    const r = npmInstall(app, env);
    installLog = `${r.stdout}\n${r.stderr}`;
    if (r.status !== 0) throw new Error(`npm install failed (${r.status}):\n${installLog.slice(-4000)}`);
  });
  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const run = (script) => {
    const file = join(app, `script-${Math.random().toString(36).slice(2)}.mjs`);
    writeFileSync(file, script);
    const r = spawnSync(process.execPath, [file], { cwd: app, env, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${script}\nfailed:\n${r.stderr}`);
    return r.stdout;
  };

  it("the PATH really has no compiler, make or Python", () => {
    for (const tool of ["g++", "gcc", "cc", "c++", "make", "python3", "python", "nvcc", "ld"]) {
      const r = spawnSync("/bin/sh", ["-c", `command -v ${tool}`], { env });
      expect(r.status, `${tool} is on PATH`).not.toBe(0);
    }
  });

  it("installed the prebuilt addon: nothing was compiled", () => {
    expect(installLog).toMatch(
      /using the prebuilt addon prebuilds\/linux-x64\/smallkv_tensor\.x86-64-v\d\.node/,
    );
    const tensor = join(app, "node_modules", "@smallkv", "tensor");
    expect(existsSync(join(tensor, "build"))).toBe(false);
    const info = JSON.parse(
      run(`import { buildInfo } from "@smallkv/tensor";\nconsole.log(JSON.stringify(buildInfo()));`),
    );
    expect(info.prebuilt).toBe(true);
    expect(info.portable).toBe(true);
    expect(info.addon).toContain(join("prebuilds", "linux-x64"));
  });

  it("the runner README's first example generates text", () => {
    const out = run(firstExample(join(ROOT, "packages", "runner", "README.md")));
    // 48 sampled tokens of a story.
    expect(out.split(/\s+/).length).toBeGreaterThan(20);
    expect(out).toMatch(/[a-z]{3,}/);
  });

  it("greedy generation equals the golden ids, and a policy from @smallkv/policies runs", () => {
    const golden = JSON.parse(readFileSync(join(SHARED, "models", "golden", "stories260K.json"), "utf8"));
    const bos = golden.prompts.find((p) => p.name === "bos");
    const res = JSON.parse(
      run(`import { Generator, Model } from "@smallkv/runner";
import { createPolicy } from "@smallkv/policies";
const model = await Model.load("../shared/models/stories260K");
const plain = await new Generator(model).generate("", { temperature: 0, maxTokens: 24 });
const h2o = await new Generator(model).generate("Once upon a time, there was a little girl named Lily.", {
  temperature: 0, maxTokens: 24, policy: await createPolicy("h2o", 0.5),
});
console.log(JSON.stringify({ tokens: plain.tokens, h2o: h2o.tokens.length, error: h2o.error ?? null }));`),
    );
    expect(res.tokens).toEqual(bos.greedy_ids.slice(0, 24));
    expect(res.h2o).toBe(24);
    expect(res.error).toBeNull();
  });

  it("the CUDA prebuild loads without nvcc and reports no device cleanly; the emulator runs", () => {
    const out = JSON.parse(
      run(`import { Device, DeviceError } from "@smallkv/tensor";
let cuda;
try { const d = Device.open("cuda"); cuda = { opened: d.info.name }; }
catch (e) { cuda = { code: e instanceof DeviceError ? e.code : "not a DeviceError", message: e.message }; }
const emu = Device.open("emulator");
console.log(JSON.stringify({ cuda, emulated: emu.emulated }));`),
    );
    // With a GPU and driver this would open it; here there is none: ENODEV, not ENOBUILD.
    if (out.cuda.opened === undefined) {
      expect(out.cuda.code, out.cuda.message).toBe("ENODEV");
      expect(out.cuda.message).toMatch(/no usable CUDA device/);
    }
    expect(out.emulated).toBe(true);
  });
});

describe("the source build stays the fallback", () => {
  it("SMALLKV_BUILD_FROM_SOURCE=1 compiles the CPU addon at install (with the compiler on PATH)", () => {
    const work = mkdtempSync(join(tmpdir(), "smallkv-source-"));
    try {
      const tgz = basename(pack(join(ROOT, "packages", "tensor"), join(work, "tarballs")));
      const app = join(work, "app");
      mkdirSync(app);
      writeFileSync(
        join(app, "package.json"),
        JSON.stringify({
          name: "c",
          private: true,
          type: "module",
          dependencies: { "@smallkv/tensor": `file:../tarballs/${tgz}` },
        }),
      );
      const env = { ...process.env, SMALLKV_BUILD_FROM_SOURCE: "1", SMALLKV_CUDA: "0" };
      const r = npmInstall(app, env);
      expect(r.status, r.stderr.slice(-3000)).toBe(0);
      expect(`${r.stdout}${r.stderr}`).toMatch(/built build\/Release\/smallkv_tensor\.node \(CPU only\)/);
      writeFileSync(
        join(app, "m.mjs"),
        `import { buildInfo } from "@smallkv/tensor";\nconsole.log(JSON.stringify(buildInfo()));`,
      );
      const info = JSON.parse(execFileSync(process.execPath, ["m.mjs"], { cwd: app, encoding: "utf8" }));
      expect(info.prebuilt).toBe(false);
      expect(info.addon).toContain(join("build", "Release"));
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
