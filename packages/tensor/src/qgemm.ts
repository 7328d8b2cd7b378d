// Matrices in llama.cpp's blocks, multiplied where they lie: `QMatrix.pack` repacks N rows of a
// GGUF tensor (Q8_0, Q4_0 or F32) once; `qgemm` computes y[M][N] = x[M][K] · Wᵀ, rounding each
// activation row to int8 per block of 32 (as ggml's Q8_0 activations), the dot products in
// integers. Reference: `qgemmRef` in reference.ts.
import { TensorShapeError } from "./errors.js";
import { native } from "./native.js";

/** ggml type ids the kernel reads. */
export const QGEMM_TYPES = { F32: 0, Q4_0: 2, Q8_0: 8 } as const;
export type QgemmType = (typeof QGEMM_TYPES)[keyof typeof QGEMM_TYPES];

/** Bytes of one row of K values of a type, as a GGUF file stores it. */
export function qgemmRowBytes(type: QgemmType, K: number): number {
  return type === 0 ? 4 * K : (K / 32) * (type === 8 ? 34 : 18);
}

export class QMatrix {
  private constructor(
    readonly type: QgemmType,
    readonly N: number,
    readonly K: number,
    readonly packed: Uint8Array,
  ) {}

  /** Repack N rows of `src` (the tensor's bytes, rows as the file has them). */
  static pack(type: QgemmType, src: Uint8Array, N: number, K: number): QMatrix {
    const op = "QMatrix.pack";
    if (type !== 0 && type !== 2 && type !== 8)
      throw new TensorShapeError(op, `type ${type} is not F32, Q4_0 or Q8_0`);
    if (!(Number.isInteger(N) && N >= 1 && Number.isInteger(K) && K >= 1))
      throw new TensorShapeError(op, `N and K must be positive integers, got ${N}, ${K}`);
    if (type !== 0 && K % 32 !== 0) throw new TensorShapeError(op, `K (${K}) is not a multiple of 32`);
    if (src.length < N * qgemmRowBytes(type, K))
      throw new TensorShapeError(op, `src holds ${src.length} bytes, ${N * qgemmRowBytes(type, K)} needed`);
    const packed = new Uint8Array(native.qgemmPackedBytes(type, N, K));
    native.qgemmPack(type, src, N, K, packed);
    return new QMatrix(type, N, K, packed);
  }

  /** y[M][N] = x[M][K] · Wᵀ on `threads` threads (`add`: y += x · Wᵀ, a residual stream). */
  apply(
    x: Float32Array,
    M: number,
    y: Float32Array = new Float32Array(M * this.N),
    threads = 1,
    add = false,
  ): Float32Array {
    const op = "qgemm";
    if (!(Number.isInteger(M) && M >= 1)) throw new TensorShapeError(op, `M must be >= 1, got ${M}`);
    if (!(x instanceof Float32Array) || x.length < M * this.K)
      throw new TensorShapeError(op, `x must be a Float32Array of ${M * this.K} values`);
    if (!(y instanceof Float32Array) || y.length < M * this.N)
      throw new TensorShapeError(op, `y must be a Float32Array of ${M * this.N} values`);
    native.qgemm(this.type, this.packed, this.N, this.K, x, M, y, Math.max(1, threads | 0), add);
    return y;
  }
}

/** SwiGLU of stacked gate/up rows gu [M][2I]: out[m][i] = silu(gate) · up. Reference: siluGateRef. */
export function swiglu(
  gu: Float32Array,
  M: number,
  I: number,
  out: Float32Array = new Float32Array(M * I),
): Float32Array {
  const op = "swiglu";
  if (!(Number.isInteger(M) && M >= 1 && Number.isInteger(I) && I >= 1))
    throw new TensorShapeError(op, `M and I must be positive integers, got ${M}, ${I}`);
  if (!(gu instanceof Float32Array) || gu.length < 2 * M * I)
    throw new TensorShapeError(op, `gu must be a Float32Array of ${2 * M * I} values`);
  if (!(out instanceof Float32Array) || out.length < M * I)
    throw new TensorShapeError(op, `out must be a Float32Array of ${M * I} values`);
  native.swiglu(gu, M, I, out);
  return out;
}
