import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metric, post, startServer } from "./helpers.js";

// speculative_tokens: the server's assistant drafts, the LLM verifies; greedy output unchanged.
describe("speculative_tokens", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  let bare: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    srv = await startServer();
    bare = await startServer({ assistant: undefined });
  });
  afterAll(async () => {
    await srv.close();
    await bare.close();
  });

  const body = {
    model: "stories260K",
    prompt: "Once upon a time, there was a little dog",
    max_tokens: 24,
    temperature: 0,
  };

  it("gives the same greedy text with acceptance figures in kv_stats and /metrics", async () => {
    const plain = await post(srv.url, "/v1/completions", { ...body, kv_policy: "h2o", kv_budget: 0.2 });
    for (const spec of [3, "adaptive"]) {
      const r = await post(srv.url, "/v1/completions", {
        ...body,
        kv_policy: "h2o",
        kv_budget: 0.2,
        speculative_tokens: spec,
      });
      expect(r.status).toBe(200);
      expect(r.json.choices[0].text).toBe(plain.json.choices[0].text);
      const sp = r.json.kv_stats.speculative;
      expect(sp.drafted).toBeGreaterThanOrEqual(sp.accepted);
      expect(r.json.usage.kv_stats.speculative).toEqual(sp);
    }
    const m = await (await fetch(`${srv.url}/metrics`)).text();
    expect(metric(m, "smallkv_speculative_rounds_total")).toBeGreaterThan(0);
    expect(metric(m, "smallkv_speculative_drafted_tokens_total")).toBeGreaterThanOrEqual(
      metric(m, "smallkv_speculative_accepted_tokens_total"),
    );
  });

  it("is a 400 naming the field without an assistant, or with a bad value", async () => {
    const r = await post(bare.url, "/v1/completions", { ...body, speculative_tokens: 2 });
    expect(r.status).toBe(400);
    expect(r.text).toMatch(/speculative_tokens/);
    for (const bad of [-1, 17, "fast", 1.5]) {
      const b = await post(srv.url, "/v1/completions", { ...body, speculative_tokens: bad });
      expect(b.status).toBe(400);
      expect(b.text).toMatch(/speculative_tokens/);
    }
  });
});
