import { scatterAdd } from "@smallkv/tensor";
import { ContextLengthError, InvalidOptionError } from "./errors.js";
import type { Model, StepInput, StepOutput } from "./model.js";
import type { AttentionObservation, KvPolicyHook, SequenceOptions } from "./policy-hook.js";
import { positionsUpTo } from "./positions.js";
import type { Sequence } from "./sequence.js";
import type { TextTokenizer } from "./tokenizer.js";

/** What generation needs of a model: the plain Model and the LLM+assistant pair both qualify. */
export interface StepModel {
  readonly name: string;
  readonly config: Model["config"];
  readonly tokenizer: TextTokenizer;
  newSequence(policy?: KvPolicyHook, opts?: SequenceOptions): Sequence;
  forward(inputs: StepInput[]): Promise<StepOutput[]>;
  /** The model that drafts tokens for speculative decoding (an assistant), if any. */
  readonly draftModel?: Model;
  /** Roll sequences back to a length since their checkpoint (Model.rollback). */
  rollback(items: { seq: Sequence; length: number }[]): void;
  /** Close a sequence's checkpoint (Model.settle). */
  settle(seq: Sequence): void;
  /** The device the (LLM's) forward pass runs on; null on the CPU. */
  readonly device: Model["device"];
}

/** Two models that cannot serve as a pair (different tokenizers or vocabularies). */
export class AssistantMismatchError extends Error {
  override readonly name = "AssistantMismatchError";
}

/** What the assistant shows the policy at one position: its attention rows and accumulated scores. */
interface AssistantView {
  rows: (Float32Array | null)[];
  rowsT: number;
  rowsN: number;
  /** null: a drafted view's scores, not computed yet (few policies read them). */
  scores: Float64Array[][] | null;
  /** Tokens the assistant had processed (-1: its live sequence's length). */
  length: number;
}

/** A drafted position's view, with what each layer observed there. */
type DraftedView = AssistantView & { obs: AttentionObservation[] };

/** Add one observation's attention to a layer's accumulators acc[h] (grown to cover it). */
function accumulate(acc: Float64Array[], o: AttentionObservation, H: number): void {
  const n = o.start + o.T;
  for (let h = 0; h < H; h++) {
    if (acc[h].length < n) {
      const next = new Float64Array(Math.max(n, acc[h].length * 2));
      next.set(acc[h]);
      acc[h] = next;
    }
  }
  // Locals for the hot loops: the JIT does not hoist the property loads out of them.
  const { T, Lmax, probs, scores } = o;
  // Native adds over the identity positions, in the loops' order (bit for bit).
  const pos = positionsUpTo(Lmax);
  if (probs) for (let h = 0; h < H; h++) scatterAdd(acc[h], pos, probs, h * T * Lmax, T, Lmax);
  else if (scores) for (let h = 0; h < H; h++) scatterAdd(acc[h], pos, scores, h * Lmax, 1, 0);
}

/**
 * The assistant's view for one LLM sequence: its own sequence (full KV cache), its current
 * attention rows and its accumulated attention, per SLM layer and query head.
 *
 * While it drafts ahead of the LLM (speculative decoding) it keeps its view after each drafted
 * position: the LLM's verify rows each see it as of their own position (`viewAt`), exactly as
 * one-token decoding would, and a rollback returns to any of them (`rollbackTo`).
 */
export class AssistantState {
  private readonly live: AssistantView & { scores: Float64Array[][] };
  private view: AssistantView;
  /**
   * While drafting: the accumulated scores when the draft began and the views by position.
   * A view's scores are the start's plus the observations up to it, added in the same order
   * as the live accumulation (so equal to what it held then), made only when read.
   */
  private drafted: { base: Float64Array[][]; start: number; views: Map<number, DraftedView> } | null = null;

  constructor(
    readonly model: Model,
    readonly seq: Sequence,
  ) {
    const c = model.config;
    this.live = {
      rows: new Array(c.numLayers).fill(null),
      rowsT: 0,
      rowsN: 0,
      length: -1,
      scores: Array.from({ length: c.numLayers }, () =>
        Array.from({ length: c.numHeads }, () => new Float64Array(64)),
      ),
    };
    this.view = this.live;
  }

  /** rows[layer]: the current step's attention rows [h][T][n] (n = tokens so far), or null. */
  get rows(): (Float32Array | null)[] {
    return this.view.rows;
  }
  get rowsT(): number {
    return this.view.rowsT;
  }
  set rowsT(v: number) {
    this.view.rowsT = v;
  }
  get rowsN(): number {
    return this.view.rowsN;
  }
  set rowsN(v: number) {
    this.view.rowsN = v;
  }
  /** scores[layer][h]: accumulated attention (prefill column sums + every decode row) per position. */
  get scores(): Float64Array[][] {
    this.view.scores ??= this.scoresAt(this.view.length - 1);
    return this.view.scores;
  }

