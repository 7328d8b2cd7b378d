import { addonFile, loadAddon } from "./addon.js";
import { TensorShapeError } from "./errors.js";

/** Which implementation runs the device kernels: a real GPU, or the CPU emulator (tests, CI). */
export type DeviceKind = "cuda" | "emulator";
export type DType = "f32" | "f16" | "bf16" | "i32";

/** A device failure: no device (ENODEV), out of memory (EOOM), a kernel or runtime error (EKERNEL), bad arguments (EARG), or an addon built without CUDA (ENOBUILD). */
export class DeviceError extends Error {
  override readonly name = "DeviceError";
  constructor(
    readonly code: "ENODEV" | "EOOM" | "EKERNEL" | "EARG" | "ENOBUILD",
    message: string,
  ) {
    super(message);
  }
}

export interface DeviceInfo {
  kind: DeviceKind;
  name: string;
  /** "9.0" for H100/H200; "0.0" for the emulator. */
  computeCapability: string;
  totalBytes: number;
  multiprocessors: number;
  /** Peak memory bandwidth from the memory clock and bus width (GB/s); 0 for the emulator. */
  bandwidthGBs: number;
}

const BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4 };
const DTYPE_CODE = { f32: 0, f16: 1, bf16: 2 } as const;
/** Bytes of one packed attention-batch record (16 int64 fields, SkvAttnSeq in dev_api.h). */
export const ATTN_SEQ_BYTES = 128;
/** Bytes of one probability-pass output record (SkvProbOut). */
export const PROB_OUT_BYTES = 48;
/** Bytes of one ranked-selection list record (SkvRankList). */
export const RANK_LIST_BYTES = 440;

/** Memory on the device. `ptr` is its address; `at(i)` the address of element i. */
export class DeviceBuffer {
  private freed = false;
  constructor(
    private readonly device: Device,
    readonly ptr: number,
    readonly length: number,
    readonly dtype: DType,
    /** A view's buffer: the memory's owner (a view frees nothing). */
    private readonly owner?: DeviceBuffer,
  ) {}
  get bytes(): number {
    return this.length * BYTES[this.dtype];
  }
  get released(): boolean {
    return this.freed || (this.owner?.released ?? false);
  }
  /** Elements [offset, offset + length) as a buffer of their own, valid while this one is. */
  view(offset: number, length: number): DeviceBuffer {
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > this.length
    )
      throw new TensorShapeError(
        "DeviceBuffer.view",
        `[${offset}, ${offset + length}) outside [0, ${this.length}]`,
      );
    return new DeviceBuffer(this.device, this.at(offset), length, this.dtype, this.owner ?? this);
  }
  at(index: number): number {
    if (index < 0 || index > this.length)
      throw new TensorShapeError("DeviceBuffer.at", `index ${index} outside [0, ${this.length}]`);
    return this.ptr + index * BYTES[this.dtype];
  }
  free(): void {
    if (this.freed) return;
    this.freed = true;
    if (!this.owner) this.device.release(this);
  }
}

/** Pinned host memory mapped into the device's address space: `f32` is the host view, `ptr` the device address of the same bytes. */
export class PinnedBuffer {
  private freed = false;
  readonly f32: Float32Array;
  constructor(
    private readonly device: Device,
    buffer: ArrayBuffer,
    readonly hostPtr: number,
    readonly ptr: number,
    readonly length: number,
  ) {
    this.f32 = new Float32Array(buffer, 0, length);
  }
  get bytes(): number {
    return this.length * 4;
  }
  at(index: number): number {
    return this.ptr + index * 4;
  }
  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.device.releasePinned(this);
  }
}

/** A captured CUDA graph (see `Device.capture`): `launch` replays it on its stream. */
export class DeviceGraph {
  private freed = false;
  constructor(
    private readonly b: DeviceBinding,
    private readonly handle: number,
    private readonly stream: number,
  ) {}
  launch(): void {
    if (this.freed) throw new TensorShapeError("DeviceGraph.launch", "graph was freed");
    wrap(() => this.b.graphLaunch(this.handle, this.stream));
  }
  free(): void {
    if (this.freed) return;
    this.freed = true;
    wrap(() => this.b.graphFree(this.handle));
  }
}

/** An address argument: a buffer (its start, size-checked) or a raw address from `at()`. */
export type Ptr = DeviceBuffer | PinnedBuffer | number;
type NullablePtr = Ptr | null | undefined;

