// Plain TypeScript references of every kernel: slow, obvious, and the ground truth the
// native kernels are tested against. Same layouts and semantics as ops.ts.

import type { DecoderLayerWeights, DecoderStepArgs } from "./decoder.js";
import type { RankSplitArgs, RankSplitResult } from "./rank-split.js";

export function ropeRef(
  x: Float32Array,
  positions: Int32Array,
  H: number,
  D: number,
  theta = 10000,
  freq?: { invFreq: Float32Array; scale: number },
): void {
  const half = D / 2;
  for (let t = 0; t < positions.length; t++) {
    for (let h = 0; h < H; h++) {
      const base = (t * H + h) * D;
      for (let i = 0; i < half; i++) {
        const a = positions[t] * (freq ? freq.invFreq[i] : theta ** ((-2 * i) / D));
        const c = Math.cos(a) * (freq?.scale ?? 1);
        const s = Math.sin(a) * (freq?.scale ?? 1);
        const x1 = x[base + i];
        const x2 = x[base + i + half];
        x[base + i] = x1 * c - x2 * s;
        x[base + i + half] = x2 * c + x1 * s;
      }
    }
  }
}

export interface AttentionRefArgs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  cap: number;
  T: number;
  past: number | Int32Array;
  Hq: number;
  Hkv: number;
  D: number;
  scale?: number;
  scoreStart?: number;
  /** > 0: query t sees only keys j > past+t-window. */
  window?: number;
  vOnly?: {
    v: Float32Array;
    cap: number;
    counts: Int32Array;
    weights: Float32Array;
    mode: "literal" | "mass";
  };
}

export function attentionRef(a: AttentionRefArgs): {
  out: Float32Array;
  probs: Float32Array;
  scores: Float32Array;
  Lmax: number;
} {
  const { q, k, v, cap, T, Hq, Hkv, D } = a;
  const past = typeof a.past === "number" ? new Int32Array(Hkv).fill(a.past) : a.past;
  const Lmax = Math.max(...past) + T;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const group = Hq / Hkv;
  const out = new Float32Array(T * Hq * D);
  const probs = new Float32Array(Hq * T * Lmax);
  const scores = new Float32Array(Hq * Lmax);
  for (let h = 0; h < Hq; h++) {
    const g = Math.floor(h / group);
    for (let t = 0; t < T; t++) {
      const n = past[g] + t + 1;
      const lo = a.window && n > a.window ? n - a.window : 0;
      const logits = new Float64Array(n).fill(-Infinity);
      let m = -Infinity;
      for (let j = lo; j < n; j++) {
        let s = 0;
        for (let d = 0; d < D; d++) s += q[(t * Hq + h) * D + d] * k[(g * cap + j) * D + d];
        logits[j] = s * scale;
        m = Math.max(m, logits[j]);
      }
      let sum = 0;
      for (let j = lo; j < n; j++) {
        logits[j] = Math.exp(logits[j] - m);
        sum += logits[j];
      }
      for (let j = lo; j < n; j++) {
        const p = logits[j] / sum;
        probs[(h * T + t) * Lmax + j] = p;
        if (t >= (a.scoreStart ?? 0)) scores[h * Lmax + j] += p;
        for (let d = 0; d < D; d++) out[(t * Hq + h) * D + d] += p * v[(g * cap + j) * D + d];
      }
      const vo = a.vOnly;
      if (vo) {
        const vmax = Math.max(0, ...vo.counts);
        let mass = 0;
        for (let j = 0; j < vo.counts[g]; j++) mass += vo.weights[(h * T + t) * vmax + j];
        for (let d = 0; d < D; d++) {
          let o = out[(t * Hq + h) * D + d] * (vo.mode === "mass" ? 1 - mass : 1);
          for (let j = 0; j < vo.counts[g]; j++)
            o += vo.weights[(h * T + t) * vmax + j] * vo.v[(g * vo.cap + j) * D + d];
          out[(t * Hq + h) * D + d] = o;
        }
      }
    }
  }
  return { out, probs, scores, Lmax };
}

export function kvWriteRef(
  store: Float32Array,
  cap: number,
  Hkv: number,
  D: number,
  src: Float32Array,
  dst: Int32Array,
): void {
  for (let t = 0; t < dst.length; t++) {
    for (let g = 0; g < Hkv; g++) {
      for (let d = 0; d < D; d++) store[(g * cap + dst[t]) * D + d] = src[(t * Hkv + g) * D + d];
    }
  }
}

