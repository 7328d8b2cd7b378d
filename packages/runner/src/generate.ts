import type { StepModel } from "./assisted.js";
import { ContextLengthError, InvalidOptionError } from "./errors.js";
import type { DraftDecoder, DraftState } from "./native-decoder.js";
import type { KvPolicyHook } from "./policy-hook.js";
import { PrefixCache, policyScope } from "./prefix-cache.js";
import { argmax, logSoftmax, Sampler, type SamplingOptions } from "./sampler.js";
import { policyHasState, type Sequence } from "./sequence.js";
import {
  checkSpeculative,
  DraftTuner,
  type SpeculativeOptions,
  type SpeculativeStats,
  speculativeStats,
  verifyDraft,
} from "./speculative.js";
import { TextStream } from "./text-stream.js";

export interface GenerateOptions extends SamplingOptions {
  /** Maximum new tokens (default 128). */
  maxTokens?: number;
  /** Token ids that end generation (default: the model's eos ids). Not included in the text. */
  stopTokens?: number[];
  /** Strings that end generation; the text is cut before them. */
  stop?: string[];
  /** Return the log-probability of each chosen token and this many top alternatives (0 = chosen only). */
  logprobs?: number;
  /** KV policy of this sequence (default: keep everything). */
  policy?: KvPolicyHook;
  /** Cancels the request; its sequence is freed at the next step boundary. */
  signal?: AbortSignal;
  /** Per-request wall-clock limit in ms. */
  timeoutMs?: number;
  /**
   * Called synchronously as each token is produced, while the sequence is exactly in the
   * state that produced it; the return value travels with the event as `trace`.
   */
  inspect?: (seq: Sequence, token: number) => unknown;
  /**
   * Speculative decoding: the assistant (the generator's model must have one) drafts k tokens
   * per round and the LLM verifies them in one step. Greedy output is identical to plain
   * decoding; sampled output follows the same distribution (with a fixed k, the same seed
   * gives the same text).
   */
  speculative?: SpeculativeOptions;
  /**
   * Start from cached blocks of an earlier prompt with the same beginning, and keep this
   * prompt's blocks for later ones (the prompt is then prefilled in block-aligned chunks).
   * Ignored (nothing cached, nothing reused) for a sequence whose state cannot be cached:
   * the device backend, sliding-window layers, a policy without snapshots.
   */
  prefixCache?: PrefixCache;
}

export interface TokenEvent {
  token: number;
  /** Text that became final with this token (may be empty; stop-string candidates are held back). */
  text: string;
  /**
   * This token's own text in context, leading space included (empty while it ends an
   * incomplete UTF-8 character; the completing token carries the character).
   */
  piece?: string;
  logprob?: number;
  topLogprobs?: { token: number; logprob: number }[];
  /** What `inspect` returned for this token. */
  trace?: unknown;
}

export type FinishReason = "stop" | "length" | "cancelled" | "timeout" | "error";

export interface GenerationResult {
  promptTokens: number[];
  tokens: number[];
  text: string;
  finishReason: FinishReason;
  logprobs?: {
    token: number;
    /** The token's own text in context (see TokenEvent.piece). */
    piece: string;
    logprob: number;
    topLogprobs?: { token: number; logprob: number }[];
  }[];
  /** Seconds from submission to the first token, and per output token after it. */
  timeToFirstToken: number;
  timePerOutputToken: number;
  error?: Error;
  /** Acceptance of the drafts, when the request used speculative decoding. */
  speculative?: SpeculativeStats;
  /** Prompt tokens taken from the prefix cache (not prefilled). */
  cachedTokens: number;
}

/** A request in flight: async-iterate it for tokens, or await `result`. */
export interface GenerationStream extends AsyncIterable<TokenEvent> {
  readonly id: number;
  readonly sequence: Sequence;
  readonly result: Promise<GenerationResult>;
  cancel(): void;
}

interface Active {
  id: number;
  seq: Sequence;
  prompt: number[];
  /** Prompt tokens processed so far (restored from the prefix cache or prefilled). */
  fed: number;
  prefilled: boolean;
  /**
   * The prefix cache this request reads and fills, with its policy scope and the key of the
   * cached block that ends at `fed` ("" at the start; null once the chain is broken).
   */
  cache: { cache: PrefixCache; scope: string; parent: string | null } | null;
  last: number;
  sampler: Sampler;
  text: TextStream;
  stopTokens: Set<number>;
  maxTokens: number;
  logprobs: number | undefined;
  inspect: GenerateOptions["inspect"];
  out: GenerationResult;
  queue: TokenEvent[];
  wake: (() => void) | null;
  done: boolean;
  cancelled: FinishReason | null;
  started: number;
  firstAt: number;
  deadline: number;
  resolve: (r: GenerationResult) => void;
  spec: SpecState | null;
}

