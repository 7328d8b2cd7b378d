import { TEXT_CONTEXT_TOKENS, type TextTokenizer } from "@smallkv/runner";

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
   * Logprobs of `items` (consecutive generated tokens), with `context` the tokens before the
   * first of them and `offset` the text length before it.
   */
  format(items: TokenLogprob[], context: number[], offset: number) {
    const rows = this.withAlternatives(items, context);
    if (this.kind === "chat") {
      const content = rows.map(({ x, alts }) => ({
        token: x.piece,
        logprob: x.logprob,
        bytes: this.bytesOf(x.token, x.piece),
        top_logprobs: (alts ?? []).map((a) => ({
          token: a.piece,
          logprob: a.logprob,
          bytes: this.bytesOf(a.token, a.piece),
        })),
      }));
      return { content };
    }
    let at = offset;
    const textOffset = rows.map(({ x }) => {
      const o = at;
      at += x.piece.length;
      return o;
    });
    return {
      tokens: rows.map(({ x }) => x.piece),
      token_logprobs: rows.map(({ x }) => x.logprob),
      top_logprobs: rows.map(({ alts }) =>
        alts ? Object.fromEntries(alts.map((a) => [a.piece, a.logprob])) : null,
      ),
      text_offset: textOffset,
    };
  }

  /** Each item with its alternatives' texts, each decoded after the tokens that preceded it. */
  private withAlternatives(items: TokenLogprob[], context: number[]) {
    const ctx = context.slice(-TEXT_CONTEXT_TOKENS);
    return items.map((x) => {
      const before = ctx.slice();
      ctx.push(x.token);
      if (ctx.length > TEXT_CONTEXT_TOKENS) ctx.shift();
      const alts = x.topLogprobs?.map((alt) => ({
        token: alt.token,
        logprob: alt.logprob,
        piece: alt.token === x.token ? x.piece : this.altPiece(before, alt.token),
      }));
      return { x, alts };
    });
  }
}
