// A GGUF file's header through @huggingface/gguf, then our own checks on what it reports: every
// tensor's type is one we read, its shape is sane, and its bytes (from the aligned offset) lie
// inside the file. Tensor bytes are read on demand, one tensor at a time, straight from the file.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { gguf } from "@huggingface/gguf";
import { CheckpointError } from "../errors.js";
import { GGML_TYPES, type GgmlTypeInfo, rowBytes } from "./ggml-types.js";

export type GgufValue = string | number | bigint | boolean | GgufValue[];

export interface GgufTensor {
  name: string;
  /** ggml's order: ne[0] (the contiguous dimension) first. */
  ne: number[];
  type: number;
  info: GgmlTypeInfo;
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
}

/** Largest element count of one tensor we accept (2^34: a 64 GB float32 tensor). */
const MAX_ELEMENTS = 2 ** 34;

export class GgufFile {
  private fd: number | null = null;

  private constructor(
    readonly path: string,
    readonly size: number,
    readonly metadata: Record<string, GgufValue>,
    readonly tensors: Map<string, GgufTensor>,
  ) {}

  /** Parse and check the header; a file that is not a readable GGUF is a CheckpointError. */
  static async open(path: string): Promise<GgufFile> {
    let size: number;
    try {
      const fd = openSync(path, "r");
      size = fstatSync(fd).size;
      closeSync(fd);
    } catch {
      throw new CheckpointError("WEIGHTS_MISSING", "GGUF file not found", path);
    }
    const bad = (msg: string) => new CheckpointError("GGUF_INVALID", msg, path);
    if (size < 24) throw bad(`file is ${size} bytes, shorter than a GGUF header`);
    let parsed: Awaited<ReturnType<typeof gguf>>;
    try {
      parsed = await gguf(path, { allowLocalFile: true });
    } catch (e) {
      throw bad(`not a readable GGUF file: ${(e as Error).message}`);
    }
    const { tensorInfos, tensorDataOffset, littleEndian, tensorInfoByteRange } = parsed;
    const metadata = parsed.metadata as unknown as Record<string, GgufValue>;
    if (!littleEndian) throw bad("big-endian GGUF files are not supported");
    // The parser reads past the end of a truncated file as zeros: its header must end inside.
    if (tensorInfoByteRange[1] > size) throw bad(`the header runs past the end of the ${size}-byte file`);
    const alignment = Number(metadata["general.alignment"] ?? 32);
    if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0)
      throw bad(`general.alignment must be a power of two, got ${String(metadata["general.alignment"])}`);
    const dataStart = Number(tensorDataOffset);
    const tensors = new Map<string, GgufTensor>();
    for (const t of tensorInfos) {
      const where = `tensor "${t.name}"`;
      if (tensors.has(t.name)) throw bad(`${where} appears twice`);
      const info = GGML_TYPES.get(t.dtype);
      if (!info) throw bad(`${where} has ggml type ${t.dtype}, which this runner does not read`);
      const ne = t.shape.map(Number);
      if (ne.length === 0 || ne.some((n) => !Number.isSafeInteger(n) || n <= 0))
        throw bad(`${where} has shape [${t.shape.join(", ")}]`);
      const elements = ne.reduce((a, n) => a * n, 1);
      if (elements > MAX_ELEMENTS) throw bad(`${where} declares ${elements} elements`);
      if (ne[0] % info.block !== 0)
        throw bad(`${where}: rows of ${ne[0]} values do not fill ${info.name} blocks of ${info.block}`);
      const offset = dataStart + Number(t.offset);
      if (Number(t.offset) % alignment !== 0)
        throw bad(`${where}'s offset ${t.offset} is not a multiple of the alignment ${alignment}`);
      const byteLength = rowBytes(info, ne[0]) * (elements / ne[0]);
      if (offset + byteLength > size)
        throw bad(`${where}'s ${byteLength} bytes at ${offset} run past the end of the ${size}-byte file`);
      tensors.set(t.name, { name: t.name, ne, type: t.dtype, info, offset, byteLength });
    }
    return new GgufFile(path, size, metadata, tensors);
  }

  /** Read a tensor's raw bytes (its blocks as stored). */
  bytes(t: GgufTensor): Uint8Array {
    // Aligned for float32/uint16 views of F32/F16 data.
    const buf = new Uint8Array(new ArrayBuffer(Math.ceil(t.byteLength / 4) * 4), 0, t.byteLength);
    this.readInto(buf, t.offset);
    return buf;
  }

  /** `length` bytes of the file at `position`, into `out` (a row read on demand). */
  readInto(out: Uint8Array, position: number): void {
    this.fd ??= openSync(this.path, "r");
    let done = 0;
    while (done < out.length) {
      const n = readSync(this.fd, out, done, Math.min(out.length - done, 1 << 30), position + done);
      if (n <= 0)
        throw new CheckpointError("GGUF_INVALID", `the file is cut short at ${position + done}`, this.path);
      done += n;
    }
  }

  tensor(name: string): GgufTensor {
    const t = this.tensors.get(name);
    if (!t) throw new CheckpointError("TENSOR_MISSING", `tensor "${name}" not found`, this.path);
    return t;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}
