// What a model is loaded from: a Hugging Face checkpoint folder (config.json, safetensors,
// tokenizer.json) or one GGUF file (llama.cpp's format). Both give the same config, tokenizer
// and weights; the rest of the runner does not ask which.
import { basename, resolve } from "node:path";
import { type ModelConfig, readConfig } from "./config.js";
import { type EmbeddingTable, fileEmbedding, floatEmbedding } from "./embedding.js";
import { CheckpointError } from "./errors.js";
import { ggufConfig } from "./gguf/config.js";
import { GgufFile } from "./gguf/file.js";
import { ggufTokenizerSpec } from "./gguf/tokenizer.js";
import { ggufWeights } from "./gguf/weights.js";
import { TextTokenizer } from "./tokenizer.js";
import { type LayeredWeights, openWeights, readEmbedding } from "./weights.js";

export interface Checkpoint {
  /** The folder or the .gguf file, absolute. */
  readonly path: string;
  readonly format: "hf" | "gguf";
  readonly config: ModelConfig;
  readonly tokenizer: TextTokenizer;
  /** The weights, layers read on demand. */
  open(): LayeredWeights;
  /** Only the token embedding table: float32, or a GGUF file's rows as stored. */
  embedding(): EmbeddingTable;
}

/** True when `path` names a GGUF file (by its extension). */
export function isGguf(path: string): boolean {
  return path.toLowerCase().endsWith(".gguf");
}

export async function openCheckpoint(path: string): Promise<Checkpoint> {
  const abs = resolve(path);
  if (isGguf(abs)) {
    const f = await GgufFile.open(abs);
    const config = ggufConfig(f);
    const tokenizer = new TextTokenizer(abs, ggufTokenizerSpec(f));
    return {
      path: abs,
      format: "gguf",
      config,
      tokenizer,
      open: () => ggufWeights(f, config),
      embedding: () => {
        const t = f.tensor("token_embd.weight");
        if (t.ne[0] !== config.hiddenSize || t.ne[1] !== config.vocabSize)
          throw new CheckpointError("SHAPE_MISMATCH", `token_embd.weight has ne [${t.ne.join(", ")}]`, abs);
        return fileEmbedding(f, t);
      },
    };
  }
  const config = readConfig(abs);
  return {
    path: abs,
    format: "hf",
    config,
    tokenizer: new TextTokenizer(abs),
    open: () => openWeights(abs, config),
    embedding: () => floatEmbedding(readEmbedding(abs, config), config.hiddenSize),
  };
}

/** A short name for reports: the folder's name, or the file's without .gguf. */
export function checkpointName(path: string): string {
  return basename(path).replace(/\.gguf$/i, "");
}
