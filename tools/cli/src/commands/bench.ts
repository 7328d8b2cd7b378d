import { formatBench, runBench } from "@smallkv/eval";
import { KV_STORE_TYPES, type KvStoreType } from "@smallkv/runner";
import { type Command, InvalidArgumentError, Option } from "commander";
import {
  addDeviceOptions,
  addKvOption,
  addWeightOptions,
  type DeviceCliOptions,
  intArg,
  type KvCliOptions,
  policySpecs,
  type WeightCliOptions,
} from "../options.js";
import { benchAnchor } from "./bench-anchor.js";
import { benchRunner } from "./bench-runner.js";
import { benchServer } from "./bench-server.js";
import { benchSpeculativeCommand } from "./bench-speculative.js";

const list = (v: string) =>
  v
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);
const ints = (v: string) => list(v).map(Number);

export function registerBench(program: Command): void {
  const bench = program
    .command("bench")
    .description("benchmarks (tables on stdout, JSON and plots under --out)");
  const kv = bench
    .command("kv", { isDefault: true })
    .description(
      "throughput and KV memory of policies (Full, H2O, SnapKV, StreamingLLM, SmallKV, yours) on a synthetic ~100M LLM + ~10M assistant",
    )
    .option(
      "--policies <list>",
      "policies by name or module path, comma-separated; with options (name:k=v,k=v) separate them with ';'",
      "full,h2o,snapkv,streamingllm,smallkv",
    )
    .option("--budget <b>", "KV budget for every policy", "0.2")
    .option("--batches <list>", "batch sizes", "1,8,16")
    .option("--contexts <list>", "prompt lengths", "512,2048")
    .option("--generate <n>", "generated tokens per sequence", intArg("--generate", 2), 128)
    .option("--small", "small synthetic models (quick check)")
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option("--large", "GPU-scale synthetic models (~0.45B LLM, 32K positions)")
    .option(
      "--scenario <name>",
      "paper: the paper's two scenarios, batch 64 x (2048+256) and batch 4 x (16384+512), on the GPU-scale models; long: batch 16 x (4096+32) and batch 1 x (16384+32) on the ~100M models (overrides --batches/--contexts; an explicit --generate cuts their generation, and the output says so)",
    )
    .option(
      "--sequential",
      "run each policy's decode steps back to back instead of alternating the policies' steps within a scenario",
    )
    .option("--out <dir>", "output folder", "bench-results");
  kv.addOption(
    new Option(
      "--assistant-kv <type>",
      "how the assistant stores K/V on the CPU (default: as --kv-cold)",
    ).choices(KV_STORE_TYPES),
  );
  kv.addOption(
    new Option(
      "--assistant-dense <kind>",
      "what runs the assistant's projections and MLP on the CPU: native (the block kernels; int8/int4 quantized at load to Q8_0/Q4_0, no onnxruntime session per layer) or onnxruntime",
    ).choices(["auto", "native", "onnxruntime"]),
  );
  addWeightOptions(addKvOption(addDeviceOptions(kv))).action(
    async (
      o: DeviceCliOptions &
        KvCliOptions &
        WeightCliOptions & {
          assistantKv?: KvStoreType;
          assistantDense?: "auto" | "native" | "onnxruntime";
          large?: boolean;
          scenario?: string;
          policies: string;
          budget: string;
          batches: string;
          contexts: string;
          generate: number;
          small?: boolean;
          threads?: number;
          sequential?: boolean;
          out: string;
        },
      cmd: Command,
    ) => {
      // An explicit --generate cuts a named scenario's generation (a device check's time box);
      // the table's note says so.
      let scenarios = scenarioList(o.scenario);
      if (scenarios && cmd.getOptionValueSource("generate") === "cli") {
        for (const sc of scenarios)
          if (sc.generate > o.generate)
            process.stdout.write(
              `note: generation cut to ${o.generate} tokens (the scenario b${sc.batch} x ${sc.context} asks for ${sc.generate})\n`,
            );
        scenarios = scenarios.map((sc) => ({ ...sc, generate: Math.min(sc.generate, o.generate) }));
      }
      const r = await runBench({
        policies: policySpecs(o.policies),
        budget: o.budget,
        batches: ints(o.batches),
        contexts: ints(o.contexts),
        generate: o.generate,
        small: o.small,
        large: o.large || o.scenario === "paper",
        scenarios,
        device: o.device,
        dtype: o.dtype,
        devicePolicies: o.devicePolicies !== "off",
        deviceKvBudget: o.deviceKvBudget,
        kvCold: o.kvCold,
        assistantKvCold: o.assistantKv,
        weights: o.weights,
        assistantWeights: o.assistantWeights,
        groupSize: o.groupSize,
        assistantDense: o.assistantDense,
        hotRows: o.hotRows,
        threads: o.threads,
        sequential: o.sequential,
        out: o.out,
      });
      process.stdout.write(`${formatBench(r.rows)}\n\nJSON: ${r.json}\nplots: ${r.plots.join(", ")}\n`);
    },
  );
  bench
    .command("server")
    .description(
      "bounded load runs against the reference server: requests/s, tokens/s, p50/p99 latency, errors",
    )
    .option("-m, --model <dir>", "model (when the server is started here)", "stories260K")
    .option("-a, --assistant <dir>", "assistant (for smallkv)", "stories260K-slm-a")
    .option("--policies <list>", "kv_policy of the requests", "full,smallkv")
    .option("--budget <b>", "kv_budget of the requests", "0.2")
    .option("--concurrency <list>", "concurrent clients", "1,8,32")
    .option("--duration <s>", "seconds per run", intArg("--duration", 1), 10)
    .option("--max-tokens <n>", "max_tokens per request", intArg("--max-tokens", 1), 64)
    .option("--max-batch <n>", "server batch size", intArg("--max-batch", 1), 32)
    .option("--max-queue <n>", "server queue", intArg("--max-queue"), 64)
    .option("--url <url>", "an already running server instead of starting one")
    .option("--stream", "stream every response (SSE)")
    .option(
      "--rounds <n>",
      "soak: this many rounds per concurrency, policies mixed request by request, RSS after each",
      intArg("--rounds", 1),
      1,
    )
    .option(
      "--prefix <tokens>",
      "prefix-cache TTFT: requests sharing this many prompt tokens, cold then warm (synthetic ~100M pair)",
      intArg("--prefix", 1),
    )
    .option("--repeats <n>", "prefix mode: cold/warm pairs per policy", intArg("--repeats", 1), 5)
    .option("--small", "prefix mode: the small synthetic pair (quick check)")
    .option(
      "--block <n>",
      "prefix mode: prefix-cache block size (default: the server's)",
      intArg("--block", 1),
    )
    .option("--out <dir>", "output folder", "bench-results")
    .action(benchServer);
  const runner = bench
    .command("runner")
    .description(
      "prefill and decode throughput of the runner on a synthetic ~100M Llama checkpoint, with the batch-1 roofline ratio",
    )
    .option("--small", "use a small synthetic model (quick check)")
    .option("--large", "use the GPU-scale synthetic ~0.45B model (the paper scenarios' LLM)")
    .option("--prefill <n>", "prompt tokens for the prefill measurement", intArg("--prefill", 1), 512)
    .option("--context <n>", "context tokens before the decode measurement", intArg("--context", 1), 128)
    .option("--steps <n>", "decode steps measured", intArg("--steps", 1), 32)
    .option("--batches <list>", "decode batch sizes", "1,4,16")
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option(
      "--weights <list>",
      "CPU weight types to compare, each in its own process (f32,int8,int4)",
      "f32,int8,int4",
    )
    .option(
      "--group-size <n>",
      "inputs per quantization group (default 32 for int4, 64 for int8)",
      intArg("--group-size", 16),
    )
    .option(
      "--rounds <n>",
      "interleaved rounds over the weight types (best kept per type)",
      intArg("--rounds", 1),
      2,
    )
    .addOption(new Option("--child-out <file>").hideHelp())
    .option("--out <dir>", "output folder", "bench-results");
  addDeviceOptions(runner).action(benchRunner);
  bench
    .command("anchor")
    .description(
      "ours against llama.cpp (node-llama-cpp, dev dependency) on the same GGUF files of the synthetic ~100M Llama: prefill and decode tok/s, peak RSS, interleaved processes",
    )
    .option("--small", "use a small synthetic model (quick check)")
    .option("--prefill <n>", "prompt tokens of the prefill measurement", intArg("--prefill", 2), 512)
    .option("--steps <n>", "decode steps measured", intArg("--steps", 1), 64)
    .option("--threads <list>", "thread counts", "1,2")
    .option("--types <list>", "GGUF types (F32, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)", "F32,Q8_0,Q4_0")
    .option("--rounds <n>", "interleaved rounds (best kept)", intArg("--rounds", 1), 2)
    .addOption(new Option("--child <json>").hideHelp())
    .option("--out <dir>", "output folder", "bench-results")
    .action(benchAnchor);
  bench
    .command("speculative")
    .description(
      "speculative decoding on stories260K with each assistant as the draft: tok/s with and without, acceptance, cost ratio c, predicted speedup",
    )
    .option("--assistants <list>", "assistant models", "stories260K-slm,stories260K-slm-l,stories260K-slm-a")
    .option(
      "--policies <list>",
      "policies (name@budget), comma-separated; with options (name:k=v,k=v@budget) separate them with ';'",
      "full,smallkv@0.2",
    )
    .option("--batches <list>", "batch sizes", "1,4")
    .option("--modes <list>", "none, k=K, adaptive", "none,k=2,k=4,adaptive")
    .option("--tokens <n>", "tokens generated per request", intArg("--tokens", 2), 64)
    .option("--prompt-tokens <n>", "prompt tokens per request", intArg("--prompt-tokens", 1), 140)
    .option("--repeats <n>", "interleaved repeats (best kept per mode)", intArg("--repeats", 1), 3)
    // A 260K-parameter step is mostly fixed cost: waking a second thread per call costs more than it saves.
    .option("--threads <n>", "CPU threads per model", intArg("--threads", 1), 1)
    .option("--out <dir>", "output folder", "bench-results")
    .action(benchSpeculativeCommand);
}

/** Named scenario sets of `bench kv`. */
function scenarioList(
  name: string | undefined,
): { batch: number; context: number; generate: number }[] | undefined {
  if (name === undefined) return undefined;
  if (name === "paper")
    return [
      { batch: 64, context: 2048, generate: 256 },
      { batch: 4, context: 16384, generate: 512 },
    ];
  // Where the KV cache dominates a decode step on the ~100M CPU model.
  if (name === "long")
    return [
      { batch: 16, context: 4096, generate: 32 },
      { batch: 1, context: 16384, generate: 32 },
    ];
  throw new InvalidArgumentError(`unknown --scenario ${name} (known: paper, long)`);
}
