import type {
  AttentionObservation,
  AttentionRequest,
  DeviceRankPlan,
  KvPolicyHook,
  LayerSelection,
  ModelConfig,
  Sequence,
  StepInfo,
} from "@smallkv/runner";
import { Budget } from "./budget.js";
import { PolicyOptionError } from "./errors.js";
import { copyState } from "./state-copy.js";

export type OptionValue = string | number | boolean;
/** A policy's named options, given by their defaults (which also fix their types). */
export type OptionSchema = Record<string, OptionValue>;

/** Everything a policy sees when it decides for one layer at one step. */
export interface PolicyContext<S, O extends OptionSchema> {
  readonly seq: Sequence;
  readonly layer: number;
  readonly step: StepInfo;
  readonly config: ModelConfig;
  readonly options: O;
  /** The policy's per-sequence state (from `init`). */
  readonly state: S;
  readonly totalBudget: Budget;
  /** Cost units (tokens; V-only counts half) this layer's kv head may use at this step, the step's own tokens included. */
  readonly budget: number;
  /** What is left for old tokens (positions < step.start): budget - T, at least 0. */
  readonly oldBudget: number;
}

export interface PolicyDefinition<S, O extends OptionSchema> {
  readonly name: string;
  readonly description?: string;
  /** Named options with their defaults; `--policy-option k=v` values are parsed to the default's type. */
  readonly options?: O;
  /** The policy reads the assistant model's attention (run it through an AssistedModel). */
  readonly usesAssistant?: boolean;
  /** `select` reads the layer's current queries (ctx.step.query, [T][Hq][D] after RoPE). */
  readonly wantsQuery?: boolean;
  /** The uncompressed reference (Full): keeps everything whatever the budget. */
  readonly uncompressed?: boolean;
  /**
   * Tokens below which the policy may keep the whole cache (SmallKV delays its matching
   * until the context reaches its window). Default 0.
   */
  warmupTokens?(options: O): number;
  /**
   * Options whose values name files (a saved matching, calibrated blocks). A server takes
   * them as configuration at start and lets a request select one by name only.
   */
  readonly fileOptions?: readonly (keyof O & string)[];
  /**
   * Check option values when the policy is configured (not at the first step), so a bad
   * value is the caller's error at once. `config` is given when the model is known.
   * Throw PolicyOptionError.
   */
  validate?(options: O, config?: ModelConfig): void;
  /**
   * Load and check a file option once (server start), so that steps never read files:
   * later instances given the same path use what this loaded.
   */
  preload?(option: keyof O & string, path: string, models: PreloadModels): void;
  /** Per-sequence state, created at the sequence's first step. */
  init?(seq: Sequence, options: O): S;
  /**
   * A copy of the state that later steps cannot change (a rollback puts it back). Default: a
   * deep copy of arrays, typed arrays, Maps, Sets and objects (models and sequences shared).
   */
  copyState?(state: S): S;
  /**
   * State fields that hold per-layer data, all that `select` and `observe` change: each an
   * array indexed by layer, or an object with copyLayer/putLayer (ScoreTable, Evictions...).
   * With them a rollback inside a verify step restores each layer without a replay.
   */
  readonly layerFields?: readonly (keyof S & string)[];
  /** `prepare` has nothing to do for the steps at ctx.step's positions (see KvPolicyHook.prepareIdle). Default: false. */
  prepareIdle?(ctx: PolicyContext<S, O>): boolean;
  /**
   * How a speculative verify step may run (KvPolicyHook.verify): "layerwise" when each
   * layer's choices depend only on its own past and earlier layers of the same step; default
   * "rows" (always exact, no batching of the verify rows' dense work).
   */
  readonly verify?: "layerwise" | "rows";
  /** Relative budget of a layer (default 1 everywhere); normalised so that the mean over layers is 1. */
  layerShare?(layer: number, numLayers: number, options: O): number;
  /** Async work before a step (e.g. running models); ctx.layer is -1. */
  prepare?(ctx: PolicyContext<S, O>): Promise<void> | void;
  /** JSON-serialisable facts about the sequence's state (shown by traces and the playground). */
  describe?(state: S): Record<string, unknown>;
  /** Bytes kept resident besides the KV (metadata), reported beside the hot KV. */
  residentBytes?(state: S, seq: Sequence): number;
  /** Token counts per class of the sequence at its last step (e.g. critical/recent/marginal). */
  classCounts?(state: S): Record<string, number>;
  wantsAttention?(ctx: PolicyContext<S, O>): AttentionRequest;
  observe?(ctx: PolicyContext<S, O>, obs: AttentionObservation): void;
  /**
   * Decide what this layer reads at this step (old tokens only, per kv head). Called for
   * decode-time steps whose budget does not cover every token; return null to keep all.
   */
  select(ctx: PolicyContext<S, O>): LayerSelection | null;
  vOnlyWeights?(ctx: PolicyContext<S, O>, selection: LayerSelection): Float32Array;
  /**
   * The device form (runner's DevicePolicyForm): on the device backend the policy then ranks,
   * selects and accumulates on the device, and its sequences join the batched path. `plan` is
   * `select` made from shapes alone (the device holds the scores); `accumulate` replaces
   * `observe` for score sums. `available` says whether these options have one.
   */
  device?: {
    available?(options: O): boolean;
    accumulate?(ctx: PolicyContext<S, O>): false | { fromRow: number; replace?: boolean };
    /** With `accumulate`, also count the rows that read each position (a mean attention for `blend`). */
    hits?(options: O): boolean;
    plan(ctx: PolicyContext<S, O>): DeviceRankPlan | null;
  };
}