export function kvGatherRef(
  src: Float32Array,
  scap: number,
  dst: Float32Array,
  dcap: number,
  Hkv: number,
  D: number,
  idx: Int32Array,
  off: Int32Array,
  dstStart?: Int32Array,
): void {
  for (let g = 0; g < Hkv; g++) {
    let row = dstStart ? dstStart[g] : 0;
    for (let i = off[g]; i < off[g + 1]; i++, row++) {
      for (let d = 0; d < D; d++) dst[(g * dcap + row) * D + d] = src[(g * scap + idx[i]) * D + d];
    }
  }
}

export function topkRef(x: Float32Array, n: number, k: number, rows = 1): Int32Array {
  const out = new Int32Array(rows * k);
  for (let r = 0; r < rows; r++) {
    const ids = Array.from({ length: n }, (_, i) => i);
    ids.sort((a, b) => x[r * n + b] - x[r * n + a] || a - b);
    out.set(ids.slice(0, k), r * k);
  }
  return out;
}

/** topPositions by a full sort: float32 ranking, ties to the lower position, NaN last, ascending output. */
export function topPositionsRef(
  scores: Float32Array | Float64Array,
  n: number,
  k: number,
  exclude?: Uint8Array,
  byScore = false,
): Int32Array {
  const rank = (f: (i: number) => number) => (a: number, b: number) =>
    f(b) > f(a) ? 1 : f(b) < f(a) ? -1 : a - b;
  const nanLast = (v: number) => (Number.isNaN(v) ? Number.NEGATIVE_INFINITY : v);
  const ids = Array.from({ length: n }, (_, i) => i).filter((i) => !exclude?.[i]);
  ids.sort(rank((i) => nanLast(Math.fround(scores[i]))));
  const top = ids.slice(0, k);
  if (byScore) return Int32Array.from(top.sort(rank((i) => nanLast(scores[i]))));
  return Int32Array.from(top).sort();
}

export function sumRef(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s;
}

/** y[m][n] = x[m][k] . w[n][k]^T (+ bias), optionally rounding x's entries first (tensor-core inputs). */
export function gemmRef(
  x: Float32Array,
  w: Float32Array,
  m: number,
  n: number,
  k: number,
  bias?: Float32Array,
  round: (v: number) => number = (v) => v,
): Float32Array {
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += round(x[i * k + q]) * w[j * k + q];
      y[i * n + j] = s + (bias ? bias[j] : 0);
    }
  return y;
}

/** out[n][d] = x * 1/sqrt(mean(x^2) + eps) * w */
export function rmsnormRef(
  x: Float32Array,
  w: Float32Array,
  n: number,
  d: number,
  eps: number,
): Float32Array {
  const out = new Float32Array(n * d);
  for (let r = 0; r < n; r++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[r * d + i] ** 2;
    const inv = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) out[r * d + i] = x[r * d + i] * inv * w[i];
  }
  return out;
}

/** silu(gate) * up, elementwise. */
export function siluGateRef(gate: Float32Array, up: Float32Array): Float32Array {
  return gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
}

/** indexedAttention by copying each list's rows out of the store, then attentionRef over the copies. */
export function indexedAttentionRef(a: {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  cap: number;
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
  lists: number;
  idx: Int32Array;
  off: Int32Array;
  newAt: number;
  scoreStart?: number;
  vOnly?: { idx: Int32Array; off: Int32Array; weights: Float32Array; mode: "literal" | "mass" };
}): ReturnType<typeof attentionRef> {
  const { T, D, lists } = a;
  const count = (off: Int32Array, i: number) => off[i + 1] - off[i];
  const past = Int32Array.from({ length: lists }, (_, i) => count(a.off, i));
  const cap = Math.max(...past) + T;
  const k = new Float32Array(lists * cap * D);
  const v = new Float32Array(lists * cap * D);
  const copy = (dst: Float32Array, dcap: number, i: number, row: number, src: Float32Array, slot: number) => {
    const sh = Math.floor((i * a.Hkv) / lists);
    for (let d = 0; d < D; d++) dst[(i * dcap + row) * D + d] = src[(sh * a.cap + slot) * D + d];
  };
  for (let i = 0; i < lists; i++) {
    const slots = [...a.idx.subarray(a.off[i], a.off[i + 1])];
    for (let t = 0; t < T; t++) slots.push(a.newAt + t);
    slots.forEach((slot, row) => {
      copy(k, cap, i, row, a.k, slot);
      copy(v, cap, i, row, a.v, slot);
    });
  }
  let vOnly: AttentionRefArgs["vOnly"];
  if (a.vOnly) {
    const vo = a.vOnly;
    const counts = Int32Array.from({ length: lists }, (_, i) => count(vo.off, i));
    const vcap = Math.max(1, ...counts);
    const rows = new Float32Array(lists * vcap * D);
    for (let i = 0; i < lists; i++)
      for (let j = 0; j < counts[i]; j++) copy(rows, vcap, i, j, a.v, vo.idx[vo.off[i] + j]);
    vOnly = { v: rows, cap: vcap, counts, weights: vo.weights, mode: vo.mode };
  }
  return attentionRef({
    q: a.q,
    k,
    v,
    cap,
    T,
    past,
    Hq: a.Hq,
    Hkv: lists,
    D,
    scoreStart: a.scoreStart,
    vOnly,
  });
}

