// The token embedding lookup the CPU backend does in JS: a float32 table, or a GGUF file's
// rows kept in their blocks (a Q8_0 table is 27% of the float bytes) and decoded per lookup.
import type { GgufFile, GgufTensor } from "./gguf/file.js";
import { dequantizeRows, GGML_TYPES, rowBytes } from "./gguf/ggml-types.js";

export interface EmbeddingTable {
  /** Row `token` (hidden values) written into `out` at `offset`. */
  row(token: number, out: Float32Array, offset: number): void;
  /** Bytes the table holds. */
  readonly bytes: number;
}

export function floatEmbedding(table: Float32Array, d: number): EmbeddingTable {
  return {
    row: (t, out, o) => out.set(table.subarray(t * d, (t + 1) * d), o),
    bytes: table.byteLength,
  };
}

/**
 * A GGUF file's embedding rows, each read from the file when looked up (one small pread per
 * token: the table stays in the OS page cache, as llama.cpp's mapped file does, not in this
 * process's memory twice) and decoded from its blocks.
 */
export function fileEmbedding(f: GgufFile, t: GgufTensor): EmbeddingTable {
  const d = t.ne[0];
  const info = GGML_TYPES.get(t.type);
  if (!info) throw new RangeError(`ggml type ${t.type}`);
  const rb = rowBytes(info, d);
  const buf = new Uint8Array(new ArrayBuffer(Math.ceil(rb / 4) * 4), 0, rb);
  return {
    row: (tok, out, o) => {
      f.readInto(buf, t.offset + tok * rb);
      out.set(dequantizeRows(t.type, buf, 1, d), o);
    },
    bytes: 0,
  };
}
