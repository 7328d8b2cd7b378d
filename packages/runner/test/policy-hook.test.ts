import { beforeAll, describe, expect, it } from "vitest";
import {
  Generator,
  type KvPolicyHook,
  Model,
  PolicyError,
  type Sequence,
  type StepInfo,
} from "../src/index.js";
import { LLM } from "./helpers.js";

/** Keeps the first `sinks` and the last `window` tokens of every kv head. */
function windowHook(sinks: number, window: number): KvPolicyHook {
  return {
    name: "window",
    select(seq: Sequence, _layer: number, step: StepInfo) {
      const n = step.start;
      const keep: number[] = [];
      for (let p = 0; p < n; p++) if (p < sinks || p >= n - window) keep.push(p);
      return { full: Array.from({ length: seq.config.numKvHeads }, () => Int32Array.from(keep)) };
    },
  };
}

describe("KV policy hook", () => {
  let model: Model;
  beforeAll(async () => {
    model = await Model.load(LLM);
  });

  it("a selection that keeps everything gives exactly the full-cache tokens", async () => {
    const g = new Generator(model);
    const full = await g.generate("Once upon a time", { temperature: 0, maxTokens: 30, stopTokens: [] });
    const kept = await g.generate("Once upon a time", {
      temperature: 0,
      maxTokens: 30,
      stopTokens: [],
      policy: windowHook(0, 10_000),
    });
    expect(kept.tokens).toEqual(full.tokens);
  });

  it("a narrow selection changes what attention reads, and the hook sees only those keys", async () => {
    const seen: number[] = [];
    const hook: KvPolicyHook = {
      ...windowHook(1, 3),
      wantsAttention: () => "probs",
      observe: (_s, o) => {
        if (o.T === 1) seen.push(o.keyPositions[0].length);
      },
    };
    const g = new Generator(model);
    const full = await g.generate("Once upon a time, there was a girl", {
      temperature: 0,
      maxTokens: 30,
      stopTokens: [],
    });
    const narrow = await g.generate("Once upon a time, there was a girl", {
      temperature: 0,
      maxTokens: 30,
      stopTokens: [],
      policy: hook,
    });
    expect(narrow.tokens).not.toEqual(full.tokens);
    // 1 sink + 3 recent + the new token itself.
    expect(new Set(seen)).toEqual(new Set([5]));
  });

  it("hot-set stats follow the selection; a sliding window moves no row", async () => {
    const g = new Generator(model);
    const s = g.submit("Once upon a time, there was a little girl named Lily. She", {
      temperature: 0,
      maxTokens: 20,
      stopTokens: [],
      policy: windowHook(2, 6),
    });
    let last = s.sequence.stats();
    for await (const _ of s) last = s.sequence.stats();
    const c = model.config;
    // Each layer and kv head read 2 sinks + 6 recent old tokens + the new one.
    expect(last.hotTokensPerHead).toBe(9);
    expect(last.classes.full).toBe(9 * c.numLayers * c.numKvHeads);
    expect(last.hotBytes).toBe(9 * c.numLayers * c.numKvHeads * 2 * c.headDim * 4);
    expect(last.coldBytes).toBe(last.tokens * c.numLayers * c.numKvHeads * 2 * c.headDim * 4);
    // Every row a window step reads was read by the step before (the previous token as its own
    // row): nothing moves.
    expect(last.movedRows).toBe(0);
  });

  it("movedRows counts exactly the rows a step reads that the step before did not", async () => {
    // A stride that shifts every step: a quarter of the old rows (and the last two) change each step.
    const steps: { start: number; T: number; keep: number[] }[] = [];
    const shifting: KvPolicyHook = {
      name: "shifting",
      select(seq: Sequence, layer: number, step: StepInfo) {
        const n = step.start;
        const keep: number[] = [];
        for (let p = 0; p < n; p++) if (p % 4 === n % 4 || p >= n - 2) keep.push(p);
        if (layer === 0) steps.push({ start: n, T: step.T, keep });
        return { full: Array.from({ length: seq.config.numKvHeads }, () => Int32Array.from(keep)) };
      },
    };
    const s = new Generator(model).submit("Once upon a time, there was a little girl named Lily. She", {
      temperature: 0,
      maxTokens: 20,
      stopTokens: [],
      policy: shifting,
    });
    let last = s.sequence.stats();
    for await (const _ of s) last = s.sequence.stats();
    // The reference, from the selections alone: rows of step t not read at step t-1 (its
    // selection and its own rows), per layer and kv head.
    let want = 0;
    let read = new Set<number>();
    for (const st of steps) {
      for (const p of st.keep) if (!read.has(p)) want++;
      read = new Set([...st.keep, ...Array.from({ length: st.T }, (_, t) => st.start + t)]);
    }
    const c = model.config;
    expect(steps.length).toBeGreaterThan(10);
    expect(want).toBeGreaterThan(steps.length);
    expect(last.movedRows).toBe(want * c.numLayers * c.numKvHeads);
  });

  it("a policy that breaks a rule fails only its own request, naming the policy and the rule", async () => {
    const dup: KvPolicyHook = {
      name: "dup",
      select: (seq, _l, st) =>
        st.start > 0
          ? { full: Array.from({ length: seq.config.numKvHeads }, () => Int32Array.of(0, 0)) }
          : null,
    };
    const thrower: KvPolicyHook = {
      name: "thrower",
      select: () => {
        throw new Error("boom");
      },
    };
    const future: KvPolicyHook = {
      name: "future",
      select: (seq, _l, st) => ({
        full: Array.from({ length: seq.config.numKvHeads }, () => Int32Array.of(st.start)),
      }),
    };
    const g = new Generator(model);
    const o = { temperature: 0, maxTokens: 10, stopTokens: [] };
    const [bad1, good, bad2, bad3] = await Promise.all([
      g.generate("Once", { ...o, policy: dup }),
      g.generate("Once", o),
      g.generate("Once", { ...o, policy: thrower }),
      g.generate("Once", { ...o, policy: future }),
    ]);
    expect(bad1.finishReason).toBe("error");
    expect(bad1.error).toBeInstanceOf(PolicyError);
    expect(bad1.error!.message).toMatch(/policy "dup" broke rule "no duplicates"/);
    expect(bad2.error!.message).toMatch(/policy "thrower" broke rule "select": boom/);
    expect(bad3.error!.message).toMatch(/policy "future" broke rule "valid indices"/);
    expect(good.finishReason).toBe("length");
    expect(good.tokens).toEqual((await g.generate("Once", o)).tokens);
  });
});

