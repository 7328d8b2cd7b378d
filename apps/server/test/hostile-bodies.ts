// Generated request bodies for the hostile-input and authentication suites: valid-looking
// fields with hostile values, paths, prototype names, huge numbers, unknown fields, broken JSON.
import fc from "fast-check";

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

export const completionBody = fc
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
export const chatBody = fc
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
export const tokenizeBody = fc.record(
  {
    model: mostly(fc.constant("stories260K")),
    prompt: mostly(fc.oneof(fc.string({ maxLength: 80 }), hostileString)),
    messages: fc.oneof(fc.array(message, { maxLength: 2 }), anyValue),
    add_special_tokens: mostly(fc.boolean()),
  },
  { requiredKeys: [] },
);
export const detokenizeBody = fc.record(
  {
    model: mostly(fc.constant("stories260K")),
    tokens: mostly(fc.array(fc.integer({ min: -5, max: 600 }), { maxLength: 20 })),
    per_token: mostly(fc.boolean()),
  },
  { requiredKeys: ["tokens"] },
);
/** Raw bodies: broken JSON, JSON that is not an object, prototype pollution attempts. */
export const rawBody = fc.oneof(
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
