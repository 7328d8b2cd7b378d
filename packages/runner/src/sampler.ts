import { keptTokens, type SamplingRule, sampleToken } from "@smallkv/tensor";
import { InvalidOptionError } from "./errors.js";

export interface SamplingOptions {
  /** 0 = greedy (argmax). Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Nucleus sampling: keep the smallest set with probability >= topP (1 = off). */
  topP?: number;
  /** Seed of the request's random stream, for reproducible sampling. */
  seed?: number;
  /** Added to the logits of these token ids before sampling (OpenAI's logit_bias: -100 bans, +100 forces). */
  logitBias?: Record<number, number>;
}

export function validateSampling(o: SamplingOptions): void {
  if (o.temperature !== undefined && !(o.temperature >= 0 && Number.isFinite(o.temperature))) {
    throw new InvalidOptionError("temperature", `must be a finite number >= 0, got ${o.temperature}`);
  }
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) {
    throw new InvalidOptionError("topK", `must be an integer >= 0, got ${o.topK}`);
  }
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) {
    throw new InvalidOptionError("topP", `must be in (0, 1], got ${o.topP}`);
  }
  if (o.seed !== undefined && !Number.isSafeInteger(o.seed)) {
    throw new InvalidOptionError("seed", `must be an integer, got ${o.seed}`);
  }
  for (const [k, v] of Object.entries(o.logitBias ?? {})) {
    if (!/^\d+$/.test(k))
      throw new InvalidOptionError("logitBias", `keys must be token ids, got ${JSON.stringify(k)}`);
    if (!(typeof v === "number" && v >= -100 && v <= 100))
      throw new InvalidOptionError("logitBias", `values must be numbers in [-100, 100], got ${v} for ${k}`);
  }
}

/** A small, fast, seedable PRNG (sfc32 seeded by splitmix32) giving floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let s = (seed >>> 0) ^ Math.floor(seed / 2 ** 32);
  const split = () => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(),
    b = split(),
    c = split(),
    d = split();
  return () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** log-softmax of one logits row, in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) m = Math.max(m, logits[i]);
  let s = 0;
  for (let i = 0; i < logits.length; i++) s += Math.exp(logits[i] - m);
  const lse = m + Math.log(s);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** Picks the next token from a logits row under the sampling options. */
export class Sampler {
  private readonly random: () => number;
  readonly greedy: boolean;

  constructor(private readonly o: SamplingOptions = {}) {
    validateSampling(o);
    this.greedy = (o.temperature ?? 1) === 0;
    this.random = seededRandom(o.seed ?? Math.floor(Math.random() * 2 ** 32));
  }

  /** No logit bias: `next` reads the raw logits (what a device can pick from in place). */
  get unbiased(): boolean {
    return Object.keys(this.o.logitBias ?? {}).length === 0;
  }

  /** The logits with `logitBias` added (a copy), or the same row when there is none. */
  adjust(logits: Float32Array): Float32Array {
    const bias = this.o.logitBias;
    if (!bias) return logits;
    let out: Float32Array | null = null;
    for (const [k, v] of Object.entries(bias)) {
      const t = Number(k);
      if (t >= logits.length) continue;
      out ??= logits.slice();
      out[t] += v;
    }
    return out ?? logits;
  }

  /** A uniform draw in [0, 1) from the request's random stream. */
  uniform(): number {
    return this.random();
  }

  /**
   * The distribution `next` samples from, as probabilities over the whole vocabulary
   * (temperature, top-k and top-p applied; greedy: all mass on the argmax).
   */
  distribution(logits: ArrayLike<number>): Float64Array {
    const out = new Float64Array(logits.length);
    if (this.greedy) {
      out[argmax(logits)] = 1;
      return out;
    }
    const { ids, p, n, sum } = keptTokens(logits, this.rule);
    for (let i = 0; i < n; i++) out[ids[i]] = p[i] / sum;
    return out;
  }

  /** A token drawn from probabilities `p` (summing to `total`, default 1). */
  sampleFrom(p: ArrayLike<number>, total = 1): number {
    let u = this.random() * total;
    let last = 0;
    for (let i = 0; i < p.length; i++) {
      if (p[i] <= 0) continue;
      last = i;
      u -= p[i];
      if (u < 0) return i;
    }
    return last;
  }

  /** The rule `next` draws with (temperature 0 when greedy). */
  get rule(): SamplingRule {
    return {
      temperature: this.greedy ? 0 : (this.o.temperature ?? 1),
      topK: this.o.topK ?? 0,
      topP: this.o.topP ?? 1,
    };
  }

  next(logits: ArrayLike<number>): number {
    if (this.greedy) return argmax(logits);
    return sampleToken(logits, this.rule, this.random());
  }
}
