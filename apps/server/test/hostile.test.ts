// Property-based hostile input: generated bodies (valid-looking fields with hostile values,
// paths, prototype names, huge numbers, unknown fields, broken JSON) against every endpoint.
// Whatever comes in: no 5xx, an OpenAI error body on every 4xx, and a healthy server that
// answers /health at once afterwards.
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer } from "./helpers.js";
import { chatBody, completionBody, detokenizeBody, rawBody, tokenizeBody } from "./hostile-bodies.js";

const RUNS = 200;
const HEALTH_MS = 100;

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
    const t0 = performance.now();
    const h = await fetch(`${srv.url}/health`);
    const ms = performance.now() - t0;
    expect(h.status).toBe(200);
    expect((await h.json()).status).toBe("ok");
    expect(ms, "/health right after the request").toBeLessThan(HEALTH_MS);
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