interface DeviceBinding {
  emulated: boolean;
  open(index: number): string;
  memInfo(): { free: number; total: number };
  malloc(bytes: number): number;
  free(p: number): void;
  hostAlloc(bytes: number): [ArrayBuffer, number, number];
  hostFree(p: number): void;
  upload(dst: number, src: ArrayBufferView): void;
  download(dst: ArrayBufferView, src: number): void;
  memset(dst: number, value: number, bytes: number, stream: number): void;
  copy(dst: number, src: number, bytes: number, stream: number): void;
  sync(stream: number): void;
  streamWait(waiter: number, waitee: number): void;
  embedding(
    out: number,
    table: number,
    dtype: number,
    ids: number,
    n: number,
    d: number,
    stream: number,
  ): void;
  rmsnorm(out: number, x: number, w: number, n: number, d: number, eps: number, stream: number): void;
  gemm(
    y: number,
    x: number,
    w: number,
    dtype: number,
    bias: number | null,
    m: number,
    n: number,
    k: number,
    acc: number,
    stream: number,
  ): void;
  rope(
    x: number,
    pos: number,
    T: number,
    H: number,
    D: number,
    theta: number,
    invFreq: number | null,
    scale: number,
    x2: number | null,
    H2: number,
    stream: number,
  ): void;
  siluGate(out: number, gate: number, up: number, n: number, stream: number): void;
  add(y: number, x: number, n: number, stream: number): void;
  attention(...args: (number | null)[]): void;
  kvWrite(
    store: number,
    cap: number,
    Hkv: number,
    D: number,
    src: number,
    T: number,
    dst: number,
    stream: number,
  ): void;
  kvMove(
    dst: number,
    dcap: number,
    src: number,
    scap: number,
    D: number,
    moves: number,
    n: number,
    dst2: number | null,
    src2: number | null,
    stream: number,
  ): void;
  gemv(...args: (number | null)[]): void;
  argmax(out: number, x: number, rows: number, n: number, stream: number): void;
  sample(out: number, x: number, params: number, rows: number, n: number, stream: number): void;
  ropeAppend(...args: (number | null)[]): void;
  attentionBatch(...args: number[]): void;
  attentionPartFloats(B: number, maxT: number, maxKeys: number, Hq: number, D: number): number;
  attentionProbs(...args: number[]): void;
  rankSelect(lists: number, count: number, maxN: number, stream: number): void;
  kvAppend(...args: number[]): void;
  captureBegin(stream: number): void;
  captureEnd(stream: number): number;
  graphLaunch(graph: number, stream: number): void;
  graphFree(graph: number): void;
}

/** The head layout and tile threshold the batched attention kernels take (GQA groups, prefillRows). */
function checkBatchHeads(op: string, Hq: number, Hkv: number, prefillRows: number | undefined): void {
  if (Hkv <= 0 || Hq % Hkv !== 0) throw new TensorShapeError(op, `Hq ${Hq} is not a multiple of Hkv ${Hkv}`);
  if (prefillRows !== undefined && !(Number.isInteger(prefillRows) && prefillRows >= 0))
    throw new TensorShapeError(op, `prefillRows must be a non-negative integer, got ${prefillRows}`);
}

const bindings = new Map<DeviceKind, DeviceBinding>();

function binding(kind: DeviceKind): DeviceBinding {
  const cached = bindings.get(kind);
  if (cached) return cached;
  const name = kind === "cuda" ? "smallkv_cuda" : "smallkv_cuda_emu";
  const file = addonFile(name);
  if (!file) {
    throw new DeviceError(
      "ENOBUILD",
      kind === "cuda"
        ? "@smallkv/tensor has no CUDA addon here (built without nvcc, and no prebuilt one for this platform); install the CUDA toolkit and rebuild with SMALLKV_CUDA=1 SMALLKV_BUILD_FROM_SOURCE=1"
        : `the emulator addon is missing (no ${name}.node): run \`pnpm install\``,
    );
  }
  const b = loadAddon<DeviceBinding>(file);
  bindings.set(kind, b);
  return b;
}

function wrap<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === "ENODEV" || err.code === "EOOM" || err.code === "EKERNEL" || err.code === "EARG") {
      throw new DeviceError(err.code, err.message);
    }
    throw e;
  }
}

export interface GemmArgs {
  /** y[m][n] */
  y: Ptr;
  /** x[m][k], float32 */
  x: Ptr;
  /** W[n][k] (PyTorch Linear layout), float32, f16 or bf16 */
  w: DeviceBuffer;
  bias?: NullablePtr;
  m: number;
  n: number;
  k: number;
  /** Add into y instead of overwriting it. */
  accumulate?: boolean;
  stream?: number;
}

