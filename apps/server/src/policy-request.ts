import {
  Budget,
  BudgetError,
  type OptionValue,
  type PolicyFactory,
  type PolicyInstance,
  PolicyOptionError,
} from "@smallkv/policies";
import type { Model, ModelConfig } from "@smallkv/runner";
import { ApiError, badRequest } from "./errors.js";

/**
 * Files that policy options name (a saved SmallKV matching, PoD layer blocks), by option
 * and then by the name a request uses: `{ mapping: { wiki: "/srv/wiki.matching.json" } }`.
 * They are server configuration: loaded and checked once at start; a request selects one
 * by name and can never give a path.
 */
export type PolicyFiles = Record<string, Record<string, string>>;

const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export interface PolicyResolverOptions {
  policies: Record<string, PolicyFactory>;
  llm: Model;
  assistant?: Model;
  defaultPolicy?: string;
  defaultBudget?: string | number;
  /** Options of the default policy (server configuration: file options are paths here). */
  defaultPolicyOptions?: Record<string, OptionValue>;
  files?: PolicyFiles;
}

/** Turns a request's kv_policy / kv_budget / kv_policy_options into a configured policy, or a 400. */
export class PolicyResolver {
  private readonly config: ModelConfig;

  constructor(private readonly o: PolicyResolverOptions) {
    this.config = o.llm.config;
    this.preload();
  }

  /** Policies this server can run (assistant-reading ones need an assistant). */
  get runnable(): string[] {
    return Object.keys(this.o.policies).filter((n) => this.o.assistant || !this.o.policies[n].usesAssistant);
  }

  /** Names a request may give for each file option. */
  get fileNames(): Record<string, string[]> {
    return Object.fromEntries(Object.entries(this.o.files ?? {}).map(([k, v]) => [k, Object.keys(v)]));
  }

  resolve(b: {
    kv_policy?: string;
    kv_budget?: number | string;
    kv_policy_options?: Record<string, OptionValue>;
  }): PolicyInstance {
    const name = b.kv_policy ?? this.o.defaultPolicy ?? "full";
    // Own properties only: "constructor", "__proto__" or "toString" are not policies.
    if (!Object.hasOwn(this.o.policies, name))
      throw badRequest(
        `unknown kv_policy ${JSON.stringify(name)}; available: ${this.runnable.join(", ")}`,
        "kv_policy",
      );
    const factory = this.o.policies[name];
    if (!this.o.assistant && factory.usesAssistant)
      throw badRequest(
        `kv_policy ${name} needs the server to run with an assistant model (--assistant)`,
        "kv_policy",
      );
    const requested = this.fileOptionsByName(factory, b.kv_policy_options ?? {});
    const usesDefaults = b.kv_policy === undefined || b.kv_policy === this.o.defaultPolicy;
    try {
      const budget = Budget.parse(b.kv_budget ?? this.o.defaultBudget ?? 1);
      return factory.create({
        budget,
        options: { ...(usesDefaults ? (this.o.defaultPolicyOptions ?? {}) : {}), ...requested },
        modelConfig: this.config,
      });
    } catch (e) {
      if (e instanceof BudgetError) throw badRequest(e.message, "kv_budget");
      if (e instanceof PolicyOptionError) throw badRequest(e.message, "kv_policy_options");
      throw e;
    }
  }

  /** A request's file options name configured files: swap each name for its path, or refuse. */
  private fileOptionsByName(factory: PolicyFactory, given: Record<string, OptionValue>) {
    const out: Record<string, OptionValue> = { ...given };
    for (const k of factory.fileOptions ?? []) {
      if (!Object.hasOwn(given, k)) continue;
      const v = given[k];
      if (v === "") continue;
      const table = this.o.files?.[k] ?? {};
      if (typeof v !== "string" || !Object.hasOwn(table, v)) {
        const names = Object.keys(table);
        throw new ApiError(
          400,
          `kv_policy_options.${k} selects a file the server was configured with, by name; ${
            names.length ? `this server has: ${names.join(", ")}` : "this server has none configured"
          } (paths are never accepted in a request)`,
          "invalid_request_error",
          `kv_policy_options.${k}`,
          "unknown_file_name",
        );
      }
      out[k] = table[v];
    }
    return out;
  }

  /** Load and check every configured file once, so requests never touch the file system. */
  private preload(): void {
    const models = { llm: this.o.llm, assistant: this.o.assistant };
    for (const [option, table] of Object.entries(this.o.files ?? {})) {
      const users = Object.values(this.o.policies).filter((p) => p.fileOptions?.includes(option));
      if (users.length === 0) throw new PolicyOptionError(option, `no policy has a file option "${option}"`);
      for (const [name, path] of Object.entries(table)) {
        if (!FILE_NAME.test(name))
          throw new PolicyOptionError(option, `file name ${JSON.stringify(name)} must match ${FILE_NAME}`);
        // One load per path; every policy with this option shares its cache.
        const p = users.find((u) => u.preload && (!u.usesAssistant || this.o.assistant));
        p?.preload?.(option, path, models);
      }
    }
    const def = this.o.defaultPolicy;
    if (def && Object.hasOwn(this.o.policies, def)) {
      const f = this.o.policies[def];
      for (const k of f.fileOptions ?? []) {
        const v = this.o.defaultPolicyOptions?.[k];
        if (typeof v === "string" && v !== "") f.preload?.(k, v, models);
      }
    }
  }
}
