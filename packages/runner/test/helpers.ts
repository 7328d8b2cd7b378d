import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  assetsDir,
  type KvPolicyHook,
  type LayerSelection,
  type Sequence,
  type StepInfo,
} from "../src/index.js";

export const MODELS = join(assetsDir(), "models");
export const GOLDEN = join(MODELS, "golden");
export const LLM = join(MODELS, "stories260K");
export const SLM = join(MODELS, "stories260K-slm");
export const SLM_L = join(MODELS, "stories260K-slm-l");

export interface GoldenPrompt {
  name: string;
  ids: number[];
  last_logits: number[];
  greedy_ids: number[];
  greedy_text: string;
  text: string;
}

export function golden(model: string): {
  prompts: GoldenPrompt[];
  attention: { file: string; ids: number[]; shape: number[] };
} {
  return JSON.parse(readFileSync(join(GOLDEN, `${model}.json`), "utf8"));
}

export function tempDir(prefix = "smallkv-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Largest |a - b|; arrays of different lengths are an error (an empty result never passes). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** A policy that changes its selection every step and layer: sinks, a stride, recent rows; V-only for the rest of a window; per-query-head on odd layers. */
export function churn(mode: "literal" | "mass"): KvPolicyHook {
  let step = 0;
  return {
    name: `churn-${mode}`,
    select(seq: Sequence, layer: number, st: StepInfo): LayerSelection | null {
      if (st.start < 4) return null;
      if (layer === 0) step++;
      const perQ = layer % 2 === 1;
      const heads = perQ ? seq.config.numHeads : seq.config.numKvHeads;
      const full: Int32Array[] = [];
      const vOnly: Int32Array[] = [];
      for (let g = 0; g < heads; g++) {
        const f: number[] = [];
        const v: number[] = [];
        for (let p = 0; p < st.start; p++) {
          const keep = p < 2 || p >= st.start - 3 || (p + g + step) % 3 === 0;
          if (keep) f.push(p);
          else if ((p + step) % 2 === 0) v.push(p);
        }
        full.push(Int32Array.from(f));
        vOnly.push(Int32Array.from(v));
      }
      return { full, vOnly, perQueryHead: perQ, combine: mode };
    },
    vOnlyWeights(seq: Sequence, _layer: number, st: StepInfo, sel: LayerSelection): Float32Array {
      const vsel = sel.vOnly as Int32Array[];
      const vmax = Math.max(...vsel.map((x) => x.length));
      const Hq = seq.config.numHeads;
      const w = new Float32Array(Hq * st.T * vmax);
      for (let i = 0; i < w.length; i++) w[i] = 0.01 + ((i * 7919) % 13) / 400;
      return w;
    },
    wantsAttention: () => ({ fromRow: 0 }),
  };
}