/** A decode-sized product (m <= 16): see `Device.gemv`. */
export interface GemvArgs {
  /** y[m][n], or three outputs taking the column segments [0, split[0]), [split[0], split[0] + split[1]) and the rest. */
  y: Ptr | [Ptr, Ptr, Ptr];
  split?: [number, number];
  x: Ptr;
  w: DeviceBuffer;
  /** "siluGate": the up matrix (w is the gate). */
  w2?: DeviceBuffer;
  bias?: NullablePtr;
  bias2?: NullablePtr;
  m: number;
  n: number;
  k: number;
  /** "store" (default): y = x.W^T + b; "accumulate": y += ...; "siluGate": y = silu(x.W^T + b) * (x.W2^T + b2). */
  mode?: "store" | "accumulate" | "siluGate";
  /** RMSNorm of x's rows first (m <= 4), folded into the product: weights [k] and epsilon. */
  norm?: { w: Ptr; eps: number };
  stream?: number;
}

/** One layer's batched decode attention over packed per-sequence records (see attention-batch.ts). */
export interface AttentionBatchArgs {
  /** Device copy of `packAttentionSeqs`'s records. */
  seqs: Ptr;
  B: number;
  /** The largest T (query rows) among the sequences. */
  maxT: number;
  /** The longest key list among the sequences (sizes the chunk grid). */
  maxKeys: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale?: number;
  kvDtype: "f32" | "f16" | "bf16";
  /** q and out: float32 rows [.][Hq][D], addressed by each record's qRow. */
  q: Ptr;
  out: Ptr;
  /** Workspace of `attentionPartFloats(...)` floats. */
  part: Ptr;
  /** When set: each query row's log-sum-exp of its scaled logits, float [.][Hq] by q row (for `attentionProbs`). */
  lse?: Ptr;
  /**
   * Records of at least this many rows with contiguous lists (prefills) run as tensor-core tiles,
   * FlashAttention-2 style, when the store is f16/bf16 and D a multiple of 16 up to 128 (default
   * 64; 0: never; P is rounded to the store's type there).
   */
  prefillRows?: number;
  stream?: number;
}

/** The probability pass after a batched attention (see packProbOuts). */
export interface AttentionProbsArgs {
  /** The attention's records and, paired with them, `packProbOuts`'s (device copies). */
  seqs: Ptr;
  outs: Ptr;
  B: number;
  maxKeys: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale?: number;
  kvDtype: "f32" | "f16" | "bf16";
  q: Ptr;
  /** The attention's `lse`. */
  lse: Ptr;
  /**
   * Column sums of contiguous f16/bf16 records of at least this many rows (prefills) run on
   * tensor cores, D a multiple of 16 up to 128 (default 64; 0: never; q and k rounded to the store's type).
   */
  prefillRows?: number;
  stream?: number;
}

export interface DeviceAttentionArgs {
  q: Ptr;
  k: Ptr;
  v: Ptr;
  cap: number;
  T: number;
  /** Device int32[Hkv]: rows before the new ones, per kv head. */
  past: Ptr;
  /** max(past): sizes probs and scores rows (Lmax = maxPast + T). */
  maxPast: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale?: number;
  out: Ptr;
  probs?: NullablePtr;
  scores?: NullablePtr;
  scoreStart?: number;
  /** > 0: each query sees only its last `window` keys (sliding window). */
  window?: number;
  vOnly?: { v: Ptr; cap: number; counts: Ptr; vmax: number; weights: Ptr; mode: "literal" | "mass" } | null;
  stream?: number;
}

/**
 * A CUDA device (or the emulator) with the kernels of the device backend. Activations are
 * float32; weights may be f32, f16 or bf16. Work is queued on stream 0 (compute) or 1 (copy);
 * `download` waits for stream 0.
 */
export class Device {
  private live = new Set<DeviceBuffer>();
  private livePinned = new Set<PinnedBuffer>();
  allocatedBytes = 0;

  private constructor(
    private readonly b: DeviceBinding,
    readonly info: DeviceInfo,
  ) {}

  /** Open device `index` of `kind`. Throws DeviceError (ENOBUILD, ENODEV) when it cannot. */
  static open(kind: DeviceKind = "cuda", index = 0): Device {
    const b = binding(kind);
    let raw: string;
    try {
      raw = wrap(() => b.open(index));
    } catch (e) {
      if (e instanceof DeviceError && e.code === "ENODEV")
        throw new DeviceError("ENODEV", `no usable CUDA device: ${e.message}`);
      throw e;
    }
    const [name, cc, total, sms, bw] = raw.split("|");
    return new Device(b, {
      kind,
      name,
      computeCapability: `${cc[0]}.${cc.slice(1)}`,
      totalBytes: Number(total),
      multiprocessors: Number(sms),
      bandwidthGBs: Number(bw),
    });
  }

