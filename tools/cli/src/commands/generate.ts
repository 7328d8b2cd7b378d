import {
  AssistedModel,
  devicePath,
  Generator,
  InvalidOptionError,
  type KvStats,
  Model,
  resolveModelDir,
  type StepModel,
} from "@smallkv/runner";
import type { Command } from "commander";
import {
  addDeviceOptions,
  addKvOption,
  addWeightOptions,
  collect,
  type DeviceCliOptions,
  floatArg,
  intArg,
  type KvCliOptions,
  readStdin,
  speculativeArg,
  type WeightCliOptions,
} from "../options.js";
import {
  addPolicyOptions,
  formatStats,
  formatSummary,
  type PolicyCliOptions,
  policyFromCli,
} from "../policy-options.js";

export interface GenerateCliOptions
  extends PolicyCliOptions,
    DeviceCliOptions,
    Partial<WeightCliOptions>,
    KvCliOptions {
  model: string;
  assistant?: string;
  prompt?: string;
  maxTokens: number;
  greedy?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  stopToken?: string[];
  json?: boolean;
  threads?: number;
  stats?: boolean;
  speculative?: { k: number; adaptive: boolean };
}

/** Load the model, or the model with its assistant when one is given. */
export async function loadStepModel(
  model: string,
  assistant: string | undefined,
  threads?: number,
  device?: Partial<DeviceCliOptions> & Partial<WeightCliOptions> & KvCliOptions,
): Promise<StepModel> {
  const opts = {
    threads,
    device: device?.device,
    dtype: device?.dtype,
    devicePolicies: device?.devicePolicies !== "off",
    deviceKvBudget: device?.deviceKvBudget,
    weights: device?.weights,
    groupSize: device?.groupSize,
    kvCold: device?.kvCold,
    hotRows: device?.hotRows,
  };
  const llm = await Model.load(resolveModelDir(model), opts);
  // With --device auto the assistant follows wherever the LLM landed.
  const slmOpts = {
    ...opts,
    device: llm.device ? llm.device.info.kind : "cpu",
    weights: device?.assistantWeights ?? device?.weights,
  } as const;
  return assistant ? new AssistedModel(llm, await Model.load(resolveModelDir(assistant), slmOpts)) : llm;
}

