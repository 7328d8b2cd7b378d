import { Template } from "@huggingface/jinja";
import type { TextTokenizer } from "@smallkv/runner";

export interface ChatMessage {
  role: string;
  content: string;
}

/**
 * Chat prompts. A model whose tokenizer_config.json has a `chat_template` gets it rendered
 * with Hugging Face's Jinja implementation (messages, add_generation_prompt, bos/eos). A model
 * without one gets the documented plain fallback:
 *
 *     <bos>System: ...\nUser: ...\nAssistant: ...\nAssistant:
 *
 * (each message as "<Role>: <content>" on its own line, then "Assistant:").
 */
export class ChatFormatter {
  private readonly template: Template | null;

  constructor(private readonly tok: TextTokenizer) {
    let t = tok.config.chat_template as unknown;
    if (Array.isArray(t)) t = (t.find((x) => x?.name === "default") ?? t[0])?.template;
    this.template = typeof t === "string" && t.trim() ? new Template(t) : null;
  }

  get hasTemplate(): boolean {
    return this.template !== null;
  }

  /** Token ids of the rendered conversation, ready for generation. */
  encode(messages: ChatMessage[]): number[] {
    const [text, special] = this.render(messages);
    return this.tok.encode(text, special);
  }

  /** `encode` with long conversations tokenised off the event loop. */
  encodeAsync(messages: ChatMessage[]): Promise<number[]> {
    const [text, special] = this.render(messages);
    return this.tok.encodeAsync(text, special);
  }

  /** The conversation's text, and whether the tokenizer adds its special tokens (no template). */
  private render(messages: ChatMessage[]): [string, boolean] {
    if (this.template) {
      const tokenName = (v: unknown) =>
        typeof v === "string" ? v : ((v as { content?: string } | undefined)?.content ?? "");
      const text = this.template.render({
        messages,
        add_generation_prompt: true,
        bos_token: tokenName(this.tok.config.bos_token),
        eos_token: tokenName(this.tok.config.eos_token),
      });
      return [text, false];
    }
    const cap = (r: string) => r.charAt(0).toUpperCase() + r.slice(1);
    const text = `${messages.map((m) => `${cap(m.role)}: ${m.content}`).join("\n")}\nAssistant:`;
    return [text, true];
  }
}
