import type { TextTokenizer } from "./tokenizer.js";

/**
 * Incremental detokenisation: turns generated ids into text deltas without re-emitting
 * text and without splitting multi-byte characters (byte-fallback tokens), and holds
 * back text that may be the start of a stop string.
 */
/** Prompt tokens decoded with the new ones (enough for a leading space or a split character). */
export const TEXT_CONTEXT_TOKENS = 6;

export class TextStream {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  /** Text decided so far (emitted + held back). */
  private text = "";
  private emitted = 0;

  /**
   * `context`: the prompt's ids. Its last few tokens are decoded with the new ones, so a
   * token's leading space (which a SentencePiece decoder strips at the start of a text)
   * is kept: prompt text + generated text == decode(prompt ids + generated ids).
   */
  constructor(
    private readonly tok: TextTokenizer,
    private readonly stops: string[] = [],
    context: readonly number[] = [],
  ) {
    const tail = context.slice(Math.max(0, context.length - TEXT_CONTEXT_TOKENS));
    this.ids.push(...tail);
    this.readOffset = tail.length;
  }

  /**
   * Add one token; returns the new text that can be shown, whether a stop string matched,
   * and the token's own text in context (empty while it ends an incomplete character; the
   * token completing the character carries all of it).
   */
  push(id: number): { delta: string; stopped: boolean; piece: string } {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tok.decode(this.ids.slice(this.prefixOffset));
    let piece = "";
    if (full.length > prefix.length && !full.endsWith("\uFFFD")) {
      piece = full.slice(prefix.length);
      this.text += piece;
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
    }
    for (const s of this.stops) {
      const at = this.text.indexOf(s, Math.max(0, this.emitted - s.length));
      if (at >= 0) {
        this.text = this.text.slice(0, at);
        return { delta: this.flush(this.text.length), stopped: true, piece };
      }
    }
    // Hold back the longest tail that could still grow into a stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.text.length); n > hold; n--) {
        if (this.text.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    return { delta: this.flush(this.text.length - hold), stopped: false, piece };
  }

  /** Everything left (at the end of generation). */
  finish(): string {
    return this.flush(this.text.length);
  }

  get fullText(): string {
    return this.text;
  }

  private flush(upTo: number): string {
    if (upTo <= this.emitted) return "";
    const d = this.text.slice(this.emitted, upTo);
    this.emitted = upTo;
    return d;
  }
}
