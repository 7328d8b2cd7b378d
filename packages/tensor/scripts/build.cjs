#!/usr/bin/env node
// Builds the native addon on install: CUDA objects with nvcc when it is found, then
// node-gyp configure + build (incremental: pnpm re-runs install scripts often).
//   SMALLKV_CUDA=0 forces a CPU-only build, SMALLKV_CUDA=1 makes a missing nvcc an error.
//   SMALLKV_PORTABLE=1 builds for x86-64-v2 instead of -march=native (binaries that travel);
//   SMALLKV_MARCH=x86-64-v3 (or -v4) picks another portable level (scripts/prebuild.cjs).
//   SMALLKV_BUILD_FROM_SOURCE=1 builds even where a prebuilt addon would do.
// An installed tarball carries prebuilt linux-x64 addons (prebuilds/): when one loads here the
// install compiles nothing, so no compiler, make or Python is needed. A development checkout
// (it has src/) always builds from source, for this machine's CPU.
"use strict";
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const log = (m) => process.stderr.write(`[@smallkv/tensor] ${m}\n`);

function findNvcc() {
  const candidates = [
    process.env.NVCC,
    process.env.CUDA_HOME && path.join(process.env.CUDA_HOME, "bin", "nvcc"),
    "/usr/local/cuda/bin/nvcc",
  ].filter(Boolean);
  for (const c of candidates) if (fs.existsSync(c)) return c;
  try {
    return execFileSync("sh", ["-c", "command -v nvcc"], { encoding: "utf8" }).trim() || null;
  } catch {
    return null;
  }
}

function cudaHome(nvcc) {
  // /usr/local/bin/nvcc may be a wrapper script, so realpath(nvcc)/.. is not the CUDA root.
  for (const c of [process.env.CUDA_HOME, "/usr/local/cuda", path.resolve(path.dirname(nvcc), "..")]) {
    if (c && fs.existsSync(path.join(c, "lib64", "libcudart_static.a"))) return c;
  }
  return null;
}

function buildCuda() {
  const want = process.env.SMALLKV_CUDA;
  if (want === "0") return null;
  const nvcc = findNvcc();
  const home = nvcc && cudaHome(nvcc);
  if (!nvcc || !home) {
    if (want === "1") throw new Error("SMALLKV_CUDA=1 but nvcc/libcudart_static.a was not found");
    log("nvcc not found: building the CPU-only addon (CUDA entry points are stubs)");
    return null;
  }
  const outDir = path.join(root, "build-cuda");
  fs.mkdirSync(outDir, { recursive: true });
  // native/*.cu go into the main addon (device query); native/cuda/*.cu are the kernels and
  // runtime of the device addon (smallkv_cuda.node).
  const info = compileAll(nvcc, path.join(root, "native"), outDir, "cuda_info_all.o");
  const dev = compileAll(nvcc, path.join(root, "native", "cuda"), outDir, "cuda_dev_all.o");
  if (!info || !dev) return null;
  return { obj: info, devObj: dev, home };
}

/**
 * nvcc's targets: sm_80, sm_90a and PTX for later GPUs; SMALLKV_CUDA_ARCHS (e.g. "90") builds
 * only those (the device check builds for the GPU it runs on, in half the time).
 */
