// Byte-level BPE ("gpt2") vocabularies, the tokenizer of Llama 3, Qwen and SmolLM GGUF files:
// a small vocabulary trained here on the shipped text, written into GGUF files with each
// pre-tokenizer llama.cpp names, and our token ids against llama.cpp's on the same files.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  assetsDir,
  type GgufFile,
  Model,
  openCheckpoint,
  writeGguf,
  writeSyntheticCheckpoint,
} from "../src/index.js";
import { MODELS, tempDir } from "./helpers.js";
import { loadLlamaCpp } from "./llamacpp.js";

/** GPT-2's bytes_to_unicode: each byte as a printable character. */
function byteChars(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const out = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(bs.includes(b) ? b : 256 + n++);
  return out;
}

/** A byte-level BPE of `merges` merges trained on `text` (most frequent pair first). */
function trainBpe(text: string, merges: number): { tokens: string[]; merges: string[] } {
  const chars = byteChars();
  const split = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  const counts = new Map<string, number>();
  for (const w of text.match(split) ?? []) {
    const key = Array.from(Buffer.from(w, "utf8"), (b) => chars[b]).join(" ");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  let words = [...counts].map(([k, n]) => ({ syms: k.split(" "), n }));
  const tokens = [...chars];
  const out: string[] = [];
  for (let m = 0; m < merges; m++) {
    const pairs = new Map<string, number>();
    for (const { syms, n } of words)
      for (let i = 0; i + 1 < syms.length; i++) {
        const p = `${syms[i]} ${syms[i + 1]}`;
        pairs.set(p, (pairs.get(p) ?? 0) + n);
      }
    let best = "";
    let bestN = 0;
    for (const [p, n] of pairs) if (n > bestN || (n === bestN && p < best)) [best, bestN] = [p, n];
    if (!best) break;
    const [a, b] = best.split(" ");
    out.push(best);
    tokens.push(a + b);
    words = words.map(({ syms, n }) => {
      const s: string[] = [];
      for (let i = 0; i < syms.length; i++)
        if (i + 1 < syms.length && syms[i] === a && syms[i + 1] === b) {
          s.push(a + b);
          i++;
        } else s.push(syms[i]);
      return { syms: s, n };
    });
  }
  return { tokens, merges: out };
}

const TEMPLATE = "{% for m in messages %}<|endoftext|>{{ m.role }}: {{ m.content }}\n{% endfor %}";

const texts = [
  "Once upon a time, there was a little girl named Lily.",
  "  two leading spaces,   three inside, and a tab\there",
  "Numbers: 1234567 and 3.14159, years 1999-2024.",
  "don't, I'M, we've, they'll, she'd, it's",
  "line one\nline two\n\n\nafter blank lines \n",
  "naïve café: ünïcödé bytes 🙂 and 漢字",
  "<|endoftext|>after the special token<|endoftext|>",
  "",
];

describe.each(["gpt-2", "llama-bpe", "qwen2", "smollm"])(
  'a byte-level BPE vocabulary with pre-tokenizer "%s"',
  (pre) => {
    let file: string;
    beforeAll(async () => {
      const dir = tempDir("smallkv-bpe-");
      const text = readFileSync(join(assetsDir(), "data", "tinystories-valid.txt"), "utf8").slice(0, 200_000);
      const bpe = trainBpe(text, 200);
      const tokens = [...bpe.tokens, "<|endoftext|>"];
      const special = tokens.length - 1;
      const src = join(dir, "model");
      writeSyntheticCheckpoint(src, {
        hiddenSize: 64,
        intermediateSize: 128,
        numLayers: 1,
        numHeads: 2,
        numKvHeads: 1,
        vocabSize: 512,
        maxPositions: 256,
        tieWordEmbeddings: false,
        seed: 5,
        tokenizerFrom: join(MODELS, "stories260K"),
      });
      const ckpt = await openCheckpoint(src);
      file = join(dir, `bpe-${pre}.gguf`);
      writeGguf(
        file,
        ckpt.config,
        ckpt.open(),
        {
          "tokenizer.ggml.model": "gpt2",
          "tokenizer.ggml.pre": pre,
          "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": tokens.map((_, i) => (i === special ? 3 : 1)),
          "tokenizer.ggml.merges": bpe.merges,
          "tokenizer.ggml.bos_token_id": special,
          "tokenizer.ggml.eos_token_id": special,
          "tokenizer.ggml.add_bos_token": false,
          "tokenizer.chat_template": TEMPLATE,
        } as GgufFile["metadata"],
        "F32",
      );
    });

    it("gives llama.cpp's token ids, and decodes them back to the text", async () => {
      const ours = await Model.load(file, { threads: 1 });
      const ref = await loadLlamaCpp(file);
      try {
        for (const t of texts) {
          const ids = ours.tokenizer.encode(t, false);
          expect(ids, JSON.stringify(t)).toEqual(ref.tokenize(t));
          expect(ours.tokenizer.decode(ids, false)).toBe(t);
        }
        // The file's chat template and special tokens reach the tokenizer's config.
        expect(ours.tokenizer.config.chat_template).toBe(TEMPLATE);
        expect(ours.tokenizer.eosTokenId).toBe(ours.tokenizer.tokenToId("<|endoftext|>"));
      } finally {
        await ref.dispose();
      }
    });
  },
);
