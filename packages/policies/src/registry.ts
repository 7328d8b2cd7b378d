import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { Budget } from "./budget.js";
import { full } from "./builtin/full.js";
import { h2o } from "./builtin/h2o.js";
import { omniKv } from "./builtin/omnikv.js";
import { pod } from "./builtin/pod.js";
import { pyramidInfer } from "./builtin/pyramid-infer.js";
import { quest } from "./builtin/quest.js";
import { reversible } from "./builtin/reversible.js";
import { smallKv, smallKvPaper } from "./builtin/smallkv/policy.js";
import { pyramidKv, snapKv } from "./builtin/snapkv.js";
import { specKv } from "./builtin/speckv.js";
import { streamingLlm } from "./builtin/streaming-llm.js";
import { tova } from "./builtin/tova.js";
import { PolicyOptionError } from "./errors.js";
import type { OptionValue, PolicyFactory, PolicyInstance } from "./sdk.js";

/** The built-in policies by name. */
export const builtinPolicies: Record<string, PolicyFactory> = Object.fromEntries(
  [
    full,
    streamingLlm,
    h2o,
    snapKv,
    pyramidKv,
    pyramidInfer,
    tova,
    pod,
    reversible,
    quest,
    omniKv,
    specKv,
    smallKv,
    smallKvPaper,
  ].map((p) => [p.name, p as unknown as PolicyFactory]),
);

/** Register another policy under its name (SmallKV registers itself this way). */
export function registerPolicy(p: PolicyFactory): void {
  builtinPolicies[p.name] = p;
}

function isFactory(x: unknown): x is PolicyFactory {
  return (
    !!x &&
    typeof x === "object" &&
    typeof (x as PolicyFactory).create === "function" &&
    typeof (x as PolicyFactory).name === "string"
  );
}

/**
 * A user's policy module: its default export (or export `policy`) must be a PolicyFactory,
 * as made by `definePolicy` or `scorerPolicy`.
 */
export async function loadPolicyModule(path: string): Promise<PolicyFactory> {
  let mod: Record<string, unknown>;
  try {
    mod = await import(pathToFileURL(resolve(path)).href);
  } catch (e) {
    throw new PolicyOptionError(path, `cannot load the policy module: ${(e as Error).message}`);
  }
  const f = mod.default ?? mod.policy;
  if (!isFactory(f))
    throw new PolicyOptionError(
      path,
      "the module's default export (or `policy`) is not a policy made by definePolicy/scorerPolicy",
    );
  return f;
}

/** A policy by built-in name, or a path to a user's module (anything with a slash or a .js/.mjs ending). */
export async function resolvePolicy(nameOrPath: string): Promise<PolicyFactory> {
  if (builtinPolicies[nameOrPath]) return builtinPolicies[nameOrPath];
  if (/[\\/]/.test(nameOrPath) || /\.(c|m)?js$/.test(nameOrPath)) return loadPolicyModule(nameOrPath);
  throw new PolicyOptionError(
    nameOrPath,
    `unknown policy; built-in: ${Object.keys(builtinPolicies).join(", ")}; or give a path to a module`,
  );
}

/** Parse repeated `k=v` strings into an options object. */
export function parsePolicyOptions(pairs: string[] = [], policy = "policy"): Record<string, OptionValue> {
  const out: Record<string, OptionValue> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i <= 0)
      throw new PolicyOptionError(policy, `option ${JSON.stringify(p)} is not of the form key=value`);
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

/** Resolve and configure a policy in one call. */
export async function createPolicy(
  nameOrPath: string,
  budget: Budget | string | number,
  options: Record<string, OptionValue> = {},
): Promise<PolicyInstance> {
  return (await resolvePolicy(nameOrPath)).create({ budget, options });
}
