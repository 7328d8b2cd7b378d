// The native dense kernels on GGUF files (the default where the file's types allow) against
// the onnxruntime graphs of the same file and against the golden outputs.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { InvalidOptionError, logSoftmax, Model } from "../src/index.js";
import { golden, MODELS, maxAbsDiff } from "./helpers.js";

const GGUF = join(MODELS, "gguf");
const prompts = golden("stories260K").prompts;

async function lastLogits(m: Model, ids: number[]): Promise<Float32Array> {
  const [l] = await m.forward([{ seq: m.newSequence(), tokens: ids }]);
  return l;
}

describe("native dense kernels on GGUF files", () => {
  it("are the default for Q8_0 and Q4_0 files (onnxruntime for float ones), and take no onnxruntime session", async () => {
    for (const f of ["stories260K-q8_0.gguf", "stories260K-q4_0.gguf"]) {
      const m = await Model.load(join(GGUF, f), { threads: 1 });
      expect(m.denseKind, f).toBe("native");
      const ort = await Model.load(join(GGUF, f), { threads: 1, dense: "onnxruntime" });
      expect(ort.denseKind).toBe("onnxruntime");
    }
    expect((await Model.load(join(GGUF, "stories260K-f32.gguf"), { threads: 1 })).denseKind).toBe(
      "onnxruntime",
    );
  });

  it("F32 file (dense native asked for): the golden logits (1e-4), batched with mixed lengths too", async () => {
    const m = await Model.load(join(GGUF, "stories260K-f32.gguf"), { threads: 1, dense: "native" });
    expect(m.denseKind).toBe("native");
    for (const p of prompts)
      expect(maxAbsDiff(await lastLogits(m, p.ids), p.last_logits), p.name).toBeLessThan(1e-4);
    // One step with three sequences of different lengths (M = sum of their rows).
    const seqs = prompts.slice(0, 3).map(() => m.newSequence());
    const outs = await m.forward(prompts.slice(0, 3).map((p, i) => ({ seq: seqs[i], tokens: p.ids })));
    outs.forEach((l, i) => expect(maxAbsDiff(l, prompts[i].last_logits)).toBeLessThan(1e-4));
  });

  it("Q8_0 and Q4_0 files: next-token log-probabilities near the onnxruntime graphs' on the same blocks", async () => {
    // Both multiply the file's exact blocks; each rounds activations to int8 its own way
    // (ours as ggml: blocks of 32, amax/127).
    for (const [f, tol] of [
      ["stories260K-q8_0.gguf", 0.5],
      ["stories260K-q4_0.gguf", 0.75],
    ] as const) {
      const nat = await Model.load(join(GGUF, f), { threads: 1 });
      const ort = await Model.load(join(GGUF, f), { threads: 1, dense: "onnxruntime" });
      for (const p of prompts) {
        const a = logSoftmax(await lastLogits(nat, p.ids));
        const b = logSoftmax(await lastLogits(ort, p.ids));
        expect(maxAbsDiff(a, b), `${f} ${p.name}`).toBeLessThan(tol);
      }
    }
  });

  it("two threads give what one gives", async () => {
    const one = await Model.load(join(GGUF, "stories260K-q8_0.gguf"), { threads: 1 });
    const two = await Model.load(join(GGUF, "stories260K-q8_0.gguf"), { threads: 2 });
    const ids = prompts[2].ids;
    expect(maxAbsDiff(await lastLogits(one, ids), await lastLogits(two, ids))).toBeLessThan(1e-4);
  });

  it('dense "native" is refused where it cannot run, with InvalidOptionError', async () => {
    await expect(
      Model.load(join(MODELS, "stories260K"), { dense: "native", weights: "int8", groupSize: 64 }),
    ).rejects.toThrow(InvalidOptionError);
    await expect(
      Model.load(join(GGUF, "stories260K-q8_0.gguf"), { dense: "native", weights: "int8" }),
    ).rejects.toThrow(InvalidOptionError);
    await expect(Model.load(join(GGUF, "stories260K-q8_0.gguf"), { dense: "gpu" as never })).rejects.toThrow(
      InvalidOptionError,
    );
  });

  it("a checkpoint folder on the native kernels: f32 gives the golden logits, int8 (Q8_0 at load) stays near them", async () => {
    const f32 = await Model.load(join(MODELS, "stories260K"), { threads: 1, dense: "native" });
    expect(f32.denseKind).toBe("native");
    for (const p of prompts)
      expect(maxAbsDiff(await lastLogits(f32, p.ids), p.last_logits), p.name).toBeLessThan(1e-4);
    const q8 = await Model.load(join(MODELS, "stories260K"), {
      threads: 1,
      dense: "native",
      weights: "int8",
    });
    expect(q8.weightBytes).toBeLessThan(f32.weightBytes);
    for (const p of prompts) {
      const a = logSoftmax(await lastLogits(q8, p.ids));
      const b = logSoftmax(Float32Array.from(p.last_logits));
      expect(maxAbsDiff(a, b), p.name).toBeLessThan(0.5);
    }
  });
});
