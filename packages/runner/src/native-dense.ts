// The dense part of a GGUF model on the native block kernels (@smallkv/tensor's qgemm): the
// file's Q8_0 / Q4_0 blocks (and float rows) multiplied where they lie, norms and SwiGLU here.
// No onnxruntime session and no second, packed copy of the weights.
import { type QgemmType, QMatrix, swiglu } from "@smallkv/tensor";
import type { ModelConfig } from "./config.js";
import type { DenseStack, QKV } from "./dense.js";
import { quantizeRows } from "./gguf/write.js";
import type { LayeredWeights, LayerWeights, StoredRows } from "./weights.js";

interface NativeLayer {
  w: LayerWeights;
  /** q, k and v stacked (one call, one rounding of the activations) when they share a type. */
  qkv: QMatrix[];
  o: QMatrix;
  /** gate and up stacked when they share a type. */
  gu: QMatrix[];
  down: QMatrix;
}

/** Row blocks of one type packed as one matrix; else each on its own. */
function stack(parts: StoredRows[]): QMatrix[] {
  if (parts.every((p) => p.type === parts[0].type)) {
    const bytes = new Uint8Array(parts.reduce((a, p) => a + p.bytes.length, 0));
    let o = 0;
    for (const p of parts) {
      bytes.set(p.bytes, o);
      o += p.bytes.length;
    }
    const N = parts.reduce((a, p) => a + p.N, 0);
    return [QMatrix.pack(parts[0].type as QgemmType, bytes, N, parts[0].K)];
  }
  return parts.map((p) => QMatrix.pack(p.type as QgemmType, p.bytes, p.N, p.K));
}

/** y = x · [W₀; W₁; …]ᵀ split back into one array per part ([M][N_i] each). */
function applyStack(
  ms: QMatrix[],
  sizes: number[],
  x: Float32Array,
  M: number,
  threads: number,
): Float32Array[] {
  if (ms.length > 1) return ms.map((m) => m.apply(x, M, undefined, threads));
  const y = ms[0].apply(x, M, undefined, threads);
  const N = ms[0].N;
  let at = 0;
  return sizes.map((n) => {
    const from = at;
    at += n;
    if (M === 1) return y.subarray(from, from + n);
    const out = new Float32Array(M * n);
    for (let m = 0; m < M; m++) out.set(y.subarray(m * N + from, m * N + from + n), m * n);
    return out;
  });
}

const QGEMM: ReadonlySet<number> = new Set([0, 2, 8]);

/** Whether every matrix of these rows is one the kernels read (F32, Q4_0, Q8_0; blocks whole). */
export function nativeReads(rows: { type: number }, K: number): boolean {
  return QGEMM.has(rows.type) && (rows.type === 0 || K % 32 === 0);
}

/** y[m][i] += b[i] for every row. */
function addRows(y: Float32Array, b: Float32Array): void {
  for (let o = 0; o < y.length; o += b.length) for (let i = 0; i < b.length; i++) y[o + i] += b[i];
}

function rmsNorm(
  x: Float32Array,
  M: number,
  n: number,
  w: Float32Array,
  eps: number,
  out: Float32Array,
): void {
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[m * n + i] * x[m * n + i];
    const r = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) out[m * n + i] = x[m * n + i] * r * w[i];
  }
}

export class NativeDense implements DenseStack {
  /** Bytes of the packed matrices. */
  readonly bytes: number;

  private constructor(
    private readonly c: ModelConfig,
    private readonly layers: NativeLayer[],
    private readonly norm: Float32Array,
    private readonly lmHead: QMatrix,
    private readonly threads: number,
  ) {
    let b = lmHead.packed.byteLength;
    for (const l of layers) for (const m of [...l.qkv, l.o, ...l.gu, l.down]) b += m.packed.byteLength;
    this.bytes = b;
  }

  /**
   * The model on the native kernels, or null when a matrix is of a type they do not read, or
   * (unless `force`) when most of the layers' weights are float: the float kernel is a plain
   * dot product, and onnxruntime's GEMM prefills a float model 5x faster (measured 109 against
   * 530 tok/s on the ~100M F32 file).
   */
  static create(c: ModelConfig, w: LayeredWeights, threads: number, force = false): NativeDense | null {
    if (!w.storedRows || !w.storedHeadRows || !w.storedTypes) return null;
    // Decided from the header (types and shapes) before any matrix is read.
    let floatParams = 0;
    let allParams = 0;
    for (let l = 0; l < c.numLayers; l++)
      for (const x of Object.values(w.storedTypes(l))) {
        if (!nativeReads(x, x.K)) return null;
        allParams += x.N * x.K;
        if (x.type === 0) floatParams += x.N * x.K;
      }
    if (!force && floatParams * 2 > allParams) return null;
    const head = w.storedHeadRows();
    if (!nativeReads(head, c.hiddenSize)) return null;
    const layers: NativeLayer[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const r = w.storedRows(l);
      const one = (x: StoredRows) => QMatrix.pack(x.type as QgemmType, x.bytes, x.N, x.K);
      layers.push({
        w: w.layerVectors ? w.layerVectors(l) : w.layer(l),
        qkv: stack([r.q, r.k, r.v]),
        o: one(r.o),
        gu: stack([r.gate, r.up]),
        down: one(r.down),
      });
    }
    const lmHead = QMatrix.pack(head.type as QgemmType, head.bytes, head.N, head.K);
    return new NativeDense(c, layers, w.norm, lmHead, threads);
  }

