/**
 * Group-wise weight quantization in the layout of onnxruntime's `MatMulNBits` (com.microsoft):
 * a matrix W [N][K] (PyTorch Linear layout) is cut, row by row, into groups of `groupSize`
 * consecutive inputs; each group has a float scale and an unsigned zero point, and each weight
 * is stored as q = clamp(round(w / scale) + zp, 0, 2^bits − 1), so w ≈ (q − zp) · scale.
 * Asymmetric (min/max) groups: the zero point follows each group's range.
 */
export type WeightType = "f32" | "int8" | "int4" | "stored";
/** "stored": a GGUF file's own types, as its blocks are (the default for a GGUF file). */
export const WEIGHT_TYPES: readonly WeightType[] = ["f32", "int8", "int4", "stored"];

export interface QuantizedMatrix {
  bits: 4 | 8;
  N: number;
  K: number;
  groupSize: number;
  /** [N][groups][groupSize · bits / 8] bytes; 4-bit values two per byte, the low nibble first. */
  packed: Uint8Array;
  /** [N · groups] */
  scales: Float32Array;
  /** [N][ceil(groups · bits / 8)] bytes, 4-bit zero points two per byte, low nibble first. */
  zeroPoints: Uint8Array;
  /**
   * [N · groups] float mins subtracted after the scaling, x = (q − zp) · scale − min: GGUF's
   * K-quants, whose groups carry a float min (their zero points are 0). The graph subtracts
   * min · (the group's sum of activations) beside the MatMulNBits node.
   */
  groupMins?: Float32Array;
}

/** The 4-bit clipping search: ranges shrunk by up to CLIP_RANGE in CLIP_STEPS steps. */
const CLIP_STEPS = 8;
const CLIP_RANGE = 0.32;

/** A group size MatMulNBits takes: a power of two, at least 16. */
export function isGroupSize(n: number): boolean {
  return Number.isInteger(n) && n >= 16 && (n & (n - 1)) === 0;
}

export function groupsOf(K: number, groupSize: number): number {
  return Math.ceil(K / groupSize);
}

/** Quantize W [N][K]; deterministic (round half away from zero). */
export function quantize(
  w: Float32Array,
  N: number,
  K: number,
  bits: 4 | 8,
  groupSize: number,
): QuantizedMatrix {
  if (!isGroupSize(groupSize))
    throw new RangeError(`group size must be a power of two >= 16, got ${groupSize}`);
  if (w.length !== N * K) throw new RangeError(`matrix has ${w.length} values, expected ${N}x${K}`);
  const G = groupsOf(K, groupSize);
  const blob = (groupSize * bits) / 8;
  const qmax = (1 << bits) - 1;
  const zpRow = Math.ceil((G * bits) / 8);
  const packed = new Uint8Array(N * G * blob);
  const scales = new Float32Array(N * G);
  const zeroPoints = new Uint8Array(N * zpRow);
  const round = (x: number) => Math.sign(x) * Math.floor(Math.abs(x) + 0.5);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < G; g++) {
      const k0 = g * groupSize;
      const k1 = Math.min(K, k0 + groupSize);
      // The range always includes 0, so that zero weights (and the padding) stay exact.
      let lo = 0;
      let hi = 0;
      for (let k = k0; k < k1; k++) {
        const v = w[n * K + k];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      // 4 bits: the range is also shrunk where that lowers the group's squared error (a
      // clipping search, as llama.cpp's and AWQ's quantizers do); 8 bits keep min/max.
      let scale = hi > lo ? (hi - lo) / qmax : 1;
      let zp = Math.min(qmax, Math.max(0, round(-lo / scale)));
      if (bits === 4 && hi > lo) {
        let best = Number.POSITIVE_INFINITY;
        for (let step = 0; step <= CLIP_STEPS; step++) {
          const a = 1 - (step * CLIP_RANGE) / CLIP_STEPS;
          const s = ((hi - lo) * a) / qmax;
          const z = Math.min(qmax, Math.max(0, round((-lo * a) / s)));
          let err = 0;
          for (let k = k0; k < k1; k++) {
            const v = w[n * K + k];
            const q = Math.min(qmax, Math.max(0, round(v / s) + z));
            err += ((q - z) * s - v) ** 2;
          }
          if (err < best) {
            best = err;
            scale = s;
            zp = z;
          }
        }
      }
      scales[n * G + g] = scale;
      if (bits === 8) zeroPoints[n * zpRow + g] = zp;
      else zeroPoints[n * zpRow + (g >> 1)] |= g & 1 ? zp << 4 : zp;
      const base = (n * G + g) * blob;
      for (let i = 0; i < groupSize; i++) {
        const k = k0 + i;
        const q = k < K ? Math.min(qmax, Math.max(0, round(w[n * K + k] / scale) + zp)) : zp;
        if (bits === 8) packed[base + i] = q;
        else packed[base + (i >> 1)] |= i & 1 ? q << 4 : q;
      }
    }
  }
  return { bits, N, K, groupSize, packed, scales, zeroPoints };
}

/** The float matrix a quantized one stands for (the reference of the round trip). */
export function dequantize(m: QuantizedMatrix): Float32Array {
  const { bits, N, K, groupSize } = m;
  const G = groupsOf(K, groupSize);
  const blob = (groupSize * bits) / 8;
  const zpRow = Math.ceil((G * bits) / 8);
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < G; g++) {
      const zpByte = m.zeroPoints[n * zpRow + (bits === 8 ? g : g >> 1)];
      const zp = bits === 8 ? zpByte : g & 1 ? zpByte >> 4 : zpByte & 15;
      const min = m.groupMins?.[n * G + g] ?? 0;
      const scale = m.scales[n * G + g];
      for (let i = 0; i < groupSize; i++) {
        const k = g * groupSize + i;
        if (k >= K) break;
        const byte = m.packed[(n * G + g) * blob + (bits === 8 ? i : i >> 1)];
        const q = bits === 8 ? byte : i & 1 ? byte >> 4 : byte & 15;
        out[n * K + k] = (q - zp) * scale - min;
      }
    }
  }
  return out;
}

/** Bytes a quantized matrix occupies (packed values, scales, zero points). */
export function quantizedBytes(m: QuantizedMatrix): number {
  return m.packed.byteLength + m.scales.byteLength + m.zeroPoints.byteLength + (m.groupMins?.byteLength ?? 0);
}
