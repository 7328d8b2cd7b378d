import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metric, post, startServer } from "./helpers.js";

describe("continuous batching", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    srv = await startServer({ maxBatch: 32, maxQueue: 64 });
  });
  afterAll(() => srv.close());

  it("32 concurrent greedy requests all complete, each with exactly the output of the same request run alone", async () => {
    const prompts = Array.from(
      { length: 32 },
      (_, i) =>
        `${["Once upon a time", "Tom and Sue", "The little dog", "Lily saw a bird"][i % 4]}${" and".repeat(i % 5)}`,
    );
    const body = (p: string, i: number) => ({
      model: "stories260K",
      prompt: p,
      max_tokens: 24 + (i % 8),
      temperature: 0,
      kv_policy: i % 3 === 0 ? "h2o" : i % 3 === 1 ? "smallkv" : "full",
      kv_budget: 0.5,
    });
    const alone = [];
    for (let i = 0; i < prompts.length; i++)
      alone.push((await post(srv.url, "/v1/completions", body(prompts[i], i))).json.choices[0].text);
    const together = await Promise.all(prompts.map((p, i) => post(srv.url, "/v1/completions", body(p, i))));
    expect(together.every((r) => r.status === 200)).toBe(true);
    expect(together.map((r) => r.json.choices[0].text)).toEqual(alone);
    const m = await (await fetch(`${srv.url}/metrics`)).text();
    expect(metric(m, "smallkv_running_sequences")).toBe(0);
    expect(metric(m, "smallkv_requests_total", 'endpoint="/v1/completions",status="200"')).toBe(64);
  });

  it("a client that disconnects mid-stream frees its sequence at once, and metrics show the cancel", async () => {
    const controller = new AbortController();
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "stories260K",
        prompt: "Once upon a time",
        max_tokens: 400,
        temperature: 0,
        stream: true,
      }),
      signal: controller.signal,
    });
    const reader = r.body!.getReader();
    await reader.read();
    await reader.read();
    const during = await (await fetch(`${srv.url}/metrics`)).text();
    expect(metric(during, "smallkv_running_sequences")).toBe(1);
    controller.abort();
    let running = 1;
    // Poll the gauge until the cancel lands (bounded by the test's own timeout, not a count).
    while (running !== 0) {
      await new Promise((res) => setTimeout(res, 20));
      running = metric(await (await fetch(`${srv.url}/metrics`)).text(), "smallkv_running_sequences");
    }
    expect(running).toBe(0);
    const after = await (await fetch(`${srv.url}/metrics`)).text();
    expect(metric(after, "smallkv_finished_total", 'reason="cancelled"')).toBeGreaterThanOrEqual(1);
    expect(metric(after, "smallkv_kv_cold_bytes")).toBe(0);
  });
});