  /**
   * A checkpoint folder's float weights on the native kernels: each matrix quantized at load
   * to GGUF blocks (int8 → Q8_0, int4 → Q4_0; the classifier Q8_0 for both) or kept float.
   * No onnxruntime session: what a small model needs, whose steps are mostly session overhead.
   */
  static quantized(
    c: ModelConfig,
    w: LayeredWeights,
    weights: "f32" | "int8" | "int4",
    threads: number,
  ): NativeDense {
    const type = weights === "int8" ? "Q8_0" : weights === "int4" ? "Q4_0" : "F32";
    const rows = (x: Float32Array, K: number, t: "Q8_0" | "Q4_0" | "F32" = type): StoredRows => {
      const r = quantizeRows(x, K, t);
      return { type: r.type, bytes: r.bytes, N: x.length / K, K };
    };
    const d = c.hiddenSize;
    const layers: NativeLayer[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const L = w.layer(l);
      const one = (x: StoredRows) => QMatrix.pack(x.type as QgemmType, x.bytes, x.N, x.K);
      const none = new Float32Array(0);
      layers.push({
        // Norms and biases only: the float matrices are not kept beside their packed copies.
        w: { ...L, q: none, k: none, v: none, o: none, gate: none, up: none, down: none },
        qkv: stack([rows(L.q, d), rows(L.k, d), rows(L.v, d)]),
        o: one(rows(L.o, c.numHeads * c.headDim)),
        gu: stack([rows(L.gate, d), rows(L.up, d)]),
        down: one(rows(L.down, c.intermediateSize)),
      });
    }
    const head = rows(w.lmHead, d, type === "F32" ? "F32" : "Q8_0");
    return new NativeDense(
      c,
      layers,
      w.norm,
      QMatrix.pack(head.type as QgemmType, head.bytes, head.N, head.K),
      threads,
    );
  }

  private pre(l: number, resid: Float32Array, M: number): QKV {
    const { c } = this;
    const L = this.layers[l];
    const d = c.hiddenSize;
    const h = new Float32Array(M * d);
    rmsNorm(resid, M, d, L.w.inputNorm, c.rmsNormEps, h);
    const qd = c.numHeads * c.headDim;
    const kvd = c.numKvHeads * c.headDim;
    const [q, k, v] = applyStack(L.qkv, [qd, kvd, kvd], h, M, this.threads);
    if (L.w.qBias) addRows(q, L.w.qBias);
    if (L.w.kBias) addRows(k, L.w.kBias);
    if (L.w.vBias) addRows(v, L.w.vBias);
    if (L.w.qNorm && L.w.kNorm) {
      rmsNorm(q, (M * c.numHeads) as number, c.headDim, L.w.qNorm, c.rmsNormEps, q);
      rmsNorm(k, M * c.numKvHeads, c.headDim, L.w.kNorm, c.rmsNormEps, k);
    }
    return { q, k, v };
  }

  private post(l: number, resid: Float32Array, attn: Float32Array, M: number): Float32Array {
    const { c } = this;
    const L = this.layers[l];
    const d = c.hiddenSize;
    const I = c.intermediateSize;
    // The residual stream takes each product in place (qgemm's add).
    const r2 = L.o.apply(attn, M, resid.slice(0, M * d), this.threads, true);
    if (L.w.oBias) addRows(r2, L.w.oBias);
    const h = new Float32Array(M * d);
    rmsNorm(r2, M, d, L.w.postNorm, c.rmsNormEps, h);
    let act: Float32Array;
    if (L.gu.length === 1 && !L.w.gateBias && !L.w.upBias) {
      // gate and up stacked: SwiGLU straight from the [M][2I] product.
      act = swiglu(L.gu[0].apply(h, M, undefined, this.threads), M, I);
    } else {
      const [g, u] = applyStack(L.gu, [I, I], h, M, this.threads);
      if (L.w.gateBias) addRows(g, L.w.gateBias);
      if (L.w.upBias) addRows(u, L.w.upBias);
      const gu = new Float32Array(2 * M * I);
      for (let m = 0; m < M; m++) {
        gu.set(g.subarray(m * I, (m + 1) * I), 2 * m * I);
        gu.set(u.subarray(m * I, (m + 1) * I), (2 * m + 1) * I);
      }
      act = swiglu(gu, M, I);
    }
    L.down.apply(act, M, r2, this.threads, true);
    if (L.w.downBias) addRows(r2, L.w.downBias);
    return r2;
  }

  async first(x: Float32Array, M: number): Promise<QKV> {
    return this.pre(0, x, M);
  }

  async next(l: number, resid: Float32Array, attn: Float32Array, M: number) {
    const out = this.post(l, resid, attn, M);
    return l + 1 < this.c.numLayers ? { resid: out, ...this.pre(l + 1, out, M) } : { resid: out };
  }

  async head(h: Float32Array, rows: number): Promise<Float32Array> {
    const d = this.c.hiddenSize;
    const n = new Float32Array(rows * d);
    rmsNorm(h, rows, d, this.norm, this.c.rmsNormEps, n);
    return this.lmHead.apply(n, rows, undefined, this.threads);
  }
}
