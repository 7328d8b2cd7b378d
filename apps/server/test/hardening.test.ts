// Regressions of the hostile-client and OpenAI-client findings (issue 13), one per finding.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { matchModels } from "@smallkv/matching";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createServer } from "../src/index.js";
import { post, shippedModels, startServer } from "./helpers.js";

const expectError = (r: Awaited<ReturnType<typeof post>>, status: number, param?: string | null) => {
  expect(r.status, r.text).toBe(status);
  expect(Object.keys(r.json.error).sort()).toEqual(["code", "message", "param", "type"]);
  if (param !== undefined) expect(r.json.error.param).toBe(param);
};

/** The SSE events of a streamed response: data payloads and event names. */
async function sse(url: string, path: string, body: unknown) {
  const r = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  const events = text
    .split("\n\n")
    .filter((b) => b.trim())
    .map((b) => {
      const ev = /^event: (.*)$/m.exec(b)?.[1] ?? "message";
      const data = /^data: (.*)$/m.exec(b)?.[1] ?? "";
      return { event: ev, data: data === "[DONE]" ? "[DONE]" : JSON.parse(data) };
    });
  return { status: r.status, events };
}

describe("a request can never name a file, and every bad value is a 400 with param", () => {
  const dir = mkdtempSync(join(tmpdir(), "smallkv-hardening-"));
  const fifo = join(dir, "blocks.fifo");
  execFileSync("mkfifo", [fifo]);
  const mappingPath = join(dir, "m.json");
  let srv: Awaited<ReturnType<typeof startServer>>;
  const base = { model: "stories260K", prompt: "Once upon a time", max_tokens: 4, temperature: 0 };
  beforeAll(async () => {
    const [llm, slm] = await shippedModels();
    const ids = llm.tokenizer.encode(
      "Once upon a time there was a little girl named Lily. She liked to play.",
    );
    (await matchModels(llm, slm, ids)).save(mappingPath);
    srv = await startServer({ policyFiles: { mapping: { tiny: mappingPath } } });
  });
  afterAll(() => srv.close());

  it.each([["/dev/zero"], ["/etc/shadow"], ["/proc/self/environ"], [mappingPath], ["../m.json"]])(
    "kv_policy_options.mapping = %s is a 400, the file is never opened",
    async (path) => {
      const r = await post(srv.url, "/v1/completions", {
        ...base,
        kv_policy: "smallkv",
        kv_budget: 0.2,
        kv_policy_options: { mapping: path },
      });
      expectError(r, 400, "kv_policy_options.mapping");
      expect(r.json.error.message).toContain("tiny");
      expect((await fetch(`${srv.url}/health`)).status).toBe(200);
    },
  );

  it("a FIFO in pod's blocks is a 400 at once, and the server stays responsive", async () => {
    const r = await post(srv.url, "/v1/completions", {
      ...base,
      kv_policy: "pod",
      kv_budget: 0.5,
      kv_policy_options: { blocks: fifo },
    });
    expectError(r, 400, "kv_policy_options.blocks");
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
  });

  it("a configured file is selected by name", async () => {
    const r = await post(srv.url, "/v1/completions", {
      ...base,
      max_tokens: 8,
      kv_policy: "smallkv",
      kv_budget: 0.2,
      kv_policy_options: { mapping: "tiny" },
    });
    expect(r.status, r.text).toBe(200);
    const models = await (await fetch(`${srv.url}/v1/models`)).json();
    expect(models.data[0].kv_policy_files.mapping).toEqual(["tiny"]);
  });

  it("files given at start are checked at start: a device, a FIFO or a missing file refuse to start", async () => {
    const [model, assistant] = await shippedModels();
    const start = (path: string, option = "mapping") =>
      createServer({ model, assistant, logger: false, policyFiles: { [option]: { x: path } } });
    await expect(start("/dev/zero")).rejects.toThrow(/not a regular file/);
    await expect(start(fifo, "blocks")).rejects.toThrow(/not a regular file/);
    await expect(start(join(dir, "missing.json"))).rejects.toThrow(/ENOENT|cannot read/);
    await expect(start(mappingPath, "nosuchoption")).rejects.toThrow(/no policy has a file option/);
  });

  it.each(["constructor", "__proto__", "toString", "valueOf", "hasOwnProperty"])(
    "kv_policy %s is an unknown policy (400), not a prototype member",
    async (name) => {
      const r = await post(srv.url, "/v1/completions", { ...base, kv_policy: name });
      expectError(r, 400, "kv_policy");
    },
  );

  it.each([
    [{ mode: "weird" }],
    [{ split: "0:0:0" }],
    [{ minContext: -5 }],
    [{ gqa: "zzz" }],
    [{ constructor: 1 }],
    [{ topk: "" }],
    [{ marginal: 3 }],
  ])("smallkv option %j is a 400 naming kv_policy_options", async (opts) => {
    const r = await post(srv.url, "/v1/completions", {
      ...base,
      kv_policy: "smallkv",
      kv_budget: 0.2,
      kv_policy_options: opts,
    });
    expectError(r, 400, "kv_policy_options");
  });

  it.each([
    ["h2o", { heavyRatio: 2 }],
    ["snapkv", { kernel: 4 }],
    ["streamingllm", { sinks: -1 }],
    ["omnikv", { filters: "9" }],
    ["quest", { pageSize: 0 }],
    ["pod", { blockSize: 0 }],
    ["reversible", { scores: "x" }],
    ["speckv", { lookahead: 1000 }],
  ])("%s option %j is a 400 at request time", async (policy, opts) => {
    const r = await post(srv.url, "/v1/completions", {
      ...base,
      kv_policy: policy,
      kv_budget: 0.5,
      kv_policy_options: opts,
    });
    expectError(r, 400, "kv_policy_options");
  });

  it.each([
    ["seed", 1e16],
    ["seed", 1.5],
    ["temperature", -1],
    ["top_p", 0],
    ["logit_bias", { "9999999": 1 }],
    ["logit_bias", { abc: 1 }],
    ["logit_bias", { "5": 1000 }],
    ["max_tokens", -1],
  ])("%s = %j is a 400 naming it", async (param, value) => {
    const r = await post(srv.url, "/v1/completions", { ...base, [param]: value });
    expectError(r, 400, param);
  });
});

