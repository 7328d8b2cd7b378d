import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { definePolicy, everyHead } from "@smallkv/policies";
import { assetsDir, Model } from "@smallkv/runner";
import { beforeAll, describe, expect, it } from "vitest";
import {
  formatEval,
  formatIsoMemory,
  longRangePositions,
  makeWindows,
  runEval,
  splitDocuments,
} from "../src/index.js";

const models = join(assetsDir(), "models");
const textFile = join(assetsDir(), "data", "tinystories-valid.txt");

/** Drops every old token: attention sees only the current one. */
const lastOnly = definePolicy({
  name: "last-only",
  select: (ctx) => ({ full: everyHead(ctx.config.numKvHeads, new Int32Array(0)) }),
});

describe("documents and windows", () => {
  it("splits story units and cuts windows that fit the context, deterministically", async () => {
    const docs = splitDocuments("Once upon a time, a cat.\n\nIt ran.\n\nOnce there was a dog.\n\nThe end.");
    expect(docs).toEqual(["Once upon a time, a cat.\nIt ran.", "Once there was a dog.\nThe end."]);
    const model = await Model.load(join(models, "stories260K"));
    const text = readFileSync(textFile, "utf8");
    const a = makeWindows(text, model.tokenizer, {
      length: 200,
      documents: 5,
      perDocument: 2,
      seed: 3,
      maxPositions: 512,
    });
    const b = makeWindows(text, model.tokenizer, {
      length: 200,
      documents: 5,
      perDocument: 2,
      seed: 3,
      maxPositions: 512,
    });
    expect(a).toEqual(b);
    expect(new Set(a.map((w) => w.document)).size).toBe(5);
    for (const w of a) expect(w.ids.length).toBe(200);
    expect(() =>
      makeWindows(text, model.tokenizer, {
        length: 600,
        documents: 1,
        perDocument: 1,
        seed: 0,
        maxPositions: 512,
      }),
    ).toThrow(/do not fit/);
  });
});

describe("smallkv eval", () => {
  let model: Model;
  let slm: Model;
  beforeAll(async () => {
    model = await Model.load(join(models, "stories260K"));
    slm = await Model.load(join(models, "stories260K-slm"));
  });
  const base = {
    model: "",
    textFile,
    prefix: 120,
    continuation: 24,
    greedy: 16,
    documents: 4,
    progress: false,
  };

  it("budget-100% rows equal Full exactly; a drop-everything policy is clearly worse on every metric", async () => {
    const out = mkdtempSync(join(tmpdir(), "smallkv-eval-"));
    const r = await runEval({
      ...base,
      loaded: { model, assistants: [slm] },
      policies: ["h2o", "smallkv", "last-only"],
      factories: { "last-only": lastOnly as never },
      budgets: [0.2, 1],
      out,
    });
    for (const row of r.rows.filter((x) => x.budget === 1 && x.policy !== "last-only")) {
      expect(row.pplRatio).toBe(1);
      expect(row.kl).toBe(0);
      expect(row.top1).toBe(1);
      expect(row.greedyMatch).toBe(1);
      expect(row.greedyPrefix).toBe(16);
    }
    const bad = r.rows.find((x) => x.policy === "last-only" && x.budget === 0.2)!;
    expect(bad.pplRatio).toBeGreaterThan(1.5);
    expect(bad.kl).toBeGreaterThan(0.3);
    expect(bad.top1).toBeLessThan(0.8);
    expect(bad.greedyMatch).toBeLessThan(0.8);
    expect(bad.greedyPrefix).toBeLessThan(16);
    expect(bad.hotFraction).toBeLessThan(0.05);
    // Compressed rows use their budget honestly.
    const h = r.rows.find((x) => x.policy === "h2o" && x.budget === 0.2)!;
    expect(h.hotFraction).toBeLessThanOrEqual(0.2);
    expect(h.hotFraction).toBeGreaterThan(0.12);
    // Outputs: JSON, SVG + PNG plots, the matching heatmap.
    const json = JSON.parse(readFileSync(r.json!, "utf8"));
    expect(json.rows.length).toBe(6);
    expect(r.plots.filter((p) => p.endsWith(".png")).length).toBe(8);
    for (const p of r.plots) expect(existsSync(p)).toBe(true);
    expect(formatEval(r)).toMatch(/last-only/);
    // Attention coverage: Full's rows at 100%, almost nothing when only the current token is read.
    for (const row of r.rows.filter((x) => x.budget === 1 && x.policy !== "last-only")) {
      expect(row.coverage).toBeCloseTo(1, 6);
      expect(row.attentionL1).toBeLessThan(1e-4);
    }
    expect(bad.coverage).toBeLessThan(0.5);
    expect(bad.attentionL1).toBeGreaterThan(0.5);
    expect(h.coverage).toBeGreaterThan(bad.coverage);
    // The assistant's KV is resident on top of SmallKV's hot KV; iso-memory rows compare at that total.
    const s = r.rows.find((x) => x.policy === "smallkv" && x.budget === 0.2)!;
    expect(s.assistantKvBytes).toBeGreaterThan(0);
    expect(s.residentFraction).toBeGreaterThan(s.hotFraction + 0.2);
    expect(h.residentFraction).toBeCloseTo(h.hotFraction, 9);
    const iso = r.isoMemory.find((x) => x.label === "smallkv" && x.budget === 0.2)!;
    expect(Object.keys(iso.rivals)).toEqual(["h2o", "last-only"]);
    expect(iso.rivals.h2o[2]).toBeGreaterThan(s.residentFraction - 0.05);
    expect(formatIsoMemory(r)).toMatch(/smallkv @ 20%/);
  });

  it("finds the long-range tokens: seen more than 64 tokens back but not since", () => {
    const ids = Array.from({ length: 200 }, (_, i) => 1000 + i);
    ids[10] = 7; // far occurrence
    ids[150] = 7; // target at continuation offset 0 (prefix 150): long-range
    ids[151] = 8;
    ids[120] = 8; // 8 occurred 31 tokens back: not long-range
    ids[152] = 9; // never seen before: not long-range
    const w = [{ ids, document: 0 }] as never;
    expect(longRangePositions(w, 150, 3, () => true)).toEqual([[0]]);
    expect(longRangePositions(w, 150, 3, (id) => id !== 7)).toEqual([[]]);
  });

  it("is deterministic for a fixed seed", async () => {
    const o = { ...base, loaded: { model }, policies: ["tova", "snapkv"], budgets: [0.1], seed: 5 };
    const a = await runEval(o);
    const b = await runEval(o);
    expect(a.rows).toEqual(b.rows);
    expect(a.rows[0].kl).toBeGreaterThan(0);
  });
});
