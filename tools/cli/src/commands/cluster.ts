import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { haproxyConfig, prometheusConfig } from "../cluster/haproxy-config.js";
import { StreamGuard } from "../cluster/stream-guard.js";
import { Supervisor } from "../cluster/supervisor.js";
import { intArg } from "../options.js";

interface ClusterCli {
  model: string;
  assistant?: string;
  policy: string;
  budget: string;
  replicas: number;
  host: string;
  port: number;
  replicaPort?: number;
  affinity?: boolean;
  apiKey?: string;
  metricsKey?: string;
  healthInterval: number;
  timeout: number;
  threads?: number;
  maxBatch: number;
  maxQueue: number;
  prefixCacheBytes?: number;
  prefixCacheBlock?: number;
  runDir?: string;
  haproxy?: string;
}

const BIN = join(dirname(fileURLToPath(import.meta.url)), "..", "bin.js");

function findHaproxy(given?: string): string {
  for (const c of [given, "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"].filter(Boolean) as string[])
    if (existsSync(c)) return c;
  try {
    return execFileSync("sh", ["-c", "command -v haproxy"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error(
      "HAProxy was not found: install it (Debian: apt-get install haproxy) or give --haproxy <path>",
    );
  }
}

/** Resolves once `url` answers /health with 200 through the balancer. */
async function waitHealthy(url: string, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      if ((await fetch(`${url}/health`)).status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > end) throw new Error(`the balancer at ${url} did not become healthy`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function registerCluster(program: Command): void {
  program
    .command("cluster")
    .description(
      "run N `serve` replicas on loopback behind HAProxy (health checks, retries, draining, optional session affinity)",
    )
    .requiredOption("-m, --model <dir>", "the model (every replica loads it)")
    .option("-a, --assistant <dir>", "assistant model, for kv_policy smallkv")
    .option("--policy <name>", "default KV policy of requests that name none", "full")
    .option("--budget <b>", "default KV budget", "1")
    .option("--replicas <n>", "serve processes", intArg("--replicas", 1), 2)
    .option("--host <host>", "address the balancer listens on", "127.0.0.1")
    .option("--port <n>", "the balancer's port", intArg("--port", 1), 8080)
    .option(
      "--replica-port <n>",
      "port of replica 0 (replica i: this + i; default: --port + 1)",
      intArg("--replica-port", 1),
    )
    .option("--affinity", "session affinity: consistent hash of X-Session-Id (else the body's user field)")
    .option("--api-key <key>", "every replica requires this bearer key (or set SMALLKV_API_KEY)")
    .option("--metrics-key <key>", "every replica's /metrics requires this key (default: public)")
    .option(
      "--health-interval <ms>",
      "milliseconds between health checks of each replica",
      intArg("--health-interval", 100),
      1000,
    )
    .option("--timeout <s>", "seconds a request may take end to end", intArg("--timeout", 1), 300)
    .option("--threads <n>", "CPU threads per replica (default: cores / replicas)", intArg("--threads", 1))
    .option("--max-batch <n>", "sequences in each replica's running batch", intArg("--max-batch", 1), 32)
    .option("--max-queue <n>", "requests waiting per replica", intArg("--max-queue"), 64)
    .option(
      "--prefix-cache-bytes <n>",
      "each replica's prefix cache (0: off)",
      intArg("--prefix-cache-bytes"),
    )
    .option(
      "--prefix-cache-block <n>",
      "tokens per prefix-cache block of each replica",
      intArg("--prefix-cache-block", 1),
    )
    .option(
      "--run-dir <dir>",
      "where haproxy.cfg, prometheus.yml and cluster.json go (default: a new temp folder)",
    )
    .option("--haproxy <path>", "the haproxy binary (default: found on PATH)")
    .action(async (o: ClusterCli) => {
      const haproxy = findHaproxy(o.haproxy);
      const apiKey = o.apiKey ?? process.env.SMALLKV_API_KEY;
      const runDir = o.runDir ? resolve(o.runDir) : mkdtempSync(join(tmpdir(), "smallkv-cluster-"));
      mkdirSync(runDir, { recursive: true });
      const base = o.replicaPort ?? o.port + 1;
      const ports = Array.from({ length: o.replicas }, (_, i) => base + i);
      const threads = o.threads ?? Math.max(1, Math.floor(availableParallelism() / o.replicas));
      const log = (line: string) => process.stderr.write(`${line}\n`);
      const sup = new Supervisor({
        ports,
        runDir,
        log,
        argv: (port) => [
          BIN,
          "serve",
          "-m",
          o.model,
          ...(o.assistant ? ["-a", o.assistant] : []),
          "--policy",
          o.policy,
          "--budget",
          o.budget,
          "--port",
          String(port),
          "--threads",
          String(threads),
          "--max-batch",
          String(o.maxBatch),
          "--max-queue",
          String(o.maxQueue),
          "--timeout",
          String(o.timeout * 1000),
          "--quiet",
          ...(apiKey ? ["--api-key", apiKey] : []),
          ...(o.metricsKey ? ["--metrics-key", o.metricsKey] : []),
          ...(o.prefixCacheBytes !== undefined ? ["--prefix-cache-bytes", String(o.prefixCacheBytes)] : []),
          ...(o.prefixCacheBlock !== undefined ? ["--prefix-cache-block", String(o.prefixCacheBlock)] : []),
        ],
      });
      // Between HAProxy and each replica: a guard that ends a stream cut by a dying replica
      // with an OpenAI error event (and leaves everything else as HAProxy would see it).
      const guards = ports.map((p) => new StreamGuard(p));
      const guardPorts = await Promise.all(guards.map((g) => g.listen()));
      let balancer: ChildProcess | null = null;
      let stopping = false;
      const stop = async (why: string) => {
        if (stopping) return;
        stopping = true;
        log(`${why}: stopping the balancer and draining the replicas`);
        balancer?.kill("SIGTERM");
        await sup.stop();
        await Promise.all(guards.map((g) => g.close()));
        process.exit(0);
      };
      for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(sig, () => void stop(sig));
      const parent = process.ppid;
      setInterval(() => {
        if (process.ppid !== parent) void stop("parent process exited");
      }, 250).unref();

      await sup.startAll();
      const cfgPath = join(runDir, "haproxy.cfg");
      writeFileSync(
        cfgPath,
        haproxyConfig({
          host: o.host,
          port: o.port,
          replicaPorts: ports,
          upstreamPorts: guardPorts,
          affinity: !!o.affinity,
          checkIntervalMs: o.healthInterval,
          timeoutSeconds: o.timeout,
          statsSocket: join(runDir, "haproxy.sock"),
        }),
      );
      writeFileSync(
        join(runDir, "prometheus.yml"),
        prometheusConfig({ replicaPorts: ports, metricsKey: o.metricsKey }),
      );
      execFileSync(haproxy, ["-c", "-q", "-f", cfgPath], { stdio: "inherit" });
      balancer = spawn(haproxy, ["-db", "-f", cfgPath], { stdio: ["ignore", "inherit", "inherit"] });
      balancer.on("exit", (code) => {
        if (!stopping) void stop(`haproxy exited (${code})`);
      });
      const url = `http://${o.host.includes(":") ? `[${o.host}]` : o.host}:${o.port}`;
      await waitHealthy(url, 30_000);
      log(
        `smallkv cluster: ${o.replicas} replicas (ports ${ports.join(", ")}) behind HAProxy at ${url} (${o.affinity ? "session affinity" : "least connections"}); config ${cfgPath}, Prometheus targets ${join(runDir, "prometheus.yml")}, state ${join(runDir, "cluster.json")}`,
      );
      await new Promise(() => {});
    });
}
