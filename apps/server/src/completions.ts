import { randomUUID } from "node:crypto";
import type { OptionValue, PolicyInstance } from "@smallkv/policies";
import {
  type GenerateOptions,
  type GenerationResult,
  TEXT_CONTEXT_TOKENS,
  type TokenEvent,
} from "@smallkv/runner";
import type { FastifyReply, FastifyRequest } from "fastify";
import type { ChatMessage } from "./chat-template.js";
import { ApiError, badRequest, internalError } from "./errors.js";
import { LogprobFormatter, type TokenLogprob } from "./logprobs.js";
import { messageBytes, refuseIfSurelyTooLong } from "./prompt.js";
import type { ServerContext } from "./server-context.js";
import { traceOf } from "./trace.js";
import { refuseUnsupported } from "./unsupported.js";

export type CompletionBody = {
  model: string;
  prompt?: string | string[] | number[];
  messages?: { role: string; content: string | { type: string; text: string }[] }[];
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  logprobs?: number | boolean | null;
  top_logprobs?: number | null;
  logit_bias?: Record<string, number> | null;
  kv_policy?: string;
  kv_budget?: number | string;
  kv_policy_options?: Record<string, OptionValue>;
  speculative_tokens?: number | "adaptive" | null;
  kv_trace?: boolean;
} & Record<string, unknown>;

