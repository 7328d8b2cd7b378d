import { createPolicy, type PolicyInstance, parsePolicyOptions } from "@smallkv/policies";
import type { KvStats } from "@smallkv/runner";
import type { Command } from "commander";
import { collect } from "./options.js";

export interface PolicyCliOptions {
  policy?: string;
  budget?: string;
  policyOption?: string[];
}

/** --policy, --budget, --policy-option on a command. */
export function addPolicyOptions(cmd: Command): Command {
  return cmd
    .option(
      "--policy <name|path>",
      "KV policy: full, streamingllm, h2o, snapkv, pyramidkv, pyramidinfer, tova, pod, smallkv, or a path to a module",
      "full",
    )
    .option(
      "--budget <fraction|tokens>",
      "KV budget: a fraction of the length (0.2, 20%) or a token count (128)",
      "1",
    )
    .option("--policy-option <k=v>", "policy option (repeatable)", collect);
}

export async function policyFromCli(o: PolicyCliOptions): Promise<PolicyInstance> {
  const name = o.policy ?? "full";
  return createPolicy(name, o.budget ?? "1", parsePolicyOptions(o.policyOption, name));
}

export function formatStats(step: number, s: KvStats & { policyClasses?: Record<string, number> }): string {
  const mib = (b: number) => (b / 2 ** 20).toFixed(3);
  const pc =
    s.policyClasses && Object.keys(s.policyClasses).length
      ? `  [${Object.entries(s.policyClasses)
          .map(([k, v]) => `${k} ${+v.toFixed(1)}`)
          .join(", ")} per layer-head]`
      : "";
  return `step ${String(step).padStart(4)}  tokens ${String(s.tokens).padStart(5)}  hot ${mib(s.hotBytes)} MiB  cold ${mib(s.coldBytes)} MiB  hot/cold ${(s.hotBytes / Math.max(1, s.coldBytes)).toFixed(3)}  K+V ${s.classes.full}  V-only ${s.classes.vOnly}  dropped ${s.classes.dropped}  moved ${s.movedRows}${pc}`;
}

/**
 * The closing line of `--stats`: tokens, speed, mean hot/cold KV, and from which step the
 * policy compressed (a policy may keep everything while the context is short: SmallKV
 * waits for its matching window).
 */
export function formatSummary(
  steps: KvStats[],
  r: { tokens: number; seconds: number; ttft: number; policy: string; warmup: number; promptTokens: number },
): string {
  const mib = (b: number) => (b / 2 ** 20).toFixed(3);
  const n = Math.max(1, steps.length);
  const hot = steps.reduce((a, s) => a + s.hotBytes, 0) / n;
  const cold = steps.reduce((a, s) => a + s.coldBytes, 0) / n;
  const first = steps.findIndex((s) => s.hotBytes < s.coldBytes);
  const active =
    first < 0
      ? `never compressed (${steps.length ? `context reached ${steps[steps.length - 1].tokens} tokens` : "no steps"}${Number.isFinite(r.warmup) && r.warmup > 0 ? `; it waits for ${r.warmup} tokens` : ""})`
      : `compressing from step ${first + 1} (${steps[first].tokens} tokens)`;
  return `summary  tokens ${r.tokens}  prompt ${r.promptTokens}  ${(r.tokens / Math.max(1e-9, r.seconds)).toFixed(1)} tok/s  ttft ${r.ttft.toFixed(3)} s  mean hot ${mib(hot)} MiB  mean cold ${mib(cold)} MiB  hot/cold ${(hot / Math.max(1, cold)).toFixed(3)}  policy ${r.policy} ${active}`;
}
