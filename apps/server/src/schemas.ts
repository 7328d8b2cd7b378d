// JSON schemas of the request bodies (Fastify validates with Ajv; failures become 400s
// naming the field). Unknown fields are ignored, as OpenAI does.
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
};
const sampling = {
  model: { type: "string", minLength: 1 },
  max_tokens: { anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
  temperature: { anyOf: [{ type: "number", minimum: 0, maximum: 2 }, { type: "null" }] },
  top_p: { anyOf: [{ type: "number", exclusiveMinimum: 0, maximum: 1 }, { type: "null" }] },
  top_k: { anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
  seed: { anyOf: [{ type: "integer" }, { type: "null" }] },
  stop,
  n: { anyOf: [{ type: "integer", minimum: 1, maximum: 1 }, { type: "null" }] },
  stream: { anyOf: [{ type: "boolean" }, { type: "null" }] },
  stream_options: {
    anyOf: [{ type: "object", properties: { include_usage: { type: "boolean" } } }, { type: "null" }],
  },
  presence_penalty: { anyOf: [{ type: "number", minimum: 0, maximum: 0 }, { type: "null" }] },
  frequency_penalty: { anyOf: [{ type: "number", minimum: 0, maximum: 0 }, { type: "null" }] },
  user: { type: "string" },
  ...kv,
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
        { type: "array", items: { type: "integer", minimum: 0 }, minItems: 1 },
      ],
    },
    logprobs: { anyOf: [{ type: "integer", minimum: 0, maximum: 5 }, { type: "null" }] },
    echo: { anyOf: [{ type: "boolean", const: false }, { type: "null" }] },
  },
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
