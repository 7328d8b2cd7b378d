import { addonFile, loadAddon } from "./addon.js";

/** The raw binding (internal: argument checking happens in ops.ts and again in C++). */
export interface NativeBinding {
  rope(
    x: Float32Array,
    pos: Int32Array,
    T: number,
    H: number,
    D: number,
    theta: number,
    invFreq?: Float32Array | null,
    scale?: number,
  ): void;
  attention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    cap: number,
    T: number,
    past: Int32Array,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
    out: Float32Array,
    probs: Float32Array | null,
    scores: Float32Array | null,
    scoreStart: number,
    vo: Float32Array | null,
    vcap: number,
    nV: Int32Array | null,
    w: Float32Array | null,
    mode: number,
    window?: number,
  ): void;
  /** Writes the selected positions to out; returns how many. */
  topPositions(
    scores: Float32Array | Float64Array,
    n: number,
    k: number,
    exclude: Uint8Array | null,
    out: Int32Array,
    byScore?: boolean,
  ): number;
  kvCopyRows(
    src: Float32Array | Int8Array,
    scales: Float32Array | null,
    srcHeads: number,
    scap: number,
    dst: Float32Array,
    dstHeads: number,
    dcap: number,
    D: number,
    moves: Int32Array,
    count: number,
  ): void;
  /** rankSplit's positional arguments, as rank-split.ts's nativeArgs lists them. */
  rankSplit(...args: unknown[]): void;
  scatterAdd(
    acc: Float64Array,
    pos: Int32Array,
    src: Float32Array,
    offset: number,
    rows: number,
    stride: number,
    weight: number,
  ): void;
  /** rankSplit's positional arguments per call. */
  rankSplitMany(calls: unknown[][]): void;
  topkRagged(
    x: Float32Array,
    rows: number,
    stride: number,
    lens: Int32Array,
    ks: Int32Array,
    off: Int32Array,
    out: Int32Array,
  ): void;
  kvWriteQ8(
    store: Int8Array,
    scales: Float32Array,
    cap: number,
    Hkv: number,
    D: number,
    src: Float32Array,
    T: number,
    dst: Int32Array,
  ): void;
  /** Each job is the argument list of `attention`; all run in one parallel region. */
  attentionBatch(jobs: unknown[][]): void;
  kvWrite(
    store: Float32Array,
    cap: number,
    Hkv: number,
    D: number,
    src: Float32Array,
    T: number,
    dst: Int32Array,
  ): void;
  kvGather(
    src: Float32Array,
    scap: number,
    dst: Float32Array,
    dcap: number,
    Hkv: number,
    D: number,
    idx: Int32Array,
    off: Int32Array,
    dstStart: Int32Array,
  ): void;
  topk(x: Float32Array, rows: number, n: number, k: number, out: Int32Array): void;
  sum(x: Float32Array): number;
  attentionRowTops(probs: Float32Array, T: number, mode: number, off: Int32Array, out: Int32Array): void;
  decoderStep(
    shape: Int32Array,
    eps: number,
    weights: Float32Array,
    kv: Float32Array,
    cap: number,
    past: number,
    tokens: Int32Array,
    invFreq: Float32Array | null,
    theta: number,
    ropeScale: number,
    logits: Float32Array,
  ): void;
  qgemmPackedBytes(type: number, N: number, K: number): number;
  qgemmPack(type: number, src: Uint8Array, N: number, K: number, dst: Uint8Array): void;
  qgemm(
    type: number,
    packed: Uint8Array,
    N: number,
    K: number,
    x: Float32Array,
    M: number,
    y: Float32Array,
    threads: number,
    add?: boolean,
  ): void;
  swiglu(gu: Float32Array, M: number, I: number, out: Float32Array): void;
  cudaInfo(): { built: boolean; deviceCount: number; code: number; message: string };
  buildInfo(): { threads: number; simd: string; portable: boolean };
  setThreads(n: number): void;
}

/** The addon file in use (a source build or a prebuilt one). */
export let nativeFile = "";

function load(): NativeBinding {
  // The kernels share 2-16 cores with onnxruntime's own thread pool; OpenMP threads that
  // spin after each region starve ORT (measured: 18x slower batch-1 decode). libgomp reads
  // this when the addon is loaded, so it is set before the require below (an empty value
  // counts as unset there, so here too).
  if (!process.env.OMP_WAIT_POLICY) process.env.OMP_WAIT_POLICY = "passive";
  const path = addonFile("smallkv_tensor");
  if (!path)
    throw new Error(
      `@smallkv/tensor: no native addon for ${process.platform}-${process.arch} (no source build in build/Release, no prebuilt one): run \`pnpm install\` (or \`node scripts/build.cjs\` in the package)`,
    );
  try {
    nativeFile = path;
    return loadAddon<NativeBinding>(path);
  } catch (e) {
    throw new Error(
      `@smallkv/tensor: the native addon ${path} does not load: rebuild it with SMALLKV_BUILD_FROM_SOURCE=1 \`npm rebuild @smallkv/tensor\` (or \`node scripts/build.cjs\` in the package). Cause: ${(e as Error).message}`,
    );
  }
}

export const native: NativeBinding = load();
