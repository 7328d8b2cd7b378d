import { readFileSync } from "node:fs";
import { join } from "node:path";
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

  constructor(dir: string) {
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
    this.fingerprint = fnv1a(JSON.stringify(tj.model ?? tj) + JSON.stringify(tj.normalizer ?? null));
  }

  /** Token ids of `text`, with the model's BOS when `addSpecial` (the default). */
  encode(text: string, addSpecial = true): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    if (addSpecial && this.addBos && this.bosTokenId !== null) return [this.bosTokenId, ...ids];
    return ids;
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
