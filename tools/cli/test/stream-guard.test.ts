// The stream guard between HAProxy and a replica: transparent while the replica answers; a
// stream cut by the replica ends with an OpenAI error event; a replica that dies before any
// byte leaves an empty response (which HAProxy retries elsewhere).
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { REPLICA_LOST_EVENT, StreamGuard } from "../src/cluster/stream-guard.js";

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

async function upstream(handler: http.RequestListener): Promise<number> {
  const s = http.createServer(handler);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  closers.push(async () => {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  });
  return (s.address() as AddressInfo).port;
}

async function guard(port: number): Promise<string> {
  const g = new StreamGuard(port);
  const p = await g.listen();
  closers.push(() => g.close());
  return `http://127.0.0.1:${p}`;
}

describe("StreamGuard", () => {
  it("passes a response through unchanged (status, headers, body)", async () => {
    const port = await upstream((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        res.writeHead(201, { "content-type": "application/json", "x-replica-test": "yes" });
        res.end(JSON.stringify({ echo: body, path: req.url }));
      });
    });
    const r = await fetch(`${await guard(port)}/v1/x?q=1`, { method: "POST", body: "hello" });
    expect(r.status).toBe(201);
    expect(r.headers.get("x-replica-test")).toBe("yes");
    expect(await r.json()).toEqual({ echo: "hello", path: "/v1/x?q=1" });
  });

  it("a stream the replica cuts ends with an OpenAI error event and a clean end", async () => {
    const port = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write('data: {"choices":[{"text":"Once"}]}\n\n');
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const r = await fetch(`${await guard(port)}/v1/completions`, { method: "POST", body: "{}" });
    const text = await r.text();
    expect(text.startsWith('data: {"choices":[{"text":"Once"}]}\n\n')).toBe(true);
    expect(text.endsWith(REPLICA_LOST_EVENT)).toBe(true);
    const err = JSON.parse(/event: error\ndata: (.*)\n/.exec(text)![1]).error;
    expect(Object.keys(err).sort()).toEqual(["code", "message", "param", "type"]);
    expect(err.code).toBe("replica_lost");
  });

  it("a replica that dies before answering leaves an empty response (no status, no bytes)", async () => {
    const port = await upstream((req) => req.socket.destroy());
    await expect(
      fetch(`${await guard(port)}/v1/completions`, { method: "POST", body: "{}" }),
    ).rejects.toThrow();
    // And a replica that is not listening at all: the same.
    const dead = await upstream(() => {});
    for (const c of closers.splice(0)) await c();
    await expect(fetch(`${await guard(dead)}/health`)).rejects.toThrow();
  });
});
