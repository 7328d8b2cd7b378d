import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  assetsDir,
  type DraftDecoder,
  type DraftState,
  DraftTuner,
  expectedTokens,
  Model,
  NativeDecoder,
  predictedSpeedup,
  Sampler,
  verifyDraft,
} from "../src/index.js";

// The pieces of speculative decoding that need no policy: the draft decoders, the
// acceptance rule, the analysis and the adaptive tuner. (Policies: packages/policies.)

// Both draft decoders give the per-layer runner's logits (1e-4) over a prefill and one-token
// steps, and a truncated state goes on as if the cut tokens had never been fed.
async function matchesRunner(model: Model, dec: DraftDecoder, ids: number[]): Promise<void> {
  const step = async (st: DraftState, tokens: number[]) => (await dec.stepMany([{ state: st, tokens }]))[0];
  const seq = model.newSequence();
  const st = dec.newState();
  const pairs: [Float32Array, Float32Array][] = [
    [(await model.forward([{ seq, tokens: ids }]))[0].slice(), (await step(st, ids)).slice()],
  ];
  const V = model.config.vocabSize;
  for (const t of [45, V - 1, 12, 99 % V])
    pairs.push([(await model.forward([{ seq, tokens: [t] }]))[0].slice(), (await step(st, [t])).slice()]);
  for (const [a, b] of pairs)
    for (let j = 0; j < a.length; j++) expect(Math.abs(a[j] - b[j])).toBeLessThan(1e-4);
  st.truncateTo(st.length - 2);
  seq.truncateTo(seq.length - 2);
  const a = (await model.forward([{ seq, tokens: [7, 8] }]))[0];
  const b = await step(st, [7, 8]);
  for (let j = 0; j < a.length; j++) expect(Math.abs(a[j] - b[j])).toBeLessThan(1e-4);
  expect(st.tokens).toEqual(seq.tokens);
  expect(() => st.truncateTo(st.length + 1)).toThrow();
  seq.release();
}

describe("draft decoders", () => {
  let slm: Model;
  let ids: number[];
  beforeAll(async () => {
    slm = await Model.load(join(assetsDir(), "models", "stories260K-slm"));
    ids = slm.tokenizer.encode("Once upon a time there was a little girl named Lily. She loved to play");
  });

  it("the fused onnxruntime graph gives the runner's logits", async () => {
    const dec = (await slm.fusedDecoder())!;
    expect(dec).not.toBeNull();
    await matchesRunner(slm, dec, ids);
  });

  it("a small f32 model drafts natively, with the runner's logits", async () => {
    const dec = (await slm.draftDecoder())!;
    expect(dec).toBeInstanceOf(NativeDecoder);
    await matchesRunner(slm, dec, ids);
    // Several sequences of different lengths in one call: each as alone.
    const [s1, s2] = [dec.newState(), dec.newState()];
    const [a, b] = await dec.stepMany([
      { state: s1, tokens: ids },
      { state: s2, tokens: ids.slice(0, 5) },
    ]);
    const alone = dec.newState();
    expect(Array.from(b)).toEqual(
      Array.from((await dec.stepMany([{ state: alone, tokens: ids.slice(0, 5) }]))[0]),
    );
    expect(a.length).toBe(slm.config.vocabSize);
    await expect(dec.stepMany([{ state: s1, tokens: [slm.config.vocabSize] }])).rejects.toThrow(/outside/);
    const fused = (await slm.fusedDecoder())!;
    await expect(dec.stepMany([{ state: fused.newState(), tokens: [1] }])).rejects.toThrow(/not a state/);
  });

  // Qwen3's per-head q/k norms, Qwen2's biases and untied head, Llama 3's scaled RoPE.
  for (const arch of ["llama3", "qwen3", "qwen2-untied-bias"])
    it(`drafts natively on the ${arch} checkpoint with the runner's logits`, async () => {
      const m = await Model.load(join(assetsDir(), "models", "arch", arch));
      const dec = (await m.draftDecoder())!;
      expect(dec).toBeInstanceOf(NativeDecoder);
      const V = m.config.vocabSize;
      await matchesRunner(
        m,
        dec,
        Array.from({ length: 20 }, (_, i) => (i * 37 + 5) % V),
      );
    });
});

