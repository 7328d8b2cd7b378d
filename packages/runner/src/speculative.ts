import { InvalidOptionError } from "./errors.js";
import { argmax, type Sampler } from "./sampler.js";

/**
 * Speculative decoding with the assistant as the draft model: it writes k tokens ahead, the
 * LLM checks them in one multi-token step, the longest agreeing prefix is kept plus one token
 * of the LLM's own. Greedy keeps the argmax agreement; sampling keeps the LLM's distribution
 * exactly (Leviathan et al. 2023; Chen et al. 2023).
 */
export interface SpeculativeOptions {
  /** Who drafts: the assistant model (the only choice; it runs beside the LLM already). */
  draft?: "assistant";
  /** Tokens drafted per round (1 to 16; default 4). With `adaptive`, the largest it may use. */
  k?: number;
  /**
   * Choose k per round from the measured acceptance and costs (0: plain decoding, with a
   * probe now and then), so speculation turns itself off where it does not pay.
   */
  adaptive?: boolean;
}

export const MAX_DRAFT = 16;

export function checkSpeculative(o: SpeculativeOptions): { k: number; adaptive: boolean } {
  if (typeof o !== "object" || o === null)
    throw new InvalidOptionError("speculative", "must be an object like { k: 4 }");
  for (const key of Object.keys(o))
    if (!["draft", "k", "adaptive"].includes(key))
      throw new InvalidOptionError("speculative", `unknown field "${key}" (draft, k, adaptive)`);
  if (o.draft !== undefined && o.draft !== "assistant")
    throw new InvalidOptionError("speculative", `draft must be "assistant", got ${JSON.stringify(o.draft)}`);
  const k = o.k ?? 4;
  if (!(Number.isInteger(k) && k >= 1 && k <= MAX_DRAFT))
    throw new InvalidOptionError("speculative", `k must be an integer in [1, ${MAX_DRAFT}], got ${o.k}`);
  if (o.adaptive !== undefined && typeof o.adaptive !== "boolean")
    throw new InvalidOptionError("speculative", "adaptive must be true or false");
  return { k, adaptive: o.adaptive ?? false };
}

/** A request's speculation so far. */
export interface SpeculativeStats {
  /** Verify rounds run. */
  rounds: number;
  /** Draft tokens proposed, and accepted by the LLM. */
  drafted: number;
  accepted: number;
  /** accepted / drafted (0 before any round). */
  acceptanceRate: number;
  /** Draft tokens accepted per round (the LLM adds one token of its own to each). */
  meanAccepted: number;
}

export function speculativeStats(rounds: number, drafted: number, accepted: number): SpeculativeStats {
  return {
    rounds,
    drafted,
    accepted,
    acceptanceRate: drafted ? accepted / drafted : 0,
    meanAccepted: rounds ? accepted / rounds : 0,
  };
}

/**
 * Check k draft tokens against the LLM's rows [k + 1][V] (raw logits; row i follows the
 * i-th token fed). `q[i]`: the draft distribution d[i] was sampled from (null when greedy).
 * Returns how many drafts are kept and the token that follows them.
 */
export function verifyDraft(
  sampler: Sampler,
  rows: Float32Array,
  V: number,
  drafts: number[],
  q: (Float64Array | null)[],
): { accepted: number; next: number } {
  for (let i = 0; i < drafts.length; i++) {
    const logits = sampler.adjust(rows.subarray(i * V, (i + 1) * V));
    const d = drafts[i];
    if (sampler.greedy) {
      const best = argmax(logits);
      if (best === d) continue;
      return { accepted: i, next: best };
    }
    const p = sampler.distribution(logits);
    const qi = q[i]!;
    // Keep d with probability min(1, p/q); else draw from the residual max(0, p - q).
    if (qi[d] > 0 && sampler.uniform() * qi[d] < p[d]) continue;
    let total = 0;
    for (let t = 0; t < V; t++) {
      p[t] = Math.max(0, p[t] - qi[t]);
      total += p[t];
    }
    const next = total > 0 ? sampler.sampleFrom(p, total) : sampler.sampleFrom(sampler.distribution(logits));
    return { accepted: i, next };
  }
  const k = drafts.length;
  const last = sampler.adjust(rows.subarray(k * V, (k + 1) * V));
  return {
    accepted: k,
    next: sampler.greedy ? argmax(last) : sampler.sampleFrom(sampler.distribution(last)),
  };
}

/** Expected tokens per round when each draft is kept with probability alpha. */
export function expectedTokens(alpha: number, k: number): number {
  return alpha >= 1 ? k + 1 : (1 - alpha ** (k + 1)) / (1 - alpha);
}

/**
 * The standard analysis (Leviathan et al. 2023): speedup over plain decoding when a draft
 * step costs c LLM steps and verifying k + 1 tokens costs one LLM step.
 */
export function predictedSpeedup(alpha: number, k: number, c: number): number {
  return expectedTokens(alpha, k) / (k * c + 1);
}