  /** Whether a real CUDA device can be opened here, and if not, why (for skips and `auto`). */
  static probe(): { available: boolean; reason: string; info?: DeviceInfo } {
    try {
      const d = Device.open("cuda");
      return {
        available: true,
        reason: `${d.info.name} (sm_${d.info.computeCapability.replace(".", "")})`,
        info: d.info,
      };
    } catch (e) {
      return { available: false, reason: (e as Error).message };
    }
  }

  get emulated(): boolean {
    return this.b.emulated;
  }

  memInfo(): { free: number; total: number } {
    return wrap(() => this.b.memInfo());
  }

  alloc(length: number, dtype: DType = "f32"): DeviceBuffer {
    if (!Number.isInteger(length) || length < 0)
      throw new TensorShapeError("Device.alloc", `length must be a non-negative integer, got ${length}`);
    const ptr = wrap(() => this.b.malloc(length * BYTES[dtype]));
    const buf = new DeviceBuffer(this, ptr, length, dtype);
    this.live.add(buf);
    this.allocatedBytes += buf.bytes;
    return buf;
  }

  /** Allocate and fill from host data: Float32Array (f32), Int32Array (i32) or Uint16Array (the 16-bit dtype given). */
  upload(data: Float32Array | Int32Array | Uint16Array, dtype?: DType): DeviceBuffer {
    const dt: DType =
      dtype ?? (data instanceof Int32Array ? "i32" : data instanceof Uint16Array ? "f16" : "f32");
    const buf = this.alloc(data.length, dt);
    this.write(buf, data);
    return buf;
  }

  /** Copy host data into `buf` from element `offset` (synchronous with stream 0). */
  write(buf: DeviceBuffer, data: Float32Array | Int32Array | Uint16Array, offset = 0): void {
    this.hostSpan("Device.write", buf, data, offset);
    if (data.length > 0) wrap(() => this.b.upload(buf.at(offset), data));
  }

  /** Copy `out.length` elements of `buf` from element `offset` to the host, after stream 0's queued work. */
  read<A extends Float32Array | Int32Array | Uint16Array>(buf: DeviceBuffer, out: A, offset = 0): A {
    this.hostSpan("Device.read", buf, out, offset);
    if (out.length > 0) wrap(() => this.b.download(out, buf.at(offset)));
    return out;
  }

  /** Pinned host float32 memory that kernels read directly (the cold store). */
  pinned(length: number): PinnedBuffer {
    const [ab, host, dev] = wrap(() => this.b.hostAlloc(length * 4));
    const p = new PinnedBuffer(this, ab, host, dev, length);
    this.livePinned.add(p);
    return p;
  }

  /** Zero the first `length` elements of `buf` (all by default), queued on `stream`. */
  zero(buf: DeviceBuffer, stream = 0, length = buf.length): void {
    this.alive(buf, "Device.zero");
    if (length < 0 || length > buf.length)
      throw new TensorShapeError("Device.zero", `length ${length} outside [0, ${buf.length}]`);
    wrap(() => this.b.memset(buf.ptr, 0, length * BYTES[buf.dtype], stream));
  }

  copy(dst: Ptr, src: Ptr, bytes: number, stream = 0): void {
    wrap(() => this.b.copy(this.p(dst, bytes, "copy dst"), this.p(src, bytes, "copy src"), bytes, stream));
  }

  sync(stream = 0): void {
    wrap(() => this.b.sync(stream));
  }

  /** Later work on `waiter` starts after the work queued so far on `waitee`. */
  streamWait(waiter: number, waitee: number): void {
    wrap(() => this.b.streamWait(waiter, waitee));
  }

  /**
   * Record the work queued on `stream` by `body` as a CUDA graph instead of running it (no
   * sync, read, upload or free may happen inside). The graph replays that work with the
   * arguments it had: what changes between replays must live in device memory.
   */
  capture(body: () => void, stream = 0): DeviceGraph {
    wrap(() => this.b.captureBegin(stream));
    try {
      body();
    } catch (e) {
      // End the capture (its graph is dropped) so that the stream is usable again.
      try {
        this.b.graphFree(this.b.captureEnd(stream));
      } catch {}
      throw e;
    }
    const g = wrap(() => this.b.captureEnd(stream));
    return new DeviceGraph(this.b, g, stream);
  }

  /** Free every buffer still allocated (end of a model's life). */
  releaseAll(): void {
    for (const b of [...this.live]) b.free();
    for (const p of [...this.livePinned]) p.free();
  }

