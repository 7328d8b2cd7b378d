import { ATTN_SEQ_BYTES, type DeviceBuffer, type PinnedBuffer } from "./device.js";

type Addr = DeviceBuffer | PinnedBuffer | number;
const addr = (x: Addr | undefined): number => (x === undefined ? 0 : typeof x === "number" ? x : x.ptr);

/** One sequence of a batched attention launch (one layer); see SkvAttnSeq in dev_api.h. */
export interface AttentionSeq {
  /** K and V stores [Hkv][cap][D] of the launch's kv dtype. */
  k: Addr;
  v: Addr;
  cap: number;
  /** Keys of a contiguous list (rows 0..n-1, this step's T rows last). */
  n: number;
  /** Query rows (1 at decode). Query row t sees the list's first n - T + t + 1 keys. */
  T: number;
  /** First row of this sequence in q/out [.][Hq][D]. */
  qRow: number;
  /** A selection read in place: int32 rows [Hkv][icap] and int32 counts [Hkv] (this step's rows included, last). */
  select?: { idx: Addr; counts: Addr; icap: number };
  /** SmallKV's V-only rows: int32 rows [Hkv][vcap], counts [Hkv], float weights [Hq][T][vmax]. */
  vOnly?: { idx: Addr; counts: Addr; vcap: number; weights: Addr; vmax: number; mode: "literal" | "mass" };
  /** > 0: each query sees only its last `window` keys (contiguous lists only). */
  window?: number;
}

const FIELDS = ATTN_SEQ_BYTES / 8;
/** Int32 slots of one packed record. */
export const ATTN_SEQ_INTS = FIELDS * 2;

/** x (a non-negative safe integer: an address, a length) as an int64 in out[at], out[at + 1]. */
function putInt64(out: Int32Array, at: number, x: number): void {
  const hi = Math.floor(x / 4294967296);
  out[at] = x - hi * 4294967296; // wraps to int32; the device reads the bits
  out[at + 1] = hi;
}

/**
 * Packs the records into `into` from int32 slot `at` (a new array when `into` is absent or
 * short) for one upload: the launch reads every sequence's shape and addresses from device memory.
 */
export function packAttentionSeqs(seqs: AttentionSeq[], into?: Int32Array, at = 0): Int32Array {
  const end = at + seqs.length * ATTN_SEQ_INTS;
  const out = into && into.length >= end ? into : new Int32Array(end);
  seqs.forEach((s, i) => {
    if (s.select && s.window)
      throw new RangeError("packAttentionSeqs: a window applies to contiguous lists only");
    const vo = s.vOnly;
    const f = [
      addr(s.k),
      addr(s.v),
      s.cap,
      s.n,
      s.T,
      s.qRow,
      addr(s.select?.idx),
      addr(s.select?.counts),
      s.select?.icap ?? 0,
      addr(vo?.idx),
      addr(vo?.counts),
      vo?.vcap ?? 0,
      addr(vo?.weights),
      vo?.vmax ?? 0,
      vo?.mode === "mass" ? 1 : 0,
      s.window ?? 0,
    ];
    const base = at + i * ATTN_SEQ_INTS;
    for (let j = 0; j < FIELDS; j++) {
      const x = f[j];
      if (!Number.isSafeInteger(x) || x < 0)
        throw new RangeError(`packAttentionSeqs: field ${j} of sequence ${i} is ${x}`);
      putInt64(out, base + 2 * j, x);
    }
  });
  return out;
}

/** int64 addresses for kvAppend's per-row store lists, as Int32Array pairs from slot `at` of `into`. */
export function packAddresses(addrs: ArrayLike<number>, into?: Int32Array, at = 0): Int32Array {
  const end = at + addrs.length * 2;
  const out = into && into.length >= end ? into : new Int32Array(end);
  for (let i = 0; i < addrs.length; i++) putInt64(out, at + 2 * i, addrs[i]);
  return out;
}
