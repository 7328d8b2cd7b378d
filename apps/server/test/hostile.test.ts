// Property-based hostile input: generated bodies (valid-looking fields with hostile values,
// paths, prototype names, huge numbers, unknown fields, broken JSON) against every endpoint.
// Whatever comes in: no 5xx, an OpenAI error body on every 4xx, and a healthy server that
// answers /health at once afterwards.
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer } from "./helpers.js";

const RUNS = 200;
const HEALTH_MS = 100;

const hostileString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom(
    "/dev/zero",
    "/dev/random",
    "/etc/shadow",
    "/proc/self/environ",
    "../../../../etc/passwd",
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data",
    "node:fs",
    "./evil.mjs",
    "__proto__",
    "constructor",
    "toString",
    "valueOf",
    "smallkv",
    "h2o",
    "full",
    "pod",
    "adaptive",
    "0:0:0",
    "\u0000",
    "%00",
    "😀",
    "\uD800",
    "a".repeat(3000),
  ),
);
const hostileNumber = fc.oneof(
  fc.integer({ min: -3, max: 40 }),
  fc.integer(),
  fc.double(),
  fc.constantFrom(1e16, -1, 0, 1e308, -1e308, 2 ** 53, 0.5, 1.0000001, Number.MAX_SAFE_INTEGER),
);
const anyValue = fc.oneof(
  hostileString,
  hostileNumber,
  fc.boolean(),
  fc.constant(null),
  fc.array(hostileNumber, { maxLength: 4 }),
  fc.dictionary(hostileString, hostileNumber, { maxKeys: 3 }),
);
const POLICIES = [
  "full",
  "h2o",
  "tova",
  "snapkv",
  "pod",
  "quest",
  "omnikv",
  "reversible",
  "smallkv",
  "speckv",
];
const optionKey = fc.constantFrom(
  "mapping",
  "blocks",
  "mode",
  "split",
  "minContext",
  "gqa",
  "heavyRatio",
  "sinks",
  "filters",
  "scores",
  "pageSize",
  "lookahead",
  "__proto__",
  "constructor",
  "toString",
);
/** Mostly a valid value, sometimes a hostile one: bodies get past validation often enough to run. */
const mostly = <T>(valid: fc.Arbitrary<T>) =>
  fc.oneof({ weight: 12, arbitrary: valid as fc.Arbitrary<unknown> }, { weight: 1, arbitrary: anyValue });
const validOptions = fc.oneof(
  fc.constant({}),
  fc.record({ heavyRatio: fc.double({ min: 0, max: 1, noNaN: true }) }, { requiredKeys: [] }),
  fc.record({ sinks: fc.nat({ max: 8 }) }, { requiredKeys: [] }),
  fc.record(
    { split: fc.constantFrom("adaptive", "2:1:2"), scores: fc.constantFrom("current", "sum") },
    { requiredKeys: [] },
  ),
);
const sampling = {
  model: mostly(fc.constant("stories260K")),
  max_tokens: mostly(fc.integer({ min: 0, max: 4 })),
  temperature: mostly(fc.double({ min: 0, max: 2, noNaN: true })),
  top_p: mostly(fc.double({ min: 0.01, max: 1, noNaN: true })),
  top_k: mostly(fc.nat({ max: 50 })),
  seed: mostly(fc.integer()),
  stop: mostly(
    fc.oneof(fc.string({ maxLength: 3 }), fc.array(fc.string({ maxLength: 3 }), { maxLength: 3 })),
  ),
  stream: mostly(fc.boolean()),
  logit_bias: mostly(
    fc.dictionary(fc.nat({ max: 511 }).map(String), fc.double({ min: -100, max: 100, noNaN: true }), {
      maxKeys: 3,
    }),
  ),
  kv_policy: mostly(fc.constantFrom(...POLICIES)),
  kv_budget: mostly(
    fc.oneof(fc.double({ min: 0.05, max: 1, noNaN: true }), fc.constantFrom("20%", "64", "0.5")),
  ),
  kv_policy_options: fc.oneof(
    { weight: 6, arbitrary: validOptions },
    { weight: 1, arbitrary: fc.dictionary(optionKey, anyValue, { maxKeys: 3 }) },
    { weight: 1, arbitrary: anyValue },
  ),
  kv_trace: mostly(fc.boolean()),
};
/** Unknown fields, now and then. */
const extra = fc.oneof(
  { weight: 8, arbitrary: fc.constant({}) },
  { weight: 1, arbitrary: fc.dictionary(hostileString, anyValue, { maxKeys: 2 }) },
);

const completionBody = fc
  .tuple(
    fc.record(
      {
        ...sampling,
        prompt: mostly(
          fc.oneof(
            fc.constantFrom("Once upon a time", "Lily", "The cat"),
            fc.string({ maxLength: 60 }),
            fc.array(fc.integer({ min: -1, max: 600 }), { minLength: 1, maxLength: 8 }),
            fc.array(fc.string({ maxLength: 20 }), { minLength: 1, maxLength: 2 }),
          ),
        ),
        logprobs: mostly(fc.nat({ max: 5 })),
        echo: mostly(fc.constant(false)),
        suffix: mostly(fc.constant("")),
        best_of: mostly(fc.constant(1)),
      },
      { requiredKeys: ["model", "prompt"] },
    ),
    extra,
  )
  .map(([b, x]) => ({ ...x, ...b }));
const message = fc.record({
  role: mostly(fc.constantFrom("system", "user", "assistant")),
  content: mostly(
    fc.oneof(
      fc.string({ maxLength: 60 }),
      fc.array(fc.record({ type: fc.constant("text"), text: fc.string({ maxLength: 20 }) }), {
        maxLength: 2,
      }),
    ),
  ),
});
const chatBody = fc
  .tuple(
    fc.record(
      {
        ...sampling,
        messages: mostly(fc.array(message, { minLength: 1, maxLength: 3 })),
        logprobs: mostly(fc.boolean()),
        top_logprobs: mostly(fc.nat({ max: 21 })),
        tools: mostly(fc.constant(null)),
        response_format: mostly(fc.constant({ type: "text" })),
      },
      { requiredKeys: ["model", "messages"] },
    ),
    extra,
  )
  .map(([b, x]) => ({ ...x, ...b }));
const tokenizeBody = fc.record(
  {
    model: mostly(fc.constant("stories260K")),
    prompt: mostly(fc.oneof(fc.string({ maxLength: 80 }), hostileString)),
    messages: fc.oneof(fc.array(message, { maxLength: 2 }), anyValue),
    add_special_tokens: mostly(fc.boolean()),
  },
  { requiredKeys: [] },
);
const detokenizeBody = fc.record(
  {
    model: mostly(fc.constant("stories260K")),
    tokens: mostly(fc.array(fc.integer({ min: -5, max: 600 }), { maxLength: 20 })),
    per_token: mostly(fc.boolean()),
  },
  { requiredKeys: ["tokens"] },
);
/** Raw bodies: broken JSON, JSON that is not an object, prototype pollution attempts. */
const rawBody = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.constantFrom(
    "{",
    "null",
    "[]",
    '"x"',
    '{"__proto__":{"polluted":1},"model":"stories260K","prompt":"a"}',
    '{"constructor":{"prototype":{"x":1}},"model":"stories260K","prompt":"a"}',
    '{"model":"stories260K","prompt":"a","max_tokens":1e999}',
  ),
);

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
