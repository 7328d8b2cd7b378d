import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "bin.js");

function serve(args: string[]) {
  const p = spawn(process.execPath, [bin, "serve", "-m", "stories260K", "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  let out = "";
  p.stdout.on("data", (d) => (out += d));
  const url = new Promise<string>((resolve, reject) => {
    p.stderr.on("data", (d) => {
      err += d;
      const m = /at (http:\/\/[^ ]+)/.exec(err);
      if (m) resolve(m[1]);
    });
    p.on("exit", (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
  const exit = new Promise<number | null>((r) => p.on("exit", (code) => r(code)));
  return { p, url, exit, logs: () => out + err };
}

describe("smallkv serve", () => {
  it("listens on loopback, logs one structured line per request, and shuts down gracefully on SIGTERM (in-flight request finishes, exit 0)", async () => {
    const s = serve(["--shutdown-timeout", "20000"]);
    const url = await s.url;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "stories260K",
        prompt: "Once upon a time",
        max_tokens: 200,
        temperature: 0,
        stream: true,
      }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    s.p.kill("SIGTERM");
    let text = "";
    const dec = new TextDecoder();
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value);
    }
    expect(text).toContain('"finish_reason":"length"');
    expect(text.trim().endsWith("data: [DONE]")).toBe(true);
    expect(await s.exit).toBe(0);
    const line = s
      .logs()
      .split("\n")
      .find((l) => l.includes('"msg":"request"'));
    const log = JSON.parse(line!);
    expect(log).toMatchObject({
      endpoint: "/v1/completions",
      status: 200,
      completion_tokens: 200,
      finish_reason: "length",
      policy: "full",
    });
    expect(log.kv.coldBytes).toBeGreaterThan(0);
  });

  it("cancels what is still running at the shutdown deadline and exits 0", async () => {
    const s = serve(["--shutdown-timeout", "200"]);
    const url = await s.url;
    const pending = fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "stories260K",
        prompt: "Once upon a time",
        max_tokens: 400,
        temperature: 0,
      }),
    });
    await new Promise((r) => setTimeout(r, 150));
    s.p.kill("SIGINT");
    const r = await pending;
    expect([200, 503]).toContain(r.status);
    expect(await s.exit).toBe(0);
  });
});