/** kvWriteQ8 in plain TypeScript: per row, scale = max|x| / 127 (1 for a zero row), values rounded to nearest (ties to even, like lrintf). */
export function kvWriteQ8Ref(
  store: Int8Array,
  scales: Float32Array,
  cap: number,
  Hkv: number,
  D: number,
  src: Float32Array,
  dst: Int32Array,
): void {
  for (let t = 0; t < dst.length; t++) {
    for (let g = 0; g < Hkv; g++) {
      let amax = 0;
      for (let d = 0; d < D; d++) amax = Math.max(amax, Math.abs(src[(t * Hkv + g) * D + d]));
      const scale = amax > 0 ? Math.fround(amax / 127) : 1;
      const inv = Math.fround(1 / scale);
      for (let d = 0; d < D; d++) {
        const x = Math.min(127, Math.max(-127, Math.fround(src[(t * Hkv + g) * D + d] * inv)));
        // Round half to even, like lrintf in the default rounding mode.
        const r = Math.round(x);
        store[(g * cap + dst[t]) * D + d] = Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
      }
      scales[g * cap + dst[t]] = scale;
    }
  }
}

/** The float rows an int8 store stands for: k/v[Hkv][cap][D]. */
export function dequantizeStore(
  s: { k: Int8Array; v: Int8Array; kScale: Float32Array; vScale: Float32Array },
  Hkv: number,
  cap: number,
  D: number,
): { k: Float32Array; v: Float32Array } {
  const k = new Float32Array(Hkv * cap * D);
  const v = new Float32Array(Hkv * cap * D);
  for (let r = 0; r < Hkv * cap; r++)
    for (let d = 0; d < D; d++) {
      k[r * D + d] = s.k[r * D + d] * s.kScale[r];
      v[r * D + d] = s.v[r * D + d] * s.vScale[r];
    }
  return { k, v };
}

/**
 * rankSplit by plain loops and full sorts: the definition the native kernel is tested
 * against (sums in the same order, so the results agree exactly).
 */
