import { readFileSync } from "node:fs";
import { join } from "node:path";
import { AssistedModel, assetsDir, Generator, Model, type Sequence } from "@smallkv/runner";
import { beforeAll, describe, expect, it } from "vitest";
import { builtinPolicies, createPolicy } from "../src/index.js";

// Speculative decoding under every built-in policy, on the real stories260K pair: the
// assistant drafts, the LLM verifies, rejected tokens roll back.

const MODELS = join(assetsDir(), "models");
const story = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8");

describe("speculative decoding", () => {
  let llm: Model;
  let pair: AssistedModel;
  let prompt: number[];
  beforeAll(async () => {
    llm = await Model.load(join(MODELS, "stories260K"));
    const slm = await Model.load(join(MODELS, "stories260K-slm-a"));
    pair = new AssistedModel(llm, slm);
    // Long enough for SmallKV to match its heads and for 20% to compress from the first step.
    prompt = llm.tokenizer.encode(story.slice(0, 2000)).slice(0, 140);
  });

  for (const name of Object.keys(builtinPolicies)) {
    for (const budget of [1, 0.2]) {
      it(`${name} at ${budget * 100}%: greedy output equals greedy without speculation`, async () => {
        const o = { temperature: 0, maxTokens: 40, stopTokens: [] };
        const g = new Generator(pair);
        const plain = await g.generate(prompt, { ...o, policy: await createPolicy(name, budget) });
        const spec = await g.generate(prompt, {
          ...o,
          policy: await createPolicy(name, budget),
          speculative: { k: 3 },
        });
        expect(plain.error).toBeUndefined();
        expect(spec.error).toBeUndefined();
        expect(spec.tokens).toEqual(plain.tokens);
        expect(spec.speculative!.rounds).toBeGreaterThan(0);
        expect(spec.speculative!.accepted).toBeLessThanOrEqual(spec.speculative!.drafted);
      });
    }
  }

  it("smallkv per query head with a fixed 2:1:2 split at 20%: greedy output equals greedy without speculation", async () => {
    const o = { temperature: 0, maxTokens: 40, stopTokens: [] };
    const mk = () => createPolicy("smallkv", 0.2, { gqa: "query", split: "2:1:2" });
    const g = new Generator(pair);
    const plain = await g.generate(prompt, { ...o, policy: await mk() });
    const spec = await g.generate(prompt, { ...o, policy: await mk(), speculative: { k: 3 } });
    expect(spec.error).toBeUndefined();
    expect(spec.tokens).toEqual(plain.tokens);
    expect(spec.speculative!.accepted).toBeGreaterThan(0);
  });

  it("batched requests accept different lengths and each equals its own plain run", async () => {
    const prompts = [prompt, prompt.slice(0, 120), prompt.slice(10, 135), prompt.slice(0, 20)];
    const o = { temperature: 0, maxTokens: 30, stopTokens: [] };
    const mk = () => createPolicy("smallkv", 0.2);
    const plain = [];
    for (const p of prompts) plain.push(await new Generator(pair).generate(p, { ...o, policy: await mk() }));
    const g = new Generator(pair);
    const spec = await Promise.all(
      await Promise.all(
        prompts.map(async (p) => g.generate(p, { ...o, policy: await mk(), speculative: { k: 4 } })),
      ),
    );
    spec.forEach((r, i) => expect(r.tokens).toEqual(plain[i].tokens));
    const rates = spec.map((r) => r.speculative!.acceptanceRate);
    expect(new Set(rates).size).toBeGreaterThan(1);
  });

  it("streams, honours stop strings and the token limit under speculation", async () => {
    const g = new Generator(pair);
    const o = { temperature: 0, maxTokens: 25, policy: await createPolicy("h2o", 0.2) };
    const plain = await g.generate(prompt, o);
    const stop = plain.text.slice(10, 14);
    const s = g.submit(prompt, {
      ...o,
      policy: await createPolicy("h2o", 0.2),
      speculative: { k: 4 },
      stop: [stop],
    });
    let streamed = "";
    for await (const ev of s) streamed += ev.text;
    const r = await s.result;
    expect(r.finishReason).toBe("stop");
    expect(r.text).toBe(plain.text.slice(0, plain.text.indexOf(stop)));
    expect(streamed).toBe(r.text);
    const capped = await g.generate(prompt, {
      ...o,
      policy: await createPolicy("h2o", 0.2),
      maxTokens: 7,
      speculative: { k: 4 },
    });
    expect(capped.tokens).toEqual(plain.tokens.slice(0, 7));
  });

  // "+replay": the policy without layer snapshots, so a rollback replays the kept rows.
  for (const variant of ["h2o", "smallkv", "tova", "h2o+replay", "smallkv+replay"]) {
    it(`${variant}: rollback leaves the sequence as if the rejected tokens were never fed`, async () => {
      const [name, replay] = variant.split("+");
      const made = await createPolicy(name, 0.2);
      const policy = replay ? { ...made, snapshotLayer: undefined, restoreLayer: undefined } : made;
      const V = llm.config.vocabSize;
      const extra = [300, 45, 67, 200, 12];
      // Rolled back: verify five tokens at once, keep two, feed another one.
      const a = pair.newSequence(policy);
      await pair.forward([{ seq: a, tokens: prompt }]);
      await pair.forward([{ seq: a, tokens: [99] }]);
      draftAhead(a, extra);
      await draftSteps(pair, a, extra);
      const verify = (
        await pair.forward([
          { seq: a, tokens: extra, logits: "all", checkpoint: true, rowwise: true, drafted: true },
        ])
      )[0].slice();
      const n = a.length - extra.length;
      pair.rollback([{ seq: a, length: n + 2 }]);
      a.assistant?.rollbackTo(n + 2);
      pair.settle(a);
      a.assistant?.endDraft();
      const after = (await pair.forward([{ seq: a, tokens: [77] }]))[0].slice();
      const after2 = (await pair.forward([{ seq: a, tokens: [78] }]))[0].slice();
      // Fresh: the same tokens one at a time.
      const b = pair.newSequence(await createPolicy(name, 0.2));
      await pair.forward([{ seq: b, tokens: prompt }]);
      await pair.forward([{ seq: b, tokens: [99] }]);
      const rows: Float32Array[] = [];
      for (const t of extra.slice(0, 2))
        rows.push((await pair.forward([{ seq: b, tokens: [t] }]))[0].slice());
      const fresh = (await pair.forward([{ seq: b, tokens: [77] }]))[0].slice();
      const fresh2 = (await pair.forward([{ seq: b, tokens: [78] }]))[0].slice();
      expect(verify.subarray(0, V)).toEqual(rows[0]);
      expect(verify.subarray(V, 2 * V)).toEqual(rows[1]);
      expect(after).toEqual(fresh);
      expect(after2).toEqual(fresh2);
      expect(a.tokens).toEqual(b.tokens);
      expect(a.stats().hotBytes).toBe(b.stats().hotBytes);
      expect(policy.classCounts?.(a) ?? {}).toEqual(b.policy.classCounts?.(b) ?? {});
      a.release();
      b.release();
    });
  }

  it("sampling: the tokens of a speculative round follow the LLM's distribution (chi-square, 5000 samples)", async () => {
    // The first token comes from the prefill; the second and third from one round of k = 2
    // (drafted, accepted or resampled from the residual, or the LLM's own). top-k 4 keeps the
    // categories few; the exact distributions come from the LLM itself.
    const o = { temperature: 1, topK: 4, maxTokens: 4, stopTokens: [] };
    const short = prompt.slice(0, 24);
    const next = async (ids: number[]) => {
      const l = (await llm.forward([{ seq: llm.newSequence(), tokens: ids }]))[0];
      const top = [...l.keys()].sort((x, y) => l[y] - l[x]).slice(0, 4);
      const w = top.map((i) => Math.exp(l[i] - l[top[0]]));
      const s = w.reduce((x, y) => x + y, 0);
      return top.map((id, i) => [id, w[i] / s] as const);
    };
    // Exact marginals of tokens 1..3 (token ids in context, summed over the paths).
    const marginals = [new Map<number, number>(), new Map<number, number>(), new Map<number, number>()];
    const walk = async (ids: number[], p: number, depth: number): Promise<void> => {
      for (const [t, q] of await next(ids)) {
        const m = marginals[depth];
        m.set(t, (m.get(t) ?? 0) + p * q);
        if (depth < 2) await walk([...ids, t], p * q, depth + 1);
      }
    };
    await walk(short, 1, 0);
    const N = 5000;
    const g = new Generator(pair, { maxBatch: 500 });
    const runs = await Promise.all(
      Array.from({ length: N }, (_, i) => g.generate(short, { ...o, seed: 1000 + i, speculative: { k: 2 } })),
    );
    expect(
      runs
        .filter((r) => r.tokens.length !== 4 || r.speculative!.rounds < 1)
        .map((r) => [r.tokens, r.speculative, r.finishReason, r.error?.message]),
    ).toEqual([]);
    expect(runs.some((r) => r.speculative!.accepted < r.speculative!.drafted)).toBe(true);
    for (let at = 0; at < 3; at++) {
      const counts = new Map<number, number>();
      for (const r of runs) counts.set(r.tokens[at], (counts.get(r.tokens[at]) ?? 0) + 1);
      for (const t of counts.keys()) expect(marginals[at].has(t)).toBe(true);
      // Categories expected fewer than 5 times are pooled into one.
      let x = 0;
      let bins = 0;
      let restE = 0;
      let restC = 0;
      for (const [t, p] of marginals[at]) {
        if (N * p < 5) {
          restE += N * p;
          restC += counts.get(t) ?? 0;
          continue;
        }
        x += ((counts.get(t) ?? 0) - N * p) ** 2 / (N * p);
        bins++;
      }
      if (restE > 0) {
        x += (restC - restE) ** 2 / restE;
        bins++;
      }
      expect(x).toBeLessThan(chiSquareCritical(bins - 1));
    }
  });

  it("the same seed gives the same sampled text", async () => {
    const g = new Generator(pair);
    const o = { temperature: 0.8, maxTokens: 30, seed: 7, speculative: { k: 3 } };
    const a = await g.generate(prompt, { ...o, policy: await createPolicy("smallkv", 0.2) });
    const b = await g.generate(prompt, { ...o, policy: await createPolicy("smallkv", 0.2) });
    expect(a.tokens).toEqual(b.tokens);
  });

  it("refuses speculation without an assistant, and bad settings", async () => {
    const g = new Generator(llm);
    expect(() => g.submit(prompt, { speculative: { k: 2 } })).toThrow(/assistant/);
    const gp = new Generator(pair);
    expect(() => gp.submit(prompt, { speculative: { k: 0 } })).toThrow(/k must be/);
    expect(() => gp.submit(prompt, { speculative: { k: 2, foo: 1 } as never })).toThrow(/unknown field/);
  });
});

/** The chi-square value exceeded with probability 0.001 (exact for df 1, 2; Wilson-Hilferty above). */
function chiSquareCritical(df: number): number {
  if (df === 1) return 10.83;
  if (df === 2) return 13.82;
  const z = 3.0902;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

/** Let the assistant of `seq` keep its views while it drafts (as the generator does). */
function draftAhead(seq: Sequence, _tokens: number[]): void {
  seq.assistant?.beginDraft();
}

/** Run the assistant alone on the draft tokens (one-token steps), as drafting does. */
async function draftSteps(pair: AssistedModel, seq: Sequence, tokens: number[]): Promise<void> {
  if (!seq.assistant) return;
  for (const t of tokens) await pair.slm.forward([{ seq: seq.assistant.seq, tokens: [t], logits: "none" }]);
}
