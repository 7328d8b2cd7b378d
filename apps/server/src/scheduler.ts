import {
  devicePath,
  type GenerateOptions,
  type GenerationResult,
  type GenerationStream,
  Generator,
  type StepModel,
  type TokenEvent,
} from "@smallkv/runner";
import { ApiError } from "./errors.js";
import type { ServerMetrics } from "./metrics.js";

/** A request admitted to the scheduler: waits for a batch slot, then streams. */
export interface Job extends AsyncIterable<TokenEvent> {
  readonly result: Promise<GenerationResult>;
  /** The running stream once the job has a slot. */
  readonly started: Promise<GenerationStream | null>;
  cancel(): void;
}

interface Pending {
  prompt: number[];
  opts: GenerateOptions;
  start: (s: GenerationStream | null) => void;
  cancelled: boolean;
}

/**
 * One scheduler owns the model: up to `maxBatch` sequences run in the generator's shared
 * steps (new ones join at step boundaries); up to `maxQueue` more wait in FIFO order; beyond
 * that, requests are refused with 429.
 */
export class Scheduler {
  readonly generator: Generator;
  private readonly running = new Set<GenerationStream>();
  private readonly queue: Pending[] = [];
  private idleWaiters: (() => void)[] = [];

  constructor(
    model: StepModel,
    private readonly o: { maxBatch: number; maxQueue: number; metrics: ServerMetrics },
  ) {
    this.generator = new Generator(model);
  }

  get runningCount(): number {
    return this.running.size;
  }

  get queued(): number {
    return this.queue.length;
  }

  /** KV bytes of the running sequences; on the device backend, where their stores are (both models). */
  kvBytes(): { hot: number; cold: number; assistant: number; device: number; host: number } {
    let hot = 0;
    let cold = 0;
    let assistant = 0;
    let device = 0;
    let host = 0;
    for (const s of this.running) {
      const st = s.sequence.stats();
      hot += st.hotBytes;
      cold += st.coldBytes;
      assistant += s.sequence.assistant?.seq.stats().coldBytes ?? 0;
      for (const q of [s.sequence, s.sequence.assistant?.seq])
        if (q?.model?.device) {
          const p = devicePath(q);
          device += p.deviceBytes;
          host += p.hostBytes;
        }
    }
    return { hot, cold, assistant, device, host };
  }

  submit(prompt: number[], opts: GenerateOptions): Job {
    if (this.running.size >= this.o.maxBatch && this.queue.length >= this.o.maxQueue) {
      throw new ApiError(
        429,
        `the server is at capacity (${this.o.maxBatch} running, ${this.o.maxQueue} queued); retry later`,
        "rate_limit_error",
        null,
        "queue_full",
        { "Retry-After": "1" },
      );
    }
    let start!: (s: GenerationStream | null) => void;
    const started = new Promise<GenerationStream | null>((r) => (start = r));
    const pending: Pending = { prompt, opts, start, cancelled: false };
    if (this.running.size < this.o.maxBatch) this.launch(pending);
    else this.queue.push(pending);
    this.gauges();
    const result = started.then((s) => (s ? s.result : cancelledResult(prompt)));
    return {
      started,
      result,
      cancel: () => {
        pending.cancelled = true;
        const i = this.queue.indexOf(pending);
        if (i >= 0) {
          this.queue.splice(i, 1);
          pending.start(null);
          this.gauges();
        }
        void started.then((s) => s?.cancel());
      },
      async *[Symbol.asyncIterator]() {
        const s = await started;
        if (s) yield* s;
      },
    };
  }

  private launch(p: Pending): void {
    let s: GenerationStream;
    try {
      s = this.generator.submit(p.prompt, p.opts);
    } catch (e) {
      p.start(null);
      throw e;
    }
    this.running.add(s);
    p.start(s);
    if (p.cancelled) s.cancel();
    void s.result.then(() => {
      this.running.delete(s);
      this.next();
    });
  }

  private next(): void {
    while (this.running.size < this.o.maxBatch && this.queue.length) {
      const p = this.queue.shift()!;
      if (p.cancelled) {
        p.start(null);
        continue;
      }
      try {
        this.launch(p);
      } catch {
        // launch failures were validated at submit; nothing else to do for this one
      }
    }
    this.gauges();
    if (this.running.size === 0 && this.queue.length === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private gauges(): void {
    this.o.metrics.queueDepth.set(this.queue.length);
    this.o.metrics.running.set(this.running.size);
  }

  /** Resolves when nothing runs or waits (or after `ms`). */
  idle(ms: number): Promise<boolean> {
    if (this.running.size === 0 && this.queue.length === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), ms);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /** Cancel everything (shutdown past its deadline). */
  cancelAll(): void {
    for (const p of this.queue.splice(0)) p.start(null);
    for (const s of this.running) s.cancel();
    this.gauges();
  }
}

function cancelledResult(prompt: number[]): GenerationResult {
  return {
    promptTokens: prompt,
    tokens: [],
    text: "",
    finishReason: "cancelled",
    timeToFirstToken: 0,
    timePerOutputToken: 0,
    cachedTokens: 0,
  };
}
