import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { bf16ToF32, DTYPE_BYTES, type DType, f16ToF32, f32ToBf16, f32ToF16 } from "./dtype.js";
import { CheckpointError } from "./errors.js";

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
  file: string;
}

const MAX_HEADER = 100 * 1024 * 1024;

/** Parse the header of one .safetensors file and check every entry against the file size. */
export function readSafetensorsHeader(file: string): Map<string, TensorInfo> {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch {
    throw new CheckpointError("WEIGHTS_MISSING", "safetensors file not found", file);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8)
      throw new CheckpointError(
        "SAFETENSORS_TRUNCATED",
        `file is ${size} bytes, shorter than the 8-byte header length`,
        file,
      );
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const n = Number(lenBuf.readBigUInt64LE(0));
    if (n > MAX_HEADER)
      throw new CheckpointError("SAFETENSORS_INVALID", `header length ${n} is not plausible`, file);
    if (8 + n > size)
      throw new CheckpointError(
        "SAFETENSORS_TRUNCATED",
        `header of ${n} bytes runs past the end of the ${size}-byte file`,
        file,
      );
    const hbuf = Buffer.alloc(n);
    readSync(fd, hbuf, 0, n, 8);
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(hbuf.toString("utf8"));
    } catch (e) {
      throw new CheckpointError(
        "SAFETENSORS_INVALID",
        `header is not valid JSON: ${(e as Error).message}`,
        file,
      );
    }
    const dataStart = 8 + n;
    const out = new Map<string, TensorInfo>();
    for (const [name, v] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      const e = v as { dtype?: string; shape?: number[]; data_offsets?: [number, number] };
      if (!e || typeof e !== "object" || !Array.isArray(e.shape) || !Array.isArray(e.data_offsets)) {
        throw new CheckpointError("SAFETENSORS_INVALID", `entry "${name}" lacks shape or data_offsets`, file);
      }
      if (!(e.dtype === "F32" || e.dtype === "F16" || e.dtype === "BF16")) {
        throw new CheckpointError(
          "DTYPE_MISMATCH",
          `tensor "${name}" has dtype ${e.dtype}; supported: F32, F16, BF16`,
          file,
        );
      }
      const [b, end] = e.data_offsets;
      const numel = e.shape.reduce((a, d) => a * d, 1);
      if (end - b !== numel * DTYPE_BYTES[e.dtype]) {
        throw new CheckpointError(
          "DTYPE_MISMATCH",
          `tensor "${name}": ${end - b} bytes do not hold shape [${e.shape}] of ${e.dtype} (${numel * DTYPE_BYTES[e.dtype]} bytes)`,
          file,
        );
      }
      if (dataStart + end > size) {
        throw new CheckpointError(
          "SAFETENSORS_TRUNCATED",
          `tensor "${name}" ends at byte ${dataStart + end} but the file has ${size} bytes`,
          file,
        );
      }
      out.set(name, {
        name,
        dtype: e.dtype,
        shape: e.shape,
        offset: dataStart + b,
        byteLength: end - b,
        file,
      });
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/**
 * The tensors of a checkpoint directory: model.safetensors, or the shards listed by
 * model.safetensors.index.json. Tensors are read one at a time, straight from the file
 * into their float32 array (no whole-file buffer).
 */
export class SafetensorsStore {
  readonly tensors = new Map<string, TensorInfo>();

  constructor(readonly dir: string) {
    const single = join(dir, "model.safetensors");
    const index = join(dir, "model.safetensors.index.json");
    if (existsSync(single)) {
      for (const [k, v] of readSafetensorsHeader(single)) this.tensors.set(k, v);
    } else if (existsSync(index)) {
      let map: Record<string, string>;
      try {
        map = JSON.parse(readFileSync(index, "utf8")).weight_map;
      } catch (e) {
        throw new CheckpointError(
          "SAFETENSORS_INVALID",
          `index is not valid JSON: ${(e as Error).message}`,
          index,
        );
      }
      if (!map || typeof map !== "object")
        throw new CheckpointError("SAFETENSORS_INVALID", "index has no weight_map", index);
      for (const shard of new Set(Object.values(map))) {
        const headers = readSafetensorsHeader(join(dir, basename(shard)));
        for (const [k, v] of headers) this.tensors.set(k, v);
      }
      for (const name of Object.keys(map)) {
        if (!this.tensors.has(name)) {
          throw new CheckpointError(
            "TENSOR_MISSING",
            `tensor "${name}" is listed in the index but missing from ${map[name]}`,
            index,
          );
        }
      }
    } else {
      throw new CheckpointError(
        "WEIGHTS_MISSING",
        "no model.safetensors or model.safetensors.index.json",
        dir,
      );
    }
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** Read a tensor as float32, checking its shape. */
  read(name: string, shape: number[]): Float32Array {
    const info = this.tensors.get(name);
    if (!info) throw new CheckpointError("TENSOR_MISSING", `tensor "${name}" not found`, this.dir);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        "SHAPE_MISMATCH",
        `tensor "${name}" has shape [${info.shape}], the config implies [${shape}]`,
        info.file,
      );
    }
    const numel = shape.reduce((a, d) => a * d, 1);
    const out = new Float32Array(numel);
    const fd = openSync(info.file, "r");
    try {
      if (info.dtype === "F32") {
        readFully(fd, new Uint8Array(out.buffer), info.offset, info.file);
      } else {
        const half = new Uint16Array(numel);
        readFully(fd, new Uint8Array(half.buffer), info.offset, info.file);
        if (info.dtype === "F16") f16ToF32(half, out);
        else bf16ToF32(half, out);
      }
    } finally {
      closeSync(fd);
    }
    return out;
  }
}

function readFully(fd: number, dst: Uint8Array, position: number, file: string): void {
  let done = 0;
  while (done < dst.length) {
    const n = readSync(fd, dst, done, Math.min(dst.length - done, 1 << 30), position + done);
    if (n === 0) throw new CheckpointError("SAFETENSORS_TRUNCATED", "unexpected end of file", file);
    done += n;
  }
}

export interface TensorToWrite {
  shape: number[];
  data: Float32Array;
}

function encodeTensor(t: TensorToWrite, dtype: DType): Uint8Array {
  const bytes = dtype === "F32" ? t.data : dtype === "F16" ? f32ToF16(t.data) : f32ToBf16(t.data);
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Write tensors to one .safetensors file, converted to `dtype`. */
export function writeSafetensors(
  file: string,
  tensors: Record<string, TensorToWrite>,
  dtype: DType = "F32",
): void {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const blobs: Uint8Array[] = [];
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const b = encodeTensor(t, dtype);
    header[name] = { dtype, shape: t.shape, data_offsets: [off, off + b.length] };
    blobs.push(b);
    off += b.length;
  }
  let h = JSON.stringify(header);
  h += " ".repeat((8 - (h.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
  writeFileSync(file, Buffer.concat([len, Buffer.from(h), ...blobs]));
}

/** Write tensors as `shards` files plus model.safetensors.index.json (Hugging Face sharded layout). */
export function writeShardedSafetensors(
  dir: string,
  tensors: Record<string, TensorToWrite>,
  shards: number,
  dtype: DType = "F32",
): void {
  const names = Object.keys(tensors);
  const per = Math.ceil(names.length / shards);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
    const part: Record<string, TensorToWrite> = {};
    for (const n of names.slice(s * per, (s + 1) * per)) {
      part[n] = tensors[n];
      weightMap[n] = file;
    }
    writeSafetensors(join(dir, file), part, dtype);
  }
  writeFileSync(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2),
  );
}
