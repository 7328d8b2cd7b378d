// JSON schemas of the request bodies (Fastify validates with Ajv; failures become 400s
// naming the field). An unknown field is a 400 naming it (no parameter is silently
// ignored), except the metadata fields OpenAI-compatible servers ignore (IGNORED).
import { unsupportedProperties } from "./unsupported.js";

const stop = {
  anyOf: [{ type: "string" }, { type: "array", items: { type: "string" }, maxItems: 16 }, { type: "null" }],
};
const kv = {
  kv_policy: { type: "string", minLength: 1, maxLength: 64 },
  kv_budget: {
    anyOf: [
      { type: "number", exclusiveMinimum: 0 },
      { type: "string", minLength: 1, maxLength: 32 },
    ],
  },
  kv_policy_options: {
    type: "object",
    additionalProperties: { type: ["string", "number", "boolean"] },
    maxProperties: 32,
  },
  kv_trace: { type: "boolean" },
  // Speculative decoding with the server's assistant as the draft: k tokens per round, or adaptive.
  speculative_tokens: {
    anyOf: [
      { type: "integer", minimum: 0, maximum: 16 },
      { type: "string", enum: ["adaptive"] },
      { type: "null" },
    ],
  },
};
/** Accepted and ignored (README: "Ignored parameters"). */
const IGNORED = {
  user: { type: "string", maxLength: 256 },
  metadata: { anyOf: [{ type: "object", maxProperties: 16 }, { type: "null" }] },
  store: { anyOf: [{ type: "boolean" }, { type: "null" }] },
  service_tier: { anyOf: [{ type: "string", maxLength: 32 }, { type: "null" }] },
};

const sampling = {
  model: { type: "string", minLength: 1 },
  max_tokens: { anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
  temperature: { anyOf: [{ type: "number", minimum: 0, maximum: 2 }, { type: "null" }] },
  top_p: { anyOf: [{ type: "number", exclusiveMinimum: 0, maximum: 1 }, { type: "null" }] },
  top_k: { anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
  // The sampler's seed is a safe integer (larger ones would lose bits).
  seed: {
    anyOf: [
      { type: "integer", minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
      { type: "null" },
    ],
  },
  stop,
  logit_bias: {
    anyOf: [
      {
        type: "object",
        maxProperties: 1024,
        propertyNames: { pattern: "^[0-9]{1,9}$" },
        additionalProperties: { type: "number", minimum: -100, maximum: 100 },
      },
      { type: "null" },
    ],
  },
  stream: { anyOf: [{ type: "boolean" }, { type: "null" }] },
  stream_options: {
    anyOf: [{ type: "object", properties: { include_usage: { type: "boolean" } } }, { type: "null" }],
  },
  ...kv,
  ...IGNORED,
  ...unsupportedProperties(false),
};

export const completionBody = {
  type: "object",
  required: ["model", "prompt"],
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: "string" },
        { type: "array", items: { type: "string" }, minItems: 1, maxItems: 1 },
        { type: "array", items: { type: "integer", minimum: 0 }, minItems: 1, maxItems: 1 << 20 },
      ],
    },
    logprobs: { anyOf: [{ type: "integer", minimum: 0, maximum: 5 }, { type: "null" }] },
    ...unsupportedProperties(true),
  },
  additionalProperties: false,
};

export const chatBody = {
  type: "object",
  required: ["model", "messages"],
  properties: {
    ...sampling,
    max_completion_tokens: { anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
    messages: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        required: ["role", "content"],
        properties: {
          role: { type: "string", enum: ["system", "developer", "user", "assistant"] },
          content: {
            anyOf: [
              { type: "string" },
              {
                type: "array",
                items: {
                  type: "object",
                  required: ["type", "text"],
                  properties: { type: { const: "text" }, text: { type: "string" } },
                },
              },
            ],
          },
          name: { type: "string" },
        },
      },
    },
    logprobs: { anyOf: [{ type: "boolean" }, { type: "null" }] },
    top_logprobs: { anyOf: [{ type: "integer", minimum: 0, maximum: 20 }, { type: "null" }] },
  },
  additionalProperties: false,
};

export const tokenizeBody = {
  type: "object",
  properties: {
    model: { type: "string" },
    prompt: { type: "string" },
    messages: chatBody.properties.messages,
    add_special_tokens: { type: "boolean" },
  },
};

export const detokenizeBody = {
  type: "object",
  required: ["tokens"],
  properties: {
    model: { type: "string" },
    tokens: { type: "array", items: { type: "integer", minimum: 0 }, maxItems: 65536 },
    per_token: { type: "boolean" },
  },
};
