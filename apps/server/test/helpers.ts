import { join } from "node:path";
import { assetsDir, Model } from "@smallkv/runner";
import { createServer, type ServerOptions, type SmallKvServer } from "../src/index.js";

const models = join(assetsDir(), "models");
let llm: Promise<Model> | null = null;
let slm: Promise<Model> | null = null;

export function shippedModels(): Promise<[Model, Model]> {
  llm ??= Model.load(join(models, "stories260K"));
  slm ??= Model.load(join(models, "stories260K-slm"));
  return Promise.all([llm, slm]);
}

/** A server on a free loopback port. */
export async function startServer(
  o: Partial<ServerOptions> = {},
): Promise<{ server: SmallKvServer; url: string; close: () => Promise<void> }> {
  const [model, assistant] = await shippedModels();
  const server = await createServer({ model, assistant, logger: false, ...o });
  const url = await server.app.listen({ host: "127.0.0.1", port: 0 });
  return { server, url, close: () => server.app.close() };
}

export async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}) {
  const r = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: r.status, headers: r.headers, json: json as Record<string, any>, text };
}

/** The value of one Prometheus sample line. */
export function metric(text: string, name: string, labels = ""): number {
  const line = text
    .split("\n")
    .find(
      (l) =>
        l.startsWith(`${name}${labels ? `{${labels}}` : ""} `) || (labels === "" && l.startsWith(`${name} `)),
    );
  return line ? Number(line.split(" ").pop()) : Number.NaN;
}