/** A policy configured for one budget and options: what the runner drives. */
export interface PolicyInstance<O extends OptionSchema = OptionSchema> extends KvPolicyHook {
  readonly budget: Budget;
  readonly options: O;
  /** Budget of `layer` at sequence length n, in cost units per kv head. */
  layerBudget(layer: number, n: number, numLayers: number): number;
  /** Sequence length below which the policy may keep everything (see PolicyDefinition.warmupTokens). */
  readonly warmupTokens: number;
}

/** The models a file option is checked against when it is preloaded. */
export interface PreloadModels {
  llm: import("@smallkv/runner").Model;
  assistant?: import("@smallkv/runner").Model;
}

export interface PolicyFactory<O extends OptionSchema = OptionSchema> {
  readonly name: string;
  readonly description: string;
  readonly defaults: O;
  /** Its instances read the assistant model (run them through an AssistedModel). */
  readonly usesAssistant?: boolean;
  /** Options whose values are file paths (see PolicyDefinition.fileOptions). */
  readonly fileOptions?: readonly string[];
  /** Load and check a file option's file once (see PolicyDefinition.preload). */
  preload?(option: string, path: string, models: PreloadModels): void;
  /**
   * Configure an instance. Every option value is checked here (PolicyOptionError), against
   * `modelConfig` too when it is given.
   */
  create(config: {
    budget: Budget | string | number;
    options?: Partial<Record<keyof O, OptionValue>>;
    modelConfig?: ModelConfig;
  }): PolicyInstance<O>;
}

