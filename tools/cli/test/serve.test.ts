import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "bin.js");
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Whether a process is alive. */
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

function serve(args: string[], launcher?: string[]) {
  const argv = [bin, "serve", "-m", "stories260K", "--port", "0", ...args];
  const p = launcher
    ? spawn(launcher[0], [...launcher.slice(1), ...argv.slice(1)], {
        stdio: ["ignore", "pipe", "pipe"],
        cwd: root,
      })
    : spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"] });
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

  it("cancels what is still running at the shutdown deadline (503 shutting_down) and exits 0", async () => {
    // One sequence at a time: the second request provably waits in the queue when the signal comes.
    const s = serve(["--shutdown-timeout", "0", "--max-batch", "1"]);
    const url = await s.url;
    const long = { model: "stories260K", prompt: "Once upon a time", max_tokens: 400, temperature: 0 };
    const first = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...long, stream: true }),
    });
    const reader = first.body!.getReader();
    await reader.read();
    const queued = fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(long),
    });
    // Wait for the server's own word that the second request is queued (no sleep).
    for (;;) {
      const h = await (await fetch(`${url}/health`)).json();
      if (h.queued === 1) break;
      expect(h.running, "the first request finished before the second was queued").toBe(1);
    }
    s.p.kill("SIGINT");
    const r = await queued;
    expect(r.status).toBe(503);
    expect((await r.json()).error.code).toBe("shutting_down");
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    // The running stream ends either way, never hangs; it ends [DONE] only if it finished.
    expect(rest.includes('"finish_reason":"length"') === rest.trim().endsWith("data: [DONE]")).toBe(true);
    expect(await s.exit).toBe(0);
  });

  it("refuses a non-loopback --host without an API key; --allow-unauthenticated binds it and the banner says where", async () => {
    const refused = serve(["--host", "0.0.0.0"]);
    await expect(refused.url).rejects.toThrow(/without an API key/);
    expect(await refused.exit).not.toBe(0);
    const s = serve(["--host", "0.0.0.0", "--allow-unauthenticated"]);
    const url = await s.url;
    expect(url).toMatch(/^http:\/\/0\.0\.0\.0:\d+$/);
    expect(s.logs()).toMatch(/warning: serving .* without an API key/);
    s.p.kill("SIGTERM");
    expect(await s.exit).toBe(0);
  });

  it("the README's form (pnpm smallkv serve): SIGTERM to pnpm stops the node server too", async () => {
    const s = serve([], ["pnpm", "-s", "smallkv"]);
    const url = await s.url;
    const port = new URL(url).port;
    expect((await fetch(`${url}/health`)).status).toBe(200);
    // The launcher's descendants (a shell, then node serving): all must be gone after the signal.
    const { execFileSync } = await import("node:child_process");
    const children = (pid: number): number[] => {
      let out = "";
      try {
        out = execFileSync("ps", ["-o", "pid=", "--ppid", String(pid)], { encoding: "utf8" });
      } catch {
        return [];
      }
      const kids = out
        .split("\n")
        .map((x) => Number(x.trim()))
        .filter((x) => x > 0);
      return kids.flatMap((k) => [k, ...children(k)]);
    };
    const pids = children(s.p.pid!);
    expect(pids.length).toBeGreaterThan(0);
    s.p.kill("SIGTERM");
    await s.exit.catch(() => null);
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && pids.some(alive)) await new Promise((r) => setTimeout(r, 100));
    expect(pids.filter(alive)).toEqual([]);
    await expect(fetch(`http://127.0.0.1:${port}/health`)).rejects.toThrow();
  });
});
