import { parsePolicyOptions, resolvePolicy } from "@smallkv/policies";
import { Model, resolveModelDir } from "@smallkv/runner";
import { createServer, playground } from "@smallkv/server";
import type { Command } from "commander";
import { addDeviceOptions, collect, type DeviceCliOptions, intArg } from "../options.js";

interface ServeCli extends DeviceCliOptions {
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
    .option("--quiet", "no request logs");
  addDeviceOptions(cmd).action(async (o: ServeCli) => {
    const model = await Model.load(resolveModelDir(o.model), {
      threads: o.threads,
      device: o.device,
      dtype: o.dtype,
    });
    const assistant = o.assistant
      ? await Model.load(resolveModelDir(o.assistant), {
          threads: o.threads,
          device: model.device ? model.device.info.kind : "cpu",
          dtype: o.dtype,
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
      apiKey: o.apiKey ?? process.env.SMALLKV_API_KEY,
      maxBatch: o.maxBatch,
      maxQueue: o.maxQueue,
      maxTokensLimit: o.maxTokens,
      requestTimeoutMs: o.timeout,
      bodyLimit: o.bodyLimit,
      logger: o.quiet ? false : { level: "info" },
      plugins: [playground],
    });
    const address = await server.app.listen({ host: o.host, port: o.port });
    process.stderr.write(
      `smallkv serving ${server.modelId}${assistant ? ` (assistant ${assistant.name})` : ""} at ${address} (default policy ${o.policy} @ ${o.budget})\n`,
    );
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
    await new Promise(() => {});
  });
}