describe("exact text semantics", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    srv = await startServer();
  });
  afterAll(() => srv.close());
  const decode = async (ids: number[]) => {
    const [llm] = await shippedModels();
    return llm.tokenizer.decode(ids);
  };

  it("prompt + completion == decode(prompt ids + completion ids); the first token keeps its space", async () => {
    const [llm] = await shippedModels();
    for (const prompt of ["Once upon", "Once upon a time", "Lily", "The cat said"]) {
      const r = await post(srv.url, "/v1/completions", {
        model: "stories260K",
        prompt,
        max_tokens: 12,
        temperature: 0,
        logprobs: 2,
      });
      expect(r.status).toBe(200);
      const text: string = r.json.choices[0].text;
      const promptIds = llm.tokenizer.encode(prompt);
      // The generated ids, from the greedy run (the same ids the server produced).
      const g = await srv.server.scheduler.generator.generate(promptIds, { maxTokens: 12, temperature: 0 });
      expect(prompt + text).toBe(await decode([...promptIds, ...g.tokens]));
      expect(text).toBe(g.text);
      if (prompt === "Once upon") expect(text.startsWith(" ")).toBe(true);
      // logprob tokens are the exact pieces: they join to the text, and text_offset indexes it.
      const lp = r.json.choices[0].logprobs;
      expect(lp.tokens.join("")).toBe(text);
      lp.tokens.forEach((t: string, i: number) =>
        expect(text.slice(lp.text_offset[i], lp.text_offset[i] + t.length)).toBe(t),
      );
      if (prompt === "Once upon") expect(lp.tokens[0]).toBe(" a");
    }
  });

  it("streamed deltas (and their logprob tokens) concatenate to the non-streamed text", async () => {
    const body = { model: "stories260K", prompt: "Once upon", max_tokens: 20, temperature: 0, logprobs: 1 };
    const whole = await post(srv.url, "/v1/completions", body);
    const s = await sse(srv.url, "/v1/completions", { ...body, stream: true });
    const chunks = s.events.filter((e) => e.data !== "[DONE]").map((e) => e.data.choices[0]);
    expect(chunks.map((c) => c.text).join("")).toBe(whole.json.choices[0].text);
    const toks = chunks.filter((c) => c.logprobs).flatMap((c) => c.logprobs.tokens);
    expect(toks).toEqual(whole.json.choices[0].logprobs.tokens);
    const offs = chunks.filter((c) => c.logprobs).flatMap((c) => c.logprobs.text_offset);
    expect(offs).toEqual(whole.json.choices[0].logprobs.text_offset);
  });

  it("chat logprobs: exact pieces with their bytes; the first is not empty", async () => {
    const r = await post(srv.url, "/v1/chat/completions", {
      model: "stories260K",
      messages: [{ role: "user", content: "Tell me a story" }],
      max_tokens: 10,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    expect(r.status).toBe(200);
    const content = r.json.choices[0].logprobs.content;
    expect(content.map((c: { token: string }) => c.token).join("")).toBe(r.json.choices[0].message.content);
    expect(content[0].token).not.toBe("");
    for (const c of content) expect(Buffer.from(c.bytes).toString("utf8")).toBe(c.token);
    expect(content[0].top_logprobs).toHaveLength(2);
  });

  it("logit_bias +100 forces a token, -100 bans the greedy one", async () => {
    const [llm] = await shippedModels();
    const forced = llm.tokenizer.encode(" dog", false)[0];
    const r = await post(srv.url, "/v1/completions", {
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 3,
      temperature: 0,
      logit_bias: { [forced]: 100 },
    });
    expect(r.status).toBe(200);
    const promptIds = llm.tokenizer.encode("Once upon a time");
    const after = (ids: number[]) =>
      llm.tokenizer.decode([...promptIds, ...ids]).slice(llm.tokenizer.decode(promptIds).length);
    expect(r.json.choices[0].text).toBe(after([forced, forced, forced]));
    // -100 on the greedy first token: another token comes first.
    const plain = await srv.server.scheduler.generator.generate(promptIds, { maxTokens: 1, temperature: 0 });
    const banned = await post(srv.url, "/v1/completions", {
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 1,
      temperature: 0,
      logit_bias: { [plain.tokens[0]]: -100 },
    });
    expect(banned.json.choices[0].text).not.toBe(plain.text);
  });

  it("GET /v1/models/{id} answers the model, 404 for another", async () => {
    const ok = await fetch(`${srv.url}/v1/models/stories260K`);
    expect(ok.status).toBe(200);
    expect((await ok.json()).id).toBe("stories260K");
    const no = await fetch(`${srv.url}/v1/models/gpt-4`);
    expect(no.status).toBe(404);
    expect((await no.json()).error.code).toBe("model_not_found");
  });

  it.each([
    ["tools", [{ type: "function", function: { name: "f" } }]],
    ["tool_choice", "auto"],
    ["response_format", { type: "json_object" }],
    ["best_of", 2],
    ["suffix", "end"],
    ["echo", true],
    ["n", 2],
    ["frequency_penalty", 0.5],
    ["some_unknown_field", 1],
  ])("%s is refused by name, not ignored", async (param, value) => {
    const r = await post(srv.url, "/v1/completions", {
      model: "stories260K",
      prompt: "Once",
      max_tokens: 2,
      [param]: value,
    });
    expectError(r, 400, param);
  });

  it("user, metadata, store and service_tier are accepted and ignored", async () => {
    const r = await post(srv.url, "/v1/chat/completions", {
      model: "stories260K",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 2,
      user: "u1",
      metadata: { a: "b" },
      store: false,
      service_tier: "auto",
    });
    expect(r.status, r.text).toBe(200);
  });
});

