// Authentication comes before anything else: every route but /health (and /metrics when it is
// public) answers 401 to a request without the right key, whatever its body, and never reads
// that body.
import { connect } from "node:net";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { playground } from "../src/index.js";
import { startServer } from "./helpers.js";
import { chatBody, completionBody, detokenizeBody, rawBody, tokenizeBody } from "./hostile-bodies.js";

const KEY = "s3cret";
const METRICS_KEY = "scrape-only";
const KEYS = { "no key": undefined, "wrong key": "s3cre", "right key": KEY } as const;
type KeyCase = keyof typeof KEYS;

interface Route {
  method: "GET" | "POST";
  path: string;
  valid?: string;
  /** A request this route refuses (bad body, unknown id, no such route), or none for routes without input. */
  malformed?: { path?: string; body?: string };
  /** The status of each case with the right key. */
  right: { valid: number; malformed?: number };
}

const completion = { model: "stories260K", prompt: "hi", max_tokens: 2, temperature: 0 };
const ROUTES: Route[] = [
  {
    method: "POST",
    path: "/v1/completions",
    valid: JSON.stringify(completion),
    malformed: { body: JSON.stringify({ ...completion, bogus: 1 }) },
    right: { valid: 200, malformed: 400 },
  },
  {
    method: "POST",
    path: "/v1/chat/completions",
    valid: JSON.stringify({
      model: "stories260K",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
    }),
    malformed: { body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }) },
    right: { valid: 200, malformed: 400 },
  },
  {
    method: "POST",
    path: "/tokenize",
    valid: JSON.stringify({ prompt: "Once upon a time" }),
    malformed: { body: "{not json" },
    right: { valid: 200, malformed: 400 },
  },
  {
    method: "POST",
    path: "/detokenize",
    valid: JSON.stringify({ tokens: [1, 2, 3] }),
    malformed: { body: JSON.stringify({ tokens: [-1] }) },
    right: { valid: 200, malformed: 400 },
  },
  {
    method: "GET",
    path: "/v1/models",
    malformed: { path: "/v1/models/no-such-model" },
    right: { valid: 200, malformed: 404 },
  },
  { method: "GET", path: "/v1/models/stories260K", right: { valid: 200 } },
  { method: "GET", path: "/no/such/route", right: { valid: 404 } },
];

async function send(url: string, method: string, path: string, body: string | undefined, key?: string) {
  const r = await fetch(`${url}${path}`, {
    method,
    headers: {
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
      ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}),
    },
    body,
  });
  const text = await r.text();
  return { status: r.status, text, headers: r.headers };
}

