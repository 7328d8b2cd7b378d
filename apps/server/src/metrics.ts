import type { PrefixCacheStats } from "@smallkv/runner";
import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** The server's Prometheus metrics (one registry per server instance). */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "smallkv_requests_total",
    help: "HTTP requests by endpoint and status",
    labelNames: ["endpoint", "status"],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: "smallkv_queue_depth",
    help: "requests waiting for a batch slot",
    registers: [this.registry],
  });
  readonly running = new Gauge({
    name: "smallkv_running_sequences",
    help: "sequences in the running batch",
    registers: [this.registry],
  });
  readonly ttft = new Histogram({
    name: "smallkv_time_to_first_token_seconds",
    help: "time from admission to the first generated token",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly tpot = new Histogram({
    name: "smallkv_time_per_output_token_seconds",
    help: "mean time per output token after the first, per request",
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });
  readonly generatedTokens = new Counter({
    name: "smallkv_generated_tokens_total",
    help: "generated tokens",
    registers: [this.registry],
  });
  readonly draftedTokens = new Counter({
    name: "smallkv_speculative_drafted_tokens_total",
    help: "tokens the assistant drafted for speculative decoding",
    registers: [this.registry],
  });
  readonly acceptedTokens = new Counter({
    name: "smallkv_speculative_accepted_tokens_total",
    help: "drafted tokens the LLM accepted (acceptance rate: accepted / drafted)",
    registers: [this.registry],
  });
  readonly speculativeRounds = new Counter({
    name: "smallkv_speculative_rounds_total",
    help: "speculative verify rounds (mean accepted length: accepted / rounds)",
    registers: [this.registry],
  });
  readonly promptTokens = new Counter({
    name: "smallkv_prompt_tokens_total",
    help: "prompt tokens",
    registers: [this.registry],
  });
  readonly hotBytes = new Gauge({
    name: "smallkv_kv_hot_bytes",
    help: "hot KV bytes of running sequences (what attention reads)",
    registers: [this.registry],
  });
  readonly coldBytes = new Gauge({
    name: "smallkv_kv_cold_bytes",
    help: "cold KV bytes of running sequences (the full store)",
    registers: [this.registry],
  });
  readonly assistantBytes = new Gauge({
    name: "smallkv_kv_assistant_bytes",
    help: "KV bytes the assistant keeps for running sequences (SmallKV's full small-model cache); on the CPU resident KV = cold + assistant",
    registers: [this.registry],
  });
  readonly kvDeviceBytes = new Gauge({
    name: "smallkv_kv_device_bytes",
    help: "device backend: bytes of the running sequences' KV stores and policy state in GPU memory (both models)",
    registers: [this.registry],
  });
  readonly kvHostBytes = new Gauge({
    name: "smallkv_kv_host_bytes",
    help: "device backend: bytes of the running sequences' KV stores in pinned host memory (host policies' cold stores, stores spilled past the device KV budget)",
    registers: [this.registry],
  });
  readonly deviceBytes = new Gauge({
    name: "smallkv_device_allocated_bytes",
    help: "GPU memory held by the models (weights, device KV stores, hot sets, workspaces; both models); 0 on the CPU backend",
    registers: [this.registry],
  });
  readonly policyRequests = new Counter({
    name: "smallkv_policy_requests_total",
    help: "generation requests by KV policy",
    labelNames: ["policy"],
    registers: [this.registry],
  });
  /** Prefix cache figures, read from the cache at each scrape. */
  watchPrefixCache(stats: () => PrefixCacheStats): void {
    const reg = [this.registry];
    const counter = (name: string, help: string, pick: (s: PrefixCacheStats) => number) =>
      new Counter({
        name,
        help,
        registers: reg,
        collect() {
          this.reset();
          this.inc(pick(stats()));
        },
      });
    const gauge = (name: string, help: string, pick: (s: PrefixCacheStats) => number) =>
      new Gauge({
        name,
        help,
        registers: reg,
        collect() {
          this.set(pick(stats()));
        },
      });
    counter(
      "smallkv_prefix_cache_hit_tokens_total",
      "prompt tokens served from the prefix cache",
      (s) => s.hitTokens,
    );
    counter(
      "smallkv_prefix_cache_miss_tokens_total",
      "prompt tokens prefilled (not in the prefix cache)",
      (s) => s.missTokens,
    );
    counter(
      "smallkv_prefix_cache_evictions_total",
      "prefix cache blocks evicted (LRU) to keep the byte budget",
      (s) => s.evictions,
    );
    gauge(
      "smallkv_prefix_cache_bytes",
      "bytes the prefix cache holds (K/V of both models and policy state)",
      (s) => s.bytes,
    );
    gauge("smallkv_prefix_cache_blocks", "token blocks in the prefix cache", (s) => s.blocks);
  }

  readonly finished = new Counter({
    name: "smallkv_finished_total",
    help: "generations by finish reason (stop, length, cancelled, timeout, error)",
    labelNames: ["reason"],
    registers: [this.registry],
  });
}
