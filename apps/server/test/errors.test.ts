import { readFileSync } from "node:fs";
import { join } from "node:path";
import { definePolicy } from "@smallkv/policies";
import { assetsDir } from "@smallkv/runner";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { post, startServer } from "./helpers.js";

const crash = definePolicy({
  name: "crash",
  select: () => {
    throw new Error("secret internal detail");
  },
});

const expectError = (
  r: Awaited<ReturnType<typeof post>>,
  status: number,
  type: string,
  param?: string | null,
  code?: string | null,
) => {
  expect(r.status).toBe(status);
  expect(Object.keys(r.json)).toEqual(["error"]);
  expect(Object.keys(r.json.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(r.json.error.type).toBe(type);
  expect(typeof r.json.error.message).toBe("string");
  if (param !== undefined) expect(r.json.error.param).toBe(param);
  if (code !== undefined) expect(r.json.error.code).toBe(code);
};

describe("every error class has its status and an OpenAI-style body", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  const ok = { model: "stories260K", prompt: "Once", max_tokens: 4 };
  beforeAll(async () => {
    srv = await startServer({
      apiKey: "sk-good",
      maxBatch: 1,
      maxQueue: 1,
      bodyLimit: 64 * 1024,
      extraPolicies: { crash: crash as never },
    });
  });
  afterAll(() => srv.close());
  const auth = { authorization: "Bearer sk-good" };

  it("400 for bad fields, naming the field", async () => {
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, temperature: "hot" }, auth),
      400,
      "invalid_request_error",
      "temperature",
    );
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, n: 2 }, auth),
      400,
      "invalid_request_error",
      "n",
    );
    expectError(
      await post(srv.url, "/v1/completions", { model: "stories260K" }, auth),
      400,
      "invalid_request_error",
      "prompt",
    );
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, kv_budget: 0 }, auth),
      400,
      "invalid_request_error",
      "kv_budget",
    );
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, kv_budget: "150%" }, auth),
      400,
      "invalid_request_error",
      "kv_budget",
    );
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, kv_policy: "nope" }, auth),
      400,
      "invalid_request_error",
      "kv_policy",
    );
    expectError(
      await post(
        srv.url,
        "/v1/completions",
        { ...ok, kv_policy: "h2o", kv_policy_options: { bogus: 1 } },
        auth,
      ),
      400,
      "invalid_request_error",
      "kv_policy_options",
    );
    expectError(
      await post(
        srv.url,
        "/v1/chat/completions",
        { model: "stories260K", messages: [{ role: "robot", content: "x" }] },
        auth,
      ),
      400,
      "invalid_request_error",
      "messages",
    );
    expectError(await post(srv.url, "/v1/completions", "{not json", auth), 400, "invalid_request_error");
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, max_tokens: 100_000 }, auth),
      400,
      "invalid_request_error",
      "max_tokens",
    );
    expectError(
      await post(srv.url, "/detokenize", { tokens: [99999] }, auth),
      400,
      "invalid_request_error",
      "tokens",
    );
  });

  it("401 without or with a wrong API key", async () => {
    expectError(
      await post(srv.url, "/v1/completions", ok),
      401,
      "authentication_error",
      null,
      "invalid_api_key",
    );
    expectError(
      await post(srv.url, "/v1/completions", ok, { authorization: "Bearer sk-goo" }),
      401,
      "authentication_error",
    );
    const r = await fetch(`${srv.url}/v1/models`);
    expect(r.status).toBe(401);
  });

  it("404 for an unknown model and an unknown route", async () => {
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, model: "gpt-4" }, auth),
      404,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
    expectError(
      await post(srv.url, "/v1/nothing", ok, auth),
      404,
      "invalid_request_error",
      null,
      "not_found",
    );
  });

  it("413 for a prompt longer than the context and for an oversized body", async () => {
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, prompt: "Once upon a time. ".repeat(150) }, auth),
      413,
      "invalid_request_error",
      "prompt",
      "context_length_exceeded",
    );
    expectError(
      await post(srv.url, "/v1/completions", { ...ok, prompt: "x".repeat(70 * 1024) }, auth),
      413,
      "invalid_request_error",
      null,
      "body_too_large",
    );
  });

  it("429 with Retry-After when the batch and the queue are full", async () => {
    const long = { model: "stories260K", prompt: "Once", max_tokens: 300, temperature: 0 };
    let settled = 0;
    const a = post(srv.url, "/v1/completions", long, auth).finally(() => settled++);
    const b = post(srv.url, "/v1/completions", long, auth).finally(() => settled++);
    // The server's own gauges say when one runs and one waits (no sleep: a busy machine may be slow).
    for (;;) {
      const h = await (await fetch(`${srv.url}/health`)).json();
      if (h.running === 1 && h.queued === 1) break;
      expect(settled, "a request finished before the queue filled").toBe(0);
    }
    const c = await post(srv.url, "/v1/completions", long, auth);
    expectError(c, 429, "rate_limit_error", null, "queue_full");
    expect(c.headers.get("retry-after")).toBe("1");
    expect((await a).status).toBe(200);
    expect((await b).status).toBe(200);
  });

  it("500 without internals when generation fails, and the server keeps serving", async () => {
    const r = await post(
      srv.url,
      "/v1/completions",
      { ...ok, kv_policy: "crash", kv_budget: 0.5, prompt: "Once upon a time there was" },
      auth,
    );
    expectError(r, 500, "server_error", null, "internal_error");
    expect(r.text).not.toMatch(/secret|stack|PolicyError/);
    const after = await post(srv.url, "/v1/completions", ok, auth);
    expect(after.status).toBe(200);
  });
});

