import { readFileSync } from "node:fs";
import { join } from "node:path";
import { assetsDir, Model } from "@smallkv/runner";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createServer } from "../src/index.js";
import { startServer } from "./helpers.js";

// The golden greedy run from BOS (an independent implementation) begins "Once upon a time" and
// goes on: a completion of that prompt is the rest of its text.
const golden = JSON.parse(readFileSync(join(assetsDir(), "models", "golden", "stories260K.json"), "utf8"));
const bos = golden.prompts.find((p: { name: string }) => p.name === "bos");
const GOLDEN_REST: string = bos.greedy_text.slice("Once upon a time".length);
/** 20 greedy tokens of the golden run after the prompt: a prefix of its text, ending mid-word here. */
const expectGoldenPrefix = (text: string) => {
  expect(text.length).toBeGreaterThan(50);
  expect(GOLDEN_REST.startsWith(text), `${JSON.stringify(text)} is not a prefix of the golden text`).toBe(
    true,
  );
};

describe("the official OpenAI client talks to the server", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  let client: OpenAI;
  let plain = "";
  beforeAll(async () => {
    srv = await startServer({ apiKey: "sk-test" });
    client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "sk-test", maxRetries: 0 });
  });
  afterAll(() => srv.close());

  it("lists the model", async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(["stories260K"]);
  });

  it("completions, not streaming", async () => {
    const r = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 20,
      temperature: 0,
    });
    expect(r.object).toBe("text_completion");
    expectGoldenPrefix(r.choices[0].text);
    plain = r.choices[0].text;
    expect(r.choices[0].finish_reason).toBe("length");
    expect(r.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 });
  });

  it("completions, streaming, with usage", async () => {
    const stream = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage = null;
    let finish = null;
    for await (const c of stream) {
      if (c.choices[0]) {
        text += c.choices[0].text;
        finish ??= c.choices[0].finish_reason;
      }
      if (c.usage) usage = c.usage;
    }
    expectGoldenPrefix(text);
    // The same 20 tokens as without streaming.
    expect(text).toBe(plain);
    expect(finish).toBe("length");
    expect(usage).toMatchObject({ completion_tokens: 20 });
  });

  it("chat, not streaming, with SmallKV per request and kv_stats in the response", async () => {
    const r = await client.chat.completions.create({
      model: "stories260K",
      messages: [
        {
          role: "user",
          content:
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big red ball in a tree. She wanted it very much.",
        },
      ],
      max_tokens: 80,
      temperature: 0,
      // @ts-expect-error SmallKV's extension fields
      kv_policy: "smallkv",
      kv_budget: 0.2,
      kv_policy_options: { mode: "mass" },
    });
    expect(r.object).toBe("chat.completion");
    expect(r.choices[0].message.role).toBe("assistant");
    expect(r.choices[0].message.content!.length).toBeGreaterThan(20);
    const kv = (
      r as unknown as {
        kv_stats: { policy: string; hotBytes: number; coldBytes: number; classes: { vOnly: number } };
      }
    ).kv_stats;
    expect(kv.policy).toBe("smallkv");
    expect(kv.hotBytes).toBeLessThan(kv.coldBytes * 0.25);
    expect(kv.classes.vOnly).toBeGreaterThan(0);
  });

  it("chat, streaming, with logprobs", async () => {
    const stream = await client.chat.completions.create({
      model: "stories260K",
      messages: [{ role: "user", content: "Tom had a dog." }],
      max_tokens: 8,
      temperature: 0,
      stream: true,
      logprobs: true,
      top_logprobs: 2,
    });
    let content = "";
    let role = null;
    let lps = 0;
    for await (const c of stream) {
      const ch = c.choices[0];
      if (!ch) continue;
      role ??= ch.delta.role ?? null;
      content += ch.delta.content ?? "";
      if (ch.logprobs?.content) {
        lps += ch.logprobs.content.length;
        expect(ch.logprobs.content[0].top_logprobs.length).toBe(2);
      }
    }
    expect(role).toBe("assistant");
    expect(content.length).toBeGreaterThan(0);
    expect(lps).toBe(8);
  });

  it("a wrong key is refused with 401 through the client", async () => {
    const bad = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "sk-wrong", maxRetries: 0 });
    await expect(bad.models.list()).rejects.toMatchObject({ status: 401 });
  });
});

describe("a GGUF model and a GGUF assistant behind the server", () => {
  const gguf = join(assetsDir(), "models", "gguf");
  let close: () => Promise<void>;
  let client: OpenAI;
  beforeAll(async () => {
    const model = await Model.load(join(gguf, "stories260K-f32.gguf"), { threads: 1 });
    const assistant = await Model.load(join(gguf, "stories260K-slm-a-q8_0.gguf"), { threads: 1 });
    const server = await createServer({ model, assistant, logger: false });
    const url = await server.app.listen({ host: "127.0.0.1", port: 0 });
    close = () => server.app.close();
    client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
  });
  afterAll(() => close?.());

  it("serves the file's model under its name, with the golden text (F32 file)", async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(["stories260K-f32"]);
    const r = await client.completions.create({
      model: "stories260K-f32",
      prompt: "Once upon a time",
      max_tokens: 20,
      temperature: 0,
    });
    expectGoldenPrefix(r.choices[0].text);
    expect(r.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 20 });
  });

  it("runs SmallKV with the GGUF assistant at a 20% budget, streaming", async () => {
    const stream = await client.completions.create({
      model: "stories260K-f32",
      prompt: golden.prompts.find((p: { name: string }) => p.name === "story_100").text,
      max_tokens: 24,
      temperature: 0,
      stream: true,
      // @ts-expect-error: SmallKV's request extensions
      kv_policy: "smallkv",
      kv_budget: 0.2,
    });
    let text = "";
    let finish = null;
    for await (const c of stream) {
      text += c.choices[0]?.text ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("length");
    expect(text.trim().length).toBeGreaterThan(20);
  });
});
