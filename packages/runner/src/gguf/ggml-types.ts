// The ggml tensor types a GGUF file may hold that this runner reads, with their block layouts
// (ggml-common.h): how many values a block holds and how many bytes it takes. Each type turns
// into float32 (`dequantizeRows`), and the ones whose blocks are a MatMulNBits group as they
// stand turn into one without re-quantization (`toMatMulNBits`).
import { bf16ToF32, f16ToF32 } from "../dtype.js";
import type { QuantizedMatrix } from "../quant.js";

export const GGML = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 8,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  BF16: 30,
} as const;
export type GgmlType = (typeof GGML)[keyof typeof GGML];

export interface GgmlTypeInfo {
  name: keyof typeof GGML;
  /** Values per block. */
  block: number;
  /** Bytes per block. */
  bytes: number;
}

export const GGML_TYPES = new Map<number, GgmlTypeInfo>([
  [GGML.F32, { name: "F32", block: 1, bytes: 4 }],
  [GGML.F16, { name: "F16", block: 1, bytes: 2 }],
  [GGML.BF16, { name: "BF16", block: 1, bytes: 2 }],
  [GGML.Q8_0, { name: "Q8_0", block: 32, bytes: 34 }],
  [GGML.Q4_0, { name: "Q4_0", block: 32, bytes: 18 }],
  [GGML.Q4_K, { name: "Q4_K", block: 256, bytes: 144 }],
  [GGML.Q5_K, { name: "Q5_K", block: 256, bytes: 176 }],
  [GGML.Q6_K, { name: "Q6_K", block: 256, bytes: 210 }],
]);

/** Bytes of a row of K values of this type (K a multiple of its block). */
export function rowBytes(type: GgmlTypeInfo, K: number): number {
  return (K / type.block) * type.bytes;
}

const f16 = new Uint16Array(1);
const f16out = new Float32Array(1);
function half(b: Uint8Array, o: number): number {
  f16[0] = b[o] | (b[o + 1] << 8);
  return f16ToF32(f16, f16out)[0];
}

/** The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (ggml's get_scale_min_k4). */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j] & 63, q[o + j + 4] & 63];
  return [(q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4), (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4)];
}

/**
 * Visit every group of a row as ggml defines it: `emit(k0, n, scale, zp, min, q)` with q small
 * non-negative integers and the values x[k0 + i] = scale · (q[i] − zp) for the symmetric types
 * (Q8_0's int8 + 128, Q4_0's zero point 8, Q6_K's 32), or scale · q[i] − min for the K-quants
 * with a float min (zp −1 then).
 */
function forEachGroup(
  type: number,
  b: Uint8Array,
  K: number,
  emit: (k0: number, n: number, scale: number, zp: number, min: number, q: Uint8Array) => void,
): void {
  const q = new Uint8Array(32);
  switch (type) {
    case GGML.Q8_0:
      for (let k0 = 0, o = 0; k0 < K; k0 += 32, o += 34) {
        const d = half(b, o);
        for (let i = 0; i < 32; i++) q[i] = (b[o + 2 + i] ^ 0x80) & 0xff; // int8 + 128
        emit(k0, 32, d, 128, 0, q);
      }
      return;
    case GGML.Q4_0:
      for (let k0 = 0, o = 0; k0 < K; k0 += 32, o += 18) {
        const d = half(b, o);
        for (let i = 0; i < 16; i++) {
          q[i] = b[o + 2 + i] & 0xf;
          q[i + 16] = b[o + 2 + i] >> 4;
        }
        emit(k0, 32, d, 8, 0, q);
      }
      return;
    case GGML.Q4_K:
    case GGML.Q5_K: {
      const k5 = type === GGML.Q5_K;
      const size = k5 ? 176 : 144;
      for (let k0 = 0, o = 0; k0 < K; k0 += 256, o += size) {
        const d = half(b, o);
        const dmin = half(b, o + 2);
        const qh = o + 16;
        const qs = o + (k5 ? 48 : 16);
        for (let j = 0; j < 4; j++) {
          for (let h = 0; h < 2; h++) {
            const [sc, m] = scaleMinK4(2 * j + h, b, o + 4);
            for (let l = 0; l < 32; l++) {
              const byte = b[qs + 32 * j + l];
              let v = h ? byte >> 4 : byte & 0xf;
              if (k5 && b[qh + l] & (1 << (2 * j + h))) v += 16;
              q[l] = v;
            }
            emit(k0 + 64 * j + 32 * h, 32, Math.fround(d * sc), -1, Math.fround(dmin * m), q);
          }
        }
      }
      return;
    }
    case GGML.Q6_K: {
      const q16 = new Uint8Array(16);
      for (let k0 = 0, o = 0; k0 < K; k0 += 256, o += 210) {
        const d = half(b, o + 208);
        for (let half128 = 0; half128 < 2; half128++) {
          const ql = o + 64 * half128;
          const qh = o + 128 + 32 * half128;
          const sc = o + 192 + 8 * half128;
          // Four runs of 32 values (y[l], y[l+32], y[l+64], y[l+96]), each two groups of 16.
          for (let part = 0; part < 4; part++) {
            for (let g = 0; g < 2; g++) {
              for (let i = 0; i < 16; i++) {
                const l = 16 * g + i;
                const low = part & 1 ? b[ql + l + 32] : b[ql + l];
                const lo4 = part < 2 ? low & 0xf : low >> 4;
                q16[i] = lo4 | (((b[qh + l] >> (2 * part)) & 3) << 4);
              }
              const s = (b[sc + 2 * part + g] << 24) >> 24; // int8
              const scale = Math.fround(d * s);
              emit(k0 + 128 * half128 + 32 * part + 16 * g, 16, scale, 32, 0, q16);
            }
          }
        }
      }
      return;
    }
  }
  throw new RangeError(`ggml type ${type} has no block decoder`);
}

