import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { checkpointName, isGguf } from "./checkpoint.js";

/** Bump when the graphs a checkpoint turns into change (op choices, quantization rules). */
const GRAPH_FORMAT = 3;

/** Sets of graphs kept; older ones (by last build) are removed. */
const KEEP = 24;

/** Remove all but the `keep` most recent complete sets (and abandoned half-built ones). */
function prune(root: string, keep: number): void {
  try {
    const sets = readdirSync(root)
      .map((f) => ({ f, t: statSync(join(root, f)).mtimeMs }))
      .sort((a, b) => b.t - a.t);
    const now = Date.now();
    let kept = 0;
    for (const { f, t } of sets) {
      const building = f.includes(".tmp-");
      if (building ? now - t > 3_600_000 : ++kept > keep)
        rmSync(join(root, f), { recursive: true, force: true });
    }
  } catch {
    // best effort
  }
}

/** What a cached set of graphs records beside its files. */
export interface CachedGraphs {
  key: string;
  layers: number;
  weightBytes: number;
  parameters: number;
}

/** Where built graphs are kept: $SMALLKV_CACHE, else ~/.cache/smallkv, else the temp folder. */
function cacheRoot(): string {
  const root = process.env.SMALLKV_CACHE ?? join(homedir(), ".cache", "smallkv");
  try {
    mkdirSync(join(root, "graphs"), { recursive: true });
    return join(root, "graphs");
  } catch {
    const t = join(tmpdir(), "smallkv-graphs");
    mkdirSync(t, { recursive: true });
    return t;
  }
}

/**
 * The key of a checkpoint's graphs: its config, its weight files (name, size, modification
 * time) and the load options. A changed checkpoint or option gets new graphs.
 */
export function graphKey(dir: string, options: Record<string, unknown>): string {
  const h = createHash("sha256");
  h.update(JSON.stringify({ GRAPH_FORMAT, options }));
  if (isGguf(dir)) {
    // One GGUF file: its path, size and modification time.
    const st = statSync(dir);
    h.update(`${dir}:${st.size}:${st.mtimeMs}`);
    return h.digest("hex").slice(0, 20);
  }
  h.update(readFileSync(join(dir, "config.json")));
  for (const f of readdirSync(dir).sort()) {
    if (!f.endsWith(".safetensors") && !f.endsWith(".json")) continue;
    const st = statSync(join(dir, f));
    h.update(`${f}:${st.size}:${st.mtimeMs}`);
  }
  return h.digest("hex").slice(0, 20);
}

function lookup(dir: string, options: Record<string, unknown>) {
  const key = graphKey(dir, options);
  const final = join(cacheRoot(), `${checkpointName(dir)}-${key}`);
  const ready = join(final, "ready.json");
  let hit: CachedGraphs | null = null;
  if (existsSync(ready)) {
    try {
      const meta = JSON.parse(readFileSync(ready, "utf8")) as CachedGraphs;
      if (meta.key === key) hit = meta;
    } catch {
      // a damaged record: build again
    }
  }
  return { key, final, hit };
}

/** The cached graphs of a checkpoint for these options, if a complete set is there (no side effects). */
export function findGraphs(dir: string, options: Record<string, unknown>): CachedGraphs | null {
  return lookup(dir, options).hit;
}

/**
 * The folder of a checkpoint's graphs for these options: `hit` when a complete set is there
 * (a second start skips reading and quantizing the layers), or a fresh folder to build into
 * and `commit` when done (atomic rename, so concurrent loaders never see half a set).
 */
export function graphFolder(
  dir: string,
  options: Record<string, unknown>,
): { dir: string; hit: CachedGraphs | null; commit(meta: Omit<CachedGraphs, "key">): string } {
  const { key, final, hit } = lookup(dir, options);
  if (hit) return { dir: final, hit, commit: () => final };
  const work = `${final}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  mkdirSync(work, { recursive: true });
  return {
    dir: work,
    hit: null,
    commit(meta) {
      writeFileSync(join(work, "ready.json"), JSON.stringify({ key, ...meta }));
      prune(dirname(final), KEEP);
      try {
        renameSync(work, final);
        return final;
      } catch {
        // Another loader committed first (its files may be in use): keep using ours; the
        // pruning removes it later.
        return work;
      }
    },
  };
}