  /** @internal */
  release(buf: DeviceBuffer): void {
    if (!this.live.delete(buf)) return;
    this.allocatedBytes -= buf.bytes;
    wrap(() => this.b.free(buf.ptr));
  }

  /** @internal */
  releasePinned(p: PinnedBuffer): void {
    if (!this.livePinned.delete(p)) return;
    wrap(() => this.b.hostFree(p.hostPtr));
  }

  // ---- kernels ----

  embedding(out: Ptr, table: DeviceBuffer, ids: Ptr, n: number, d: number, stream = 0): void {
    const dt = this.weightDtype(table, "embedding");
    wrap(() =>
      this.b.embedding(this.p(out, n * d * 4, "out"), table.ptr, dt, this.p(ids, n * 4, "ids"), n, d, stream),
    );
  }

  rmsnorm(out: Ptr, x: Ptr, w: Ptr, n: number, d: number, eps: number, stream = 0): void {
    wrap(() =>
      this.b.rmsnorm(
        this.p(out, n * d * 4, "out"),
        this.p(x, n * d * 4, "x"),
        this.p(w, d * 4, "w"),
        n,
        d,
        eps,
        stream,
      ),
    );
  }

  gemm(a: GemmArgs): void {
    const { m, n, k } = a;
    const dt = this.weightDtype(a.w, "gemm");
    if (a.w.length < n * k)
      throw new TensorShapeError("gemm", `w has ${a.w.length} elements, needs n*k = ${n * k}`);
    wrap(() =>
      this.b.gemm(
        this.p(a.y, m * n * 4, "y"),
        this.p(a.x, m * k * 4, "x"),
        a.w.ptr,
        dt,
        a.bias == null ? null : this.p(a.bias, n * 4, "bias"),
        m,
        n,
        k,
        a.accumulate ? 1 : 0,
        a.stream ?? 0,
      ),
    );
  }

  /**
   * HF rotate-half RoPE in place on x[T][H][D]. `freq`: a table of D/2 frequencies on the
   * device replacing theta^(-2i/D) (scaled RoPE), and a factor on cos and sin (YaRN).
   */
  rope(
    x: Ptr,
    pos: Ptr,
    T: number,
    H: number,
    D: number,
    theta: number,
    stream = 0,
    freq?: { invFreq: Ptr; scale: number },
    /** A second tensor [T][H][D] at the same positions (k beside q): one launch for both. */
    also?: { x: Ptr; H: number },
  ): void {
    wrap(() =>
      this.b.rope(
        this.p(x, T * H * D * 4, "x"),
        this.p(pos, T * 4, "pos"),
        T,
        H,
        D,
        theta,
        freq ? this.p(freq.invFreq, (D / 2) * 4, "invFreq") : null,
        freq?.scale ?? 1,
        also ? this.p(also.x, T * also.H * D * 4, "also.x") : null,
        also?.H ?? 0,
        stream,
      ),
    );
  }

  siluGate(out: Ptr, gate: Ptr, up: Ptr, n: number, stream = 0): void {
    wrap(() =>
      this.b.siluGate(
        this.p(out, n * 4, "out"),
        this.p(gate, n * 4, "gate"),
        this.p(up, n * 4, "up"),
        n,
        stream,
      ),
    );
  }

  add(y: Ptr, x: Ptr, n: number, stream = 0): void {
    wrap(() => this.b.add(this.p(y, n * 4, "y"), this.p(x, n * 4, "x"), n, stream));
  }

  /** Mixed causal GQA attention; semantics of the CPU `attention` (see kernels.h). */
  attention(a: DeviceAttentionArgs): void {
    const { T, Hq, Hkv, D, cap } = a;
    if (Hkv <= 0 || Hq % Hkv !== 0)
      throw new TensorShapeError("attention", `Hq ${Hq} is not a multiple of Hkv ${Hkv}`);
    if (D > 256) throw new TensorShapeError("attention", `head dim ${D} is over 256`);
    if (a.maxPast + T > cap)
      throw new TensorShapeError("attention", `maxPast ${a.maxPast} + T ${T} exceeds cap ${cap}`);
    const Lmax = a.maxPast + T;
    const vo = a.vOnly ?? null;
    wrap(() =>
      this.b.attention(
        this.p(a.q, T * Hq * D * 4, "q"),
        this.p(a.k, Hkv * cap * D * 4, "k"),
        this.p(a.v, Hkv * cap * D * 4, "v"),
        cap,
        T,
        this.p(a.past, Hkv * 4, "past"),
        a.maxPast,
        Hq,
        Hkv,
        D,
        a.scale ?? 1 / Math.sqrt(D),
        vo ? this.p(vo.v, Hkv * vo.cap * D * 4, "vOnly.v") : null,
        vo ? vo.cap : 0,
        vo ? this.p(vo.counts, Hkv * 4, "vOnly.counts") : null,
        vo ? vo.vmax : 0,
        vo ? this.p(vo.weights, Hq * T * vo.vmax * 4, "vOnly.weights") : null,
        vo?.mode === "mass" ? 1 : 0,
        this.p(a.out, T * Hq * D * 4, "out"),
        a.probs == null ? null : this.p(a.probs, Hq * T * Lmax * 4, "probs"),
        a.scores == null ? null : this.p(a.scores, Hq * Lmax * 4, "scores"),
        a.scoreStart ?? 0,
        a.window ?? 0,
        a.stream ?? 0,
      ),
    );
  }

