// The prebuilt addons the tarball carries: made from the current sources, each CPU level picked
// only where the CPU runs it, and every level passing the kernel suite against the references.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const { addonPath, supportedLevels, cpuFlags, LEVELS } = require("../scripts/addon-path.cjs");
const { sourceHash } = require("../scripts/prebuild.cjs");
const dir = join(root, "prebuilds", "linux-x64");
const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));

describe("prebuilt addons", () => {
  it("were made from the current native sources (else: pnpm --filter @smallkv/tensor prebuild)", () => {
    expect(manifest.sources).toBe(sourceHash());
  });

  it("every file the manifest lists is there, byte for byte", () => {
    const names = Object.keys(manifest.files).sort();
    expect(names).toEqual(
      [
        "libgomp.so.1",
        "smallkv_cuda.node",
        "smallkv_cuda_emu.node",
        ...LEVELS.map(([l]: [string]) => `smallkv_tensor.${l}.node`),
      ].sort(),
    );
    for (const n of names) {
      const sha = createHash("sha256")
        .update(readFileSync(join(dir, n)))
        .digest("hex");
      expect(sha, n).toBe(manifest.files[n].sha256);
    }
  });

  it("a CPU runs the best level its flags allow, and nothing above", () => {
    const v2 = ["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"];
    const v3 = [...v2, "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"];
    const v4 = [...v3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];
    expect(supportedLevels(new Set(v4))).toEqual(["x86-64-v4", "x86-64-v3", "x86-64-v2"]);
    expect(supportedLevels(new Set(v3))).toEqual(["x86-64-v3", "x86-64-v2"]);
    // AVX-512 without AVX2's companions is not v4 (each level needs the ones below).
    expect(
      supportedLevels(new Set([...v2, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"])),
    ).toEqual(["x86-64-v2"]);
    expect(supportedLevels(new Set(v3.filter((f) => f !== "fma")))).toEqual(["x86-64-v2"]);
    expect(supportedLevels(new Set(["sse2"]))).toEqual([]);
    expect(supportedLevels(null)).toEqual([]);
    const pick = (flags: string[]) =>
      addonPath(root, "smallkv_tensor", { prebuiltOnly: true, flags: new Set(flags) });
    expect(pick(v3)).toBe(join(dir, "smallkv_tensor.x86-64-v3.node"));
    expect(pick(v2)).toBe(join(dir, "smallkv_tensor.x86-64-v2.node"));
    expect(pick(["sse2"])).toBeNull();
  });

  // Each level this machine runs passes the kernel and decoder suites (against the TS references).
  for (const level of supportedLevels(cpuFlags()) as string[])
    it(`the ${level} addon passes the kernel and decoder suites`, () => {
      const r = spawnSync(
        process.execPath,
        [
          join(root, "node_modules", "vitest", "vitest.mjs"),
          "run",
          "test/kernels.test.ts",
          "test/decoder.test.ts",
        ],
        {
          cwd: root,
          env: {
            ...process.env,
            SMALLKV_PREBUILT: "1",
            SMALLKV_CPU_LEVEL: level,
            NO_COLOR: "1",
            FORCE_COLOR: "0",
          },
          encoding: "utf8",
        },
      );
      const out = `${r.stdout}${r.stderr}`;
      expect(r.status, out.slice(-3000)).toBe(0);
      const m = /Tests\s+(\d+) passed \((\d+)\)/.exec(out);
      expect(m, out.slice(-2000)).not.toBeNull();
      expect(Number(m![1])).toBeGreaterThan(50);
      expect(m![1]).toBe(m![2]);
      const info = spawnSync(
        process.execPath,
        [
          "--input-type=module",
          "-e",
          'import("@smallkv/tensor").then((t) => console.log(JSON.stringify(t.buildInfo())))',
        ],
        {
          cwd: root,
          env: { ...process.env, SMALLKV_PREBUILT: "1", SMALLKV_CPU_LEVEL: level },
          encoding: "utf8",
        },
      );
      const b = JSON.parse(info.stdout);
      expect(b.addon).toBe(join(dir, `smallkv_tensor.${level}.node`));
      expect(b.simd).toBe({ "x86-64-v2": "sse4.2", "x86-64-v3": "avx2", "x86-64-v4": "avx512" }[level]);
    });
});
