import { describe, expect, it } from "vitest";
import { builtinPolicies, definePolicy, everyHead, range, scorerPolicy } from "../src/index.js";
import { runConformance } from "../src/testing/index.js";

describe("every built-in policy passes the conformance kit", () => {
  // Policies that read an assistant model run the kit on a model pair (smallkv.test.ts and their own tests).
  const plain = Object.entries(builtinPolicies).filter(([, f]) => !f.usesAssistant);
  it("covers the plain policies", () => expect(plain.map(([n]) => n)).toContain("reversible"));
  for (const [name, factory] of plain) {
    it(name, async () => {
      const report = await runConformance(factory);
      expect(report.failures).toEqual([]);
      expect(report.checks.length).toBeGreaterThanOrEqual(10);
    });
  }
});

describe("the reversible control's rankings pass the kit", () => {
  for (const scores of ["sum", "current", "decay"]) {
    it(`scores=${scores}`, async () => {
      const report = await runConformance(builtinPolicies.reversible, { options: { scores } });
      expect(report.failures).toEqual([]);
    });
  }
  it("refuses an unknown ranking", () => {
    expect(() =>
      builtinPolicies.reversible.create({ budget: 0.2, options: { scores: "weird" } }).select!(
        { config: { numLayers: 1, numHeads: 1, numKvHeads: 1 } } as never,
        0,
        { start: 4, T: 1 },
      ),
    ).toThrow(/scores must be one of/);
  });
});

describe("the kit catches broken policies", () => {
  it("one that exceeds its budget", async () => {
    const greedy = definePolicy({
      name: "greedy",
      select: (ctx) => ({ full: everyHead(ctx.config.numKvHeads, range(0, ctx.step.start)) }),
    });
    const r = await runConformance(greedy, { budgets: [0.2] });
    expect(r.passed).toBe(false);
    expect(r.failures.join("\n")).toMatch(/budget: at length \d+ the hot cost/);
  });

  it("one that selects future or duplicate positions", async () => {
    const future = definePolicy({
      name: "future",
      select: (ctx) => ({ full: everyHead(ctx.config.numKvHeads, Int32Array.of(ctx.step.start)) }),
    });
    const r = await runConformance(future, { budgets: [0.5] });
    expect(r.failures.join("\n")).toMatch(/causal|valid indices/);
    const dup = definePolicy({
      name: "dup",
      select: (ctx) => ({ full: everyHead(ctx.config.numKvHeads, Int32Array.of(0, 0)) }),
    });
    expect((await runConformance(dup, { budgets: [0.5] })).failures.join("\n")).toMatch(/no duplicates/);
  });

  it("one that is not deterministic", async () => {
    let calls = 0;
    const flaky = scorerPolicy({
      name: "flaky",
      score: (ctx) => Float32Array.from({ length: ctx.step.start }, (_, i) => (i * 7919 + calls++) % 13),
    });
    const r = await runConformance(flaky, { budgets: [0.3] });
    expect(r.failures.join("\n")).toMatch(/differ/);
  });
});