  /** store[Hkv][cap][D] row dst[t] of each head = src[T][Hkv][D] row t. */
  kvWrite(store: Ptr, cap: number, Hkv: number, D: number, src: Ptr, T: number, dst: Ptr, stream = 0): void {
    wrap(() =>
      this.b.kvWrite(
        this.p(store, Hkv * cap * D * 4, "store"),
        cap,
        Hkv,
        D,
        this.p(src, T * Hkv * D * 4, "src"),
        T,
        this.p(dst, T * 4, "dst"),
        stream,
      ),
    );
  }

  /**
   * n row moves {dst head, dst row, src head, src row} (device int32[n][4]); src may be pinned
   * host memory. `second`: another plane pair moved alike in the same launch (V beside K).
   */
  kvMove(
    dst: Ptr,
    dcap: number,
    src: Ptr,
    scap: number,
    D: number,
    moves: Ptr,
    n: number,
    stream = 0,
    second?: { dst: Ptr; src: Ptr },
  ): void {
    wrap(() =>
      this.b.kvMove(
        this.p(dst, 0, "dst"),
        dcap,
        this.p(src, 0, "src"),
        scap,
        D,
        this.p(moves, n * 16, "moves"),
        n,
        second ? this.p(second.dst, 0, "second.dst") : null,
        second ? this.p(second.src, 0, "second.src") : null,
        stream,
      ),
    );
  }

  /**
   * Decode-sized product for m <= 16 rows: 16-byte weight loads, split-K over a block's warps
   * when the matrix has few columns; the fused gate/up product and QKV segments in the epilogue.
   */
  gemv(a: GemvArgs): void {
    const { m, n, k } = a;
    if (!Number.isInteger(m) || m < 0 || m > 16)
      throw new TensorShapeError("gemv", `m must be an integer in [0, 16], got ${m}`);
    if (a.norm && m > 4)
      throw new TensorShapeError("gemv", `the folded RMSNorm takes at most 4 rows, got ${m}`);
    const dt = this.weightDtype(a.w, "gemv");
    if (a.w.length < n * k)
      throw new TensorShapeError("gemv", `w has ${a.w.length} elements, needs n*k = ${n * k}`);
    const gate = a.mode === "siluGate";
    if (gate) {
      if (!a.w2 || a.w2.dtype !== a.w.dtype || a.w2.length < n * k)
        throw new TensorShapeError("gemv", "siluGate needs w2 (the up matrix) of w's dtype and shape");
      if (Array.isArray(a.y)) throw new TensorShapeError("gemv", "siluGate writes one output");
    }
    let ys: [number, number | null, number | null];
    let n0 = 0;
    let n1 = 0;
    if (Array.isArray(a.y)) {
      if (!a.split) throw new TensorShapeError("gemv", "three outputs need split: [n0, n1]");
      [n0, n1] = a.split;
      const n2 = n - n0 - n1;
      if (!(n0 > 0 && n1 > 0 && n2 > 0))
        throw new TensorShapeError("gemv", `split [${n0}, ${n1}] does not leave three segments of ${n}`);
      ys = [
        this.p(a.y[0], m * n0 * 4, "y0"),
        this.p(a.y[1], m * n1 * 4, "y1"),
        this.p(a.y[2], m * n2 * 4, "y2"),
      ];
    } else ys = [this.p(a.y, m * n * 4, "y"), null, null];
    const mode = a.mode === "accumulate" ? 1 : gate ? 2 : 0;
    wrap(() =>
      this.b.gemv(
        ys[0],
        ys[1],
        ys[2],
        n0,
        n1,
        this.p(a.x, m * k * 4, "x"),
        a.w.ptr,
        gate ? (a.w2 as DeviceBuffer).ptr : null,
        dt,
        a.bias == null ? null : this.p(a.bias, n * 4, "bias"),
        a.bias2 == null ? null : this.p(a.bias2, n * 4, "bias2"),
        a.norm ? this.p(a.norm.w, k * 4, "norm.w") : null,
        a.norm?.eps ?? 0,
        m,
        n,
        k,
        mode,
        a.stream ?? 0,
      ),
    );
  }

