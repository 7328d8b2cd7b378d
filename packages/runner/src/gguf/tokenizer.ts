// The tokenizer a GGUF file carries in its metadata (tokenizer.ggml.*), tokenizing as llama.cpp
// does: SentencePiece-style "llama" vocabularies by llama.cpp's score-ordered bigram merging
// (written here: no library implements llama.cpp's variant, which keeps runs of spaces and
// prefixes one), byte-level BPE "gpt2" vocabularies through Hugging Face's tokenizers library
// with the pre-tokenizer regex llama.cpp uses for the file's `tokenizer.ggml.pre`.
import { CheckpointError } from "../errors.js";
import type { GgufFile } from "./file.js";

/** llama.cpp's token types (llama_token_type). */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** What a TextTokenizer is built from when the checkpoint is a GGUF file (structured-cloneable). */
export type GgufTokenizerSpec =
  | {
      kind: "spm";
      tokens: string[];
      scores: number[];
      types: number[];
      addSpacePrefix: boolean;
      config: Record<string, unknown>;
    }
  | { kind: "hf"; json: Record<string, unknown>; config: Record<string, unknown> };

/** Pre-tokenizer regexes of llama.cpp's byte-level BPE vocabularies (llama-vocab.cpp), by `tokenizer.ggml.pre`. */
const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const PRE_REGEX: Record<string, string[]> = {
  "llama-bpe": [
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ],
  qwen2: [
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ],
  smollm: ["\\p{N}", GPT2_SPLIT],
  "gpt-2": [GPT2_SPLIT],
};

function strings(f: GgufFile, key: string): string[] {
  const v = f.metadata[key];
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
    throw new CheckpointError(
      "TOKENIZER_INVALID",
      `GGUF metadata "${key}" must be an array of strings`,
      f.path,
    );
  return v as string[];
}

function numbers(f: GgufFile, key: string, n: number, fallback: number): number[] {
  const v = f.metadata[key];
  if (v === undefined) return new Array(n).fill(fallback);
  if (!Array.isArray(v) || v.length !== n || v.some((x) => typeof x !== "number"))
    throw new CheckpointError("TOKENIZER_INVALID", `GGUF metadata "${key}" must be ${n} numbers`, f.path);
  return v as number[];
}

export function ggufTokenizerSpec(f: GgufFile): GgufTokenizerSpec {
  const m = f.metadata;
  const model = m["tokenizer.ggml.model"];
  const tokens = strings(f, "tokenizer.ggml.tokens");
  const types = numbers(f, "tokenizer.ggml.token_type", tokens.length, TOKEN_TYPE.NORMAL);
  const id = (k: string) => {
    const v = m[`tokenizer.ggml.${k}`];
    return typeof v === "number" && Number.isInteger(v) && v >= 0 && v < tokens.length ? v : null;
  };
  const bos = id("bos_token_id");
  const eos = id("eos_token_id");
  const config: Record<string, unknown> = {
    bos_token: bos === null ? null : tokens[bos],
    eos_token: eos === null ? null : tokens[eos],
    add_bos_token: (m["tokenizer.ggml.add_bos_token"] ?? model === "llama") === true,
  };
  const template = m["tokenizer.chat_template"];
  if (typeof template === "string") config.chat_template = template;
  if (model === "llama")
    return {
      kind: "spm",
      tokens,
      scores: numbers(f, "tokenizer.ggml.scores", tokens.length, 0),
      types,
      addSpacePrefix: m["tokenizer.ggml.add_space_prefix"] !== false,
      config,
    };
  if (model === "gpt2") {
    const pre = String(m["tokenizer.ggml.pre"] ?? "default");
    const regexes = PRE_REGEX[pre];
    if (!regexes)
      throw new CheckpointError(
        "TOKENIZER_INVALID",
        `GGUF pre-tokenizer "${pre}" is not supported; supported: ${Object.keys(PRE_REGEX).join(", ")}`,
        f.path,
      );
    const merges = strings(f, "tokenizer.ggml.merges");
    const special = (t: number) => t === TOKEN_TYPE.CONTROL || t === TOKEN_TYPE.USER_DEFINED;
    const json = {
      version: "1.0",
      added_tokens: tokens
        .map((content, i) => ({
          id: i,
          content,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
          special: types[i] === TOKEN_TYPE.CONTROL,
        }))
        .filter((t) => special(types[t.id])),
      normalizer: null,
      pre_tokenizer: {
        type: "Sequence",
        pretokenizers: [
          ...regexes.map((r) => ({
            type: "Split",
            pattern: { Regex: r },
            behavior: "Isolated",
            invert: false,
          })),
          { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
        ],
      },
      post_processor: null,
      decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: pre === "llama-bpe",
        vocab: Object.fromEntries(tokens.map((t, i) => [t, i])),
        merges,
      },
    };
    return { kind: "hf", json, config };
  }
  throw new CheckpointError(
    "TOKENIZER_INVALID",
    `GGUF tokenizer model ${JSON.stringify(model)} is not supported (llama or gpt2)`,
    f.path,
  );
}

interface Symbol {
  start: number;
  n: number;
  prev: number;
  next: number;
}

/** A max-heap of candidate merges: higher score first, then the leftmost. */
class MergeQueue {
  private readonly a: { left: number; right: number; score: number; size: number }[] = [];
  private before(i: number, j: number): boolean {
    const x = this.a[i];
    const y = this.a[j];
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }
  push(e: { left: number; right: number; score: number; size: number }): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }
  pop(): { left: number; right: number; score: number; size: number } | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.before(l, m)) m = l;
        if (r < a.length && this.before(r, m)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}