/** Parse option values (strings from a CLI, or typed values) against the defaults' types. */
export function parseOptions<O extends OptionSchema>(
  policy: string,
  defaults: O,
  given: Record<string, OptionValue> = {},
): O {
  const out: Record<string, OptionValue> = { ...defaults };
  for (const [k, v] of Object.entries(given)) {
    if (v === undefined) continue;
    // Own properties only: "constructor" or "__proto__" are not options.
    if (!Object.hasOwn(defaults, k)) {
      const known = Object.keys(defaults);
      throw new PolicyOptionError(
        policy,
        `unknown option "${k}"${known.length ? `; options: ${known.join(", ")}` : " (it takes none)"}`,
      );
    }
    const d = defaults[k];
    if (typeof v !== "string" && typeof v !== "number" && typeof v !== "boolean")
      throw new PolicyOptionError(policy, `option "${k}" must be a string, number or boolean`);
    if (typeof d === "number") {
      const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : Number.NaN;
      if (!Number.isFinite(n))
        throw new PolicyOptionError(policy, `option "${k}" must be a number, got ${JSON.stringify(v)}`);
      out[k] = n;
    } else if (typeof d === "boolean") {
      if (typeof v === "boolean") out[k] = v;
      else if (v === "true" || v === "1") out[k] = true;
      else if (v === "false" || v === "0") out[k] = false;
      else
        throw new PolicyOptionError(policy, `option "${k}" must be true or false, got ${JSON.stringify(v)}`);
    } else out[k] = String(v);
  }
  return out as O;
}

