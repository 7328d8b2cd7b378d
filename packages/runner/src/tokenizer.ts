import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { Tokenizer } from "@huggingface/tokenizers";
import { CheckpointError } from "./errors.js";

/** The checkpoint's tokenizer.json through Hugging Face's maintained JS tokenizers library. */
export class TextTokenizer {
  private readonly tok: Tokenizer;
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

  constructor(readonly dir: string) {
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
    try {
      this.tok = new Tokenizer(tj, cfg);
    } catch (e) {
      throw new CheckpointError(
        "TOKENIZER_INVALID",
        `tokenizer.json could not be loaded: ${(e as Error).message}`,
        tjPath,
      );
    }
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
    this.vocabSize = this.tok.get_vocab(true).size;
    // The vocabulary itself (every token and its id, added tokens included), not file bytes:
    // two checkpoints of a family share it even when their files differ in layout.
    const vocab = [...this.tok.get_vocab(true).entries()].sort((a, b) => a[1] - b[1]);
    this.fingerprint = fnv1a(JSON.stringify(vocab) + JSON.stringify(tj.normalizer ?? null));
  }

  /** Token ids of `text`, with the model's BOS when `addSpecial` (the default). */
  encode(text: string, addSpecial = true): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
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
      for (const piece of this.tok.get_vocab(true).keys())
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
    const w = new Worker(url, { workerData: { dir: this.dir } });
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
    return this.tok.decode(Array.from(ids), { skip_special_tokens: skipSpecial });
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