  /** The accumulated scores after drafted position p: the draft's start plus what followed. */
  private scoresAt(p: number): Float64Array[][] {
    const d = this.drafted!;
    const H = this.model.config.numHeads;
    const acc = d.base.map((layer) => layer.map((a) => a.slice()));
    for (let q = d.start; q <= p; q++) d.views.get(q)?.obs.forEach((o, l) => accumulate(acc[l], o, H));
    return acc;
  }

  /** Tokens the assistant has processed, as of the view shown. */
  get length(): number {
    return this.view.length < 0 ? this.seq.length : this.view.length;
  }

  /** Current attention row of SLM head h of `layer` for query row t (length rowsN). */
  row(layer: number, h: number, t = this.rowsT - 1): Float32Array {
    const r = this.rows[layer];
    if (!r) throw new Error(`the assistant has no attention rows for layer ${layer} at this step`);
    return r.subarray((h * this.rowsT + t) * this.rowsN, (h * this.rowsT + t + 1) * this.rowsN);
  }

  /** Accumulated attention of SLM head h of `layer` over positions [0, n). */
  score(layer: number, h: number, n: number): Float64Array {
    return this.scores[layer][h].subarray(0, n);
  }

  /** Start keeping the view after each position the assistant processes from now on. */
  beginDraft(): void {
    const n = this.seq.length;
    this.drafted = {
      base: this.live.scores.map((layer) => layer.map((a) => a.slice(0, n))),
      start: n,
      views: new Map(),
    };
  }

  /** Stop keeping views (the draft round is over) and show the live state. */
  endDraft(): void {
    this.drafted = null;
    this.view = this.live;
  }

  /** Show the view as of `position` (after the assistant processed it), or the live one (null). */
  viewAt(position: number | null): void {
    this.view = (position !== null && this.drafted?.views.get(position)) || this.live;
  }

  /**
   * Cut the assistant back to its first n tokens: its sequence, and rows and scores as they
   * were after position n − 1 (which it must have drafted this round).
   */
  rollbackTo(n: number): void {
    if (n === this.seq.length) return;
    const v = this.drafted?.views.get(n - 1);
    if (!v) throw new Error(`the assistant kept no view at position ${n - 1} to roll back to`);
    const live = this.live;
    live.rows = v.rows.slice();
    live.rowsT = v.rowsT;
    live.rowsN = v.rowsN;
    this.putScores(v.scores ?? this.scoresAt(n - 1));
    this.seq.truncateTo(n);
  }

  /**
   * What a prefix cache keeps of this view after a prefill chunk: the accumulated scores over
   * the first n positions. The rows are not kept: the next step computes its own.
   */
  prefixState(n: number): Float64Array[][] {
    if (this.drafted) throw new Error("prefixState: the assistant is drafting");
    return this.live.scores.map((layer) => layer.map((a) => a.slice(0, n)));
  }

  /** Start from a prefix cache's state (a fresh view, its sequence already holding the prefix). */
  restorePrefix(scores: Float64Array[][]): void {
    const live = this.live;
    live.rows.fill(null);
    live.rowsT = 0;
    live.rowsN = 0;
    this.putScores(scores);
  }

  /** The live accumulated scores become `scores` (positions past them: nothing). */
  private putScores(scores: Float64Array[][]): void {
    const live = this.live;
    scores.forEach((layer, l) =>
      layer.forEach((x, h) => {
        if (live.scores[l][h].length < x.length) live.scores[l][h] = new Float64Array(x.length * 2);
        live.scores[l][h].fill(0, x.length);
        live.scores[l][h].set(x);
      }),
    );
  }

  observe(o: AttentionObservation): void {
    const live = this.live;
    accumulate(live.scores[o.layer], o, this.model.config.numHeads);
    if (o.probs) {
      live.rows[o.layer] = o.probs;
      live.rowsT = o.T;
      live.rowsN = o.Lmax;
    } else if (o.scores) live.rows[o.layer] = null;
    if (this.drafted) {
      const n = o.start + o.T;
      const views = this.drafted.views;
      let v = views.get(n - 1);
      if (!v) {
        const L = this.model.config.numLayers;
        v = { rows: new Array(L).fill(null), rowsT: 0, rowsN: 0, length: n, scores: null, obs: [] };
        views.set(n - 1, v);
      }
      v.rows[o.layer] = live.rows[o.layer];
      v.rowsT = live.rowsT;
      v.rowsN = live.rowsN;
      v.obs[o.layer] = o;
    }
  }
}

/**
 * The assistant keeps a step's full attention rows (what SmallKV's current-row ranking and
 * V-only weights read) when they hold at most this many floats per layer; a longer step
 * (a long prefill) only accumulates column sums, and the policy falls back for that step.
 */