/** A request's speculative decoding: its settings, its draft sequence and its counts. */
interface SpecState {
  k: number;
  adaptive: boolean;
  /** The draft model's sequence (the assistant's own when the policy reads it). */
  draft: Sequence | null;
  /** The draft's state in the model's draft decoder (a policy without the assistant). */
  decoded: DraftState | null;
  rounds: number;
  drafted: number;
  accepted: number;
  /** Moving acceptance rate (adaptive k). */
  alpha: number;
  /** Whether the last adaptive choice was to draft (it keeps drafting while that pays at all). */
  drafting: boolean;
}

/** Where a request's next prefill step ends: the prompt's end, or the next block boundary with a prefix cache. */
function prefillEnd(a: Active): number {
  return a.cache ? a.cache.cache.chunkEnd(a.fed, a.prompt.length) : a.prompt.length;
}

let nextRequest = 1;
/** Draft tuners per model and policy (costs differ by policy: SmallKV's step is not Full's). */
const tuners = new WeakMap<StepModel, Map<string, DraftTuner>>();

/**
 * Runs many generation requests over one model in shared batched steps. Requests join at
 * step boundaries (continuous batching): a new request's prefill runs in the same forward
 * call as the others' decode tokens.
 */
export class Generator {
  private readonly active: Active[] = [];
  private running = false;

  constructor(
    readonly model: StepModel,
    readonly opts: {
      maxBatch?: number;
      onStep?: (info: { batch: number; tokens: number; seconds: number }) => void;
    } = {},
  ) {}

  /** Number of sequences being generated. */
  get size(): number {
    return this.active.length;
  }

