import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { Tokenizer } from "@huggingface/tokenizers";
import { CheckpointError } from "./errors.js";
import { type GgufTokenizerSpec, SpmTokenizer } from "./gguf/tokenizer.js";

/** What TextTokenizer needs of a tokenizing engine. */
interface TokenizerEngine {
  encode(text: string): number[];
  decode(ids: number[], skipSpecial: boolean): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  /** Every token with its id. */
  vocab(): [string, number][];
}

function hfEngine(tok: Tokenizer): TokenizerEngine {
  return {
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    decode: (ids, skip) => tok.decode(ids, { skip_special_tokens: skip }),
    token_to_id: (t) => tok.token_to_id(t) ?? undefined,
    id_to_token: (id) => tok.id_to_token(id) ?? undefined,
    vocab: () => [...tok.get_vocab(true).entries()],
  };
}

function fromFolder(dir: string): {
  engine: TokenizerEngine;
  config: Record<string, unknown>;
  normalizer: unknown;
} {
  const tjPath = join(dir, "tokenizer.json");
  let tj: Record<string, unknown>;
  let text: string;
  try {
    text = readFileSync(tjPath, "utf8");
  } catch {
    throw new CheckpointError("TOKENIZER_MISSING", "tokenizer.json not found", tjPath);
  }
  try {
    tj = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(
      "TOKENIZER_INVALID",
      `tokenizer.json is not valid JSON: ${(e as Error).message}`,
      tjPath,
    );
  }
  let cfg: Record<string, unknown> = {};
  try {
    cfg = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  } catch {
    cfg = {};
  }
  return { engine: hfEngine(loadHf(tj, cfg, tjPath)), config: cfg, normalizer: tj.normalizer ?? null };
}

function loadHf(tj: Record<string, unknown>, cfg: Record<string, unknown>, path: string): Tokenizer {
  try {
    return new Tokenizer(tj, cfg);
  } catch (e) {
    throw new CheckpointError(
      "TOKENIZER_INVALID",
      `tokenizer could not be loaded: ${(e as Error).message}`,
      path,
    );
  }
}

function fromGguf(
  spec: GgufTokenizerSpec,
  path: string,
): { engine: TokenizerEngine; config: Record<string, unknown>; normalizer: unknown } {
  if (spec.kind === "hf")
    return {
      engine: hfEngine(loadHf(spec.json, spec.config, path)),
      config: spec.config,
      normalizer: "gguf-bpe",
    };
  const spm = new SpmTokenizer(spec);
  return {
    engine: {
      encode: (text) => spm.encode(text),
      decode: (ids, skip) => spm.decode(ids, skip),
      token_to_id: (t) => spm.tokenToId(t),
      id_to_token: (id) => spm.idToToken(id),
      vocab: () => spm.vocab(),
    },
    config: spec.config,
    // The GGUF tokenizer keeps runs of spaces (llama.cpp's), unlike a folder's normalizer.
    normalizer: "gguf-spm",
  };
}

/** The checkpoint's tokenizer.json through Hugging Face's maintained JS tokenizers library. */
export class TextTokenizer {
  private readonly tok: TokenizerEngine;
  readonly addBos: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly vocabSize: number;
  /** The raw tokenizer_config.json (chat templates live here). */
  readonly config: Record<string, unknown>;
  /** A fingerprint of tokenizer.json, to tell whether two models share a tokenizer. */
  readonly fingerprint: string;

  private worker: Worker | null = null;
  private readonly waiting = new Map<
    number,
    { resolve: (ids: number[]) => void; reject: (e: Error) => void }
  >();
  private nextJob = 0;
  private maxPiece = 0;

  /** Where the tokenizer came from: a checkpoint folder, or a GGUF file's path. */
  readonly dir: string;
  private readonly spec: GgufTokenizerSpec | null;