/** Turn a policy definition into a factory of configured instances. */
export function definePolicy<S, O extends OptionSchema = Record<string, never>>(
  def: PolicyDefinition<S, O>,
): PolicyFactory<O> {
  const defaults = (def.options ?? {}) as O;
  return {
    name: def.name,
    description: def.description ?? "",
    defaults,
    usesAssistant: def.usesAssistant ?? false,
    fileOptions: def.fileOptions ?? [],
    ...(def.preload
      ? {
          preload(option: string, path: string, models: PreloadModels) {
            if (!(def.fileOptions ?? []).includes(option as keyof O & string))
              throw new PolicyOptionError(def.name, `option "${option}" does not name a file`);
            def.preload!(option as keyof O & string, path, models);
          },
        }
      : {}),
    create({ budget: b, options: given, modelConfig }) {
      const budget = Budget.parse(b);
      const options = parseOptions(def.name, defaults, given as Record<string, OptionValue>);
      def.validate?.(options, modelConfig);
      const states = new WeakMap<Sequence, S>();
      const copyOf = (s: S): S => (def.copyState ? def.copyState(s) : copyState(s));
      const finalCounts = new WeakMap<Sequence, Record<string, number>>();

      let shares: number[] | null = null;
      const shareOf = (layer: number, L: number) => {
        if (!def.layerShare) return 1;
        if (!shares || shares.length !== L) {
          const raw = Array.from({ length: L }, (_, l) => Math.max(0, def.layerShare!(l, L, options)));
          const mean = raw.reduce((a, x) => a + x, 0) / L;
          shares = raw.map((x) => (mean > 0 ? x / mean : 1));
        }
        return shares[layer];
      };
      const layerBudget = (layer: number, n: number, L: number) =>
        Math.floor(budget.tokensAt(n) * shareOf(layer, L) + 1e-9);
      const ctx = (seq: Sequence, layer: number, step: StepInfo): PolicyContext<S, O> => {
        let state = states.get(seq);
        if (state === undefined && !states.has(seq)) {
          state = def.init ? def.init(seq, options) : (undefined as S);
          states.set(seq, state as S);
        }
        const lb = layerBudget(layer, step.start + step.T, seq.config.numLayers);
        return {
          seq,
          layer,
          step,
          config: seq.config,
          options,
          state: state as S,
          totalBudget: budget,
          budget: lb,
          oldBudget: Math.max(0, lb - step.T),
        };
      };
      const hook: PolicyInstance<O> = {
        name: def.name,
        usesAssistant: def.usesAssistant ?? false,
        wantsQuery: def.wantsQuery ?? false,
        budget,

        options,
        layerBudget,
        warmupTokens: def.uncompressed
          ? Number.POSITIVE_INFINITY
          : def.warmupTokens
            ? def.warmupTokens(options)
            : 0,
        verify: def.verify ?? "rows",
        snapshot(seq) {
          return states.has(seq) ? { state: copyOf(states.get(seq) as S) } : null;
        },
        restore(seq, snap) {
          // A snapshot may be restored more than once: the state gets its own copy.
          if (snap === null) states.delete(seq);
          else states.set(seq, copyOf((snap as { state: S }).state));
        },
        release(seq) {
          const st = states.get(seq);
          if (st !== undefined && def.classCounts) finalCounts.set(seq, def.classCounts(st));
          states.delete(seq);
        },
      };
      // The uncompressed reference with nothing else to do keeps no state at all: a verify step
      // runs whole and a rollback needs no replay.
      const stateless = def.uncompressed && !def.init && !def.observe && !def.wantsAttention && !def.prepare;
      if (!stateless) {
        hook.select = (seq, layer, step) => {
          const c = ctx(seq, layer, step);
          // The first step has no old tokens; a budget that covers every token is the full cache.
          if (step.start === 0 || budget.coversAll(step.start + step.T)) return null;
          return def.select(c);
        };
      }
      if (def.layerFields) {
        const fields = def.layerFields;
        type Layered = { copyLayer(l: number): unknown; putLayer(l: number, x: unknown): void };
        const layered = (v: unknown): v is Layered => typeof (v as Layered)?.copyLayer === "function";
        hook.snapshotLayer = (seq, layer) => {
          const st = states.get(seq) as Record<string, unknown> | undefined;
          if (st === undefined) return null;
          return fields.map((f) => {
            const v = st[f];
            return layered(v) ? v.copyLayer(layer) : Array.isArray(v) ? copyState(v[layer]) : undefined;
          });
        };
        hook.restoreLayer = (seq, layer, snap) => {
          const st = states.get(seq) as Record<string, unknown> | undefined;
          if (st === undefined || snap === null) return;
          fields.forEach((f, i) => {
            const v = st[f];
            const x = (snap as unknown[])[i];
            if (layered(v)) v.putLayer(layer, x);
            else if (Array.isArray(v)) v[layer] = copyState(x);
          });
        };
      }
      if (def.prepare) {
        hook.prepare = (seq, step) => def.prepare!(ctx(seq, 0, step));
        hook.prepareIdle = (seq, step) => def.prepareIdle?.(ctx(seq, 0, step)) ?? false;
      }
      if (def.describe) {
        hook.describe = (seq) => {
          const st = states.get(seq);
          return st === undefined ? {} : def.describe!(st);
        };
      }
      if (def.residentBytes) {
        hook.residentBytes = (seq) => {
          const st = states.get(seq);
          return st === undefined ? 0 : def.residentBytes!(st, seq);
        };
      }
      if (def.classCounts) {
        hook.classCounts = (seq) => {
          const st = states.get(seq);
          return st === undefined ? (finalCounts.get(seq) ?? {}) : def.classCounts!(st);
        };
      }
      if (def.wantsAttention)
        hook.wantsAttention = (seq, layer, step) => def.wantsAttention!(ctx(seq, layer, step));
      if (def.observe)
        hook.observe = (seq, obs) => def.observe!(ctx(seq, obs.layer, { start: obs.start, T: obs.T }), obs);
      if (def.vOnlyWeights)
        hook.vOnlyWeights = (seq, layer, step, sel) => def.vOnlyWeights!(ctx(seq, layer, step), sel);
      const dv = def.device;
      if (dv && (dv.available?.(options) ?? true)) {
        const accumulate = dv.accumulate;
        (hook as { device?: KvPolicyHook["device"] }).device = {
          // As `select`: nothing to choose at the first step or while the budget covers every token.
          plan: (seq, layer, step) =>
            step.start === 0 || budget.coversAll(step.start + step.T) ? null : dv.plan(ctx(seq, layer, step)),
          ...(accumulate ? { accumulate: (seq, layer, step) => accumulate(ctx(seq, layer, step)) } : {}),
          ...(dv.hits?.(options) ? { hits: true } : {}),
        };
      }
      return hook;
    },
  };
}