  submit(prompt: string | number[], o: GenerateOptions = {}): GenerationStream {
    const model = this.model;
    const c = model.config;
    const ids = typeof prompt === "string" ? model.tokenizer.encode(prompt) : prompt.slice();
    if (ids.length === 0) throw new InvalidOptionError("prompt", "the prompt has no tokens");
    for (const t of ids) {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize)
        throw new InvalidOptionError("prompt", `token id ${t} is outside [0, ${c.vocabSize})`);
    }
    const maxTokens = o.maxTokens ?? 128;
    if (!Number.isInteger(maxTokens) || maxTokens < 0)
      throw new InvalidOptionError("maxTokens", `must be an integer >= 0, got ${maxTokens}`);
    if (ids.length > c.maxPositions) throw new ContextLengthError(ids.length, c.maxPositions);
    if (o.logprobs !== undefined && !(Number.isInteger(o.logprobs) && o.logprobs >= 0 && o.logprobs <= 20)) {
      throw new InvalidOptionError("logprobs", `must be an integer in [0, 20], got ${o.logprobs}`);
    }
    const sampler = new Sampler(o);
    for (const k of Object.keys(o.logitBias ?? {}))
      if (Number(k) >= c.vocabSize)
        throw new InvalidOptionError("logitBias", `token id ${k} is outside [0, ${c.vocabSize})`);
    let spec: SpecState | null = null;
    if (o.speculative !== undefined) {
      const { k, adaptive } = checkSpeculative(o.speculative);
      if (!model.draftModel)
        throw new InvalidOptionError(
          "speculative",
          "speculative decoding drafts with the assistant model: load one (CLI: --assistant <dir>)",
        );
      spec = {
        k,
        adaptive,
        draft: null,
        decoded: null,
        rounds: 0,
        drafted: 0,
        accepted: 0,
        alpha: 0.7,
        drafting: false,
      };
    }
    // Speculation rolls back: a policy on the device backend then runs on the host (its device form keeps no snapshots).
    const seq = model.newSequence(o.policy, spec ? { hostPolicy: true } : undefined);
    if (spec && !seq.canRollBack) {
      seq.release();
      throw new InvalidOptionError(
        "speculative",
        `the policy ${seq.policy.name} cannot roll back its state (no snapshot/restore), which speculative decoding needs`,
      );
    }
    let cache: Active["cache"] = null;
    let fed = 0;
    if (o.prefixCache && PrefixCache.cacheable(seq)) {
      const scope = policyScope(seq.policy);
      const hit = o.prefixCache.restore(seq, scope, ids);
      cache = { cache: o.prefixCache, scope, parent: hit.key };
      fed = hit.tokens;
    }
    let resolve!: (r: GenerationResult) => void;
    const result = new Promise<GenerationResult>((r) => (resolve = r));
    const a: Active = {
      id: nextRequest++,
      seq,
      prompt: ids,
      fed,
      cache,
      prefilled: false,
      last: -1,
      sampler,
      text: new TextStream(model.tokenizer, o.stop ?? [], ids),
      stopTokens: new Set(o.stopTokens ?? c.eosTokenIds),
      // Never past the context: generation ends with "length" there.
      maxTokens: Math.min(maxTokens, c.maxPositions - ids.length),
      logprobs: o.logprobs,
      inspect: o.inspect,
      out: {
        promptTokens: ids,
        tokens: [],
        text: "",
        finishReason: "length",
        timeToFirstToken: 0,
        timePerOutputToken: 0,
        cachedTokens: fed,
      },
      queue: [],
      wake: null,
      done: false,
      cancelled: null,
      started: performance.now(),
      firstAt: 0,
      deadline: o.timeoutMs ? performance.now() + o.timeoutMs : Number.POSITIVE_INFINITY,
      resolve,
      spec,
    };
    if (o.logprobs !== undefined) a.out.logprobs = [];
    if (o.signal) {
      if (o.signal.aborted) a.cancelled = "cancelled";
      else o.signal.addEventListener("abort", () => (a.cancelled = "cancelled"), { once: true });
    }
    if (a.maxTokens === 0 && !a.cancelled) {
      this.finish(a, "length");
    } else {
      this.active.push(a);
      this.pump();
    }
    return {
      id: a.id,
      sequence: seq,
      result,
      cancel: () => {
        a.cancelled = "cancelled";
        this.pump();
      },
      async *[Symbol.asyncIterator]() {
        while (true) {
          while (a.queue.length) yield a.queue.shift()!;
          if (a.done) return;
          await new Promise<void>((r) => (a.wake = r));
          a.wake = null;
        }
      },
    };
  }

  /** Generate for one prompt and wait for the whole result. */
  async generate(prompt: string | number[], o: GenerateOptions = {}): Promise<GenerationResult> {
    return this.submit(prompt, o).result;
  }

  private pump(): void {
    if (this.running) return;
    this.running = true;
    // Run the loop on a later tick so callers can attach iterators first.
    setImmediate(() => {
      this.loop()
        .catch(() => {})
        .finally(() => {
          this.running = false;
          if (this.active.length) this.pump();
        });
    });
  }

  private async loop(): Promise<void> {
    while (this.active.length > 0) {
      const now = performance.now();
      for (const a of [...this.active]) {
        if (a.cancelled) this.finish(a, a.cancelled);
        else if (now > a.deadline) this.finish(a, "timeout");
      }
      const batch = this.active.slice(0, this.opts.maxBatch ?? this.active.length);
      if (batch.length === 0) break;
      const rounds = new Map<Active, number>();
      for (const a of batch) {
        const k = this.draftLength(a);
        if (k > 0) rounds.set(a, k);
      }
      const plain = batch.filter((a) => !rounds.has(a));
      if (plain.length) await this.plainStep(plain);
      const spec = [...rounds].filter(([a]) => !a.done);
      if (spec.length) await this.speculate(spec);
    }
  }

  /** One ordinary step: prefill for new requests, one token for the others. */
  private async plainStep(batch: Active[]): Promise<void> {
    // A decode step whose policies have nothing to prepare is what the draft tuner compares
    // against (SmallKV's first decode step matches heads: not a typical step).
    const steady = batch.every(
      (a) =>
        a.prefilled &&
        (!a.seq.policy.prepare ||
          (a.seq.policy.prepareIdle?.(a.seq, { start: a.seq.length, T: 1 }) ?? false)),
    );
    const t0 = performance.now();
    // On a device, a request without logprobs or bias gets its token picked there (the argmax,
    // or a draw with its rule and the next number of its seeded stream, as the host would):
    // one integer comes back instead of a vocabulary of logits.
    const onDevice = batch.map((a) => !!this.model.device && a.sampler.unbiased && a.logprobs === undefined);
    const want = (i: number) => {
      const a = batch[i];
      if (!onDevice[i]) return { logits: "last" as const };
      if (a.sampler.greedy) return { logits: "argmax" as const };
      return { logits: "sample" as const, sample: { ...a.sampler.rule, u: a.sampler.uniform() } };
    };
    let logits: Float32Array[];
    try {
      logits = await this.model.forward(
        batch.map((a, i) => {
          if (a.prefilled) return { seq: a.seq, tokens: [a.last], ...want(i) };
          // With a prefix cache the prompt goes in block-aligned chunks; logits from the last only.
          const end = prefillEnd(a);
          const tokens = a.fed === 0 && end === a.prompt.length ? a.prompt : a.prompt.slice(a.fed, end);
          return end === a.prompt.length
            ? { seq: a.seq, tokens, ...want(i) }
            : { seq: a.seq, tokens, logits: "none" as const };
        }),
      );
    } catch (e) {
      // Inputs are validated at submit, and policy failures are caught per sequence
      // (seq.fault), so this is an internal error: fail this batch, keep serving.
      for (const a of batch) this.fail(a, e as Error);
      return;
    }
    const seconds = (performance.now() - t0) / 1000;
    let tokens = 0;
    for (const a of batch) tokens += a.prefilled ? 1 : prefillEnd(a) - a.fed;
    if (steady) {
      const seen = new Set<DraftTuner>();
      // Every request's plain step counts (a request without speculation runs the same step).
      for (const a of batch) {
        const t = this.tunerOf(a);
        // Per sequence, and only from a step of the tuner's whole batch: beside a probe round
        // a smaller plain step costs more per sequence than the steps the tuner compares.
        if (!seen.has(t) && batch.length === t.batch) t.notePlain(seconds / batch.length);
        seen.add(t);
        t.idle++;
      }
    }
    batch.forEach((a, i) => {
      if (!a.prefilled) {
        a.fed = a.seq.length;
        const c = a.cache;
        if (c && c.parent !== null && !a.seq.fault)
          c.parent = c.cache.store(a.seq, c.scope, a.prompt, c.parent);
        if (a.fed < a.prompt.length) return;
      }
      a.prefilled = true;
      this.accept(a, logits[i], onDevice[i]);
    });
    this.opts.onStep?.({ batch: batch.length, tokens, seconds });
  }

  /** Costs measured across requests (and generators of the same model) per policy, for adaptive draft lengths. */
  tunerOf(a: Active): DraftTuner {
    let byPolicy = tuners.get(this.model);
    if (!byPolicy) tuners.set(this.model, (byPolicy = new Map()));
    // Costs differ by policy and by how many sequences share a step.
    const batch = Math.min(this.active.length, this.opts.maxBatch ?? this.active.length);
    const key = `${a.seq.policy.name}${a.seq.assistant ? "+assistant" : ""}@${batch}`;
    let t = byPolicy.get(key);
    if (!t) byPolicy.set(key, (t = new DraftTuner(batch)));
    return t;
  }

  /** Tokens to draft for `a` this round (0: a plain step). */
  private draftLength(a: Active): number {
    const s = a.spec;
    if (!s || !a.prefilled || a.seq.fault) return 0;
    const seq = a.seq;
    // Room for k drafts and the LLM's own token, in the request and in the context.
    const room = Math.min(
      a.maxTokens - a.out.tokens.length - 1,
      this.model.config.maxPositions - seq.length - 1,
    );
    let k = Math.min(s.k, room);
    if (s.adaptive) {
      // Plain steps measure the baseline first and the first round measures a round's cost;
      // from then on k follows the prediction, and while it says 0 a probe round now and then
      // (ever rarer, shared by every request of the policy) refreshes the acceptance rate.
      const t = this.tunerOf(a);
      if (t.plain === 0) return 0;
      // Beside other requests every adaptive one follows the shared rate and choice: a round
      // of one sequence costs about what a round of all does on a small model, and the plain
      // step beside it too, so requests that split between drafting and not pay twice.
      const shared = t.batch > 1;
      const alpha = shared || s.rounds < 2 ? t.alpha : s.alpha;
      k = t.measured ? t.choose(alpha, k, shared ? t.drafting : s.drafting) : 1;
      if (shared) t.drafting = k > 0;
      else s.drafting = k > 0;
      if (k === 0 && t.probeDue(s.k)) k = 1;
    }
    if (k < 1) return 0;
    const p = seq.policy;
    if (p.prepare && !(p.prepareIdle?.(seq, { start: seq.length + 1, T: k }) ?? false)) return 0;
    return k;
  }

  /**
   * Feed each request's draft sequence its tokens: runner sequences step together, and
   * draft-decoder ones in one call of their own. Returns the last logits of those that want them
   * (a draft decoder's always).
   */
  private async feedDrafts(
    decoder: DraftDecoder | null,
    items: [Active, number][],
    tokens: (a: Active) => number[],
    wantLogits: (k: number) => boolean,
  ): Promise<Map<Active, Float32Array>> {
    const outs = new Map<Active, Float32Array>();
    const together = items.filter(([a]) => !a.spec!.decoded);
    if (together.length) {
      const res = await this.model.draftModel!.forward(
        together.map(([a, k]) => ({
          seq: a.spec!.draft!,
          tokens: tokens(a),
          logits: wantLogits(k) ? ("last" as const) : ("none" as const),
        })),
      );
      together.forEach(([a], i) => outs.set(a, res[i]));
    }
    const alone = items.filter(([a]) => a.spec!.decoded);
    if (alone.length) {
      const res = await decoder!.stepMany(
        alone.map(([a]) => ({ state: a.spec!.decoded!, tokens: tokens(a) })),
      );
      alone.forEach(([a], i) => outs.set(a, res[i]));
    }
    return outs;
  }

  /**
   * One speculative round for each given request: the assistant drafts k tokens, the LLM
   * verifies them in one step (rows planned one by one where the policy needs it), each
   * sequence keeps its accepted prefix and rolls back the rest.
   */
  private async speculate(items: [Active, number][]): Promise<void> {
    const model = this.model;
    const draftModel = model.draftModel!;
    // A draft for a policy without the assistant runs the model's draft decoder when it has one.
    const decoder = items.some(([a]) => !a.seq.assistant) ? await draftModel.draftDecoder() : null;
    const solo = items.filter(([a]) => !a.seq.assistant).length === 1;
    const V = model.config.vocabSize;
    const t0 = performance.now();
    let roundStart = t0;
    const n = new Map<Active, number>();
    const drafts = new Map<Active, number[]>();
    const qs = new Map<Active, (Float64Array | null)[]>();
    const feeds = new Map<Active, number[]>();
    for (const [a] of items) {
      const s = a.spec!;
      n.set(a, a.seq.length);
      drafts.set(a, []);
      qs.set(a, []);
      if (a.seq.assistant) {
        s.draft = a.seq.assistant.seq;
        a.seq.assistant.beginDraft();
      } else if (!s.decoded && !s.draft) {
        // A native draft decoder serves every sequence (no padding); the fused onnxruntime
        // graph only a sequence alone: beside others the runner's batched step costs less
        // than padded fused calls (measured at batch 4).
        if (decoder && (solo || decoder.perSequence)) s.decoded = decoder.newState();
        else s.draft = draftModel.newSequence();
      }
      // The draft sequence catches up on what the LLM has that it lacks (after a full accept).
      const have = s.decoded?.length ?? s.draft!.length;
      feeds.set(a, [...a.seq.tokens.slice(have), a.last]);
    }
    try {
      // A draft model that has not followed the request (a probe, a request's first round)
      // first prefills what it lacks, apart: that is a one-off cost, not a round's, and the
      // adaptive tuner must not count it as one.
      const behind = items.filter(([a]) => !a.seq.assistant && feeds.get(a)!.length > 2);
      if (behind.length) {
        await this.feedDrafts(
          decoder,
          behind,
          (a) => feeds.get(a)!.slice(0, -1),
          () => false,
        );
        for (const [a] of behind) feeds.set(a, feeds.get(a)!.slice(-1));
        roundStart = performance.now();
      }
      // Draft: k steps; the assistant of a policy that reads it also runs on the last draft
      // (the LLM's verify rows read its view at every position).
      const steps = Math.max(...items.map(([a, k]) => k + (a.seq.assistant ? 1 : 0)));
      let draftSeconds = 0;
      for (let j = 0; j < steps; j++) {
        const live = items.filter(([a, k]) => j < k + (a.seq.assistant ? 1 : 0));
        const td = performance.now();
        const outs = await this.feedDrafts(
          decoder,
          live,
          (a) => feeds.get(a)!,
          (k) => j < k,
        );
        draftSeconds += (performance.now() - td) / 1000;
        live.forEach(([a, k]) => {
          if (j >= k) return;
          const logits = a.sampler.adjust(outs.get(a)!);
          let d: number;
          if (a.sampler.greedy) {
            d = argmax(logits);
            qs.get(a)!.push(null);
          } else {
            const q = a.sampler.distribution(logits);
            d = a.sampler.sampleFrom(q);
            qs.get(a)!.push(q);
          }
          drafts.get(a)!.push(d);
          feeds.set(a, [d]);
        });
      }
      const tuner = this.tunerOf(items[0][0]);
      tuner.noteDraft(draftSeconds / steps / items.length);

      // Verify: every drafted token at once (or as one-token steps where the policy must).
      const rows = await this.verify(items, drafts);
      const back = items.map(([a]) => ({ a, length: 0, next: 0, accepted: 0 }));
      items.forEach(([a], i) => {
        if (a.seq.fault) return;
        const r = verifyDraft(a.sampler, rows[i], V, drafts.get(a)!, qs.get(a)!);
        back[i].accepted = r.accepted;
        back[i].next = r.next;
        back[i].length = n.get(a)! + r.accepted + 1;
      });
      const ok = back.filter((b) => !b.a.seq.fault);
      model.rollback(ok.map((b) => ({ seq: b.a.seq, length: b.length })));
      for (const b of ok) {
        const a = b.a;
        a.seq.assistant?.rollbackTo(b.length);
        const ds = a.spec!.decoded ?? a.spec!.draft!;
        if (!a.seq.assistant && ds.length > b.length) ds.truncateTo(b.length);
      }
      const k = Math.max(...items.map(([, k]) => k));
      const kept = back.reduce((x, b) => x + b.accepted, 0) / back.length;
      // A round of fewer sequences than the tuner's batch (a probe) counts for the acceptance
      // rate only: on a small model its cost per sequence is no guide to a whole batch's.
      const whole = items.length === tuner.batch;
      tuner.noteRound((performance.now() - roundStart) / 1000 / items.length, k, kept, whole);

      items.forEach(([a, k], i) => {
        const b = back[i];
        const s = a.spec!;
        this.close(a);
        if (a.seq.fault) return this.fail(a, a.seq.fault);
        s.rounds++;
        s.drafted += k;
        s.accepted += b.accepted;
        s.alpha += 0.2 * (b.accepted / k - s.alpha);
        const d = drafts.get(a)!;
        const r = rows[i];
        for (let t = 0; t <= b.accepted && !a.done; t++)
          this.emitToken(a, t < b.accepted ? d[t] : b.next, a.sampler.adjust(r.subarray(t * V, (t + 1) * V)));
      });
      const tokens = items.reduce((x, [, k]) => x + k + 1, 0);
      this.opts.onStep?.({ batch: items.length, tokens, seconds: (performance.now() - t0) / 1000 });
    } catch (e) {
      for (const [a] of items) {
        this.close(a);
        this.fail(a, e as Error);
      }
    }
  }

  /** The LLM's rows [k + 1][V] for each request's last token and drafts. */
  private async verify(items: [Active, number][], drafts: Map<Active, number[]>): Promise<Float32Array[]> {
    const model = this.model;
    const V = model.config.vocabSize;
    const onDevice = (items[0][0].seq.model?.device ?? null) !== null;
    const inputs = items.map(([a]) => {
      const p = a.seq.policy;
      // Per-row planning only where the policy has per-row work; one-token steps where its
      // layers depend on later layers of the previous step (or on the device backend).
      const mode = !policyHasState(p) ? "whole" : p.verify === "layerwise" && !onDevice ? "rowwise" : "rows";
      return { a, mode, tokens: [a.last, ...drafts.get(a)!] };
    });
    const out = inputs.map(({ tokens }) => new Float32Array(tokens.length * V));
    const once = inputs.filter((x) => x.mode !== "rows");
    if (once.length) {
      const res = await model.forward(
        once.map(({ a, mode, tokens }) => ({
          seq: a.seq,
          tokens,
          logits: "all" as const,
          checkpoint: true,
          rowwise: mode === "rowwise",
          drafted: !!a.seq.assistant,
        })),
      );
      once.forEach((x, i) => {
        out[inputs.indexOf(x)].set(res[i]);
      });
    }
    const rowsMode = inputs.filter((x) => x.mode === "rows");
    const T = Math.max(0, ...rowsMode.map((x) => x.tokens.length));
    for (let t = 0; t < T; t++) {
      const live = rowsMode.filter((x) => t < x.tokens.length && !x.a.seq.fault);
      if (!live.length) continue;
      const res = await model.forward(
        live.map(({ a, tokens }) => ({
          seq: a.seq,
          tokens: [tokens[t]],
          logits: "last" as const,
          checkpoint: true,
          drafted: !!a.seq.assistant,
        })),
      );
      live.forEach((x, i) => {
        out[inputs.indexOf(x)].set(res[i], t * V);
      });
    }
    return out;
  }

  /** End a request's round: close its checkpoint and its assistant's draft views. */
  private close(a: Active): void {
    if (a.seq.released) return;
    this.model.settle(a.seq);
    a.seq.assistant?.endDraft();
  }

  /** The request's next token from its logits row, or (`chosen`) the token the device picked. */
  private accept(a: Active, raw: Float32Array, chosen = false): void {
    if (a.seq.fault) {
      this.fail(a, a.seq.fault);
      return;
    }
    if (chosen) {
      this.emitToken(a, raw[0], raw); // no logprobs were asked: the row is not read
      return;
    }
    const logits = a.sampler.adjust(raw);
    this.emitToken(a, a.sampler.next(logits), logits);
  }

  /** Hand one chosen token to the request (stop checks; logprobs from its adjusted logits row). */
  private emitToken(a: Active, token: number, logits: Float32Array): void {
    if (a.firstAt === 0) a.firstAt = performance.now();
    if (a.stopTokens.has(token)) {
      this.finish(a, "stop");
      return;
    }
    a.last = token;
    a.out.tokens.push(token);
    const ev: TokenEvent = { token, text: "" };
    if (a.logprobs !== undefined) {
      const lp = logSoftmax(logits);
      ev.logprob = lp[token];
      if (a.logprobs > 0) {
        const top = Array.from(lp.keys())
          .sort((x, y) => lp[y] - lp[x])
          .slice(0, a.logprobs);
        ev.topLogprobs = top.map((t) => ({ token: t, logprob: lp[t] }));
      }
    }
    if (a.inspect) ev.trace = a.inspect(a.seq, token);
    const { delta, stopped, piece } = a.text.push(token);
    ev.text = delta;
    ev.piece = piece;
    if (ev.logprob !== undefined)
      a.out.logprobs!.push({ token, piece, logprob: ev.logprob, topLogprobs: ev.topLogprobs });
    a.out.text += delta;
    this.emit(a, ev);
    if (stopped) this.finish(a, "stop");
    else if (a.out.tokens.length >= a.maxTokens) this.finish(a, "length");
  }

  private emit(a: Active, ev: TokenEvent): void {
    a.queue.push(ev);
    a.wake?.();
  }

  private fail(a: Active, e: Error): void {
    a.out.error = e;
    this.finish(a, "error");
  }

  private finish(a: Active, reason: FinishReason): void {
    if (a.done) return;
    if (reason === "length" || reason === "cancelled" || reason === "timeout") {
      const rest = a.text.finish();
      if (rest) {
        a.out.text += rest;
        a.queue.push({ token: -1, text: rest });
      }
    }
    a.out.finishReason = reason;
    const sp = a.spec;
    if (sp) {
      a.out.speculative = speculativeStats(sp.rounds, sp.drafted, sp.accepted);
      if (sp.draft && !a.seq.assistant) sp.draft.release();
    }
    const end = performance.now();
    a.out.timeToFirstToken = a.firstAt ? (a.firstAt - a.started) / 1000 : 0;
    const n = a.out.tokens.length;
    a.out.timePerOutputToken = n > 1 ? (end - a.firstAt) / 1000 / (n - 1) : 0;
    a.done = true;
    a.seq.release();
    const i = this.active.indexOf(a);
    if (i >= 0) this.active.splice(i, 1);
    a.wake?.();
    a.resolve(a.out);
  }
}

/** Generate for several prompts in lockstep batched steps. */
export async function generateBatch(
  model: StepModel,
  prompts: (string | number[])[],
  o: GenerateOptions = {},
): Promise<GenerationResult[]> {
  const g = new Generator(model);
  return Promise.all(prompts.map((p) => g.submit(p, o).result));
}