/** Rows × K values of `type` stored in `b`, as float32 (what ggml's dequantize_row gives). */
export function dequantizeRows(type: number, b: Uint8Array, rows: number, K: number): Float32Array {
  const out = new Float32Array(rows * K);
  if (type === GGML.F32) {
    out.set(new Float32Array(b.buffer, b.byteOffset, rows * K));
    return out;
  }
  if (type === GGML.F16 || type === GGML.BF16) {
    const u16 = new Uint16Array(b.buffer, b.byteOffset, rows * K);
    return type === GGML.F16 ? f16ToF32(u16, out) : bf16ToF32(u16, out);
  }
  const info = GGML_TYPES.get(type) as GgmlTypeInfo;
  const rb = rowBytes(info, K);
  for (let r = 0; r < rows; r++) {
    const row = b.subarray(r * rb, (r + 1) * rb);
    const base = r * K;
    forEachGroup(type, row, K, (k0, n, scale, zp, min, q) => {
      // As ggml rounds: d·(q − zp), or d·sc·q − dmin·m, in float32.
      if (zp >= 0) for (let i = 0; i < n; i++) out[base + k0 + i] = scale * (q[i] - zp);
      else for (let i = 0; i < n; i++) out[base + k0 + i] = Math.fround(scale * q[i]) - min;
    });
  }
  return out;
}

/** How a type maps onto MatMulNBits: bits, group size, and whether its groups carry a float min. */
export function nbitsLayout(type: number): { bits: 4 | 8; groupSize: number; mins: boolean } | null {
  switch (type) {
    case GGML.Q8_0:
      return { bits: 8, groupSize: 32, mins: false };
    case GGML.Q4_0:
      return { bits: 4, groupSize: 32, mins: false };
    case GGML.Q6_K:
      return { bits: 8, groupSize: 16, mins: false };
    case GGML.Q4_K:
      return { bits: 4, groupSize: 32, mins: true };
    // Q5_K's 5-bit values as bytes (0..31): exact, 1.25 bytes a weight against its 0.69.
    case GGML.Q5_K:
      return { bits: 8, groupSize: 32, mins: true };
    default:
      return null;
  }
}

/**
 * The same values as a MatMulNBits matrix, x = (q − zp) · scale (− min), with no
 * re-quantization: Q8_0 → 8 bits, group 32, zero point 128; Q4_0 → 4 bits, group 32, zero
 * point 8; Q6_K → 8 bits, group 16, zero point 32; Q4_K (4 bits, zero point 8) and Q5_K (8
 * bits, zero point 16), group 32, with their float mins (less zp · scale) kept beside
 * (`groupMins`). Other types: null.
 */
export function toMatMulNBits(type: number, b: Uint8Array, N: number, K: number): QuantizedMatrix | null {
  const layout = nbitsLayout(type);
  if (!layout) return null;
  const { bits, groupSize, mins } = layout;
  const G = K / groupSize;
  const blob = (groupSize * bits) / 8;
  const packed = new Uint8Array(N * G * blob);
  const scales = new Float32Array(N * G);
  const zpRow = Math.ceil((G * bits) / 8);
  const zeroPoints = new Uint8Array(N * zpRow);
  const groupMins = mins ? new Float32Array(N * G) : undefined;
  const info = GGML_TYPES.get(type) as GgmlTypeInfo;
  const rb = rowBytes(info, K);
  for (let n = 0; n < N; n++) {
    forEachGroup(type, b.subarray(n * rb, (n + 1) * rb), K, (k0, len, scale, zp, min, q) => {
      const gi = k0 / groupSize;
      const g = n * G + gi;
      const base = g * blob;
      if (bits === 8) packed.set(q.subarray(0, len), base);
      else for (let i = 0; i < len; i += 2) packed[base + (i >> 1)] = q[i] | (q[i + 1] << 4);
      scales[g] = scale;
      // K-quants: q − c with c the middle of q's range (8 for Q4_K, 16 for Q5_K), and the min
      // less c · scale: the integer product then sees centred values, as Q4_0's does, so the
      // activations' int8 rounding error does not ride on q's mean.
      let z = zp;
      if (groupMins) {
        z = type === GGML.Q5_K ? 16 : 8;
        groupMins[g] = min - z * scale;
      }
      if (bits === 8) zeroPoints[n * zpRow + gi] = z;
      else zeroPoints[n * zpRow + (gi >> 1)] |= gi & 1 ? z << 4 : z;
    });
  }
  return { bits, N, K, groupSize, packed, scales, zeroPoints, groupMins };
}
