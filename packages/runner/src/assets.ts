import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Where the shared assets (models, data) live: $SMALLKV_ASSETS, else `../shared` beside
 * the repository root (found by walking up to pnpm-workspace.yaml), else `../shared`
 * beside the current directory.
 */
export function assetsDir(): string {
  if (process.env.SMALLKV_ASSETS) return resolve(process.env.SMALLKV_ASSETS);
  for (const start of [dirname(fileURLToPath(import.meta.url)), process.cwd()]) {
    let dir = start;
    while (true) {
      if (existsSync(join(dir, "pnpm-workspace.yaml"))) return resolve(dir, "..", "shared");
      const up = dirname(dir);
      if (up === dir) break;
      dir = up;
    }
  }
  return resolve(process.cwd(), "..", "shared");
}

/**
 * A model argument: a checkpoint folder or GGUF file path, or the name of a model under
 * <assets>/models (a `*.gguf` name also under <assets>/models/gguf).
 */
export function resolveModelDir(arg: string): string {
  if (existsSync(join(arg, "config.json")) || existsSync(arg)) return resolve(arg);
  const named = join(assetsDir(), "models", arg);
  if (existsSync(named)) return named;
  const gguf = join(assetsDir(), "models", "gguf", arg);
  return arg.toLowerCase().endsWith(".gguf") && existsSync(gguf) ? gguf : resolve(arg);
}
