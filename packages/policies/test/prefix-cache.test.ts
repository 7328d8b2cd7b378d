// The prefix cache: a request that starts from cached blocks gives exactly what it gives
// cold (greedy ids and logprobs), for every built-in policy, and the byte budget holds.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { AssistedModel, assetsDir, Generator, Model, PrefixCache } from "@smallkv/runner";
import { beforeAll, describe, expect, it } from "vitest";
import { builtinPolicies, createPolicy } from "../src/index.js";

const models = join(assetsDir(), "models");
const text = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8");

describe("prefix cache", () => {
  let llm: Model;
  let pair: AssistedModel;
  let shared: number[];
  let first: number[];
  let second: number[];
  beforeAll(async () => {
    llm = await Model.load(join(models, "stories260K"), { threads: 1 });
    pair = new AssistedModel(llm, await Model.load(join(models, "stories260K-slm-a"), { threads: 1 }));
    // Two prompts that share their first 230 tokens (3 blocks of 64 reusable), then differ.
    shared = llm.tokenizer.encode(text.slice(0, 3000)).slice(0, 230);
    first = [...shared, ...llm.tokenizer.encode(" Then the dog ran away to the park.", false)];
    second = [...shared, ...llm.tokenizer.encode(" The cat said hello to the little bird.", false)];
  });

  const run = async (name: string, prompt: number[], cache?: PrefixCache) => {
    const policy = await createPolicy(name, 0.2);
    return new Generator(policy.usesAssistant ? pair : llm).generate(prompt, {
      temperature: 0,
      maxTokens: 40,
      stopTokens: [],
      logprobs: 0,
      policy,
      prefixCache: cache,
    });
  };

  it.each(Object.keys(builtinPolicies))(
    "%s: a request after a shared 230-token prefix reuses 192 tokens and gives the cold output exactly",
    async (name) => {
      const cold = await run(name, second, new PrefixCache({ maxBytes: 2 ** 30, blockSize: 64 }));
      expect(cold.cachedTokens).toBe(0);
      const cache = new PrefixCache({ maxBytes: 2 ** 30, blockSize: 64 });
      const a = await run(name, first, cache);
      expect(a.cachedTokens).toBe(0);
      expect(first.length).toBeLessThan(256);
      expect(cache.stats.blocks).toBe(3); // the full blocks of the first prompt: [0, 64), [64, 128), [128, 192)
      const hit = await run(name, second, cache);
      expect(hit.error).toBeUndefined();
      expect(hit.cachedTokens).toBe(192);
      expect(hit.tokens).toEqual(cold.tokens);
      expect(hit.tokens.length).toBe(40);
      hit.logprobs!.forEach((lp, i) =>
        expect(Math.abs(lp.logprob - cold.logprobs![i].logprob)).toBeLessThan(1e-6),
      );
      expect(cache.stats.hitTokens).toBe(192);
      expect(cache.stats.missTokens).toBe(first.length + second.length - 192);
    },
  );

  it("the full cache gives the uncached output (its chunked prefill reads everything)", async () => {
    const cache = new PrefixCache({ maxBytes: 2 ** 30, blockSize: 64 });
    await run("full", first, cache);
    const hit = await run("full", second, cache);
    const plain = await run("full", second);
    expect(hit.cachedTokens).toBe(192);
    expect(plain.cachedTokens).toBe(0);
    expect(hit.tokens).toEqual(plain.tokens);
  });

  it("entries are per policy, budget and options: another policy or budget finds nothing", async () => {
    const cache = new PrefixCache({ maxBytes: 2 ** 30, blockSize: 64 });
    await run("h2o", first, cache);
    expect((await run("tova", second, cache)).cachedTokens).toBe(0);
    const other = await new Generator(llm).generate(second, {
      temperature: 0,
      maxTokens: 4,
      policy: await createPolicy("h2o", 0.3),
      prefixCache: cache,
    });
    expect(other.cachedTokens).toBe(0);
    expect((await run("h2o", second, cache)).cachedTokens).toBe(192);
  });

  it("the byte budget holds under 200 distinct prompts (LRU evicts), and a recent prefix still hits", async () => {
    const cache = new PrefixCache({ maxBytes: 1_500_000, blockSize: 32 });
    const g = new Generator(llm);
    // 200 distinct prompts: slices of the text at different offsets.
    const docs = Array.from({ length: 200 }, (_, i) => text.slice(i * 997, i * 997 + 600));
    let peak = 0;
    for (let i = 0; i < 200; i++) {
      const ids = llm.tokenizer.encode(docs[i]).slice(0, 100);
      await g.generate(ids, { temperature: 0, maxTokens: 1, prefixCache: cache });
      peak = Math.max(peak, cache.stats.bytes);
    }
    expect(peak).toBeLessThanOrEqual(1_500_000);
    expect(cache.stats.evictions).toBeGreaterThan(100);
    const recent = llm.tokenizer.encode(docs[199]).slice(0, 100);
    const r = await g.generate([...recent.slice(0, 70), 300, 301], {
      temperature: 0,
      maxTokens: 1,
      prefixCache: cache,
    });
    expect(r.cachedTokens).toBe(64);
  });
});
