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
  stream?: boolean;
  rounds: number;
}

/** Resident set size of this process in MiB (the server runs here unless --url). */
const rssMiB = () => process.memoryUsage().rss / 2 ** 20;

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
  const rows: (LoadResult & { policy: string; round: number; rssMiB: number | null })[] = [];
  const policies = o.policies.split(",");
  // Prompts are the starts of real stories (about 150 tokens), so compression has something to do.
  const body = (policy: string) => (i: number) => ({
    model: modelId,
    prompt: docs[i % docs.length].slice(0, 600),
    max_tokens: o.maxTokens,
    temperature: 0,
    kv_policy: policy,
    kv_budget: o.budget,
  });
  if (o.rounds > 1) {
    // Soak: every round mixes the policies request by request; RSS after each round shows
    // whether memory stays flat.
    for (const c of o.concurrency.split(",").map(Number)) {
      for (let round = 1; round <= o.rounds; round++) {
        process.stderr.write(
          `  mixed ${policies.join("+")} @ ${o.budget}: ${c} clients, round ${round}/${o.rounds}\n`,
        );
        const r = await runLoad({
          url,
          concurrency: c,
          durationMs: o.duration * 1000,
          stream: o.stream,
          body: (i) => body(policies[i % policies.length])(i),
        });
        rows.push({ policy: policies.join("+"), round, rssMiB: close ? rssMiB() : null, ...r });
      }
    }
  } else {
    for (const policy of policies) {
      for (const c of o.concurrency.split(",").map(Number)) {
        process.stderr.write(`  ${policy} @ ${o.budget}: ${c} clients for ${o.duration} s\n`);
        const r = await runLoad({
          url,
          concurrency: c,
          durationMs: o.duration * 1000,
          stream: o.stream,
          body: body(policy),
        });
        rows.push({ policy, round: 1, rssMiB: close ? rssMiB() : null, ...r });
      }
    }
  }
  await close?.();
  process.stdout.write(
    `${table(
      [
        "policy",
        "round",
        "clients",
        "requests",
        "req/s",
        "tokens/s",
        "p50 s",
        "p99 s",
        "429",
        "other errors",
        "RSS MiB",
      ],
      rows.map((r) => [
        r.policy,
        r.round,
        r.concurrency,
        r.requests,
        r.requestsPerSecond,
        r.tokensPerSecond,
        r.latencyP50,
        r.latencyP99,
        r.errorStatuses["429"] ?? 0,
        r.errorsNon429,
        r.rssMiB ?? "-",
      ]),
    )}\n`,
  );
  process.stdout.write(
    `\nJSON: ${writeJson(o.out, "server.json", { kind: "smallkv.bench-server", budget: o.budget, maxTokens: o.maxTokens, durationSeconds: o.duration, stream: !!o.stream, rounds: o.rounds, rows })}\n`,
  );
}
