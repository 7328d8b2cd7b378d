import { resolve } from "node:path";
import { parsePolicyOptions, resolvePolicy } from "@smallkv/policies";
import { Model, resolveModelDir } from "@smallkv/runner";
import { createServer, playground } from "@smallkv/server";
import type { Command } from "commander";
import {
  addDeviceOptions,
  addKvOption,
  addWeightOptions,
  collect,
  type DeviceCliOptions,
  intArg,
  type KvCliOptions,
  type WeightCliOptions,
} from "../options.js";

interface ServeCli extends DeviceCliOptions, WeightCliOptions, KvCliOptions {
  model: string;
  assistant?: string;
  policy: string;
  budget: string;
  policyOption?: string[];
  host: string;
  port: number;
  apiKey?: string;
  maxBatch: number;
  maxQueue: number;
  maxTokens?: number;
  timeout: number;
  bodyLimit: number;
  shutdownTimeout: number;
  threads?: number;
  quiet?: boolean;
  mapping?: string[];
  podBlocks?: string[];
  allowUnauthenticated?: boolean;
  metricsPublic?: boolean;
  metricsKey?: string;
  prefixCacheBytes: number;
  prefixCacheBlock: number;
}

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1"]);

/** Repeated NAME=path flags into a name → path table (paths resolved from the working folder). */
function namedFiles(flag: string, pairs: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i <= 0) throw new Error(`${flag} ${JSON.stringify(p)}: expected NAME=path`);
    out[p.slice(0, i)] = resolve(p.slice(i + 1));
  }
  return out;
}