describe("per-query-head selection", () => {
  it("query heads reading their kv head's tokens give exactly the per-kv-head result (each reads its own kv head's rows)", async () => {
    const model = await Model.load(LLM);
    const c = model.config;
    const group = c.numHeads / c.numKvHeads;
    // Different tokens per kv head, so reading the wrong head's rows would show.
    const keep = (g: number, start: number) =>
      Int32Array.from({ length: start }, (_, i) => i).filter((p) => p % (g + 2) === 0 || p >= start - 3);
    const perKv: KvPolicyHook = {
      name: "kv",
      select: (_s, _l, st) =>
        st.start ? { full: Array.from({ length: c.numKvHeads }, (_, g) => keep(g, st.start)) } : null,
    };
    const perQ: KvPolicyHook = {
      name: "q",
      select: (_s, _l, st) =>
        st.start
          ? {
              full: Array.from({ length: c.numHeads }, (_, h) => keep(Math.floor(h / group), st.start)),
              perQueryHead: true,
            }
          : null,
    };
    const g = new Generator(model);
    const o = { temperature: 0, maxTokens: 24, stopTokens: [], logprobs: 0 };
    const a = await g.generate("Once upon a time, there was a little girl named Lily. She loved", {
      ...o,
      policy: perKv,
    });
    const b = await g.generate("Once upon a time, there was a little girl named Lily. She loved", {
      ...o,
      policy: perQ,
    });
    expect(b.error).toBeUndefined();
    expect(b.tokens).toEqual(a.tokens);
    for (let i = 0; i < a.logprobs!.length; i++)
      expect(Math.abs(b.logprobs![i].logprob - a.logprobs![i].logprob)).toBeLessThan(1e-4);
  });
});
