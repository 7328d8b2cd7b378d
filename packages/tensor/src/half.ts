// float32 <-> float16 / bfloat16 bit conversions (round to nearest even), for uploading
// 16-bit weights and for references that model the tensor-core input rounding.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00;
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) {
    f32[0] = Math.abs(x) * 16777216;
    const r = f32[0];
    const fl = Math.floor(r);
    const diff = r - fl;
    const n = diff > 0.5 || (diff === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
    return sign | n;
  }
  let h = ((((a >>> 23) - 127 + 15) << 10) | ((a >>> 13) & 0x3ff)) >>> 0;
  const rest = a & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : s * Number.POSITIVE_INFINITY;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** A Float32Array as 16-bit words of the given type. */
export function toHalfBits(x: Float32Array, dtype: "f16" | "bf16"): Uint16Array {
  const out = new Uint16Array(x.length);
  const f = dtype === "f16" ? f32ToF16Bits : f32ToBf16Bits;
  for (let i = 0; i < x.length; i++) out[i] = f(x[i]);
  return out;
}

/** 16-bit words back to float32. */
export function fromHalfBits(x: Uint16Array, dtype: "f16" | "bf16"): Float32Array {
  const out = new Float32Array(x.length);
  const f = dtype === "f16" ? f16BitsToF32 : bf16BitsToF32;
  for (let i = 0; i < x.length; i++) out[i] = f(x[i]);
  return out;
}