export function registerServe(program: Command): void {
  const cmd = program
    .command("serve")
    .description("run the OpenAI-compatible server (loopback by default)")
    .requiredOption("-m, --model <dir>", "the model")
    .option("-a, --assistant <dir>", "assistant model, for kv_policy smallkv")
    .option("--policy <name>", "default KV policy of requests that name none", "full")
    .option("--budget <b>", "default KV budget", "1")
    .option("--policy-option <k=v>", "default policy option (repeatable)", collect)
    .option("--host <host>", "address to listen on", "127.0.0.1")
    .option("--port <n>", "port", intArg("--port"), 8080)
    .option("--api-key <key>", "require this bearer key (or set SMALLKV_API_KEY)")
    .option("--metrics-public", "serve /metrics without a key (the default, for Prometheus scrapes)")
    .option(
      "--metrics-key <key>",
      "serve /metrics only to this bearer key (or set SMALLKV_METRICS_KEY); the API key does not open it",
    )
    .option(
      "--prefix-cache-bytes <n>",
      "bytes of prompt KV (both models) and policy state kept across requests; 0 turns the prefix cache off",
      intArg("--prefix-cache-bytes"),
      256 * 2 ** 20,
    )
    .option(
      "--prefix-cache-block <n>",
      "tokens per prefix-cache block (prompts are prefilled in chunks ending on block boundaries)",
      intArg("--prefix-cache-block", 1),
      128,
    )
    .option("--max-batch <n>", "sequences in the running batch", intArg("--max-batch", 1), 32)
    .option("--max-queue <n>", "requests waiting beyond the batch (then 429)", intArg("--max-queue"), 64)
    .option("--max-tokens <n>", "largest max_tokens a request may ask for", intArg("--max-tokens", 1))
    .option("--timeout <ms>", "per-request time limit", intArg("--timeout", 1), 120_000)
    .option("--body-limit <bytes>", "request body limit", intArg("--body-limit", 1), 1024 * 1024)
    .option(
      "--shutdown-timeout <ms>",
      "how long SIGTERM/SIGINT lets in-flight requests finish",
      intArg("--shutdown-timeout"),
      10_000,
    )
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option(
      "--mapping <name=path>",
      "a saved SmallKV head matching (smallkv match --out) that requests select with kv_policy_options.mapping = name (repeatable)",
      collect,
    )
    .option(
      "--pod-blocks <name=path>",
      "PoD layer blocks (smallkv calibrate-pod) that requests select with kv_policy_options.blocks = name (repeatable)",
      collect,
    )
    .option(
      "--allow-unauthenticated",
      "allow a non-loopback --host without an API key (anyone who can reach the port may use the model)",
    )
    .option("--quiet", "no request logs");
  addKvOption(addWeightOptions(addDeviceOptions(cmd))).action(async (o: ServeCli) => {
    const apiKey = o.apiKey ?? process.env.SMALLKV_API_KEY;
    if (!LOOPBACK.has(o.host) && !apiKey && !o.allowUnauthenticated)
      throw new Error(
        `--host ${o.host} would serve beyond this machine without an API key: give --api-key (or SMALLKV_API_KEY), or --allow-unauthenticated to do it anyway`,
      );
    const metricsKey = o.metricsKey ?? process.env.SMALLKV_METRICS_KEY;
    if (o.metricsPublic && metricsKey)
      throw new Error(
        "--metrics-public and --metrics-key (or SMALLKV_METRICS_KEY) exclude each other: give one",
      );
    const policyFiles = {
      ...(o.mapping ? { mapping: namedFiles("--mapping", o.mapping) } : {}),
      ...(o.podBlocks ? { blocks: namedFiles("--pod-blocks", o.podBlocks) } : {}),
    };
    const model = await Model.load(resolveModelDir(o.model), {
      threads: o.threads,
      device: o.device,
      dtype: o.dtype,
      devicePolicies: o.devicePolicies !== "off",
      deviceKvBudget: o.deviceKvBudget,
      weights: o.weights,
      groupSize: o.groupSize,
      kvCold: o.kvCold,
      hotRows: o.hotRows,
    });
    const assistant = o.assistant
      ? await Model.load(resolveModelDir(o.assistant), {
          threads: o.threads,
          device: model.device ? model.device.info.kind : "cpu",
          dtype: o.dtype,
          devicePolicies: o.devicePolicies !== "off",
          deviceKvBudget: o.deviceKvBudget,
          weights: o.assistantWeights ?? o.weights,
          groupSize: o.groupSize,
          kvCold: o.kvCold,
          hotRows: o.hotRows,
        })
      : undefined;
    const needsAssistant = o.policy ? (await resolvePolicy(o.policy)).usesAssistant : false;
    const defaultPolicy = needsAssistant && !assistant ? undefined : o.policy;
    if (needsAssistant && !assistant) throw new Error(`--policy ${o.policy} needs --assistant`);
    const server = await createServer({
      model,
      assistant,
      defaultPolicy,
      defaultBudget: o.budget,
      defaultPolicyOptions: parsePolicyOptions(o.policyOption, o.policy),
      apiKey,
      metricsAccess: metricsKey ? { key: metricsKey } : "public",
      prefixCache:
        o.prefixCacheBytes > 0 ? { maxBytes: o.prefixCacheBytes, blockSize: o.prefixCacheBlock } : false,
      policyFiles,
      maxBatch: o.maxBatch,
      maxQueue: o.maxQueue,
      maxTokensLimit: o.maxTokens,
      requestTimeoutMs: o.timeout,
      bodyLimit: o.bodyLimit,
      logger: o.quiet ? false : { level: "info" },
      plugins: [playground],
    });
    // Signals are handled before the banner is out: a client that stops the server as soon as
    // it reads the address must get the graceful shutdown, not the default kill.
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`${signal}: finishing in-flight requests (up to ${o.shutdownTimeout} ms)\n`);
      server.shutdown(o.shutdownTimeout).then(
        () => process.exit(0),
        () => process.exit(0),
      );
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => stop("SIGHUP"));
    // A launcher that dies without passing the signal on (`pnpm smallkv serve` got SIGTERM)
    // leaves this process re-parented: stop as if signalled, rather than serve orphaned.
    const parent = process.ppid;
    const watch = setInterval(() => {
      if (process.ppid !== parent) stop("parent process exited");
    }, 250);
    watch.unref();
    await server.app.listen({ host: o.host, port: o.port });
    // The address actually bound (0.0.0.0 stays 0.0.0.0, port 0 becomes the real port).
    const bound = server.app.server.address();
    const address =
      bound && typeof bound === "object"
        ? `http://${bound.family === "IPv6" ? `[${bound.address}]` : bound.address}:${bound.port}`
        : String(bound);
    if (!LOOPBACK.has(o.host) && !apiKey)
      process.stderr.write(`warning: serving ${address} without an API key (--allow-unauthenticated)\n`);
    process.stderr.write(
      `smallkv serving ${server.modelId}${assistant ? ` (assistant ${assistant.name})` : ""} at ${address} (default policy ${o.policy} @ ${o.budget})\n`,
    );
    await new Promise(() => {});
  });
}