describe("utility endpoints", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    srv = await startServer();
  });
  afterAll(() => srv.close());

  it("tokenize, detokenize, health, models, metrics", async () => {
    // Ids from sentencepiece itself (the golden tokenizer cases), with BOS in front.
    const cases = JSON.parse(
      readFileSync(join(assetsDir(), "models", "golden", "tokenizer-cases.json"), "utf8"),
    );
    const lily = cases.cases.find(
      (c: { text: string }) => c.text === "Once upon a time, there was a little girl named Lily.",
    );
    const t = await post(srv.url, "/tokenize", { prompt: lily.text });
    expect(t.json.tokens).toEqual([1, ...lily.ids]);
    const d = await post(srv.url, "/detokenize", { tokens: lily.ids });
    expect(d.json.prompt).toBe(lily.decoded);
    const chat = await post(srv.url, "/tokenize", { messages: [{ role: "user", content: "Hi" }] });
    expect(chat.json.tokens[0]).toBe(1);
    const h = await (await fetch(`${srv.url}/health`)).json();
    expect(h).toMatchObject({ status: "ok", model: "stories260K" });
    const models = await (await fetch(`${srv.url}/v1/models`)).json();
    expect(models.data[0]).toMatchObject({
      id: "stories260K",
      max_model_len: 512,
      assistant: "stories260K-slm",
    });
    await post(srv.url, "/v1/completions", {
      model: "stories260K",
      prompt: "Once",
      max_tokens: 5,
      kv_policy: "tova",
      kv_budget: 0.5,
    });
    const m = await (await fetch(`${srv.url}/metrics`)).text();
    for (const name of [
      "smallkv_requests_total",
      "smallkv_queue_depth",
      "smallkv_running_sequences",
      "smallkv_time_to_first_token_seconds_bucket",
      "smallkv_time_per_output_token_seconds_bucket",
      "smallkv_generated_tokens_total",
      "smallkv_kv_hot_bytes",
      "smallkv_kv_cold_bytes",
      'smallkv_policy_requests_total{policy="tova"}',
    ]) {
      expect(m).toContain(name);
    }
    // The CPU backend holds no GPU memory.
    expect(m).toMatch(/^smallkv_device_allocated_bytes 0$/m);
  });
});
