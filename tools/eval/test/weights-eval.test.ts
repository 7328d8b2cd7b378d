import { join } from "node:path";
import { assetsDir } from "@smallkv/runner";
import { describe, expect, it } from "vitest";
import { runWeightsEval } from "../src/index.js";

describe("eval-weights", () => {
  it("compares an int8 KV store with the f32 reference on real text (perplexity, KL, top-1)", async () => {
    const rows = await runWeightsEval({
      model: "stories260K",
      variants: [{ weights: "f32", kvCold: "int8" }],
      textFile: join(assetsDir(), "data", "tinystories-valid.txt"),
      documents: 3,
      tokens: 96,
      threads: 1,
    });
    expect(rows.map((r) => [r.weights, r.kvCold])).toEqual([
      ["f32", "f32"],
      ["f32", "int8"],
    ]);
    const q = rows[1];
    expect(q.groupSize).toBeNull();
    expect(Math.abs(q.pplIncrease)).toBeLessThan(0.01);
    expect(q.kl).toBeGreaterThan(0);
    expect(q.kl).toBeLessThan(0.01);
    expect(q.top1Agreement).toBeGreaterThan(0.9);
  });
});
