import {
  type HotRowsMode,
  KV_STORE_TYPES,
  type KvStoreType,
  WEIGHT_TYPES,
  type WeightType,
} from "@smallkv/runner";
import { type Command, InvalidArgumentError, Option } from "commander";

export function intArg(name: string, min = 0) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

export function floatArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number`);
    return n;
  };
}

export function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** A `--policies` list: comma-separated names, or ';'-separated specs when options (with commas) are given. */
export function policySpecs(v: string): string[] {
  return v
    .split(v.includes(";") ? ";" : ",")
    .map((x) => x.trim())
    .filter(Boolean);
}

export async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** The backend flags every model-loading command takes. */
export interface DeviceCliOptions {
  device: "cpu" | "cuda" | "auto" | "emulator";
  dtype?: "f32" | "f16" | "bf16";
  devicePolicies?: "on" | "off";
  deviceKvBudget?: number;
}

export function addDeviceOptions<C extends Command>(cmd: C): C {
  cmd.addOption(
    new Option(
      "--device <kind>",
      "where the model runs (auto: CUDA when a GPU opens, else the CPU; emulator: the CUDA kernels on the CPU, slow, for checks)",
    )
      .choices(["cpu", "cuda", "auto", "emulator"])
      .default("cpu"),
  );
  cmd.addOption(
    new Option("--dtype <type>", "weight storage on the device (f16/bf16 use tensor cores)").choices([
      "f32",
      "f16",
      "bf16",
    ]),
  );
  cmd.addOption(
    new Option(
      "--device-policies <mode>",
      "on the device: run H2O and SmallKV on their device forms (ranked, selected and accumulated on the GPU, batched), or off: on the host, per sequence",
    )
      .choices(["on", "off"])
      .default("on"),
  );
  cmd.option(
    "--device-kv-budget <MiB>",
    "on the device: memory the KV stores may take before a store spills to pinned host memory (default: the free memory after the weights, less a tenth of the device)",
    intArg("--device-kv-budget", 0),
  );
  return cmd;
}

/** The KV store flag of a command that runs sequences. */
export interface KvCliOptions {
  kvCold?: KvStoreType;
  hotRows?: HotRowsMode;
}

export function addKvOption<C extends Command>(cmd: C): C {
  cmd.addOption(
    new Option(
      "--kv-cold <type>",
      "how the CPU backend stores K/V (both models): f32, or int8 with a scale per token and kv head, read in place by attention",
    )
      .choices(KV_STORE_TYPES)
      .default("f32"),
  );
  cmd.addOption(
    new Option(
      "--hot-rows <mode>",
      "how the CPU hot set holds selected rows: indexed (read from the store in place) or copy (contiguous float copies refilled by the difference; more memory)",
    )
      .choices(["indexed", "copy"])
      .default("indexed"),
  );
  return cmd;
}

/** The CPU weight flags of a model-loading command. */
export interface WeightCliOptions {
  weights?: WeightType;
  groupSize?: number;
  assistantWeights?: WeightType;
}

export function addWeightOptions<C extends Command>(cmd: C, assistant = true): C {
  cmd.addOption(
    new Option(
      "--weights <type>",
      "weights of the projections and MLP on the CPU: f32, or int8/int4 quantized at load (group-wise; LM head int8 for both; embedding f32), or stored: a GGUF file's own types (default: f32 for a checkpoint folder, stored for a GGUF file)",
    ).choices(WEIGHT_TYPES),
  );
  cmd.option(
    "--group-size <n>",
    "inputs per quantization group (power of two >= 16; default 32 for int4, 64 for int8)",
    intArg("--group-size", 16),
  );
  if (assistant)
    cmd.addOption(
      new Option("--assistant-weights <type>", "weights of the assistant (default: as --weights)").choices(
        WEIGHT_TYPES,
      ),
    );
  return cmd;
}

/** `--speculative K` (drafted tokens per round) or `adaptive` / `adaptive:K` (K: the most it may draft). */
export function speculativeArg(v: string): { k: number; adaptive: boolean } {
  const m = /^(?:(adaptive)(?::(\d+))?|(\d+))$/.exec(v.trim());
  const k = Number(m?.[2] ?? m?.[3] ?? 4);
  if (!m || !(k >= 1 && k <= 16))
    throw new InvalidArgumentError("--speculative must be K (1 to 16), adaptive or adaptive:K");
  return { k, adaptive: m[1] !== undefined };
}