/**
 * llama.cpp's SentencePiece-style tokenizer (llm_tokenizer_spm): spaces become ▁ (one is put in
 * front of the text and after each special token), UTF-8 characters are merged pairwise, the
 * pair whose joined piece has the highest score first (ties: leftmost), and pieces the vocabulary
 * lacks fall back to <0xXX> byte tokens. Control and user-defined tokens written in the text are
 * taken as themselves (llama.cpp's parse_special).
 */
export class SpmTokenizer {
  private readonly ids = new Map<string, number>();
  private readonly special: { text: string; id: number }[] = [];
  private readonly bytes = new Int32Array(256).fill(-1);

  constructor(private readonly spec: Extract<GgufTokenizerSpec, { kind: "spm" }>) {
    spec.tokens.forEach((t, i) => {
      this.ids.set(t, i);
      const type = spec.types[i];
      if (type === TOKEN_TYPE.CONTROL || type === TOKEN_TYPE.USER_DEFINED)
        if (t.length > 0) this.special.push({ text: t, id: i });
      const byte = /^<0x([0-9A-F]{2})>$/.exec(t);
      if (type === TOKEN_TYPE.BYTE && byte) this.bytes[Number.parseInt(byte[1], 16)] = i;
    });
    // Longest first, as llama.cpp partitions.
    this.special.sort((a, b) => b.text.length - a.text.length);
  }

  get size(): number {
    return this.spec.tokens.length;
  }

  encode(text: string): number[] {
    const out: number[] = [];
    let prevSpecial = true;
    for (const part of this.partition(text)) {
      if (typeof part === "number") {
        out.push(part);
        prevSpecial = true;
      } else {
        const t = (this.spec.addSpacePrefix && prevSpecial ? " " : "") + part;
        this.encodeRaw(t.replaceAll(" ", "\u2581"), out);
        prevSpecial = false;
      }
    }
    return out;
  }

  /** The text cut at special tokens: strings between them, token ids for them. */
  private partition(text: string): (string | number)[] {
    const parts: (string | number)[] = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      const hit = this.special.find((s) => text.startsWith(s.text, i));
      if (!hit) {
        i++;
        continue;
      }
      if (i > start) parts.push(text.slice(start, i));
      parts.push(hit.id);
      i += hit.text.length;
      start = i;
    }
    if (start < text.length) parts.push(text.slice(start));
    return parts;
  }

  private encodeRaw(text: string, out: number[]): void {
    const chars = Array.from(text);
    if (chars.length === 0) return;
    const sym: Symbol[] = chars.map((_, i) => ({
      start: i,
      n: 1,
      prev: i - 1,
      next: i + 1 < chars.length ? i + 1 : -1,
    }));
    const piece = (s: Symbol) => chars.slice(s.start, s.start + s.n).join("");
    const revMerge = new Map<string, [number, number]>();
    const queue = new MergeQueue();
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const joined = piece(sym[left]) + piece(sym[right]);
      const id = this.ids.get(joined);
      if (id === undefined) return;
      queue.push({ left, right, score: this.spec.scores[id], size: sym[left].n + sym[right].n });
      revMerge.set(joined, [left, right]);
    };
    for (let i = 1; i < sym.length; i++) tryAdd(i - 1, i);
    for (let b = queue.pop(); b; b = queue.pop()) {
      const l = sym[b.left];
      const r = sym[b.right];
      if (l.n === 0 || r.n === 0 || l.n + r.n !== b.size) continue;
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      tryAdd(l.prev, b.left);
      tryAdd(b.left, l.next);
    }
    const resegment = (s: Symbol) => {
      const p = piece(s);
      const id = this.ids.get(p);
      if (id !== undefined) {
        out.push(id);
        return;
      }
      const m = revMerge.get(p);
      if (m) {
        resegment(sym[m[0]]);
        resegment(sym[m[1]]);
        return;
      }
      for (const byte of Buffer.from(p, "utf8")) {
        const bt = this.bytes[byte];
        out.push(bt >= 0 ? bt : (this.ids.get(String.fromCharCode(byte)) ?? 0));
      }
    };
    for (let i = 0; i !== -1; i = sym[i].next) resegment(sym[i]);
  }

  /** Text of ids: ▁ as spaces, byte tokens as their bytes, special tokens dropped unless asked; one leading space stripped (the prefix). */
  decode(ids: number[], skipSpecial: boolean): string {
    const bytes: number[] = [];
    const { tokens, types } = this.spec;
    for (const id of ids) {
      const type = types[id];
      if (type === TOKEN_TYPE.BYTE) {
        const m = /^<0x([0-9A-F]{2})>$/.exec(tokens[id]);
        if (m) {
          bytes.push(Number.parseInt(m[1], 16));
          continue;
        }
      }
      if ((type === TOKEN_TYPE.CONTROL || type === TOKEN_TYPE.UNKNOWN) && skipSpecial) continue;
      for (const b of Buffer.from(tokens[id].replaceAll("\u2581", " "), "utf8")) bytes.push(b);
    }
    let text = Buffer.from(bytes).toString("utf8");
    if (this.spec.addSpacePrefix && text.startsWith(" ")) text = text.slice(1);
    return text;
  }

  tokenToId(token: string): number | undefined {
    return this.ids.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.spec.tokens[id];
  }

  vocab(): [string, number][] {
    return this.spec.tokens.map((t, i) => [t, i]);
  }
}