describe("honest endings and a loop that never stalls", () => {
  it("a timeout is a 504 error (not finish_reason length), and an error event in a stream", async () => {
    const srv = await startServer({ requestTimeoutMs: 1 });
    try {
      const body = { model: "stories260K", prompt: "Once upon a time", max_tokens: 400, temperature: 0 };
      const r = await post(srv.url, "/v1/completions", body);
      expectError(r, 504, null);
      expect(r.json.error.code).toBe("timeout");
      const s = await sse(srv.url, "/v1/completions", { ...body, stream: true });
      const last = s.events[s.events.length - 1];
      expect(last.event).toBe("error");
      expect(last.data.error.code).toBe("timeout");
      expect(s.events.some((e) => e.data === "[DONE]")).toBe(false);
    } finally {
      await srv.close();
    }
  });

  it("a stream cancelled by shutdown ends with an error event, not [DONE]", async () => {
    const srv = await startServer();
    const r = fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "stories260K",
        prompt: "Once",
        max_tokens: 500,
        stream: true,
        temperature: 0,
      }),
    });
    const res = await r;
    const reader = res.body!.getReader();
    await reader.read();
    const down = srv.server.shutdown(0);
    let text = "";
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value);
    }
    await down;
    expect(text).toMatch(/event: error\ndata: \{"error":\{[^\n]*"code":"shutting_down"/);
    expect(text).not.toContain("[DONE]");
  });
});