/**
 * Adaptive draft length from measured costs (seconds per sequence, medians of recent samples:
 * a step's or round's time over the sequences in it): a plain decode step, a draft-model step,
 * and a whole round (drafting, verify, rollback) per draft length k; and
 * the acceptance rate seen across requests. Picks the k with the best expected tokens per
 * second, or 0 when none beats plain decoding. One per model, policy and batch size, so
 * what one request measured serves the next.
 */
export class DraftTuner {
  // Medians of recent samples: a step that also matched heads (SmallKV's first decode step)
  // or a noisy neighbour must not move the estimates.
  private readonly plainS = new RecentMedian();
  private readonly draftS = new RecentMedian();
  private readonly roundS = new Map<number, RecentMedian>();
  /** Acceptance rate across requests (a new request starts from it). */
  alpha = 0.7;
  /** Whether the requests that share this tuner's choice are drafting (batch > 1). */
  drafting = false;

  /** `batch`: the number of sequences per step that this tuner's costs are for. */
  constructor(readonly batch = 1) {}

  /** Plain steps since the last round, and how many to wait before a probe (doubles). */
  idle = 0;
  private probeEvery = 64;
  private static readonly RATE = 0.2;
  // Only a clear predicted gain: step times on a shared machine vary by 10% and more, and a
  // round that does not pay costs more than a plain step.
  private static readonly GAIN = 1.1;

  /** Seconds of a plain decode step. */
  get plain(): number {
    return this.plainS.value;
  }
  /** Seconds of one draft-model step (reported as the cost ratio c). */
  get draft(): number {
    return this.draftS.value;
  }

  notePlain(seconds: number): void {
    this.plainS.add(seconds);
  }
  noteDraft(seconds: number): void {
    this.draftS.add(seconds);
  }

  /**
   * Whether a probe round is due (while the prediction says 0); the next one waits twice as
   * long. One sequence probes per due (a probe beside plain steps pays the draft model's
   * catch-up on the whole request), and none while drafting could not pay even if every draft
   * were accepted: a probe only refreshes the acceptance rate.
   */
  probeDue(kMax: number): boolean {
    if (this.idle < this.probeEvery) return false;
    let best = 0;
    for (let k = 1; k <= kMax; k++) best = Math.max(best, this.speedup(1, k));
    if (best <= DraftTuner.GAIN) return false;
    this.probeEvery = Math.min(this.probeEvery * 2, 4096);
    this.idle = 0;
    return true;
  }

  /**
   * A whole round (drafting, verify, rollback) of k drafts took `seconds`; `accepted` of them
   * kept. `costs` false: the round only informs the acceptance rate.
   */
  noteRound(seconds: number, k: number, accepted: number, costs = true): void {
    this.idle = 0;
    if (k < 1) return;
    if (costs) {
      let m = this.roundS.get(k);
      if (!m) this.roundS.set(k, (m = new RecentMedian()));
      m.add(seconds);
    }
    this.alpha += DraftTuner.RATE * (accepted / k - this.alpha);
  }

  /**
   * A round's cost at draft length k: measured, or from the nearest measured length plus
   * (or minus) one draft step per token of difference (a lower bound: verifying a row costs more).
   */
  roundCost(k: number): number | null {
    const m = this.roundS.get(k);
    if (m) return m.value;
    let near: number | null = null;
    for (const j of this.roundS.keys()) if (near === null || Math.abs(j - k) < Math.abs(near - k)) near = j;
    if (near === null) return null;
    return Math.max(this.plain, this.roundS.get(near)!.value + (k - near) * this.draft);
  }

  /** Predicted speedup of drafting k tokens at acceptance alpha (1 for k = 0). */
  speedup(alpha: number, k: number): number {
    const cost = k === 0 ? null : this.roundCost(k);
    if (cost === null || this.plain === 0) return 1;
    return (expectedTokens(alpha, k) * this.plain) / cost;
  }

  /** Whether a round has been measured (before that, adaptive requests probe with k = 1). */
  get measured(): boolean {
    return this.plain > 0 && this.roundS.size > 0;
  }

  /**
   * The best k in [0, kMax]. A request that is drafting keeps on while a round pays at all; one
   * that is not starts only on a clear gain: switching back and forth costs the draft model a
   * catch-up each time, and the acceptance rate moves from round to round.
   */
  choose(alpha: number, kMax: number, drafting = false): number {
    let best = 0;
    let bestGain = drafting ? 1 : DraftTuner.GAIN;
    for (let k = 1; k <= kMax; k++) {
      const g = this.speedup(alpha, k);
      if (g > bestGain) {
        best = k;
        bestGain = g;
      }
    }
    return best;
  }
}

/** The median of the last few samples (0 before any). */
class RecentMedian {
  private readonly xs: number[] = [];
  value = 0;

  add(x: number): void {
    this.xs.push(x);
    if (this.xs.length > 15) this.xs.shift();
    const v = [...this.xs].sort((a, b) => a - b);
    this.value = v[(v.length - 1) >> 1];
  }
}