  /**
   * From a checkpoint folder's tokenizer.json (and tokenizer_config.json), or from the spec a
   * GGUF file's metadata gives (`dir` then names the file).
   */
  constructor(dir: string, gguf?: GgufTokenizerSpec) {
    this.dir = dir;
    this.spec = gguf ?? null;
    const { engine, config, normalizer } = gguf ? fromGguf(gguf, dir) : fromFolder(dir);
    this.tok = engine;
    const cfg = config;
    this.config = cfg;
    const tokenName = (v: unknown) =>
      typeof v === "string"
        ? v
        : v && typeof v === "object"
          ? (v as { content?: string }).content
          : undefined;
    const bos = tokenName(cfg.bos_token);
    const eos = tokenName(cfg.eos_token);
    this.bosTokenId = bos !== undefined ? (this.tok.token_to_id(bos) ?? null) : null;
    this.eosTokenId = eos !== undefined ? (this.tok.token_to_id(eos) ?? null) : null;
    this.addBos = cfg.add_bos_token === true;
    const vocab = this.tok.vocab();
    this.vocabSize = vocab.length;
    // The vocabulary itself (every token and its id, added tokens included), not file bytes:
    // two checkpoints of a family share it even when their files differ in layout.
    vocab.sort((a, b) => a[1] - b[1]);
    this.fingerprint = fnv1a(JSON.stringify(vocab) + JSON.stringify(normalizer));
  }

  /** Token ids of `text`, with the model's BOS when `addSpecial` (the default). */
  encode(text: string, addSpecial = true): number[] {
    const ids = this.tok.encode(text);
    if (addSpecial && this.addBos && this.bosTokenId !== null) return [this.bosTokenId, ...ids];
    return ids;
  }

  /**
   * `encode` that never blocks the event loop for long: texts longer than `inlineChars`
   * are tokenised in a worker thread (started on first use, one per tokenizer).
   */
  encodeAsync(text: string, addSpecial = true, inlineChars = 8192): Promise<number[]> {
    if (text.length <= inlineChars) return Promise.resolve(this.encode(text, addSpecial));
    const w = this.startWorker();
    const id = this.nextJob++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      w.ref();
      w.postMessage({ id, text, addSpecial });
    });
  }

  /**
   * The most UTF-8 bytes of any vocabulary entry (an upper bound on the text one token
   * stands for), so a text of n bytes has at least n / maxPieceBytes tokens: over-long
   * prompts can be refused from their byte length, before tokenising.
   */
  get maxPieceBytes(): number {
    if (this.maxPiece === 0) {
      for (const [piece] of this.tok.vocab())
        this.maxPiece = Math.max(this.maxPiece, Buffer.byteLength(piece));
      this.maxPiece = Math.max(1, this.maxPiece);
    }
    return this.maxPiece;
  }

  /** Stop the tokenising worker, if one was started. */
  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }

  private startWorker(): Worker {
    if (this.worker) return this.worker;
    // dist/tokenize-worker.js beside this file; from the sources (tests), the built one.
    let url = new URL("./tokenize-worker.js", import.meta.url);
    if (!existsSync(fileURLToPath(url))) url = new URL("../dist/tokenize-worker.js", import.meta.url);
    const w = new Worker(url, { workerData: { dir: this.dir, gguf: this.spec } });
    const failAll = (e: Error) => {
      for (const p of this.waiting.values()) p.reject(e);
      this.waiting.clear();
      if (this.worker === w) this.worker = null;
    };
    w.on("message", (m: { id: number; ids?: Int32Array; error?: string }) => {
      const p = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (this.waiting.size === 0) w.unref();
      if (!p) return;
      if (m.error !== undefined) p.reject(new Error(m.error));
      else p.resolve(Array.from(m.ids!));
    });
    w.on("error", failAll);
    w.on("exit", () => failAll(new Error("the tokenizer worker stopped")));
    w.unref();
    this.worker = w;
    return w;
  }

  decode(ids: ArrayLike<number>, skipSpecial = true): string {
    if (ids.length === 0) return "";
    return this.tok.decode(Array.from(ids), skipSpecial);
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }
}

function fnv1a(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}
