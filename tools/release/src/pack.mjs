// Pack every publishable workspace package as `pnpm publish` would (workspace: ranges
// rewritten to real ones, `files` applied), and check what each tarball holds.
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** The workspace packages that are published (not private), by folder. */
export function publishable() {
  const out = [];
  for (const group of ["packages", "apps", "tools"])
    for (const d of readdirSync(join(ROOT, group)).sort()) {
      const dir = join(ROOT, group, d);
      let pkg;
      try {
        pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
      } catch {
        continue;
      }
      if (!pkg.private) out.push({ dir, name: pkg.name, version: pkg.version });
    }
  return out;
}

/** Pack one package into `dest`; its tarball path. */
export function pack(dir, dest) {
  mkdirSync(dest, { recursive: true });
  const before = new Set(readdirSync(dest));
  execFileSync("pnpm", ["pack", "--pack-destination", dest], { cwd: dir, stdio: "pipe" });
  const made = readdirSync(dest).filter((f) => f.endsWith(".tgz") && !before.has(f));
  if (made.length !== 1) throw new Error(`pnpm pack in ${dir} made ${made.length} tarballs`);
  return join(dest, made[0]);
}

/** The entries of a tarball (paths below "package/"). */
export function entries(tgz) {
  return execFileSync("tar", ["-tzf", tgz], { encoding: "utf8" })
    .split("\n")
    .filter((l) => l && !l.endsWith("/"))
    .map((l) => l.replace(/^package\//, ""));
}

/** The package.json inside a tarball. */
export function packedManifest(tgz) {
  return JSON.parse(execFileSync("tar", ["-xzOf", tgz, "package/package.json"], { encoding: "utf8" }));
}

const COMMON = ["package.json", "README.md", "CHANGELOG.md", "LICENSE", "dist/index.js", "dist/index.d.ts"];
/** What each package's tarball must hold beyond COMMON. */
const REQUIRED = {
  "@smallkv/tensor": [
    "binding.gyp",
    "native/addon.cc",
    "scripts/build.cjs",
    "scripts/addon-path.cjs",
    "prebuilds/linux-x64/manifest.json",
    "prebuilds/linux-x64/smallkv_tensor.x86-64-v2.node",
    "prebuilds/linux-x64/smallkv_tensor.x86-64-v3.node",
    "prebuilds/linux-x64/smallkv_tensor.x86-64-v4.node",
    "prebuilds/linux-x64/smallkv_cuda_emu.node",
    "prebuilds/linux-x64/smallkv_cuda.node",
    "prebuilds/linux-x64/libgomp.so.1",
  ],
  "@smallkv/server": ["public/index.html"],
  "@smallkv/cli": ["dist/bin.js"],
};
/** What no tarball may hold: tests, fixtures, build intermediates, sources that are not shipped. */
const FORBIDDEN = [
  [/(^|\/)test\//, "a test folder"],
  [/\.test\.[cm]?[jt]s$/, "a test file"],
  [/(^|\/)fixtures?\//, "fixtures"],
  [/^build\//, "a node-gyp build folder"],
  [/^build-cuda\//, "nvcc objects"],
  [/(^|\/)node_modules\//, "node_modules"],
  [/\.tsbuildinfo$/, "a TypeScript build cache"],
  [/(^|\/)\.turbo\//, "a turbo cache"],
  [/^src\/.*\.ts$/, "TypeScript sources (dist is shipped)"],
  [/\.o$/, "an object file"],
  [/\.tgz$/, "a tarball"],
];

/** Problems with one packed package: missing files, forbidden ones, unpublishable ranges. */
export function check(name, files, manifest) {
  const problems = [];
  const have = new Set(files);
  for (const f of [...COMMON, ...(REQUIRED[name] ?? [])])
    if (!have.has(f)) problems.push(`${name}: missing ${f}`);
  for (const f of files)
    for (const [re, what] of FORBIDDEN) if (re.test(f)) problems.push(`${name}: holds ${what}: ${f}`);
  for (const field of ["dependencies", "peerDependencies", "optionalDependencies"])
    for (const [dep, range] of Object.entries(manifest[field] ?? {}))
      if (String(range).startsWith("workspace:"))
        problems.push(`${name}: ${field}.${dep} is still ${range} (publish rewrites it only through pnpm)`);
  return problems;
}

/** Pack and check every publishable package; a row per package with its size. */
export function packAll(dest) {
  return publishable().map((p) => {
    const tgz = pack(p.dir, dest);
    const files = entries(tgz);
    const manifest = packedManifest(tgz);
    const unpacked = Number(
      execFileSync("sh", ["-c", `tar -xzOf "${tgz}" | wc -c`], { encoding: "utf8" }).trim(),
    );
    return {
      name: p.name,
      version: manifest.version,
      tarball: tgz,
      bytes: statSync(tgz).size,
      unpackedBytes: unpacked,
      files: files.length,
      problems: check(p.name, files, manifest),
      manifest,
    };
  });
}

const kib = (b) => `${(b / 1024).toFixed(1)} KiB`;

/** The size table (markdown). */
export function sizeTable(rows) {
  const lines = [
    "| package | version | tarball | unpacked | files |",
    "| --- | --- | ---: | ---: | ---: |",
    ...rows.map(
      (r) => `| ${r.name} | ${r.version} | ${kib(r.bytes)} | ${kib(r.unpackedBytes)} | ${r.files} |`,
    ),
  ];
  return lines.join("\n");
}