function gencode() {
  const want = (process.env.SMALLKV_CUDA_ARCHS ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const archs = want.length > 0 ? want.map((a) => (a === "90" ? "90a" : a)) : ["80", "90a"];
  const flags = archs.flatMap((a) => ["-gencode", `arch=compute_${a},code=sm_${a}`]);
  if (want.length === 0) flags.push("-gencode", "arch=compute_80,code=compute_80");
  return flags;
}

function compileAll(nvcc, dir, outDir, combinedName) {
  const sources = fs.readdirSync(dir).filter((f) => f.endsWith(".cu"));
  const headers = fs.readdirSync(dir).filter((f) => f.endsWith(".h") || f.endsWith(".cuh"));
  const objects = [];
  for (const src of sources) {
    const srcPath = path.join(dir, src);
    const obj = path.join(outDir, `${path.basename(dir)}_${src.replace(/\.cu$/, ".o")}`);
    const newest = Math.max(
      fs.statSync(srcPath).mtimeMs,
      ...headers.map((h) => fs.statSync(path.join(dir, h)).mtimeMs),
    );
    if (!fs.existsSync(obj) || fs.statSync(obj).mtimeMs < newest) {
      log(`nvcc ${path.relative(root, srcPath)}`);
      execFileSync(
        nvcc,
        [
          "-c",
          "-O3",
          "-std=c++17",
          "-Xcompiler",
          "-fPIC",
          "--cudart",
          "static",
          ...gencode(),
          "-o",
          obj,
          srcPath,
        ],
        { stdio: "inherit" },
      );
    }
    objects.push(obj);
  }
  if (objects.length === 0) return null;
  // Link the objects as one relocatable object so gyp gets a single path.
  const combined = path.join(outDir, combinedName);
  execFileSync("ld", ["-r", "-o", combined, ...objects]);
  return combined;
}

/** Configure and build with node-gyp; `extra` adds gyp variables (march, rpath). */
function gypBuild(cuda, extra = {}) {
  const nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
  // Always pass the headers of the running Node: node-gyp would otherwise try to download them.
  const nodedir = path.resolve(process.execPath, "..", "..");
  const hasHeaders = fs.existsSync(path.join(nodedir, "include", "node", "node_api.h"));
  const march = extra.march ?? process.env.SMALLKV_MARCH;
  const portable = !!march || process.env.SMALLKV_PORTABLE === "1";
  const gypVars = [
    `--with_cuda=${cuda ? "true" : "false"}`,
    `--cuda_obj=${cuda ? cuda.obj : ""}`,
    `--cuda_dev_obj=${cuda ? cuda.devObj : ""}`,
    `--cuda_home=${cuda ? cuda.home : "/usr/local/cuda"}`,
    `--portable=${portable ? "true" : "false"}`,
    `--march=${march ?? "x86-64-v2"}`,
    `--rpath_origin=${extra.rpathOrigin ? "true" : "false"}`,
  ];
  const common = hasHeaders ? [`--nodedir=${nodedir}`] : [];
  const run = (args) => execFileSync(process.execPath, [nodeGyp, ...args], { cwd: root, stdio: "inherit" });
  run(["configure", ...common, ...gypVars]);
  run(["build", ...common, `--jobs=${Math.max(1, require("node:os").availableParallelism?.() ?? 2)}`]);
}

/** The prebuilt addon this machine would load, if the package has one that loads here. */
function usablePrebuild() {
  const { addonPath } = require("./addon-path.cjs");
  const file = addonPath(root, "smallkv_tensor", { prebuiltOnly: true });
  if (!file) return null;
  // Load it in a child process: a missing system library or a too-old glibc fails there, not here.
  try {
    execFileSync(process.execPath, ["-e", `require(${JSON.stringify(file)}).buildInfo()`], { stdio: "pipe" });
    return file;
  } catch (e) {
    log(
      `the prebuilt addon does not load here (${
        String(e.stderr ?? e.message)
          .trim()
          .split("\n")[0]
      }): building from source`,
    );
    return null;
  }
}

function main() {
  const devCheckout = fs.existsSync(path.join(root, "src"));
  if (!devCheckout && process.env.SMALLKV_BUILD_FROM_SOURCE !== "1") {
    const file = usablePrebuild();
    if (file) {
      log(
        `using the prebuilt addon ${path.relative(root, file)} (set SMALLKV_BUILD_FROM_SOURCE=1 to compile instead)`,
      );
      return;
    }
  }
  const cuda = buildCuda();
  gypBuild(cuda);
  log(
    `built ${path.join("build", "Release", "smallkv_tensor.node")} (${cuda ? "with CUDA" : "CPU only"}), build/Release/smallkv_cuda_emu.node${cuda ? " and build/Release/smallkv_cuda.node" : ""}`,
  );
}

module.exports = { buildCuda, gypBuild, root, log };

if (require.main === module) {
  try {
    main();
  } catch (e) {
    log(`build failed: ${e.message}`);
    process.exit(1);
  }
}
