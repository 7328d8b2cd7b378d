// A checkpoint written as a GGUF v3 file that llama.cpp loads: llama metadata, the tokenizer
// metadata of another GGUF file (padded with unused tokens to the vocabulary), q/k rows in
// llama.cpp's RoPE order, and the matrices quantized to one ggml type (round-to-nearest block
// quantizers in ggml's layouts; llama.cpp's own quantizer searches scales harder). Tests and
// benchmarks use it to make fixtures; rows too short for the type's blocks stay F32, as
// llama.cpp's quantizer falls back.
import { closeSync, openSync, writeSync } from "node:fs";
import type { ModelConfig } from "../config.js";
import { f16ToF32, f32ToF16 } from "../dtype.js";
import type { LayeredWeights, LayerWeights, MatrixName } from "../weights.js";
import type { GgufFile, GgufValue } from "./file.js";
import { GGML, GGML_TYPES } from "./ggml-types.js";
import { TOKEN_TYPE } from "./tokenizer.js";

export type GgufWriteType = "F32" | "Q8_0" | "Q4_0" | "Q4_K" | "Q5_K" | "Q6_K";

const half = (x: number) => f32ToF16(Float32Array.of(x))[0];
const h16 = (x: number) => {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, half(x), true);
  return b;
};
/** x rounded through float16 (the scale a block will hold). */
const f16back = (x: number) => f16ToF32(Uint16Array.of(half(x)))[0];
const nearest = (x: number) => Math.round(x);

function q8_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 32) * 34);
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(x[b * 32 + i]));
    const d = amax / 127;
    const id = d ? 1 / d : 0;
    out.set(h16(d), b * 34);
    for (let i = 0; i < 32; i++) out[b * 34 + 2 + i] = nearest(x[b * 32 + i] * id) & 0xff;
  }
  return out;
}

function q4_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 32) * 18);
  for (let b = 0; b < x.length / 32; b++) {
    let max = 0;
    for (let i = 0; i < 32; i++) if (Math.abs(x[b * 32 + i]) > Math.abs(max)) max = x[b * 32 + i];
    const d = max / -8;
    const id = d ? 1 / d : 0;
    out.set(h16(d), b * 18);
    const q = (i: number) => Math.min(15, Math.trunc(x[b * 32 + i] * id + 8.5));
    for (let i = 0; i < 16; i++) out[b * 18 + 2 + i] = q(i) | (q(i + 16) << 4);
  }
  return out;
}

