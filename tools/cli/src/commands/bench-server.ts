import { readFileSync } from "node:fs";
import { join } from "node:path";
import { splitDocuments, table, writeJson } from "@smallkv/eval";
import { assetsDir, Model, resolveModelDir } from "@smallkv/runner";
import { createServer, type LoadResult, runLoad } from "@smallkv/server";

interface Opts {
  model: string;
  assistant?: string;
  policies: string;
  budget: string;
  concurrency: string;
  duration: number;
  maxTokens: number;
  maxBatch: number;
  maxQueue: number;
  url?: string;
  out: string;
}

/** Load runs against a server (started here on loopback, or --url), per policy and concurrency. */
export async function benchServer(o: Opts): Promise<void> {
  const docs = splitDocuments(readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8"));
  let url = o.url;
  let close: (() => Promise<void>) | null = null;
  let modelId = "";
  if (!url) {
    const model = await Model.load(resolveModelDir(o.model));
    const assistant = o.assistant ? await Model.load(resolveModelDir(o.assistant)) : undefined;
    const s = await createServer({
      model,
      assistant,
      logger: false,
      maxBatch: o.maxBatch,
      maxQueue: o.maxQueue,
    });
    url = await s.app.listen({ host: "127.0.0.1", port: 0 });
    close = () => s.shutdown(5000);
    modelId = s.modelId;
  } else {
    modelId = ((await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] }).data[0].id;
  }
  const rows: (LoadResult & { policy: string })[] = [];
  for (const policy of o.policies.split(",")) {
    for (const c of o.concurrency.split(",").map(Number)) {
      process.stderr.write(`  ${policy} @ ${o.budget}: ${c} clients for ${o.duration} s\n`);
      const r = await runLoad({
        url,
        concurrency: c,
        durationMs: o.duration * 1000,
        // Prompts are the starts of real stories (about 150 tokens), so compression has something to do.
        body: (i) => ({
          model: modelId,
          prompt: docs[i % docs.length].slice(0, 600),
          max_tokens: o.maxTokens,
          temperature: 0,
          kv_policy: policy,
          kv_budget: o.budget,
        }),
      });
      rows.push({ policy, ...r });
    }
  }
  await close?.();
  process.stdout.write(
    `${table(
      ["policy", "clients", "requests", "req/s", "tokens/s", "p50 s", "p99 s", "errors"],
      rows.map((r) => [
        r.policy,
        r.concurrency,
        r.requests,
        r.requestsPerSecond,
        r.tokensPerSecond,
        r.latencyP50,
        r.latencyP99,
        r.errors,
      ]),
    )}\n`,
  );
  process.stdout.write(
    `\nJSON: ${writeJson(o.out, "server.json", { kind: "smallkv.bench-server", budget: o.budget, maxTokens: o.maxTokens, durationSeconds: o.duration, rows })}\n`,
  );
}
