import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  LLM_100M,
  LLM_SMALL,
  median,
  type PrefixBenchRow,
  randomTokens,
  SLM_10M,
  SLM_SMALL,
  splitDocuments,
  syntheticCheckpoint,
  table,
  writeJson,
} from "@smallkv/eval";
import { assetsDir, Model, type PrefixCacheOptions, resolveModelDir } from "@smallkv/runner";
import { createServer, DEFAULT_PREFIX_CACHE_BYTES, type LoadResult, runLoad } from "@smallkv/server";

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
  /** Prefix-cache mode: TTFT of requests sharing this many prompt tokens, cold and warm. */
  prefix?: number;
  repeats: number;
  small?: boolean;
  block?: number;
}

/** Resident set size of this process in MiB (the server runs here unless --url). */
const rssMiB = () => process.memoryUsage().rss / 2 ** 20;

/** The server the benches start here (no logs; the batch and queue sizes given). */
const benchServerOn = (
  model: Model,
  assistant: Model | undefined,
  o: Opts,
  prefixCache?: PrefixCacheOptions,
) =>
  createServer({ model, assistant, logger: false, maxBatch: o.maxBatch, maxQueue: o.maxQueue, prefixCache });

/**
 * Prefix-cache TTFT: per policy and repeat, a prompt of `prefix` random tokens plus its own
 * tail (cold: nothing cached), then another prompt with the same prefix and another tail (warm).
 * TTFT is the latency of a max_tokens=1 request (prefill plus one token), measured by the client.
 * Runs on the synthetic ~100M pair (--small: the small pair), whose context holds long prompts.
 */
async function benchPrefix(o: Opts): Promise<void> {
  const size = o.small ? "small" : "100m";
  process.stderr.write(`preparing synthetic checkpoints (${size})...\n`);
  const model = await Model.load(syntheticCheckpoint(`llm-${size}`, o.small ? LLM_SMALL : LLM_100M));
  const assistant = await Model.load(syntheticCheckpoint(`slm-${size}`, o.small ? SLM_SMALL : SLM_10M));
  const s = await benchServerOn(model, assistant, o, {
    maxBytes: DEFAULT_PREFIX_CACHE_BYTES,
    blockSize: o.block,
  });
  const url = await s.app.listen({ host: "127.0.0.1", port: 0 });
  // Token ids the tokenizer can print (the synthetic models share stories260K's 512 tokens).
  const vocab = Math.min(512, model.config.vocabSize);
  const ask = async (prompt: number[], policy: string) => {
    const t0 = performance.now();
    const r = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: s.modelId,
        prompt,
        max_tokens: 1,
        temperature: 0,
        kv_policy: policy,
        kv_budget: o.budget,
      }),
    });
    const j = (await r.json()) as {
      usage?: { prompt_tokens_details?: { cached_tokens: number } };
      error?: { message: string };
    };
    if (!r.ok) throw new Error(`HTTP ${r.status}: ${j.error?.message}`);
    return { ms: performance.now() - t0, cached: j.usage?.prompt_tokens_details?.cached_tokens ?? 0 };
  };
  const rows: PrefixBenchRow[] = [];
  const P = o.prefix!;
  for (const policy of o.policies.split(",")) {
    const cold: number[] = [];
    const warm: number[] = [];
    let cached = 0;
    // One warm-up request first (graph loads, allocations), not measured.
    await ask(randomTokens(64, vocab, 7), policy);
    for (let rep = 0; rep < o.repeats; rep++) {
      const prefix = randomTokens(P, vocab, 1000 + rep);
      const a = await ask([...prefix, ...randomTokens(40, vocab, 2000 + rep)], policy);
      const b = await ask([...prefix, ...randomTokens(40, vocab, 3000 + rep)], policy);
      if (a.cached !== 0) throw new Error(`the cold request reused ${a.cached} tokens`);
      cold.push(a.ms);
      warm.push(b.ms);
      cached = b.cached;
      process.stderr.write(
        `  ${policy}: cold ${a.ms.toFixed(0)} ms, warm ${b.ms.toFixed(0)} ms (${b.cached} cached)\n`,
      );
    }
    rows.push({
      policy,
      prefix: P,
      coldMs: median(cold),
      warmMs: median(warm),
      ratio: median(warm) / median(cold),
      cachedTokens: cached,
      repeats: o.repeats,
    });
  }
  await s.shutdown(5000);
  process.stdout.write(
    `${table(
      ["policy", "shared prefix", "cold TTFT ms", "warm TTFT ms", "warm / cold", "cached tokens"],
      rows.map((r) => [r.policy, r.prefix, r.coldMs, r.warmMs, r.ratio, r.cachedTokens]),
    )}\n`,
  );
  process.stdout.write(
    `\nJSON: ${writeJson(o.out, "server-prefix.json", { kind: "smallkv.bench-server-prefix", model: size, budget: o.budget, blockSize: s.prefixCache?.blockSize ?? null, rows })}\n`,
  );
}

/** Load runs against a server (started here on loopback, or --url), per policy and concurrency. */
export async function benchServer(o: Opts): Promise<void> {
  if (o.prefix !== undefined) return benchPrefix(o);
  const docs = splitDocuments(readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8"));
  let url = o.url;
  let close: (() => Promise<void>) | null = null;
  let modelId = "";
  if (!url) {
    const model = await Model.load(resolveModelDir(o.model));
    const assistant = o.assistant ? await Model.load(resolveModelDir(o.assistant)) : undefined;
    const s = await benchServerOn(model, assistant, o);
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
