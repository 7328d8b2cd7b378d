import type { TextTokenizer } from "@smallkv/runner";

/** One generated token with its log-probability, as the generator reports it. */
export interface TokenLogprob {
  token: number;
  /** The token's exact text in context (leading space included). */
  piece: string;
  logprob: number;
  topLogprobs?: { token: number; logprob: number }[];
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/**
 * OpenAI logprobs from generated tokens: `tokens` are the exact text pieces (they
 * concatenate to the completion text), `bytes` the token's own bytes (a byte-fallback
 * token that ends an incomplete character has its byte and an empty piece), and
 * `text_offset` indexes the returned text.
 */
export class LogprobFormatter {
  constructor(
    private readonly tok: TextTokenizer,
    private readonly kind: "completion" | "chat",
  ) {}

  private bytesOf(token: number, piece: string): number[] {
    const m = BYTE_TOKEN.exec(this.tok.idToToken(token) ?? "");
    if (m && piece === "") return [Number.parseInt(m[1], 16)];
    return [...Buffer.from(piece, "utf8")];
  }

  /** An alternative token's text after `context` (the tokens before it). */
  private altPiece(context: number[], token: number): string {
    const before = this.tok.decode(context);
    const after = this.tok.decode([...context, token]);
    return after.startsWith(before) ? after.slice(before.length) : this.tok.decode([token]);
  }

  /**
   * Logprobs of `items` (the tokens from index `first` of the completion), with `context`
   * the tokens before the first of them and `offset` the text length before it.
   */
  format(items: TokenLogprob[], context: number[], offset: number) {
    const ctx = context.slice(-6);
    if (this.kind === "chat") {
      const content = items.map((x) => {
        const c = ctx.slice();
        ctx.push(x.token);
        if (ctx.length > 6) ctx.shift();
        return {
          token: x.piece,
          logprob: x.logprob,
          bytes: this.bytesOf(x.token, x.piece),
          top_logprobs: (x.topLogprobs ?? []).map((alt) => {
            const piece = alt.token === x.token ? x.piece : this.altPiece(c, alt.token);
            return { token: piece, logprob: alt.logprob, bytes: this.bytesOf(alt.token, piece) };
          }),
        };
      });
      return { content };
    }
    const out = {
      tokens: [] as string[],
      token_logprobs: [] as number[],
      top_logprobs: [] as (Record<string, number> | null)[],
      text_offset: [] as number[],
    };
    let at = offset;
    for (const x of items) {
      const c = ctx.slice();
      ctx.push(x.token);
      if (ctx.length > 6) ctx.shift();
      out.tokens.push(x.piece);
      out.token_logprobs.push(x.logprob);
      out.top_logprobs.push(
        x.topLogprobs
          ? Object.fromEntries(
              x.topLogprobs.map((alt) => [
                alt.token === x.token ? x.piece : this.altPiece(c, alt.token),
                alt.logprob,
              ]),
            )
          : null,
      );
      out.text_offset.push(at);
      at += x.piece.length;
    }
    return out;
  }
}
