import { describe, expect, it } from "vitest";
import { InvalidOptionError, Model } from "../src/index.js";
import { churn, LLM, maxAbsDiff } from "./helpers.js";

// The CPU hot set either holds copies of the selected rows ("copy": contiguous float rows,
// refilled by the difference) or reads them from the store in place ("indexed"). Both must
// give the same logits and count the same moved rows, from a float or an int8 store.
describe("CPU hot rows: copy and indexed", () => {
  for (const kvCold of ["f32", "int8"] as const) {
    it(`give the same logits and moved rows over 12 re-chosen steps (${kvCold} store)`, async () => {
      const [copy, indexed] = await Promise.all(
        (["copy", "indexed"] as const).map((hotRows) => Model.load(LLM, { hotRows, kvCold })),
      );
      const ids = copy.tokenizer.encode(
        "Once upon a time, there was a little girl named Lily. She loved to play.",
      );
      for (const mode of ["mass", "literal"] as const) {
        const a = copy.newSequence(churn(mode));
        const b = indexed.newSequence(churn(mode));
        let tokens = ids.slice(0, 6);
        let worst = 0;
        for (let step = 0; step < 12; step++) {
          const [[la], [lb]] = await Promise.all([
            copy.forward([{ seq: a, tokens }]),
            indexed.forward([{ seq: b, tokens }]),
          ]);
          expect(a.fault).toBeNull();
          expect(b.fault).toBeNull();
          worst = Math.max(worst, maxAbsDiff(la, lb));
          tokens = [ids[6 + step] ?? 1];
        }
        expect(worst).toBeLessThan(1e-4);
        expect(a.stats().movedRows).toBeGreaterThan(0);
        expect(a.stats().movedRows).toBe(b.stats().movedRows);
        // The copies are float32 rows; the indexed set reads the store's own rows.
        expect(a.stats().hotBytes).toBeGreaterThanOrEqual(b.stats().hotBytes);
      }
      copy.close();
      indexed.close();
    });
  }

  it("refuses an unknown mode", async () => {
    await expect(Model.load(LLM, { hotRows: "mapped" as never })).rejects.toThrow(InvalidOptionError);
  });
});