/** The completion and chat routes share one generation path. */
export function completionHandlers(s: ServerContext) {
  const { llm } = s;

  async function completion(req: FastifyRequest<{ Body: CompletionBody }>, reply: FastifyReply) {
    s.checkOpen();
    s.checkModel(req.body.model);
    refuseUnsupported(req.body);
    const p = req.body.prompt!;
    let ids: number[];
    if (typeof p === "string" || typeof p[0] === "string") {
      const text = typeof p === "string" ? p : (p[0] as string);
      refuseIfSurelyTooLong(llm.tokenizer, Buffer.byteLength(text), s.ctx, "prompt");
      ids = await llm.tokenizer.encodeAsync(text);
    } else ids = p as number[];
    return generate(req, reply, "completion", ids);
  }

  async function chatCompletion(req: FastifyRequest<{ Body: CompletionBody }>, reply: FastifyReply) {
    s.checkOpen();
    s.checkModel(req.body.model);
    refuseUnsupported(req.body);
    refuseIfSurelyTooLong(llm.tokenizer, messageBytes(req.body.messages!), s.ctx, "messages");
    return generate(req, reply, "chat", await s.chat.encodeAsync(toMessages(req.body.messages!)));
  }

  async function generate(
    req: FastifyRequest<{ Body: CompletionBody }>,
    reply: FastifyReply,
    kind: "completion" | "chat",
    prompt: number[],
  ) {
    const b = req.body;
    const endpoint = kind === "chat" ? "/v1/chat/completions" : "/v1/completions";
    const promptParam = kind === "chat" ? "messages" : "prompt";
    if (prompt.length === 0) throw badRequest("the prompt has no tokens", promptParam);
    if (prompt.length >= s.ctx) {
      throw new ApiError(
        413,
        `the prompt has ${prompt.length} tokens; this model's context is ${s.ctx} (the prompt must leave room for at least one new token)`,
        "invalid_request_error",
        promptParam,
        "context_length_exceeded",
      );
    }
    for (const t of prompt)
      if (t >= llm.config.vocabSize)
        throw badRequest(`token id ${t} is outside the vocabulary (${llm.config.vocabSize})`, "prompt");
    const bias = b.logit_bias ?? undefined;
    for (const k of Object.keys(bias ?? {}))
      if (!/^\d+$/.test(k) || Number(k) >= llm.config.vocabSize)
        throw badRequest(`logit_bias key ${JSON.stringify(k)} is not a token id of this model`, "logit_bias");
    const asked = kind === "chat" ? (b.max_completion_tokens ?? b.max_tokens) : b.max_tokens;
    const limit = s.maxTokensLimit;
    if (asked != null && asked > limit)
      throw badRequest(
        `max_tokens ${asked} is above this server's limit of ${limit}`,
        kind === "chat" && b.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens",
      );
    const maxTokens = Math.min(asked ?? (kind === "chat" ? limit : 16), s.ctx - prompt.length);
    const policy = s.policies.resolve(b);
    const stop = b.stop == null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
    const topLogprobs =
      kind === "chat"
        ? b.logprobs
          ? (b.top_logprobs ?? 0)
          : undefined
        : b.logprobs == null
          ? undefined
          : Number(b.logprobs);
    const spec = b.speculative_tokens;
    if (spec != null && spec !== 0 && !s.assistant)
      throw badRequest(
        "speculative_tokens drafts with the assistant model: this server runs without one (--assistant)",
        "speculative_tokens",
      );
    const opts: GenerateOptions = {
      maxTokens,
      speculative:
        spec == null || spec === 0 ? undefined : spec === "adaptive" ? { k: 4, adaptive: true } : { k: spec },
      temperature: b.temperature ?? 1,
      topP: b.top_p ?? undefined,
      topK: b.top_k ?? undefined,
      seed: b.seed ?? undefined,
      logitBias: bias as Record<number, number> | undefined,
      stop,
      logprobs: topLogprobs,
      policy,
      prefixCache: s.prefixCache ?? undefined,
      timeoutMs: s.requestTimeoutMs,
      // The per-step trace is taken as each token is produced (the sequence moves on at once).
      inspect: b.kv_trace && b.stream ? (seq, token) => traceOf(seq, policy, token) : undefined,
    };
    const job = s.scheduler.submit(prompt, opts);
    s.metrics.policyRequests.inc({ policy: policy.name });
    s.metrics.promptTokens.inc(prompt.length);
    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replace(/-/g, "")}`;
    const created = Math.floor(Date.now() / 1000);
    const object = kind === "chat" ? "chat.completion" : "text_completion";
    let done = false;
    // The response closing before it finished means the client went away: free the sequence now.
    reply.raw.on("close", () => {
      if (!done && !reply.raw.writableFinished) job.cancel();
    });
    const lpf = new LogprobFormatter(llm.tokenizer, kind);
    const statsOf = () =>
      job.started.then((st) =>
        st
          ? {
              ...st.sequence.stats(),
              policy: policy.name,
              budget: policy.budget.toString(),
              policy_classes: policy.classCounts?.(st.sequence) ?? {},
            }
          : null,
      );
    const usage = (r: GenerationResult, stats: Awaited<ReturnType<typeof statsOf>>) => ({
      prompt_tokens: prompt.length,
      completion_tokens: r.tokens.length,
      total_tokens: prompt.length + r.tokens.length,
      // As OpenAI reports it: prompt tokens served from the prefix cache.
      prompt_tokens_details: { cached_tokens: r.cachedTokens },
      kv_stats: kvStats(r, stats),
    });
    // The sequence's KV figures, with the request's draft acceptance when it speculated.
    const kvStats = (r: GenerationResult, stats: Awaited<ReturnType<typeof statsOf>>) =>
      stats && r.speculative ? { ...stats, speculative: r.speculative } : stats;
    const logLine = async (r: GenerationResult, status: number) => {
      s.metrics.requests.inc({ endpoint, status: String(status) });
      s.metrics.finished.inc({ reason: r.finishReason });
      s.metrics.generatedTokens.inc(r.tokens.length);
      if (r.speculative) {
        s.metrics.draftedTokens.inc(r.speculative.drafted);
        s.metrics.acceptedTokens.inc(r.speculative.accepted);
        s.metrics.speculativeRounds.inc(r.speculative.rounds);
      }
      if (r.tokens.length > 0) s.metrics.ttft.observe(r.timeToFirstToken);
      if (r.tokens.length > 1) s.metrics.tpot.observe(r.timePerOutputToken);
      req.log.info(
        {
          id,
          endpoint,
          status,
          policy: policy.name,
          budget: policy.budget.toString(),
          prompt_tokens: prompt.length,
          cached_tokens: r.cachedTokens,
          completion_tokens: r.tokens.length,
          finish_reason: r.finishReason,
          ttft_s: r.timeToFirstToken,
          tpot_s: r.timePerOutputToken,
          kv: await statsOf(),
        },
        "request",
      );
    };
    /** An ending that is not a normal finish, as an OpenAI error (null: normal, or the client left). */
    const abnormal = (r: GenerationResult): ApiError | null => {
      if (r.finishReason === "error") {
        req.log.error({ err: r.error, id }, "generation failed");
        return internalError();
      }
      if (r.finishReason === "timeout")
        return new ApiError(
          504,
          `the request ran past this server's time limit of ${s.requestTimeoutMs} ms (after ${r.tokens.length} tokens)`,
          "server_error",
          null,
          "timeout",
        );
      if (r.finishReason === "cancelled")
        return s.isClosing()
          ? new ApiError(
              503,
              "the request was cancelled: the server is shutting down",
              "server_error",
              null,
              "shutting_down",
            )
          : new ApiError(499, "the request was cancelled", "invalid_request_error", null, "cancelled");
      return null;
    };

    if (!b.stream) {
      const r = await job.result;
      done = true;
      const err = abnormal(r);
      if (err) {
        await logLine(r, err.status);
        // Client gone: nothing to send.
        if (reply.raw.destroyed) return reply;
        return reply.code(err.status).send(err.body());
      }
      const stats = await statsOf();
      await logLine(r, 200);
      const lp =
        topLogprobs === undefined || !r.logprobs ? null : lpf.format(r.logprobs as TokenLogprob[], prompt, 0);
      const finish = r.finishReason === "stop" ? "stop" : "length";
      const choice =
        kind === "chat"
          ? { index: 0, message: { role: "assistant", content: r.text }, logprobs: lp, finish_reason: finish }
          : { index: 0, text: r.text, logprobs: lp, finish_reason: finish };
      return reply.send({
        id,
        object,
        created,
        model: s.modelId,
        choices: [choice],
        usage: usage(r, stats),
        kv_stats: kvStats(r, stats),
      });
    }

    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    const send = (data: unknown) => {
      if (!res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    const chunkObject = kind === "chat" ? "chat.completion.chunk" : "text_completion";
    const chunk = (delta: string, lp: unknown, finishReason: string | null, first = false) => ({
      id,
      object: chunkObject,
      created,
      model: s.modelId,
      choices: [
        kind === "chat"
          ? {
              index: 0,
              delta: first ? { role: "assistant", content: delta } : finishReason ? {} : { content: delta },
              logprobs: lp,
              finish_reason: finishReason,
            }
          : { index: 0, text: delta, logprobs: lp, finish_reason: finishReason },
      ],
    });
    let first = true;
    const context = prompt.slice(-TEXT_CONTEXT_TOKENS);
    let offset = 0;
    for await (const ev of job) {
      if (res.destroyed) break;
      let lp: unknown = null;
      if (ev.token >= 0 && topLogprobs !== undefined && ev.logprob !== undefined) {
        lp = lpf.format([eventLogprob(ev)], context, offset);
        offset += ev.piece?.length ?? 0;
      }
      if (ev.token >= 0) {
        context.push(ev.token);
        if (context.length > TEXT_CONTEXT_TOKENS) context.shift();
      }
      const c = chunk(ev.text, lp, null, first);
      if (ev.trace) (c as Record<string, unknown>).kv_trace = ev.trace;
      send(c);
      first = false;
    }
    const r = await job.result;
    done = true;
    const err = abnormal(r);
    if (err) {
      // An error event, and no [DONE]: a client can tell it from a normal end.
      if (!res.destroyed) {
        res.write(`event: error\ndata: ${JSON.stringify(err.body())}\n\n`);
        res.end();
      }
      await logLine(r, err.status);
      return;
    }
    if (!res.destroyed) {
      send(chunk("", null, r.finishReason === "stop" ? "stop" : "length"));
      if (b.stream_options?.include_usage) {
        const stats = await statsOf();
        send({
          id,
          object: chunkObject,
          created,
          model: s.modelId,
          choices: [],
          usage: usage(r, stats),
          kv_stats: kvStats(r, stats),
        });
      }
      res.write("data: [DONE]\n\n");
      res.end();
    }
    await logLine(r, 200);
  }

  return { completion, chatCompletion };
}

function eventLogprob(ev: TokenEvent): TokenLogprob {
  return { token: ev.token, piece: ev.piece ?? "", logprob: ev.logprob!, topLogprobs: ev.topLogprobs };
}

export function toMessages(ms: NonNullable<CompletionBody["messages"]>): ChatMessage[] {
  return ms.map((m) => ({
    role: m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((c) => c.text).join(""),
  }));
}