export const ASSISTANT_ROWS_MAX_FLOATS = 1 << 22;

/**
 * An LLM with an assistant SLM of the same family and tokenizer. Each step runs the SLM on
 * the same tokens first (its full KV cache, its attention observed), then the LLM, whose
 * sequences carry `assistant` for their policy. Batched like the plain model.
 */
export class AssistedModel implements StepModel {
  constructor(
    readonly llm: Model,
    readonly slm: Model,
  ) {
    const a = llm.tokenizer;
    const b = slm.tokenizer;
    // Same tokenizer vocabulary; the embedding tables may be padded to different sizes
    // (Qwen2.5-0.5B has 151936 rows, Qwen2.5-14B 152064): every token id must fit both.
    const fits = a.vocabSize <= Math.min(llm.config.vocabSize, slm.config.vocabSize);
    if (a.fingerprint !== b.fingerprint || !fits) {
      throw new AssistantMismatchError(
        `the assistant ${slm.name} does not share the tokenizer of ${llm.name} (tokenizer vocabulary ${b.fingerprint} vs ${a.fingerprint}, ${a.vocabSize} tokens, embedding rows ${slm.config.vocabSize} vs ${llm.config.vocabSize}); SmallKV needs a same-family pair`,
      );
    }
    if (slm.config.maxPositions < llm.config.maxPositions) {
      throw new AssistantMismatchError(
        `the assistant's context (${slm.config.maxPositions}) is shorter than the model's (${llm.config.maxPositions})`,
      );
    }
  }

  /** Seconds in the assistant's and the LLM's forward steps since construction. */
  readonly timing = { slm: 0, llm: 0 };

  get name(): string {
    return this.llm.name;
  }
  get config() {
    return this.llm.config;
  }
  get tokenizer() {
    return this.llm.tokenizer;
  }

  get device(): Model["device"] {
    return this.llm.device;
  }

  /** The model that drafts for speculative decoding: the assistant. */
  get draftModel(): Model {
    return this.slm;
  }

  rollback(items: { seq: Sequence; length: number }[]): void {
    this.llm.rollback(items);
  }

  settle(seq: Sequence): void {
    this.llm.settle(seq);
  }

  newSequence(policy?: KvPolicyHook, opts?: SequenceOptions): Sequence {
    // Sequences whose policy ignores the assistant cost nothing extra.
    if (!policy?.usesAssistant) return this.llm.newSequence(policy, opts);
    const seq = this.llm.newSequence(policy, opts);
    let state: AssistantState | null = null;
    // A policy on its device form reads the assistant's rows where they are made, on the device
    // (the assistant's own step writes them; nothing comes back). Otherwise the host observes.
    // (one process shares one CUDA device and its streams, so each model's steps run in order).
    const onDevice = !!seq.deviceForm && this.slm.device?.info.kind === this.llm.device?.info.kind;
    if (seq.deviceForm && !onDevice) {
      seq.release();
      throw new AssistantMismatchError(
        `the policy ${policy.name} runs on the device but the assistant ${this.slm.name} does not share its device; load both on the same device, or load the LLM with devicePolicies: false`,
      );
    }
    const observer: KvPolicyHook = onDevice
      ? { name: "assistant-rows", device: { rows: true } }
      : {
          name: "assistant-observer",
          wantsAttention: (_s, _l, step) =>
            this.slm.config.numHeads * step.T * (step.start + step.T) <= ASSISTANT_ROWS_MAX_FLOATS
              ? "probs"
              : { scores: true },
          observe: (_s, o) => state!.observe(o),
        };
    const slmSeq = this.slm.newSequence(observer);
    state = new AssistantState(this.slm, slmSeq);
    seq.assistant = state;
    return seq;
  }

  async forward(inputs: StepInput[]): Promise<StepOutput[]> {
    for (const { seq, tokens } of inputs) {
      if (seq.model !== this.llm)
        throw new InvalidOptionError("seq", `sequence ${seq.id} was not created by this AssistedModel`);
      if (seq.length + tokens.length > this.config.maxPositions)
        throw new ContextLengthError(seq.length + tokens.length, this.config.maxPositions);
    }
    const t0 = performance.now();
    // A verify step's tokens were drafted by the assistant itself: it has seen them already.
    const assisted = inputs.filter(({ seq, drafted }) => seq.assistant && !drafted);
    if (assisted.length) {
      await this.slm.forward(
        assisted.map(({ seq, tokens }) => ({ seq: seq.assistant!.seq, tokens, logits: "none" as const })),
      );
    }

    const t1 = performance.now();
    try {
      return await this.llm.forward(inputs);
    } finally {
      this.timing.slm += (t1 - t0) / 1000;
      this.timing.llm += (performance.now() - t1) / 1000;
    }
  }
}