  /**
   * RoPE of q [T][Hq][D] and k [T][Hkv][D] in place (as `rope` with `also`), with the KV append
   * folded in: row t with entry[t] >= 0 writes its rotated K row and its V row to the stores of
   * `kvAppend`'s entry entry[t] (the others are left to their own path).
   */
  ropeAppend(a: {
    q: Ptr;
    k: Ptr;
    v: Ptr;
    pos: Ptr;
    T: number;
    Hq: number;
    Hkv: number;
    D: number;
    theta: number;
    freq?: { invFreq: Ptr; scale: number };
    kStores: Ptr;
    vStores: Ptr;
    caps: Ptr;
    dst: Ptr;
    entry: Ptr;
    kvDtype: "f32" | "f16" | "bf16";
    stream?: number;
  }): void {
    const { T, Hq, Hkv, D } = a;
    wrap(() =>
      this.b.ropeAppend(
        this.p(a.q, T * Hq * D * 4, "q"),
        this.p(a.k, T * Hkv * D * 4, "k"),
        this.p(a.v, T * Hkv * D * 4, "v"),
        this.p(a.pos, T * 4, "pos"),
        T,
        Hq,
        Hkv,
        D,
        a.theta,
        a.freq ? this.p(a.freq.invFreq, (D / 2) * 4, "invFreq") : null,
        a.freq?.scale ?? 1,
        this.p(a.kStores, 8, "kStores"),
        this.p(a.vStores, 8, "vStores"),
        this.p(a.caps, 4, "caps"),
        this.p(a.dst, 4, "dst"),
        this.p(a.entry, T * 4, "entry"),
        DTYPE_CODE[a.kvDtype],
        a.stream ?? 0,
      ),
    );
  }

  /**
   * out[r] = the token drawn from row r of x[rows][n] as the host's Sampler would with the
   * row's parameters (`packSampling`: temperature, top-k, top-p and its uniform draw u).
   */
  sample(out: Ptr, x: Ptr, params: Ptr, rows: number, n: number, stream = 0): void {
    if (!(Number.isInteger(n) && n > 0))
      throw new TensorShapeError("sample", `n must be a positive integer, got ${n}`);
    wrap(() =>
      this.b.sample(
        this.p(out, rows * 4, "out"),
        this.p(x, rows * n * 4, "x"),
        this.p(params, rows * 16, "params"),
        rows,
        n,
        stream,
      ),
    );
  }

  /** out[r] = argmax of row r of x[rows][n] (int32, the lowest index among equals, as the host's). */
  argmax(out: Ptr, x: Ptr, rows: number, n: number, stream = 0): void {
    wrap(() => this.b.argmax(this.p(out, rows * 4, "out"), this.p(x, rows * n * 4, "x"), rows, n, stream));
  }

  /** Floats of workspace `attentionBatch` needs for this shape. */
  attentionPartFloats(B: number, maxT: number, maxKeys: number, Hq: number, D: number): number {
    return this.b.attentionPartFloats(B, maxT, maxKeys, Hq, D);
  }

  /**
   * One layer's attention for a whole batch (flash-decoding over key chunks; a GQA group's
   * query heads share each K/V read; selections and V-only rows read in place).
   */
  attentionBatch(a: AttentionBatchArgs): void {
    const { B, maxT, maxKeys, Hq, Hkv, D } = a;
    checkBatchHeads("attentionBatch", Hq, Hkv, a.prefillRows);
    const part = this.attentionPartFloats(B, maxT, maxKeys, Hq, D);
    wrap(() =>
      this.b.attentionBatch(
        this.p(a.seqs, B * ATTN_SEQ_BYTES, "seqs"),
        B,
        maxT,
        maxKeys,
        Hq,
        Hkv,
        D,
        a.scale ?? 1 / Math.sqrt(D),
        DTYPE_CODE[a.kvDtype],
        this.p(a.q, 4, "q"),
        this.p(a.out, 4, "out"),
        this.p(a.part, part * 4, "part"),
        0,
        a.lse === undefined ? 0 : this.p(a.lse, 4, "lse"),
        a.prefillRows ?? 64,
        a.stream ?? 0,
      ),
    );
  }

