import { type DecoderShape, decoderCacheFloats, decoderStep, packDecoderWeights } from "@smallkv/tensor";
import type { ModelConfig } from "./config.js";
import { InvalidOptionError } from "./errors.js";
import { ropeKernelArgs } from "./rope.js";
import type { LayeredWeights } from "./weights.js";

/** A draft model's per-sequence state: the tokens it has seen (its cache follows them). */
export interface DraftState {
  readonly tokens: number[];
  readonly length: number;
  /** Cut back to the first n tokens. */
  truncateTo(n: number): void;
}

/** A small model's whole step in one call per step (no KV policy): what drafts for speculation. */
export interface DraftDecoder {
  /** Sequences cost the same alone or together (no padding): use it beside others too. */
  readonly perSequence: boolean;
  newState(): DraftState;
  /** Feed tokens to each sequence; returns each one's last logits. */
  stepMany(items: { state: DraftState; tokens: number[] }[]): Promise<Float32Array[]>;
}

/** Models up to this many parameters draft natively; larger ones through onnxruntime (threaded GEMMs). */
export const NATIVE_DRAFT_MAX_PARAMETERS = 4_000_000;

/** The tokens a draft state has seen; cutting them back leaves its cache rows to be overwritten. */
export class DraftTokens implements DraftState {
  readonly tokens: number[] = [];
  length = 0;

  /** Cut back to the first n tokens (the rows stay until overwritten). */
  truncateTo(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.length))
      throw new InvalidOptionError("truncate", `length ${n} is outside [0, ${this.length}]`);
    this.length = n;
    this.tokens.length = n;
  }
}

/** Whether one whole-step draft graph or kernel serves this model (full attention, fixed RoPE). */
export function wholeStepFits(c: ModelConfig): boolean {
  return !c.slidingWindow.some((w) => w !== null) && !c.rope.dynamic;
}

/** A draft step's inputs, checked: states of this decoder, tokens in the vocabulary and the context. */
export function checkDraftItems<S extends DraftState>(
  items: { state: DraftState; tokens: number[] }[],
  c: ModelConfig,
  kind: new () => S,
): { state: S; tokens: number[] }[] {
  for (const { state, tokens } of items) {
    if (!(state instanceof kind))
      throw new InvalidOptionError("state", "not a state of this decoder (use its newState())");
    if (tokens.length === 0) throw new InvalidOptionError("tokens", "a step needs at least one token");
    if (state.length + tokens.length > c.maxPositions)
      throw new InvalidOptionError(
        "tokens",
        `context ${state.length + tokens.length} exceeds ${c.maxPositions}`,
      );
    for (const t of tokens)
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize)
        throw new InvalidOptionError("tokens", `token id ${t} is outside [0, ${c.vocabSize})`);
  }
  return items as { state: S; tokens: number[] }[];
}

class NativeState extends DraftTokens {
  cap = 0;
  kv = new Float32Array(0);
}

/**
 * A small f32 model's step as one native call per sequence (@smallkv/tensor `decoderStep`):
 * at a few hundred thousand parameters the arithmetic is microseconds, and the per-layer
 * onnxruntime calls (or a fused graph's hundred nodes) were most of a draft step.
 */
export class NativeDecoder implements DraftDecoder {
  readonly perSequence = true;
  private readonly shape: DecoderShape;
  private readonly weights: Float32Array;
  private readonly rope: { invFreq: Float32Array; scale: number } | undefined;

  /** Null where the kernel does not apply (sliding windows, dynamic RoPE). */
  static create(
    config: ModelConfig,
    w: LayeredWeights,
    timing: { forward: number; steps: number },
  ): NativeDecoder | null {
    if (!wholeStepFits(config)) return null;
    return new NativeDecoder(config, w, timing);
  }

  private constructor(
    readonly config: ModelConfig,
    w: LayeredWeights,
    private readonly timing: { forward: number; steps: number },
  ) {
    const c = config;
    this.shape = {
      layers: c.numLayers,
      hidden: c.hiddenSize,
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      intermediate: c.intermediateSize,
      vocab: c.vocabSize,
      eps: c.rmsNormEps,
      qkvBias: c.qkvBias,
      oBias: c.oBias,
      mlpBias: c.mlpBias,
      qkNorm: c.qkNorm,
    };
    const layers = Array.from({ length: c.numLayers }, (_, l) => w.layer(l));
    this.weights = packDecoderWeights(this.shape, layers, w.norm, w.lmHead, w.embed);
    this.rope = ropeKernelArgs(c.rope, c.headDim, 0);
  }

  newState(): DraftState {
    return new NativeState();
  }

  /** Room for n positions: the cache is [layers][K, V][kvHeads][cap][headDim], so it is re-laid out. */
  private ensure(s: NativeState, n: number): void {
    if (n <= s.cap) return;
    let cap = Math.max(64, s.cap);
    while (cap < n) cap *= 2;
    cap = Math.min(cap, Math.max(n, this.config.maxPositions));
    const kv = new Float32Array(decoderCacheFloats(this.shape, cap));
    const D = this.shape.headDim;
    const blocks = this.shape.layers * 2 * this.shape.kvHeads;
    for (let b = 0; b < blocks; b++)
      kv.set(s.kv.subarray(b * s.cap * D, (b * s.cap + s.length) * D), b * cap * D);
    s.kv = kv;
    s.cap = cap;
  }

  async stepMany(items: { state: DraftState; tokens: number[] }[]): Promise<Float32Array[]> {
    const c = this.config;
    const checked = checkDraftItems(items, c, NativeState);
    const t0 = performance.now();
    const out = checked.map(({ state: s, tokens }) => {
      this.ensure(s, s.length + tokens.length);
      const logits = decoderStep({
        shape: this.shape,
        weights: this.weights,
        kv: s.kv,
        cap: s.cap,
        past: s.length,
        tokens: Int32Array.from(tokens),
        theta: c.ropeTheta,
        rope: this.rope,
      });
      s.length += tokens.length;
      for (const t of tokens) s.tokens.push(t);
      return logits;
    });
    this.timing.forward += (performance.now() - t0) / 1000;
    this.timing.steps++;
    return out;
  }
}