describe("API key checked before the body is read", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  const table: string[] = [];
  beforeAll(async () => {
    srv = await startServer({ apiKey: KEY, maxTokensLimit: 4, plugins: [playground] });
  });
  afterAll(async () => {
    // The table for the closing note: route x key x body, with the status each got.
    console.log(`auth table:\n${table.join("\n")}`);
    await srv.close();
  });

  for (const route of ROUTES)
    for (const kase of Object.keys(KEYS) as KeyCase[])
      for (const body of ["valid", "malformed"] as const) {
        if (body === "malformed" && !route.malformed) continue;
        const expected =
          kase === "right key" ? (body === "valid" ? route.right.valid : route.right.malformed!) : 401;
        it(`${route.method} ${route.path}, ${kase}, ${body} input: ${expected}`, async () => {
          const path = body === "valid" ? route.path : (route.malformed!.path ?? route.path);
          const payload = body === "valid" ? route.valid : (route.malformed!.body ?? route.valid);
          const r = await send(srv.url, route.method, path, payload, KEYS[kase]);
          table.push(`| ${route.method} ${path} | ${kase} | ${body} | ${r.status} |`);
          expect(r.status, r.text).toBe(expected);
          const err = expected >= 400 ? JSON.parse(r.text).error : null;
          if (expected === 401) {
            expect(err.code).toBe("invalid_api_key");
            expect(err.type).toBe("authentication_error");
            // Nothing of the validation leaks: no param, and the message is the same for all.
            expect(err.param).toBeNull();
            expect(r.headers.get("www-authenticate")).toMatch(/^Bearer/);
          } else if (expected >= 400) expect(err.code).not.toBe("invalid_api_key");
        });
      }

  it("/health and the playground page answer without a key; /health says a key is needed", async () => {
    const h = await send(srv.url, "GET", "/health", undefined);
    expect(h.status).toBe(200);
    expect(JSON.parse(h.text).api_key_required).toBe(true);
    const page = await send(srv.url, "GET", "/", undefined);
    expect(page.status).toBe(200);
    expect(page.text).toContain("SmallKV playground");
    const asset = /src="\.?(\/assets\/[^"]+\.js)"/.exec(page.text)?.[1];
    expect(asset).toBeDefined();
    const js = await send(srv.url, "GET", asset!, undefined);
    expect(js.status).toBe(200);
    expect(js.text.length).toBeGreaterThan(1000);
    // A path the page does not have meets the key check, not a static 404.
    expect((await send(srv.url, "GET", "/assets/missing.js", undefined)).status).toBe(401);
  });

  const generated: [string, fc.Arbitrary<string>][] = [
    ["/v1/completions", completionBody.map((b) => JSON.stringify(b))],
    ["/v1/chat/completions", chatBody.map((b) => JSON.stringify(b))],
    ["/tokenize", tokenizeBody.map((b) => JSON.stringify(b))],
    ["/detokenize", detokenizeBody.map((b) => JSON.stringify(b))],
    ["/v1/completions", rawBody],
  ];
  it.each(generated)("%s: 100 generated bodies without a valid key are all 401", async (path, arb) => {
    await fc.assert(
      fc.asyncProperty(
        arb,
        fc.constantFrom(undefined, "", "wrong", `x${KEY}`, KEY.toUpperCase()),
        async (b, k) => {
          const r = await send(srv.url, "POST", path, b, k);
          expect(r.status, `${path} ${b.slice(0, 200)} -> ${r.text.slice(0, 200)}`).toBe(401);
        },
      ),
      { numRuns: 100, seed: 35 },
    );
  });

  it("a 10 MB body without a key is answered 401 before it is sent: the server never waits for it", async () => {
    const { port } = new URL(srv.url);
    const answer = await new Promise<string>((resolve, reject) => {
      const sock = connect(Number(port), "127.0.0.1");
      let got = "";
      sock.on("error", reject);
      sock.on("data", (d) => {
        got += d.toString("latin1");
      });
      // The server closes the connection after its 401: the rest of the body is never read.
      sock.on("close", () => resolve(got));
      sock.write(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
          `Content-Length: ${10 * 1024 * 1024}\r\n\r\n{"model":"stories260K","prompt":"`,
      );
      // Only these few bytes of the announced 10 MB are ever sent.
    });
    expect(answer).toMatch(/^HTTP\/1\.1 401 /);
    expect(answer.toLowerCase()).toContain("connection: close");
    expect(answer).toContain("invalid_api_key");
  });

  it("a refused request is counted in /metrics by route and status 401", async () => {
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    expect(text).toMatch(/smallkv_requests_total\{endpoint="\/v1\/completions",status="401"\} [1-9]/);
  });
});

describe("/metrics: public by default, or behind its own key", () => {
  let open: Awaited<ReturnType<typeof startServer>>;
  let closed: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    open = await startServer({ apiKey: KEY });
    closed = await startServer({ apiKey: KEY, metricsAccess: { key: METRICS_KEY } });
  });
  afterAll(async () => {
    await open.close();
    await closed.close();
  });

  it("public (the default): scraped without a key even when the API has one", async () => {
    const r = await send(open.url, "GET", "/metrics", undefined);
    expect(r.status).toBe(200);
    expect(r.text).toContain("smallkv_requests_total");
  });

  it.each([
    ["no key", undefined, 401],
    ["the API key", KEY, 401],
    ["a wrong key", "scrape", 401],
    ["the metrics key", METRICS_KEY, 200],
  ] as const)("with --metrics-key, %s: %d", async (_name, key, status) => {
    const r = await send(closed.url, "GET", "/metrics", undefined, key);
    expect(r.status).toBe(status);
    if (status === 200) expect(r.text).toContain("smallkv_requests_total");
  });

  it("the metrics key opens nothing else", async () => {
    const r = await send(closed.url, "GET", "/v1/models", undefined, METRICS_KEY);
    expect(r.status).toBe(401);
  });
});
