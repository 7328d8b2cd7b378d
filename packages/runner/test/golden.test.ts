import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { type AttentionObservation, Generator, type KvPolicyHook, Model } from "../src/index.js";
import { GOLDEN, golden, MODELS, maxAbsDiff } from "./helpers.js";

for (const name of ["stories260K", "stories260K-slm", "stories260K-slm-l"]) {
  describe(`${name} matches the golden outputs of the reference implementation`, () => {
    let model: Model;
    const g = golden(name);
    beforeAll(async () => {
      model = await Model.load(join(MODELS, name));
    });

    for (const p of g.prompts) {
      it(`last-position logits of "${p.name}" within 1e-4`, async () => {
        const seq = model.newSequence();
        const [logits] = await model.forward([{ seq, tokens: p.ids }]);
        expect(logits.length).toBe(512);
        expect(maxAbsDiff(logits, p.last_logits)).toBeLessThan(1e-4);
      });

      it(`greedy ids after "${p.name}" are exactly the golden ones`, async () => {
        const r = await new Generator(model).generate(p.ids, {
          temperature: 0,
          maxTokens: 64,
          stopTokens: [],
        });
        expect(r.tokens).toEqual(p.greedy_ids);
      });
    }

    it("attention probabilities seen through the policy hook match the golden matrices", async () => {
      const [L, H, T] = g.attention.shape;
      const want = new Float32Array(readFileSync(join(GOLDEN, g.attention.file)).buffer.slice(0));
      const seen: AttentionObservation[] = [];
      const observer: KvPolicyHook = {
        name: "observer",
        wantsAttention: () => "probs",
        observe: (_s, o) => seen.push(o),
      };
      const seq = model.newSequence(observer);
      await model.forward([{ seq, tokens: g.attention.ids }]);
      expect(seen.length).toBe(L);
      let worst = 0;
      for (const o of seen) {
        const ref = want.subarray(o.layer * H * T * T, (o.layer + 1) * H * T * T);
        worst = Math.max(worst, maxAbsDiff(o.probs, ref));
      }
      expect(worst).toBeLessThan(1e-5);
    });
  });
}