  /**
   * Probabilities of a batched attention's keys, recomputed with its log-sum-exp: written as
   * rows, or summed per kv head into score tables at the keys' positions (see packProbOuts).
   */
  attentionProbs(a: AttentionProbsArgs): void {
    const { B, maxKeys, Hq, Hkv, D } = a;
    checkBatchHeads("attentionProbs", Hq, Hkv, a.prefillRows);
    wrap(() =>
      this.b.attentionProbs(
        this.p(a.seqs, B * ATTN_SEQ_BYTES, "seqs"),
        this.p(a.outs, B * PROB_OUT_BYTES, "outs"),
        B,
        maxKeys,
        Hq,
        Hkv,
        D,
        a.scale ?? 1 / Math.sqrt(D),
        DTYPE_CODE[a.kvDtype],
        this.p(a.q, 4, "q"),
        this.p(a.lse, 4, "lse"),
        a.prefillRows ?? 64,
        a.stream ?? 0,
      ),
    );
  }

  /**
   * Ranked selections of `count` lists, one block each (records of `packRankLists`, on the
   * device). `maxN`: the largest n among them (lists up to 48K positions rank from a copy of
   * their scores in shared memory).
   */
  rankSelect(lists: Ptr, count: number, maxN: number, stream = 0): void {
    if (count <= 0) return;
    if (!Number.isInteger(maxN) || maxN < 0)
      throw new TensorShapeError("rankSelect", `maxN must be a non-negative integer, got ${maxN}`);
    wrap(() => this.b.rankSelect(this.p(lists, count * RANK_LIST_BYTES, "lists"), count, maxN, stream));
  }

  /**
   * Append n rows to n stores: entry i takes row rows[i] (i without `rows`) of float32 k/v
   * [.][Hkv][D] to row dst[i] of each kv head of kStores[i]/vStores[i] (int64 device addresses,
   * cap[i] rows per head), converted to kvDtype.
   */
  kvAppend(a: {
    kStores: Ptr;
    vStores: Ptr;
    caps: Ptr;
    dst: Ptr;
    rows?: Ptr;
    k: Ptr;
    v: Ptr;
    n: number;
    Hkv: number;
    D: number;
    kvDtype: "f32" | "f16" | "bf16";
    stream?: number;
  }): void {
    const { n, Hkv, D } = a;
    wrap(() =>
      this.b.kvAppend(
        this.p(a.kStores, n * 8, "kStores"),
        this.p(a.vStores, n * 8, "vStores"),
        this.p(a.caps, n * 4, "caps"),
        this.p(a.dst, n * 4, "dst"),
        a.rows == null ? 0 : this.p(a.rows, n * 4, "rows"),
        this.p(a.k, a.rows == null ? n * Hkv * D * 4 : 4, "k"),
        this.p(a.v, a.rows == null ? n * Hkv * D * 4 : 4, "v"),
        n,
        Hkv,
        D,
        DTYPE_CODE[a.kvDtype],
        a.stream ?? 0,
      ),
    );
  }

  private weightDtype(w: DeviceBuffer, op: string): number {
    this.alive(w, op);
    if (w.dtype === "i32") throw new TensorShapeError(op, "weights must be f32, f16 or bf16");
    return DTYPE_CODE[w.dtype];
  }

  /** A host array and a span of a device buffer must agree in element size and fit. */
  private hostSpan(
    op: string,
    buf: DeviceBuffer,
    host: ArrayBufferView & { length: number; BYTES_PER_ELEMENT: number },
    offset: number,
  ): void {
    if (BYTES[buf.dtype] !== host.BYTES_PER_ELEMENT)
      throw new TensorShapeError(op, `a ${host.constructor.name} does not match a ${buf.dtype} buffer`);
    if (offset < 0 || offset + host.length > buf.length)
      throw new TensorShapeError(
        op,
        `${host.length} elements at ${offset} overflow a buffer of ${buf.length}`,
      );
    this.alive(buf, op);
  }

  private alive(b: DeviceBuffer, op: string): void {
    if (b.released) throw new TensorShapeError(op, "buffer was freed");
  }

  private p(x: Ptr, needBytes: number, what: string): number {
    if (typeof x === "number") {
      if (!Number.isSafeInteger(x) || x <= 0)
        throw new TensorShapeError("device", `${what}: not a device address`);
      return x;
    }
    if (x instanceof DeviceBuffer) this.alive(x, what);
    if (x.bytes < needBytes)
      throw new TensorShapeError("device", `${what}: buffer of ${x.bytes} bytes, needs ${needBytes}`);
    return x.ptr;
  }
}