describe("draft verification", () => {
  const V = 4;
  const rows = (...r: number[][]) => Float32Array.from(r.flat());

  it("greedy keeps the agreeing prefix and adds the LLM's own token", () => {
    const s = new Sampler({ temperature: 0 });
    // Rows after each fed token: argmax 2, then 1, then 3.
    const logits = rows([0, 0, 5, 0], [0, 5, 0, 0], [0, 0, 0, 5]);
    expect(verifyDraft(s, logits, V, [2, 1], [null, null])).toEqual({ accepted: 2, next: 3 });
    expect(verifyDraft(s, logits, V, [2, 0], [null, null])).toEqual({ accepted: 1, next: 1 });
    expect(verifyDraft(s, logits, V, [3, 1], [null, null])).toEqual({ accepted: 0, next: 2 });
  });

  it("sampling keeps the LLM's distribution whatever the draft's (chi-square, 20000 draws)", () => {
    // p = softmax(log p) at temperature 1; a draft q far from it.
    const p = [0.1, 0.2, 0.3, 0.4];
    const q = Float64Array.from([0.4, 0.3, 0.2, 0.1]);
    const logits = rows(p.map(Math.log), p.map(Math.log));
    const draw = seeded(11);
    const counts = [0, 0, 0, 0];
    const N = 20000;
    for (let i = 0; i < N; i++) {
      const s = new Sampler({ temperature: 1, seed: i });
      // The draft token drawn from q, then verified: the first token out follows p.
      let u = draw();
      let d = 0;
      while (d < 3 && u >= q[d]) u -= q[d++];
      const r = verifyDraft(s, logits, V, [d], [q]);
      counts[r.accepted === 1 ? d : r.next]++;
    }
    const chi2 = p.reduce((x, pi, i) => x + (counts[i] - N * pi) ** 2 / (N * pi), 0);
    expect(chi2).toBeLessThan(16.27); // df 3, false alarm 0.001
  });

  it("the standard analysis and the tuner", () => {
    expect(expectedTokens(0, 4)).toBe(1);
    expect(expectedTokens(1, 4)).toBe(5);
    expect(expectedTokens(0.5, 2)).toBeCloseTo(1.75);
    expect(predictedSpeedup(0.5, 2, 0.25)).toBeCloseTo(1.75 / 1.5);
    const t = new DraftTuner();
    expect(t.measured).toBe(false);
    for (let i = 0; i < 5; i++) t.notePlain(0.01);
    t.noteDraft(0.002);
    // Rounds of k = 2 cost two plain steps: at alpha 0.5 (1.75 tokens) that does not pay.
    for (let i = 0; i < 5; i++) t.noteRound(0.02, 2, 1);
    expect(t.measured).toBe(true);
    expect(t.choose(0.5, 4)).toBe(0);
    // Cheap rounds at high acceptance: it drafts.
    for (let i = 0; i < 15; i++) t.noteRound(0.012, 2, 2);
    expect(t.choose(0.9, 4)).toBeGreaterThan(0);
    // A small gain (2.19 tokens for 2.1 steps' cost): not enough to start, enough to keep on.
    for (let i = 0; i < 15; i++) t.noteRound(0.021, 2, 2);
    expect(t.choose(0.7, 2)).toBe(0);
    expect(t.choose(0.7, 2, true)).toBe(2);
    // A loss stops it either way.
    expect(t.choose(0.3, 2, true)).toBe(0);
  });

  it("the tuner probes once per due, and never when even full acceptance cannot pay", () => {
    const t = new DraftTuner();
    for (let i = 0; i < 5; i++) t.notePlain(0.01);
    t.noteDraft(0.004);
    // A round of k = 2 costs 2.5 plain steps: 3 tokens at best, 1.2x; at alpha 0.3, a loss.
    for (let i = 0; i < 5; i++) t.noteRound(0.025, 2, 0.6);
    expect(t.choose(0.3, 2)).toBe(0);
    t.idle = 63;
    expect(t.probeDue(2)).toBe(false);
    t.idle = 64;
    expect(t.probeDue(2)).toBe(true);
    // The due is spent: a second sequence in the same step does not probe too.
    expect(t.probeDue(2)).toBe(false);
    // The next due waits twice as long.
    t.idle = 127;
    expect(t.probeDue(2)).toBe(false);
    t.idle = 128;
    expect(t.probeDue(2)).toBe(true);
    // Rounds that cost four plain steps: no draft length pays even if all are accepted.
    for (let i = 0; i < 15; i++) t.noteRound(0.04, 2, 2);
    t.idle = 1e6;
    expect(t.probeDue(2)).toBe(false);
    expect(t.probeDue(4)).toBe(false);
  });
});

function seeded(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 4294967296;
  };
}
