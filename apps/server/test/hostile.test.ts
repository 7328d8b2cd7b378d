// Property-based hostile input: generated bodies (valid-looking fields with hostile values,
// paths, prototype names, huge numbers, unknown fields, broken JSON) against every endpoint.
// Whatever comes in: no 5xx, an OpenAI error body on every 4xx, and a healthy server that
// answers /health at once afterwards.
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { post, startServer } from "./helpers.js";
import { chatBody, completionBody, detokenizeBody, rawBody, tokenizeBody } from "./hostile-bodies.js";

const RUNS = 200;
const HEALTH_MS = 100;

/** Milliseconds /health takes to answer. */
async function healthMs(url: string): Promise<number> {
  const t0 = performance.now();
  const r = await fetch(`${url}/health`);
  const h = await r.json();
  expect(r.status).toBe(200);
  expect(h.status).toBe("ok");
  return performance.now() - t0;
}

// The one agreed timed bound: /health answers within HEALTH_MS whatever else the server does.
describe("long inputs never stall the event loop", () => {
  it("a 1 MB prompt is refused from its byte length; /health answers within the hostile bound meanwhile", async () => {
    const srv = await startServer();
    try {
      const big = "Once upon a time there was a girl. ".repeat(28_000); // ~1 MB, under the body limit
      const pending = post(srv.url, "/v1/completions", { model: "stories260K", prompt: big, max_tokens: 1 });
      const ms: number[] = [];
      for (let i = 0; i < 5; i++) ms.push(await healthMs(srv.url));
      const r = await pending;
      expect(r.status, r.text).toBe(413);
      expect(r.json.error.param).toBe("prompt");
      expect(r.json.error.code).toBe("context_length_exceeded");
      expect(Math.max(...ms)).toBeLessThan(HEALTH_MS);
    } finally {
      await srv.close();
    }
  });

  it("a long text to /tokenize is tokenised off the event loop: /health answers within the hostile bound", async () => {
    const srv = await startServer({ bodyLimit: 4 * 2 ** 20 });
    try {
      const big = "Once upon a time there was a girl named Lily. ".repeat(6_000); // ~280 KB
      const pending = post(srv.url, "/tokenize", { prompt: big });
      const ms: number[] = [];
      for (let i = 0; i < 5; i++) ms.push(await healthMs(srv.url));
      const r = await pending;
      expect(r.status).toBe(200);
      expect(r.json.count).toBeGreaterThan(30_000);
      expect(Math.max(...ms)).toBeLessThan(HEALTH_MS);
    } finally {
      await srv.close();
    }
  });
});

describe("hostile input: generated bodies against every endpoint", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  const counts: Record<string, Record<string, number>> = {};
  beforeAll(async () => {
    // Small generations: hostile bodies that pass validation run for at most 4 tokens.
    srv = await startServer({ maxTokensLimit: 4, maxBatch: 8, maxQueue: 64 });
  });
  afterAll(async () => {
    // The counts for the closing note (status classes per endpoint).
    console.log(`hostile-input counts: ${JSON.stringify(counts)}`);
    await srv.close();
  });

  async function check(path: string, body: string): Promise<void> {
    const r = await fetch(`${srv.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    const text = await r.text();
    counts[path] ??= {};
    counts[path][r.status] = (counts[path][r.status] ?? 0) + 1;
    if (process.env.HOSTILE_DEBUG && r.status >= 400) console.log(path, text.slice(0, 160));
    expect(r.status, `${path} ${body.slice(0, 300)} -> ${text.slice(0, 300)}`).toBeLessThan(500);
    if (r.status >= 400) {
      const j = JSON.parse(text);
      expect(Object.keys(j)).toEqual(["error"]);
      expect(typeof j.error.message).toBe("string");
      expect(typeof j.error.type).toBe("string");
      expect(j.error.param === null || typeof j.error.param === "string").toBe(true);
      expect(j.error.code === null || typeof j.error.code === "string").toBe(true);
    } else if (r.headers.get("content-type")?.startsWith("text/event-stream")) {
      expect(text.trim().endsWith("data: [DONE]")).toBe(true);
    } else JSON.parse(text);
    expect(await healthMs(srv.url), "/health right after the request").toBeLessThan(HEALTH_MS);
  }

  const endpoints: [string, fc.Arbitrary<unknown>][] = [
    ["/v1/completions", completionBody],
    ["/v1/chat/completions", chatBody],
    ["/tokenize", tokenizeBody],
    ["/detokenize", detokenizeBody],
  ];
  it.each(endpoints)(
    `%s: ${RUNS} generated bodies, no 5xx, OpenAI error bodies, healthy after each`,
    async (path, arb) => {
      await fc.assert(
        fc.asyncProperty(arb, (b) => check(path, JSON.stringify(b))),
        { numRuns: RUNS, seed: 13 },
      );
    },
  );

  it(`raw and malformed bodies (${RUNS} per generation endpoint)`, async () => {
    for (const path of ["/v1/completions", "/v1/chat/completions"])
      await fc.assert(
        fc.asyncProperty(rawBody, (b) => check(path, b)),
        { numRuns: RUNS, seed: 13 },
      );
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});
