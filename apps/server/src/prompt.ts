import type { TextTokenizer } from "@smallkv/runner";
import { ApiError } from "./errors.js";

/**
 * Refuse a text that cannot fit `maxTokens` from its byte length alone, before any
 * tokenising: no vocabulary entry stands for more than `maxPieceBytes` bytes, so a text of
 * n bytes has at least n / maxPieceBytes tokens (with a 4× margin for normalisers that
 * shorten text). A 1 MB prompt to a 512-token model is refused in microseconds.
 */
export function refuseIfSurelyTooLong(
  tok: TextTokenizer,
  bytes: number,
  maxTokens: number,
  param: string,
): void {
  const atLeast = Math.floor(bytes / (4 * tok.maxPieceBytes));
  if (atLeast >= maxTokens)
    throw new ApiError(
      413,
      `the prompt has ${bytes} bytes, so at least ${atLeast} tokens; this model's context is ${maxTokens}`,
      "invalid_request_error",
      param,
      "context_length_exceeded",
    );
}

/** Bytes of every text part of chat messages. */
export function messageBytes(messages: { content: string | { text: string }[] }[]): number {
  let n = 0;
  for (const m of messages)
    n +=
      typeof m.content === "string"
        ? Buffer.byteLength(m.content)
        : m.content.reduce((a, c) => a + Buffer.byteLength(c.text), 0);
  return n;
}