export function registerGenerate(program: Command): void {
  const cmd = program
    .command("generate")
    .description("generate text from a prompt (or stdin)")
    .requiredOption(
      "-m, --model <path>",
      "checkpoint folder or GGUF file (or a model name under $SMALLKV_ASSETS/models, a *.gguf name under its gguf/)",
    )
    .option(
      "-a, --assistant <dir>",
      "assistant model of the same family and tokenizer (needed by --policy smallkv)",
    )
    .option("-p, --prompt <text>", "prompt text (default: read stdin)")
    .option("-n, --max-tokens <n>", "maximum new tokens", intArg("--max-tokens"), 128)
    .option("--greedy", "greedy decoding (temperature 0)")
    .option("-t, --temperature <t>", "sampling temperature", floatArg("--temperature"))
    .option("--top-k <k>", "top-k sampling", intArg("--top-k"))
    .option("--top-p <p>", "nucleus sampling", floatArg("--top-p"))
    .option("--seed <n>", "random seed", intArg("--seed"))
    .option("--stop <string>", "stop string (repeatable)", collect)
    .option("--stop-token <id>", "stop token id (repeatable; default: the model's eos)", collect)
    .option("--json", "print one JSON object with token ids instead of streaming text")
    .option("--threads <n>", "CPU threads", intArg("--threads", 1))
    .option(
      "--speculative <k>",
      "speculative decoding: the assistant drafts K tokens per round, the LLM verifies them (adaptive or adaptive:K chooses K per round)",
      speculativeArg,
    )
    .option(
      "--stats",
      "print hot/cold KV bytes and token classes per step (stderr; with --json, a per-step array)",
    );
  addPolicyOptions(addKvOption(addWeightOptions(addDeviceOptions(cmd)))).action(
    async (o: GenerateCliOptions) => {
      const policy = await policyFromCli(o);
      if (policy.usesAssistant && !o.assistant) {
        throw new InvalidOptionError(
          "--assistant",
          `the ${policy.name} policy needs an assistant model (--assistant <dir>)`,
        );
      }
      if (o.speculative && !o.assistant)
        throw new InvalidOptionError("--speculative", "speculative decoding drafts with --assistant <dir>");
      const model = await loadStepModel(o.model, o.assistant, o.threads, o);
      const llm = model instanceof AssistedModel ? model.llm : (model as Model);
      const slm = model instanceof AssistedModel ? model.slm : null;
      const prompt = o.prompt ?? (await readStdin());
      const stream = new Generator(model).submit(prompt, {
        maxTokens: o.maxTokens,
        temperature: o.greedy ? 0 : o.temperature,
        topK: o.topK,
        topP: o.topP,
        seed: o.seed,
        stop: o.stop,
        stopTokens: o.stopToken?.map(Number),
        policy,
        speculative: o.speculative,
      });
      const steps: (KvStats & { policyClasses?: Record<string, number> })[] = [];
      // On one terminal, stats printed as they come would cut into the text: hold them until
      // the text is done. Piped apart, they stream to stderr, one line each.
      const holdStats = !o.json && !!process.stdout.isTTY && !!process.stderr.isTTY;
      const t0 = performance.now();
      for await (const ev of stream) {
        if (!o.json) process.stdout.write(ev.text);
        if (o.stats && ev.token >= 0) {
          const st = { ...stream.sequence.stats(), policyClasses: policy.classCounts?.(stream.sequence) };
          steps.push(st);
          if (!o.json && !holdStats) process.stderr.write(`${formatStats(steps.length, st)}\n`);
        }
      }
      if (!o.json) process.stdout.write("\n");
      const r = await stream.result;
      if (r.error) throw r.error;
      if (o.stats && !o.json) {
        if (holdStats)
          for (const [i, st] of steps.entries()) process.stderr.write(`${formatStats(i + 1, st)}\n`);
        process.stderr.write(
          `${formatSummary(steps, { tokens: r.tokens.length, seconds: (performance.now() - t0) / 1000, ttft: r.timeToFirstToken, policy: `${policy.name}@${policy.budget}`, warmup: policy.warmupTokens, promptTokens: r.promptTokens.length })}\n`,
        );
        const dev = llm.device;
        if (dev) {
          // Where the sequence's attention ran: a policy on its device form ranks and selects on
          // the device (batched); one without (or run on the host) goes through the per-sequence path.
          const p = devicePath(stream.sequence);
          const where =
            p.path === "batched"
              ? p.policy === "device form"
                ? `batched on the device (${policy.name} runs its device form: ranked, selected and accumulated on the device)`
                : "batched on the device"
              : p.policy === "host" && policy.device
                ? `per sequence (${policy.name} runs on the host here: speculative decoding, or loaded with devicePolicies off)`
                : p.policy === "host"
                  ? `per sequence (${policy.name} has no device form for these options: it selects or reads attention on the host)`
                  : "per sequence (the model's head dim does not fit the batched kernels)";
          process.stderr.write(
            `device: ${(dev.allocatedBytes / 2 ** 20).toFixed(1)} MiB allocated on ${dev.info.name}; attention ${where}; KV store ${p.storeDtype} in ${p.store === "spilled" ? "pinned host memory (past the device KV budget; read over the bus)" : `${p.store} memory`}\n`,
          );
        }
        const sp = r.speculative;
        if (sp)
          process.stderr.write(
            `speculative: ${sp.rounds} rounds, ${sp.accepted}/${sp.drafted} drafts accepted (rate ${sp.acceptanceRate.toFixed(2)}), ${sp.meanAccepted.toFixed(2)} accepted per round\n`,
          );
      }
      if (o.json) {
        process.stdout.write(
          `${JSON.stringify({
            model: model.name,
            assistant: o.assistant ?? null,
            prompt,
            prompt_ids: r.promptTokens,
            ids: r.tokens,
            text: r.text,
            finish_reason: r.finishReason,
            usage: { prompt_tokens: r.promptTokens.length, completion_tokens: r.tokens.length },
            policy: { name: policy.name, budget: policy.budget.toString(), options: policy.options },
            // What each model's weights are, as loaded (type and resident bytes).
            weights: {
              model: { type: llm.weightType, bytes: llm.weightBytes },
              assistant: slm ? { type: slm.weightType, bytes: slm.weightBytes } : null,
            },
            kv_stats: r.speculative
              ? { ...stream.sequence.stats(), speculative: r.speculative }
              : stream.sequence.stats(),
            timings: {
              time_to_first_token_s: r.timeToFirstToken,
              time_per_output_token_s: r.timePerOutputToken,
            },
            ...(o.stats ? { steps } : {}),
          })}\n`,
        );
      }
    },
  );
}
