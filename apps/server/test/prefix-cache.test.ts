// The server's prefix cache: a request that shares a prompt prefix with an earlier one reports
// the reused tokens as OpenAI does, returns what a cold server returns, and shows in /metrics.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { assetsDir } from "@smallkv/runner";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metric, post, startServer } from "./helpers.js";

const text = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8");

describe("prefix cache through the API", () => {
  let warm: Awaited<ReturnType<typeof startServer>>;
  let off: Awaited<ReturnType<typeof startServer>>;
  let shared = "";
  beforeAll(async () => {
    warm = await startServer({ prefixCache: { maxBytes: 64 * 2 ** 20, blockSize: 64 } });
    off = await startServer({ prefixCache: false });
    // About 230 tokens of a story: three full blocks of 64 are reusable.
    const ids = warm.server.model.tokenizer.encode(text.slice(0, 3000)).slice(1, 231);
    shared = warm.server.model.tokenizer.decode(ids, false);
  });
  afterAll(async () => {
    await warm.close();
    await off.close();
  });

  const ask = (url: string, prompt: string, policy = "smallkv") =>
    post(url, "/v1/completions", {
      model: "stories260K",
      prompt,
      max_tokens: 24,
      temperature: 0,
      logprobs: 1,
      kv_policy: policy,
      kv_budget: 0.2,
    });

  it.each(["full", "h2o", "smallkv"])(
    "%s: the second request reuses the shared blocks and answers as a cold server",
    async (policy) => {
      const first = await ask(warm.url, `${shared} Then the dog ran away.`, policy);
      expect(first.status, first.text).toBe(200);
      expect(first.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
      const second = await ask(warm.url, `${shared} The cat said hello.`, policy);
      expect(second.json.usage.prompt_tokens_details.cached_tokens).toBe(192);
      // A cold server (its own cache, empty) gives the same tokens.
      const cold = await startServer({ prefixCache: { maxBytes: 64 * 2 ** 20, blockSize: 64 } });
      try {
        const c = await ask(cold.url, `${shared} The cat said hello.`, policy);
        expect(c.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
        expect(second.json.choices[0].text).toBe(c.json.choices[0].text);
        expect(second.json.choices[0].logprobs.tokens).toEqual(c.json.choices[0].logprobs.tokens);
      } finally {
        await cold.close();
      }
    },
  );

  it("/metrics counts hit and miss tokens, bytes and blocks", async () => {
    const m = await (await fetch(`${warm.url}/metrics`)).text();
    expect(metric(m, "smallkv_prefix_cache_hit_tokens_total")).toBe(3 * 192);
    expect(metric(m, "smallkv_prefix_cache_miss_tokens_total")).toBeGreaterThan(3 * 2 * 40);
    expect(metric(m, "smallkv_prefix_cache_bytes")).toBeGreaterThan(0);
    expect(metric(m, "smallkv_prefix_cache_bytes")).toBeLessThanOrEqual(64 * 2 ** 20);
    // Three blocks per policy scope (the two prompts share them).
    expect(metric(m, "smallkv_prefix_cache_blocks")).toBe(9);
  });

  it("with the cache off nothing is reused and no cache metrics are exported", async () => {
    await ask(off.url, `${shared} Then the dog ran away.`);
    const r = await ask(off.url, `${shared} The cat said hello.`);
    expect(r.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
    const m = await (await fetch(`${off.url}/metrics`)).text();
    expect(m).not.toContain("smallkv_prefix_cache");
  });
});