export function rankSplitRef(a: RankSplitArgs): RankSplitResult {
  const { n, lists } = a;
  const lo = Math.max(0, n - a.recent);
  const full: Int32Array[] = [];
  const vOnly: Int32Array[] = [];
  for (let g = 0; g < lists; g++) {
    let s: Float64Array = new Float64Array(n);
    for (let t = 0; t < a.terms.length / 3; t++) {
      if (a.terms[3 * t] !== g) continue;
      const x = a.sources[a.terms[3 * t + 1]];
      const off = a.terms[3 * t + 2];
      for (let p = 0; p < n; p++) s[p] += x[off + p] * a.weights[t];
    }
    const w = a.own?.assistantWeight[g] ?? -1;
    if (a.own && w >= 0) {
      const norm = (x: Float64Array): Float64Array => {
        let sum = 0;
        for (let p = 0; p < n; p++) sum += x[p];
        if (sum > 0) for (let p = 0; p < n; p++) x[p] /= sum;
        return x;
      };
      const sums = a.own.sums[g];
      const counts = a.own.counts[g];
      const own = norm(
        Float64Array.from({ length: n }, (_, p) =>
          p < counts.length && counts[p] > 0 ? sums[p] / counts[p] : 0,
        ),
      );
      s = norm(s);
      for (let p = 0; p < n; p++) s[p] = w * s[p] + (1 - w) * own[p];
    }
    const key = (p: number) => (Number.isNaN(s[p]) ? Number.NEGATIVE_INFINITY : s[p]);
    const ranked = Array.from({ length: lo }, (_, p) => p).filter((p) => !a.exclude?.[g][p]);
    const skip = (p: number) =>
      (a.skipExcludedRecent ?? false) && a.exclude !== undefined && a.exclude[g][p] === 1;
    let freed = 0;
    for (let p = lo; p < n; p++) if (skip(p)) freed++;
    ranked.sort((x, y) => (key(y) > key(x) ? 1 : key(y) < key(x) ? -1 : x - y));
    const r = a.rule;
    let exact = 0;
    let v = 0;
    let order: number[];
    if (r.kind === "fixed") {
      order = ranked.slice(0, r.k[g] + freed);
      exact = Math.min(r.exact[g] + freed, order.length);
      v = order.length - exact;
    } else {
      const units = r.units[g];
      order = ranked.slice(0, 2 * Math.ceil(units) + 1);
      const m = order.length;
      const whole = Math.max(0, Math.floor(units + 1e-9));
      if (!r.vOnly[g]) exact = Math.min(m, whole);
      else {
        let total = 0;
        for (const p of [...order].sort((x, y) => x - y)) total += s[p];
        let held = 0;
        while (exact < m && exact < whole && held < r.exactShare * total) held += s[order[exact++]];
        let left = units - exact;
        while (exact + v < m && left >= 0.5 - 1e-9 && s[order[exact + v]] >= r.negligible) {
          v++;
          left -= 0.5;
        }
        while (v > 0 && left >= 0.5 - 1e-9) {
          exact++;
          v--;
          left -= 0.5;
        }
        while (exact + v < m && left >= 1 - 1e-9 && v === 0) {
          exact++;
          left -= 1;
        }
      }
    }
    const recent = Array.from({ length: n - lo }, (_, i) => lo + i).filter((p) => !skip(p));
    const chosen = order.slice(0, exact + v);
    full.push(Int32Array.from([...order.slice(0, exact).sort((x, y) => x - y), ...recent]));
    vOnly.push(Int32Array.from(order.slice(exact, exact + v).sort((x, y) => x - y)));
    if (a.evict && a.exclude) {
      const kept = new Set(chosen);
      for (let p = 0; p < lo; p++) if (!kept.has(p)) a.exclude[g][p] = 1;
    }
  }
  return { full, vOnly };
}

/** The model's weights as separate parts (what `packDecoderWeights` takes). */
export interface DecoderParts {
  layers: DecoderLayerWeights[];
  norm: Float32Array;
  lmHead: Float32Array;
  embed: Float32Array;
}

/**
 * decoderStep from the other references: embedding, per layer RMSNorm, q/k/v, per-head q/k
 * norms, RoPE, causal attention over the cache, o, MLP (SiLU gate), final norm and LM head.
 * Takes the weights as separate parts, so the packing (`packDecoderWeights`, `decoderLayout`)
 * is checked by comparison rather than shared; writes the cache like the kernel.
 */
export function decoderStepRef(
  a: Omit<DecoderStepArgs, "weights"> & { weights: DecoderParts },
): Float32Array {
  const s = a.shape;
  const { hidden: d, heads: Hq, kvHeads: Hkv, headDim: D, intermediate: I, vocab: V, eps } = s;
  const W = a.weights;
  const T = a.tokens.length;
  const qd = Hq * D;
  const kvd = Hkv * D;
  let x: Float32Array = new Float32Array(T * d);
  for (let t = 0; t < T; t++) x.set(W.embed.subarray(a.tokens[t] * d, (a.tokens[t] + 1) * d), t * d);
  const positions = Int32Array.from({ length: T }, (_, t) => a.past + t);
  const add = (y: Float32Array, z: Float32Array) => y.map((v, i) => v + z[i]);
  for (let l = 0; l < s.layers; l++) {
    const w = W.layers[l];
    const h = rmsnormRef(x, w.inputNorm, T, d, eps);
    let q = gemmRef(h, w.q, T, qd, d, s.qkvBias ? w.qBias : undefined);
    let k = gemmRef(h, w.k, T, kvd, d, s.qkvBias ? w.kBias : undefined);
    const v = gemmRef(h, w.v, T, kvd, d, s.qkvBias ? w.vBias : undefined);
    if (s.qkNorm) {
      q = rmsnormRef(q, w.qNorm!, T * Hq, D, eps);
      k = rmsnormRef(k, w.kNorm!, T * Hkv, D, eps);
    }
    ropeRef(q, positions, Hq, D, a.theta, a.rope);
    ropeRef(k, positions, Hkv, D, a.theta, a.rope);
    const K = a.kv.subarray(l * 2 * Hkv * a.cap * D, (l * 2 + 1) * Hkv * a.cap * D);
    const Vc = a.kv.subarray((l * 2 + 1) * Hkv * a.cap * D, (l * 2 + 2) * Hkv * a.cap * D);
    kvWriteRef(K, a.cap, Hkv, D, k, positions);
    kvWriteRef(Vc, a.cap, Hkv, D, v, positions);
    const att = attentionRef({ q, k: K, v: Vc, cap: a.cap, T, past: a.past, Hq, Hkv, D }).out;
    x = add(x, gemmRef(att, w.o, T, d, qd, s.oBias ? w.oBias : undefined));
    const h2 = rmsnormRef(x, w.postNorm, T, d, eps);
    const gate = gemmRef(h2, w.gate, T, I, d, s.mlpBias ? w.gateBias : undefined);
    const up = gemmRef(h2, w.up, T, I, d, s.mlpBias ? w.upBias : undefined);
    const act = siluGateRef(gate, up);
    x = add(x, gemmRef(act, w.down, T, d, I, s.mlpBias ? w.downBias : undefined));
  }
  const last = rmsnormRef(x.subarray((T - 1) * d), W.norm, 1, d, eps);
  return gemmRef(last, W.lmHead, 1, V, d);
}

