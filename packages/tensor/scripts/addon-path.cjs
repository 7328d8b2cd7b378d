// Which native addon file to load: a source build (build/Release) when there is one, else the
// prebuilt one for this platform, and for the CPU addon the highest x86-64 level this CPU runs
// (v4: AVX-512, v3: AVX2 + FMA, v2: SSE4.2). Shared by the install script and the runtime.
// node-gyp-build picks one addon per package by ABI tags; this package has three addons and
// CPU levels, which its tags do not describe.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

/** x86-64 microarchitecture levels, best first, with the /proc/cpuinfo flags each needs. */
const LEVELS = [
  ["x86-64-v4", ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]],
  ["x86-64-v3", ["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"]],
  ["x86-64-v2", ["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"]],
];

/** The CPU flags of this machine (Linux), or null where /proc/cpuinfo is not readable. */
function cpuFlags() {
  try {
    const line = fs
      .readFileSync("/proc/cpuinfo", "utf8")
      .split("\n")
      .find((l) => l.startsWith("flags"));
    return line ? new Set(line.split(":")[1].trim().split(/\s+/)) : null;
  } catch {
    return null;
  }
}

/** The levels a CPU with these flags runs, best first (each level needs the ones below it too). */
function supportedLevels(flags) {
  if (!flags) return [];
  const out = [];
  for (let i = LEVELS.length - 1; i >= 0; i--) {
    const [name, need] = LEVELS[i];
    if (!need.every((f) => flags.has(f))) break;
    out.unshift(name);
  }
  return out;
}

/**
 * The addon file for `name` (smallkv_tensor, smallkv_cuda_emu, smallkv_cuda) under package
 * root `root`, or null. `SMALLKV_CPU_LEVEL` caps the CPU addon's level (x86-64-v2 forces the
 * most portable one); `SMALLKV_PREBUILT=1` skips a source build.
 */
function addonPath(root, name, o = {}) {
  // SMALLKV_PREBUILT=1: the prebuilt addon even where a source build exists (checking prebuilds).
  if (!o.prebuiltOnly && process.env.SMALLKV_PREBUILT !== "1") {
    const built = path.join(root, "build", "Release", `${name}.node`);
    if (fs.existsSync(built)) return built;
  }
  const dir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
  if (name !== "smallkv_tensor") {
    const f = path.join(dir, `${name}.node`);
    return fs.existsSync(f) ? f : null;
  }
  let levels = supportedLevels(o.flags ?? cpuFlags());
  const cap = process.env.SMALLKV_CPU_LEVEL;
  if (cap) levels = levels.slice(Math.max(0, levels.indexOf(cap)));
  for (const level of levels) {
    const f = path.join(dir, `${name}.${level}.node`);
    if (fs.existsSync(f)) return f;
  }
  return null;
}

module.exports = { addonPath, supportedLevels, cpuFlags, LEVELS };
