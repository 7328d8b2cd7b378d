import type { StepModel } from "./assisted.js";
import { ContextLengthError, InvalidOptionError } from "./errors.js";
import type { KvPolicyHook } from "./policy-hook.js";
import { logSoftmax, Sampler, type SamplingOptions } from "./sampler.js";
import type { Sequence } from "./sequence.js";
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
  prefilled: boolean;
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
}

let nextRequest = 1;

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
    const seq = model.newSequence(o.policy);
    let resolve!: (r: GenerationResult) => void;
    const result = new Promise<GenerationResult>((r) => (resolve = r));
    const a: Active = {
      id: nextRequest++,
      seq,
      prompt: ids,
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
      },
      queue: [],
      wake: null,
      done: false,
      cancelled: null,
      started: performance.now(),
      firstAt: 0,
      deadline: o.timeoutMs ? performance.now() + o.timeoutMs : Number.POSITIVE_INFINITY,
      resolve,
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
      const t0 = performance.now();
      let logits: Float32Array[];
      try {
        logits = await this.model.forward(
          batch.map((a) => ({
            seq: a.seq,
            tokens: a.prefilled ? [a.last] : a.prompt,
            logits: "last" as const,
          })),
        );
      } catch (e) {
        // Inputs are validated at submit, and policy failures are caught per sequence
        // (seq.fault), so this is an internal error: fail this batch, keep serving.
        for (const a of batch) this.fail(a, e as Error);
        continue;
      }
      let tokens = 0;
      batch.forEach((a, i) => {
        tokens += a.prefilled ? 1 : a.prompt.length;
        a.prefilled = true;
        this.accept(a, logits[i]);
      });
      this.opts.onStep?.({ batch: batch.length, tokens, seconds: (performance.now() - t0) / 1000 });
    }
  }

  private accept(a: Active, raw: Float32Array): void {
    if (a.seq.fault) {
      this.fail(a, a.seq.fault);
      return;
    }
    const logits = a.sampler.adjust(raw);
    const token = a.sampler.next(logits);
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