/** Q4_K (bits 4) or Q5_K (bits 5): 8 groups of 32 per 256, a 6-bit scale and min each. */
function qk(x: Float32Array, bits: 4 | 5): Uint8Array {
  const size = bits === 4 ? 144 : 176;
  const qmax = (1 << bits) - 1;
  const out = new Uint8Array((x.length / 256) * size);
  for (let b = 0; b < x.length / 256; b++) {
    const o = b * size;
    const scales: number[] = [];
    const mins: number[] = [];
    for (let j = 0; j < 8; j++) {
      let lo = 0;
      let hi = 0;
      for (let i = 0; i < 32; i++) {
        const v = x[b * 256 + 32 * j + i];
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      scales.push((hi - lo) / qmax);
      mins.push(-lo);
    }
    const d = f16back(Math.max(...scales) / 63);
    const dmin = f16back(Math.max(...mins) / 63);
    const sc = scales.map((s) => (d ? Math.min(63, nearest(s / d)) : 0));
    const mq = mins.map((m) => (dmin ? Math.min(63, nearest(m / dmin)) : 0));
    out.set(h16(d), o);
    out.set(h16(dmin), o + 2);
    for (let j = 0; j < 4; j++) {
      out[o + 4 + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
      out[o + 8 + j] = (mq[j] & 63) | ((mq[j + 4] >> 4) << 6);
      out[o + 12 + j] = (sc[j + 4] & 15) | ((mq[j + 4] & 15) << 4);
    }
    const q = new Uint8Array(256);
    for (let j = 0; j < 8; j++) {
      const s = d * sc[j];
      const m = dmin * mq[j];
      for (let i = 0; i < 32; i++) {
        const v = x[b * 256 + 32 * j + i];
        q[32 * j + i] = s ? Math.max(0, Math.min(qmax, nearest((v + m) / s))) : 0;
      }
    }
    const qs = o + (bits === 4 ? 16 : 48);
    for (let j = 0; j < 4; j++)
      for (let l = 0; l < 32; l++) {
        const a = q[64 * j + l];
        const c = q[64 * j + 32 + l];
        out[qs + 32 * j + l] = (a & 15) | ((c & 15) << 4);
        if (bits === 5) out[o + 16 + l] |= ((a >> 4) << (2 * j)) | ((c >> 4) << (2 * j + 1));
      }
  }
  return out;
}

/** Q6_K: 16 groups of 16 per 256, an int8 scale each, q in [−32, 31]. */
function q6_k(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 256) * 210);
  for (let b = 0; b < x.length / 256; b++) {
    const o = b * 210;
    const groupScale: number[] = [];
    for (let g = 0; g < 16; g++) {
      let amax = 0;
      for (let i = 0; i < 16; i++) amax = Math.max(amax, Math.abs(x[b * 256 + 16 * g + i]));
      groupScale.push(amax / 31);
    }
    const d = f16back(Math.max(...groupScale) / 127);
    const sc = groupScale.map((s) => (d ? Math.min(127, nearest(s / d)) : 0));
    const q = new Uint8Array(256);
    for (let g = 0; g < 16; g++) {
      const s = d * sc[g];
      for (let i = 0; i < 16; i++)
        q[16 * g + i] = (s ? Math.max(-32, Math.min(31, nearest(x[b * 256 + 16 * g + i] / s))) : 0) + 32;
    }
    for (let h = 0; h < 2; h++)
      for (let l = 0; l < 32; l++) {
        const [q1, q2, q3, q4] = [0, 32, 64, 96].map((k) => q[128 * h + k + l]);
        out[o + 64 * h + l] = (q1 & 15) | ((q3 & 15) << 4);
        out[o + 64 * h + l + 32] = (q2 & 15) | ((q4 & 15) << 4);
        out[o + 128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    for (let g = 0; g < 16; g++) out[o + 192 + g] = sc[g] & 0xff;
    out.set(h16(d), o + 208);
  }
  return out;
}

/** Rows of K values in `type`'s blocks (F32 where K does not fill them). */
export function quantizeRows(
  x: Float32Array,
  K: number,
  type: GgufWriteType,
): { type: number; bytes: Uint8Array } {
  const t = GGML[type];
  const block = GGML_TYPES.get(t)?.block ?? 1;
  if (type === "F32" || K % block !== 0)
    return { type: GGML.F32, bytes: new Uint8Array(x.buffer, x.byteOffset, x.byteLength) };
  const enc = {
    Q8_0: q8_0,
    Q4_0: q4_0,
    Q4_K: (v: Float32Array) => qk(v, 4),
    Q5_K: (v: Float32Array) => qk(v, 5),
    Q6_K: q6_k,
  }[type];
  return { type: t, bytes: enc(x) };
}

type Typed = { type: number; value: GgufValue; sub?: number };
const T = { U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9 } as const;

function encodeValue(type: number, v: GgufValue, sub?: number): Buffer {
  switch (type) {
    case T.U32:
      return Buffer.from(new Uint32Array([Number(v)]).buffer);
    case T.I32:
      return Buffer.from(new Int32Array([Number(v)]).buffer);
    case T.F32:
      return Buffer.from(new Float32Array([Number(v)]).buffer);
    case T.BOOL:
      return Buffer.from([v ? 1 : 0]);
    case T.STRING: {
      const s = Buffer.from(String(v));
      return Buffer.concat([Buffer.from(new BigUint64Array([BigInt(s.length)]).buffer), s]);
    }
    case T.ARRAY: {
      const a = v as GgufValue[];
      return Buffer.concat([
        Buffer.from(new Uint32Array([sub as number]).buffer),
        Buffer.from(new BigUint64Array([BigInt(a.length)]).buffer),
        ...a.map((x) => encodeValue(sub as number, x)),
      ]);
    }
  }
  throw new RangeError(`metadata type ${type}`);
}

/** llama.cpp's RoPE row order of q/k (the inverse of what the loader undoes). */
function permuteRows(w: Float32Array, heads: number, D: number, K: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let half = 0; half < 2; half++)
      for (let i = 0; i < D / 2; i++)
        out.set(
          w.subarray((h * D + half * (D / 2) + i) * K, (h * D + half * (D / 2) + i + 1) * K),
          (h * D + 2 * i + half) * K,
        );
  return out;
}

/**
 * Write a Llama-architecture model as GGUF: `tokenizerFrom` (a GGUF file, or its tokenizer.*
 * metadata) gives the tokenizer, its vocabulary padded to the model's with unused tokens.
 * Matrices get `type`; norms stay F32.
 */
export function writeGguf(
  path: string,
  c: ModelConfig,
  w: LayeredWeights,
  tokenizerFrom: GgufFile | Record<string, GgufValue>,
  type: GgufWriteType,
  name = "smallkv",
): void {
  if (c.architecture !== "LlamaForCausalLM") throw new RangeError("writeGguf writes Llama models");
  const meta: [string, Typed][] = [
    ["general.architecture", { type: T.STRING, value: "llama" }],
    ["general.name", { type: T.STRING, value: name }],
    ["general.alignment", { type: T.U32, value: 32 }],
    ["llama.vocab_size", { type: T.U32, value: c.vocabSize }],
    ["llama.context_length", { type: T.U32, value: c.maxPositions }],
    ["llama.embedding_length", { type: T.U32, value: c.hiddenSize }],
    ["llama.block_count", { type: T.U32, value: c.numLayers }],
    ["llama.feed_forward_length", { type: T.U32, value: c.intermediateSize }],
    ["llama.attention.head_count", { type: T.U32, value: c.numHeads }],
    ["llama.attention.head_count_kv", { type: T.U32, value: c.numKvHeads }],
    ["llama.rope.dimension_count", { type: T.U32, value: c.headDim }],
    ["llama.rope.freq_base", { type: T.F32, value: c.rope.theta }],
    ["llama.attention.layer_norm_rms_epsilon", { type: T.F32, value: c.rmsNormEps }],
  ];
  const tm = "metadata" in tokenizerFrom ? (tokenizerFrom as GgufFile).metadata : tokenizerFrom;
  const model = String(tm["tokenizer.ggml.model"] ?? "llama");
  const tokens = [...(tm["tokenizer.ggml.tokens"] as string[])];
  const types = [
    ...((tm["tokenizer.ggml.token_type"] as number[] | undefined) ?? tokens.map(() => TOKEN_TYPE.NORMAL)),
  ];
  const scores = tm["tokenizer.ggml.scores"] ? [...(tm["tokenizer.ggml.scores"] as number[])] : null;
  for (let i = tokens.length; i < c.vocabSize; i++) {
    tokens.push(`<unused${i}>`);
    scores?.push(0);
    types.push(TOKEN_TYPE.UNUSED);
  }
  meta.push(
    ["tokenizer.ggml.model", { type: T.STRING, value: model }],
    ["tokenizer.ggml.tokens", { type: T.ARRAY, sub: T.STRING, value: tokens }],
    ["tokenizer.ggml.token_type", { type: T.ARRAY, sub: T.I32, value: types }],
  );
  if (scores) meta.push(["tokenizer.ggml.scores", { type: T.ARRAY, sub: T.F32, value: scores }]);
  if (Array.isArray(tm["tokenizer.ggml.merges"]))
    meta.push([
      "tokenizer.ggml.merges",
      { type: T.ARRAY, sub: T.STRING, value: tm["tokenizer.ggml.merges"] },
    ]);
  if (typeof tm["tokenizer.ggml.pre"] === "string")
    meta.push(["tokenizer.ggml.pre", { type: T.STRING, value: tm["tokenizer.ggml.pre"] }]);
  if (typeof tm["tokenizer.chat_template"] === "string")
    meta.push(["tokenizer.chat_template", { type: T.STRING, value: tm["tokenizer.chat_template"] }]);
  for (const k of ["bos_token_id", "eos_token_id", "unknown_token_id"])
    if (typeof tm[`tokenizer.ggml.${k}`] === "number")
      meta.push([`tokenizer.ggml.${k}`, { type: T.U32, value: tm[`tokenizer.ggml.${k}`] }]);
  for (const k of ["add_bos_token", "add_eos_token", "add_space_prefix"])
    if (typeof tm[`tokenizer.ggml.${k}`] === "boolean")
      meta.push([`tokenizer.ggml.${k}`, { type: T.BOOL, value: tm[`tokenizer.ggml.${k}`] }]);

  // Tensors: name, ne, and a thunk that makes the bytes (written one at a time).
  const d = c.hiddenSize;
  const tensors: { name: string; ne: number[]; make: () => { type: number; bytes: Uint8Array } }[] = [];
  const f32 = (x: Float32Array) => () => quantizeRows(x, x.length, "F32");
  tensors.push({
    name: "token_embd.weight",
    ne: [d, c.vocabSize],
    make: () => quantizeRows(w.embed, d, type === "F32" ? "F32" : "Q8_0"),
  });
  tensors.push({ name: "output_norm.weight", ne: [d], make: f32(w.norm) });
  if (!c.tieWordEmbeddings)
    tensors.push({
      name: "output.weight",
      ne: [d, c.vocabSize],
      make: () => quantizeRows(w.lmHead, d, type === "F32" ? "F32" : "Q8_0"),
    });
  const fields: [MatrixName, string, number, number][] = [
    ["q", "attn_q", c.numHeads * c.headDim, d],
    ["k", "attn_k", c.numKvHeads * c.headDim, d],
    ["v", "attn_v", c.numKvHeads * c.headDim, d],
    ["o", "attn_output", d, c.numHeads * c.headDim],
    ["gate", "ffn_gate", c.intermediateSize, d],
    ["up", "ffn_up", c.intermediateSize, d],
    ["down", "ffn_down", d, c.intermediateSize],
  ];
  for (let l = 0; l < c.numLayers; l++) {
    const layer = (): LayerWeights => w.layer(l);
    tensors.push({
      name: `blk.${l}.attn_norm.weight`,
      ne: [d],
      make: () => quantizeRows(layer().inputNorm, d, "F32"),
    });
    tensors.push({
      name: `blk.${l}.ffn_norm.weight`,
      ne: [d],
      make: () => quantizeRows(layer().postNorm, d, "F32"),
    });
    for (const [field, n, N, K] of fields)
      tensors.push({
        name: `blk.${l}.${n}.weight`,
        ne: [K, N],
        make: () => {
          let m = layer()[field];
          if (field === "q") m = permuteRows(m, c.numHeads, c.headDim, K);
          if (field === "k") m = permuteRows(m, c.numKvHeads, c.headDim, K);
          return quantizeRows(m, K, type);
        },
      });
  }
  // Types and sizes first (the header holds every offset), then the data.
  const made = tensors.map((t) => t.make());
  const str = (s: string) => encodeValue(T.STRING, s);
  const u32 = (n: number) => Buffer.from(new Uint32Array([n]).buffer);
  const u64 = (n: number) => Buffer.from(new BigUint64Array([BigInt(n)]).buffer);
  const infos: Buffer[] = [];
  let offset = 0;
  const offsets: number[] = [];
  tensors.forEach((t, i) => {
    offsets.push(offset);
    infos.push(
      Buffer.concat([str(t.name), u32(t.ne.length), ...t.ne.map(u64), u32(made[i].type), u64(offset)]),
    );
    offset += Math.ceil(made[i].bytes.length / 32) * 32;
  });
  const header = Buffer.concat([
    Buffer.from("GGUF"),
    u32(3),
    u64(tensors.length),
    u64(meta.length),
    ...meta.map(([k, v]) => Buffer.concat([str(k), u32(v.type), encodeValue(v.type, v.value, v.sub)])),
    ...infos,
  ]);
  const fd = openSync(path, "w");
  try {
    writeSync(fd, header);
    writeSync(fd, Buffer.alloc((32 - (header.length % 32)) % 32));
    made.forEach((m, i) => {
      writeSync(fd, m.bytes);
      const pad =
        (i < made.length - 1 ? offsets[i + 1] - offsets[i] : Math.ceil(m.bytes.length / 32) * 32) -
        m.bytes.length;
      if (pad) writeSync(fd, Buffer.alloc(pad));
    });
  } finally {
    closeSync(fd);
  }
}
