// Hostile GGUF files: each is refused with a typed CheckpointError, quickly, without allocating
// more than the parser's read chunk (2 MB) whatever sizes the file declares.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CheckpointError, Model } from "../src/index.js";
import { MODELS, tempDir } from "./helpers.js";

const F32 = join(MODELS, "gguf", "stories260K-f32.gguf");

/** Little-endian GGUF v3 pieces. */
const u32 = (n: number) => Buffer.from(new Uint32Array([n]).buffer);
const u64 = (n: bigint | number) => Buffer.from(new BigUint64Array([BigInt(n)]).buffer);
const str = (s: string) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)]);

interface TensorDecl {
  name: string;
  dims: (number | bigint)[];
  type: number;
  offset: number | bigint;
}

/** A GGUF file: the given key/values (already encoded), tensor infos, then `data` after alignment. */
function gguf(o: {
  kv?: Buffer[];
  tensors?: TensorDecl[];
  data?: Buffer;
  magic?: string;
  version?: number;
  tensorCount?: bigint;
  kvCount?: bigint;
}): Buffer {
  const kv = o.kv ?? [Buffer.concat([str("general.architecture"), u32(8), str("llama")])];
  const tensors = o.tensors ?? [];
  const head = Buffer.concat([
    Buffer.from(o.magic ?? "GGUF"),
    u32(o.version ?? 3),
    u64(o.tensorCount ?? BigInt(tensors.length)),
    u64(o.kvCount ?? BigInt(kv.length)),
    ...kv,
    ...tensors.map((t) =>
      Buffer.concat([str(t.name), u32(t.dims.length), ...t.dims.map(u64), u32(t.type), u64(t.offset)]),
    ),
  ]);
  const pad = Buffer.alloc((32 - (head.length % 32)) % 32);
  return Buffer.concat([head, pad, o.data ?? Buffer.alloc(0)]);
}

const dir = tempDir("smallkv-hostile-gguf-");
const original = readFileSync(F32);
const cases: [string, Buffer][] = [
  ["an empty file", Buffer.alloc(0)],
  ["the wrong magic", gguf({ magic: "GGUG" })],
  ["an unknown version", gguf({ version: 99 })],
  ["the real file cut inside its header", original.subarray(0, 900)],
  ["the real file cut inside its tensor data", original.subarray(0, original.length - 1000)],
  ["10^12 declared tensors", gguf({ tensorCount: 10n ** 12n })],
  ["10^12 declared key/values", gguf({ kvCount: 10n ** 12n })],
  ["a 2^60-byte string", gguf({ kv: [Buffer.concat([u64(2n ** 60n), Buffer.from("x")])] })],
  [
    "a 10^12-element metadata array",
    gguf({ kv: [Buffer.concat([str("a"), u32(9), u32(4), u64(10n ** 12n)])] }),
  ],
  ["a bad metadata type id", gguf({ kv: [Buffer.concat([str("a"), u32(77), u32(1)])] })],
  [
    "a bad tensor type id",
    gguf({
      tensors: [{ name: "token_embd.weight", dims: [64, 512], type: 99, offset: 0 }],
      data: Buffer.alloc(64),
    }),
  ],
  [
    "a 10^12-element tensor",
    gguf({
      tensors: [{ name: "token_embd.weight", dims: [10 ** 6, 10 ** 6], type: 0, offset: 0 }],
      data: Buffer.alloc(64),
    }),
  ],
  [
    "absurd dimensions (2^40)",
    gguf({ tensors: [{ name: "t", dims: [2n ** 40n, 2n ** 40n], type: 0, offset: 0 }] }),
  ],
  [
    "a zero dimension",
    gguf({ tensors: [{ name: "t", dims: [0, 4], type: 0, offset: 0 }], data: Buffer.alloc(64) }),
  ],
  [
    "a tensor past the end of the file",
    gguf({ tensors: [{ name: "t", dims: [64, 64], type: 0, offset: 0 }], data: Buffer.alloc(64) }),
  ],
  [
    "an offset past the end of the file",
    gguf({ tensors: [{ name: "t", dims: [4], type: 0, offset: 2n ** 50n }], data: Buffer.alloc(64) }),
  ],
  [
    "a misaligned offset",
    gguf({ tensors: [{ name: "t", dims: [4], type: 0, offset: 3 }], data: Buffer.alloc(64) }),
  ],
  [
    "rows that do not fill Q8_0 blocks",
    gguf({ tensors: [{ name: "t", dims: [33, 2], type: 8, offset: 0 }], data: Buffer.alloc(256) }),
  ],
  [
    "a tensor named twice",
    gguf({
      tensors: [
        { name: "t", dims: [4], type: 0, offset: 0 },
        { name: "t", dims: [4], type: 0, offset: 32 },
      ],
      data: Buffer.alloc(64),
    }),
  ],
  ["no hyper-parameters (a bare header)", gguf({})],
  [
    "an unsupported architecture",
    gguf({ kv: [Buffer.concat([str("general.architecture"), u32(8), str("gpt2")])] }),
  ],
];

describe("hostile GGUF files are typed errors", () => {
  for (const [name, bytes] of cases)
    it(name, async () => {
      const file = join(dir, `${name.replace(/\W+/g, "_")}.gguf`);
      writeFileSync(file, bytes);
      const before = process.memoryUsage().arrayBuffers;
      const t0 = performance.now();
      const err = await Model.load(file).then(
        () => null,
        (e: unknown) => e,
      );
      const ms = performance.now() - t0;
      const grew = process.memoryUsage().arrayBuffers - before;
      expect(err, `${name}: loaded`).toBeInstanceOf(CheckpointError);
      expect((err as Error).message).toContain(file);
      console.log(
        `${name}: ${(err as CheckpointError).code} in ${ms.toFixed(0)} ms: ${(err as Error).message.split(" (")[0]}`,
      );
      // The parser reads in 2 MB chunks (a file's header is read chunk by chunk); nothing the
      // file declares is allocated.
      expect(grew).toBeLessThan(Math.max(bytes.length, 2 * 1024 * 1024) + 1024 * 1024);
    });
});