/** attentionRowTops by building each row's scores and taking its topkRef. */
export function attentionRowTopsRef(
  probs: Float32Array,
  T: number,
  ratio: number,
  mode: "row" | "old" | "own",
): Int32Array[] {
  const out: Int32Array[] = [new Int32Array(0)];
  const cs = new Float64Array(T);
  for (let u = 1; u < T; u++) {
    const n = mode === "row" ? u + 1 : u;
    const x = new Float32Array(n);
    if (mode === "own") {
      for (let v = 0; v < u; v++) cs[v] += probs[(u - 1) * T + v];
      for (let v = 0; v < u; v++) x[v] = cs[v] / (u - v);
    } else for (let v = 0; v < n; v++) x[v] = probs[u * T + v];
    out.push(topkRef(x, n, Math.max(1, Math.round(ratio * n))));
  }
  return out;
}

/** float16 bits to a number (the block scales of Q8_0/Q4_0). */
function halfRef(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : s * Number.POSITIVE_INFINITY;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Round half to even (the kernel's nearbyint). */
function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * qgemm from first principles: W's rows decoded from their blocks (Q8_0: f16 d, 32 int8; Q4_0:
 * f16 d, 16 bytes, value = nibble − 8, low nibbles first), each activation row rounded to int8
 * per block of 32 (d = amax/127, q = round-half-even(x · 127/amax)), integer block dots scaled
 * by both d's, summed in float64. F32 (type 0): a plain product.
 */
export function qgemmRef(
  type: number,
  src: Uint8Array,
  N: number,
  K: number,
  x: Float32Array,
  M: number,
): Float32Array {
  const y = new Float32Array(M * N);
  if (type === 0) {
    const W = new Float32Array(src.buffer, src.byteOffset, N * K);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += W[n * K + k] * x[m * K + k];
        y[m * N + n] = s;
      }
    return y;
  }
  const nb = K / 32;
  const bytes = type === 8 ? 34 : 18;
  for (let m = 0; m < M; m++) {
    const xq = new Int32Array(K);
    const xd = new Float64Array(nb);
    for (let b = 0; b < nb; b++) {
      let amax = 0;
      for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(x[m * K + 32 * b + i]));
      const id = amax > 0 ? Math.fround(127 / amax) : 0;
      xd[b] = Math.fround(amax / 127);
      for (let i = 0; i < 32; i++) xq[32 * b + i] = roundEven(Math.fround(x[m * K + 32 * b + i] * id));
    }
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let b = 0; b < nb; b++) {
        const o = (n * nb + b) * bytes;
        const d = halfRef(src[o] | (src[o + 1] << 8));
        let dot = 0;
        for (let i = 0; i < 32; i++) {
          const w =
            type === 8
              ? (src[o + 2 + i] << 24) >> 24
              : (i < 16 ? src[o + 2 + i] & 15 : src[o + 2 + i - 16] >> 4) - 8;
          dot += w * xq[32 * b + i];
        }
        s += dot * d * xd[b];
      }
      y[m * N + n] = s;
    }
  }
  return y;
}

/** scatterAdd's plain loop. */
export function scatterAddRef(
  acc: Float64Array,
  pos: Int32Array,
  src: Float32Array,
  offset: number,
  rows: number,
  stride: number,
  weight = 1,
): void {
  for (let h = 0; h < rows; h++)
    for (let j = 0; j < pos.length; j++) acc[pos[j]] += weight * src[offset + h * stride + j];
}
