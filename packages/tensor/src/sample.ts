/** One draw's parameters: temperature (0: argmax), top-k (0: off), top-p (1: off). */
export interface SamplingRule {
  temperature: number;
  topK: number;
  topP: number;
}

/**
 * The token drawn from one logits row with the uniform draw `u` in [0, 1): tokens ranked by logit
 * (ties to the lower id), the top k kept, softmax with the temperature in double, the smallest
 * prefix holding topP kept, then the first token whose running sum passes u times the kept sum.
 * Temperature 0: the argmax (the lowest id among equals). The device's `sample` kernel draws the
 * same tokens (the host's Sampler uses this with its seeded stream).
 */
export function sampleToken(logits: ArrayLike<number>, rule: SamplingRule, u: number): number {
  if (rule.temperature === 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const { ids, p, n, sum } = keptTokens(logits, rule);
  let left = u * sum;
  for (let i = 0; i < n; i++) {
    left -= p[i];
    if (left < 0) return ids[i];
  }
  return ids[n - 1];
}

/**
 * The tokens a rule with a temperature (> 0) draws from: ids ranked by logit (ties to the lower
 * id), their weights exp((logit - max) / temperature) in double, the first n of them kept (top-k,
 * then the smallest prefix holding topP) and the kept weights' sum.
 */
export function keptTokens(
  logits: ArrayLike<number>,
  rule: SamplingRule,
): { ids: number[]; p: Float64Array; n: number; sum: number } {
  const V = logits.length;
  const temp = rule.temperature;
  const ids = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const k = rule.topK > 0 ? Math.min(rule.topK, V) : V;
  const m = logits[ids[0]];
  const p = new Float64Array(k);
  let sum = 0;
  for (let i = 0; i < k; i++) {
    p[i] = Math.exp((logits[ids[i]] - m) / temp);
    sum += p[i];
  }
  let n = k;
  if (rule.topP < 1) {
    let cum = 0;
    for (let i = 0; i < k; i++) {
      cum += p[i] / sum;
      if (cum >= rule.topP) {
        n = i + 1;
        break;
      }
    }
    sum = 0;
    for (let i = 0; i < n; i++) sum += p[i];
  }
  return { ids, p, n, sum };
}
