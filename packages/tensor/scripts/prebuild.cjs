#!/usr/bin/env node
// Builds the prebuilt linux-x64 addons that the published tarball carries (prebuilds/):
//   smallkv_tensor.x86-64-v2|v3|v4.node  the CPU kernels at three portable levels (SSE4.2,
//                                        AVX2 + FMA, AVX-512); the loader picks the best this
//                                        CPU runs (scripts/addon-path.cjs)
//   smallkv_cuda_emu.node                the CUDA emulator
//   smallkv_cuda.node                    the CUDA kernels for sm_80 and sm_90, cudart linked
//                                        statically (loads without a driver; reports no device)
//   libgomp.so.1                         OpenMP's runtime, found through RUNPATH $ORIGIN
//   manifest.json                        what was built from which sources
// Then rebuilds the development addon (build/Release, -march=native) as it was.
// Needs nvcc (the CUDA addon is part of every prebuild set). Run: pnpm --filter @smallkv/tensor prebuild
"use strict";
const { execFileSync } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { buildCuda, gypBuild, root, log } = require("./build.cjs");
const { LEVELS } = require("./addon-path.cjs");

const PLATFORM = `${process.platform}-${process.arch}`;
const out = path.join(root, "prebuilds", PLATFORM);

/** Hash of everything a prebuild is made from: native sources, binding.gyp and the build scripts. */
function sourceHash() {
  const files = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(path.join(root, "native"));
  files.push(path.join(root, "binding.gyp"), path.join(root, "scripts", "build.cjs"));
  const h = crypto.createHash("sha256");
  for (const f of files) {
    h.update(path.relative(root, f));
    h.update(fs.readFileSync(f));
  }
  return h.digest("hex");
}

function libgomp() {
  const out = execFileSync("sh", ["-c", "ldconfig -p | grep 'libgomp.so.1 '"], { encoding: "utf8" });
  const m = /=>\s*(\S+)/.exec(out);
  if (!m) throw new Error("libgomp.so.1 not found by ldconfig");
  return fs.realpathSync(m[1]);
}

function main() {
  if (PLATFORM !== "linux-x64") throw new Error(`prebuilds are made for linux-x64, not ${PLATFORM}`);
  process.env.SMALLKV_CUDA = "1";
  const cuda = buildCuda();
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  const release = path.join(root, "build", "Release");
  const files = {};
  const levels = LEVELS.map(([name]) => name).reverse();
  for (const march of levels) {
    log(`prebuild ${march}`);
    gypBuild(cuda, { march, rpathOrigin: true });
    const name = `smallkv_tensor.${march}.node`;
    fs.copyFileSync(path.join(release, "smallkv_tensor.node"), path.join(out, name));
    files[name] = { march };
  }
  // The emulator and the CUDA addon do not depend on the level (built with the last one).
  for (const name of ["smallkv_cuda_emu.node", "smallkv_cuda.node"]) {
    fs.copyFileSync(path.join(release, name), path.join(out, name));
    files[name] = {};
  }
  fs.copyFileSync(libgomp(), path.join(out, "libgomp.so.1"));
  files["libgomp.so.1"] = {
    from: "the build machine's GCC runtime (GPL-3.0 with the GCC Runtime Library Exception)",
  };
  for (const [name, meta] of Object.entries(files)) {
    const bytes = fs.readFileSync(path.join(out, name));
    meta.bytes = bytes.length;
    meta.sha256 = crypto.createHash("sha256").update(bytes).digest("hex");
  }
  const nvcc = execFileSync(process.env.NVCC || "nvcc", ["--version"], { encoding: "utf8" })
    .split("\n")
    .find((l) => l.includes("release"));
  const glibc = execFileSync("ldd", ["--version"], { encoding: "utf8" }).split("\n")[0];
  const manifest = {
    platform: PLATFORM,
    sources: sourceHash(),
    node: process.version,
    napi: 8,
    nvcc: nvcc?.trim() ?? null,
    cudaArchitectures: ["sm_80", "sm_90a", "compute_80 (PTX)"],
    glibc: glibc.trim(),
    files,
  };
  fs.writeFileSync(path.join(out, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  log(`wrote ${Object.keys(files).length} files to ${path.relative(root, out)}`);
  // Back to the development build (this machine's CPU).
  delete process.env.SMALLKV_MARCH;
  gypBuild(cuda, {});
}

module.exports = { sourceHash };

if (require.main === module) {
  try {
    main();
  } catch (e) {
    log(`prebuild failed: ${e.message}`);
    process.exit(1);
  }
}
