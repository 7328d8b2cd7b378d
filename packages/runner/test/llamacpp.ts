// llama.cpp (node-llama-cpp 3.21.1, its CPU prebuild) as the oracle of the GGUF tests: its
// tokens, greedy continuations and next-token log-probabilities on the same file.
import { getLlama, type Llama, LlamaLogLevel, type LlamaModel } from "node-llama-cpp";

let llama: Promise<Llama> | null = null;

export interface LlamaCppModel {
  tokenize(text: string): number[];
  /** log p(next token) over the vocabulary after `ids`. */
  logProbs(ids: number[]): Promise<Float64Array>;
  /** `n` greedy tokens after `ids`. */
  greedy(ids: number[], n: number): Promise<number[]>;
  dispose(): Promise<void>;
}

export async function loadLlamaCpp(file: string): Promise<LlamaCppModel> {
  llama ??= getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model: LlamaModel = await (await llama).loadModel({ modelPath: file });
  // F32 K/V (llama.cpp defaults to F16), as ours: the comparison is of the weights and the math.
  const ctx = await model.createContext({
    contextSize: 512,
    threads: 1,
    sequences: 1,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    flashAttention: false,
  });
  const seq = ctx.getSequence();
  return {
    // Special tokens written in the text are parsed (llama.cpp's parse_special), as ours are.
    tokenize: (text) => model.tokenize(text, true).map(Number),
    async logProbs(ids) {
      await seq.clearHistory();
      const it = seq.evaluateWithMetadata(ids as never, { probabilities: true }, { temperature: 0 });
      const r = await it.next();
      await it.return();
      if (r.done) throw new Error("llama.cpp gave no next token");
      const probs = r.value.probabilities as Map<number, number>;
      const out = new Float64Array(probs.size);
      for (const [t, p] of probs) out[t] = Math.log(p);
      return out;
    },
    async greedy(ids, n) {
      await seq.clearHistory();
      const out: number[] = [];
      for await (const t of seq.evaluate(ids as never, { temperature: 0 })) {
        out.push(Number(t));
        if (out.length === n) break;
      }
      return out;
    },
    async dispose() {
      await ctx.dispose();
      await model.dispose();
    },
  };
}
