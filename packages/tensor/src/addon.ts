import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
/** The package root (dist/ and src/ sit one level below it). */
export const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

// One implementation for the install script and the runtime (scripts/ ships in the tarball).
const paths = require("../scripts/addon-path.cjs") as {
  addonPath(root: string, name: string, o?: { prebuiltOnly?: boolean }): string | null;
};

export type AddonName = "smallkv_tensor" | "smallkv_cuda_emu" | "smallkv_cuda";

/** The file an addon loads from: a source build, else the prebuilt one for this machine; null if neither. */
export function addonFile(name: AddonName): string | null {
  return paths.addonPath(PACKAGE_ROOT, name);
}

/** Load an addon by name (the caller checks for null first when absence is expected). */
export function loadAddon<T>(file: string): T {
  return require(file) as T;
}
