import { randomUUID } from "node:crypto";
import {
  Budget,
  BudgetError,
  builtinPolicies,
  type OptionValue,
  type PolicyFactory,
  type PolicyInstance,
  PolicyOptionError,
} from "@smallkv/policies";
import {
  AssistedModel,
  type GenerateOptions,
  type GenerationResult,
  type Model,
  type StepModel,
  type TokenEvent,
} from "@smallkv/runner";
import Fastify, {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from "fastify";
import { bearer, keyMatches } from "./auth.js";
import { ChatFormatter, type ChatMessage } from "./chat-template.js";
import { ApiError, badRequest, internalError } from "./errors.js";
import { ServerMetrics } from "./metrics.js";
import { Scheduler } from "./scheduler.js";
import { chatBody, completionBody, detokenizeBody, tokenizeBody } from "./schemas.js";

export interface ServerOptions {
  model: Model;
  /** Assistant model for SmallKV requests (same tokenizer). */
  assistant?: Model;
  /** The id clients send as `model` (default: the checkpoint folder name). */
  modelId?: string;
  defaultPolicy?: string;
  defaultBudget?: string | number;
  defaultPolicyOptions?: Record<string, OptionValue>;
  /** Require `Authorization: Bearer <apiKey>` on the API routes. */
  apiKey?: string;
  /** Sequences in the running batch (default 32) and requests waiting beyond it (default 64). */
  maxBatch?: number;
  maxQueue?: number;
  /** Largest max_tokens a request may ask for (default: the model's context). */
  maxTokensLimit?: number;
  /** Per-request wall-clock limit (default 120 s). */
  requestTimeoutMs?: number;
  /** Request body size limit in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** Fastify/pino logger settings (default: info to stdout); false for none. */
  logger?: boolean | Record<string, unknown>;
  /** More policies by name (embedding applications, tests); module paths are never loaded over HTTP. */
  extraPolicies?: Record<string, PolicyFactory>;
  /** Extra routes (the playground page). */
  plugins?: ((app: FastifyInstance, server: SmallKvServer) => void | Promise<void>)[];
}

export interface SmallKvServer {
  app: FastifyInstance;
  scheduler: Scheduler;
  metrics: ServerMetrics;
  modelId: string;
  model: StepModel;
  /** Stop accepting requests, let in-flight ones finish for up to `deadlineMs`, cancel the rest, close. */
  shutdown(deadlineMs?: number): Promise<void>;
}

type CompletionBody = {
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
  kv_policy?: string;
  kv_budget?: number | string;
  kv_policy_options?: Record<string, OptionValue>;
  kv_trace?: boolean;
};

export async function createServer(o: ServerOptions): Promise<SmallKvServer> {
  const llm = o.model;
  const model: StepModel = o.assistant ? new AssistedModel(llm, o.assistant) : llm;
  const modelId = o.modelId ?? llm.name;
  const metrics = new ServerMetrics();
  const scheduler = new Scheduler(model, { maxBatch: o.maxBatch ?? 32, maxQueue: o.maxQueue ?? 64, metrics });
  const chat = new ChatFormatter(llm.tokenizer);
  const policies: Record<string, PolicyFactory> = { ...builtinPolicies, ...(o.extraPolicies ?? {}) };
  const ctx = llm.config.maxPositions;
  let closing = false;

  const app = Fastify({
    logger: o.logger === undefined ? { level: "info" } : o.logger,
    bodyLimit: o.bodyLimit ?? 1024 * 1024,
    // One log line per request is written by the handlers themselves (with timing and KV stats).
    logController: new LogController({ disableRequestLogging: true }),
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false, allowUnionTypes: true },
    },
  });

  app.setErrorHandler(
    (
      err: Error & {
        statusCode?: number;
        code?: string;
        validation?: { instancePath?: string; params?: Record<string, string> }[];
      },
      req,
      reply,
    ) => {
      let e: ApiError;
      if (err instanceof ApiError) e = err;
      else if (err.validation) {
        const v = err.validation[0];
        const param =
          (v?.instancePath ?? "").replace(/^\//, "").split("/")[0] || v?.params?.missingProperty || null;
        e = badRequest(`invalid request: ${err.message.replace(/^body\/?/, "")}`, param);
      } else if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE")
        e = new ApiError(
          413,
          `request body larger than ${o.bodyLimit ?? 1024 * 1024} bytes`,
          "invalid_request_error",
          null,
          "body_too_large",
        );
      else if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) e = badRequest(err.message);
      else {
        req.log.error({ err }, "internal error");
        e = internalError();
      }
      metrics.requests.inc({ endpoint: req.routeOptions.url ?? req.url, status: String(e.status) });
      void reply.code(e.status).headers(e.headers).send(e.body());
    },
  );
  app.setNotFoundHandler((req, reply) => {
    metrics.requests.inc({ endpoint: "unknown", status: "404" });
    void reply
      .code(404)
      .send(
        new ApiError(
          404,
          `no route ${req.method} ${req.url}`,
          "invalid_request_error",
          null,
          "not_found",
        ).body(),
      );
  });

  const authed = (req: FastifyRequest) => {
    if (closing)
      throw new ApiError(503, "the server is shutting down", "server_error", null, "shutting_down");
    if (o.apiKey !== undefined && !keyMatches(bearer(req.headers.authorization), o.apiKey)) {
      throw new ApiError(
        401,
        "invalid or missing API key (Authorization: Bearer <key>)",
        "authentication_error",
        null,
        "invalid_api_key",
      );
    }
  };
  const checkModel = (m: string | undefined) => {
    if (m !== undefined && m !== modelId)
      throw new ApiError(
        404,
        `the model ${JSON.stringify(m)} does not exist; this server serves ${JSON.stringify(modelId)}`,
        "invalid_request_error",
        "model",
        "model_not_found",
      );
  };

  function policyFor(b: CompletionBody): PolicyInstance {
    const name = b.kv_policy ?? o.defaultPolicy ?? "full";
    const factory = policies[name];
    if (!factory)
      throw badRequest(
        `unknown kv_policy ${JSON.stringify(name)}; available: ${Object.keys(policies).join(", ")}`,
        "kv_policy",
      );
    if (!o.assistant && factory.usesAssistant)
      throw badRequest(
        `kv_policy ${name} needs the server to run with an assistant model (--assistant)`,
        "kv_policy",
      );
    try {
      const budget = Budget.parse(b.kv_budget ?? o.defaultBudget ?? 1);
      const options = {
        ...(b.kv_policy === undefined || b.kv_policy === o.defaultPolicy
          ? (o.defaultPolicyOptions ?? {})
          : {}),
        ...(b.kv_policy_options ?? {}),
      };
      return factory.create({ budget, options });
    } catch (e) {
      if (e instanceof BudgetError) throw badRequest(e.message, "kv_budget");
      if (e instanceof PolicyOptionError) throw badRequest(e.message, "kv_policy_options");
      throw e;
    }
  }

  async function generate(
    req: FastifyRequest<{ Body: CompletionBody }>,
    reply: FastifyReply,
    kind: "completion" | "chat",
    prompt: number[],
  ) {
    const b = req.body;
    const endpoint = kind === "chat" ? "/v1/chat/completions" : "/v1/completions";
    if (prompt.length === 0)
      throw badRequest("the prompt has no tokens", kind === "chat" ? "messages" : "prompt");
    if (prompt.length >= ctx) {
      throw new ApiError(
        413,
        `the prompt has ${prompt.length} tokens; this model's context is ${ctx} (the prompt must leave room for at least one new token)`,
        "invalid_request_error",
        kind === "chat" ? "messages" : "prompt",
        "context_length_exceeded",
      );
    }
    for (const t of prompt)
      if (t >= llm.config.vocabSize)
        throw badRequest(`token id ${t} is outside the vocabulary (${llm.config.vocabSize})`, "prompt");
    const asked = kind === "chat" ? (b.max_completion_tokens ?? b.max_tokens) : b.max_tokens;
    const limit = o.maxTokensLimit ?? ctx;
    if (asked != null && asked > limit)
      throw badRequest(`max_tokens ${asked} is above this server's limit of ${limit}`, "max_tokens");
    const maxTokens = Math.min(asked ?? (kind === "chat" ? limit : 16), ctx - prompt.length);
    const policy = policyFor(b);
    const stop = b.stop == null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
    const topLogprobs =
      kind === "chat"
        ? b.logprobs
          ? (b.top_logprobs ?? 0)
          : undefined
        : b.logprobs == null
          ? undefined
          : Number(b.logprobs);
    const opts: GenerateOptions = {
      maxTokens,
      temperature: b.temperature ?? 1,
      topP: b.top_p ?? undefined,
      topK: b.top_k ?? undefined,
      seed: b.seed ?? undefined,
      stop,
      logprobs: topLogprobs,
      policy,
      timeoutMs: o.requestTimeoutMs ?? 120_000,
      // The per-step trace is taken as each token is produced (the sequence moves on at once).
      inspect: b.kv_trace && b.stream ? (seq, token) => traceOf(seq, policy, token) : undefined,
    };
    const job = scheduler.submit(prompt, opts);
    metrics.policyRequests.inc({ policy: policy.name });
    metrics.promptTokens.inc(prompt.length);
    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replace(/-/g, "")}`;
    const created = Math.floor(Date.now() / 1000);
    const object = kind === "chat" ? "chat.completion" : "text_completion";
    let done = false;
    // The response closing before it finished means the client went away: free the sequence now.
    reply.raw.on("close", () => {
      if (!done && !reply.raw.writableFinished) job.cancel();
    });
    const tok = llm.tokenizer;
    const logprobPart = (ev: TokenEvent) => {
      if (topLogprobs === undefined || ev.logprob === undefined) return null;
      const str = (t: number) => tok.decode([t], false);
      if (kind === "chat") {
        return {
          content: [
            {
              token: str(ev.token),
              logprob: ev.logprob,
              bytes: [...Buffer.from(str(ev.token))],
              top_logprobs: (ev.topLogprobs ?? []).map((x) => ({
                token: str(x.token),
                logprob: x.logprob,
                bytes: [...Buffer.from(str(x.token))],
              })),
            },
          ],
        };
      }
      return {
        tokens: [str(ev.token)],
        token_logprobs: [ev.logprob],
        top_logprobs: ev.topLogprobs
          ? [Object.fromEntries(ev.topLogprobs.map((x) => [str(x.token), x.logprob]))]
          : null,
        text_offset: [0],
      };
    };
    const usage = (r: GenerationResult, stats: Awaited<ReturnType<typeof statsOf>>) => ({
      prompt_tokens: prompt.length,
      completion_tokens: r.tokens.length,
      total_tokens: prompt.length + r.tokens.length,
      kv_stats: stats,
    });
    const statsOf = () => {
      const s = job.started;
      return s.then((st) =>
        st
          ? {
              ...st.sequence.stats(),
              policy: policy.name,
              budget: policy.budget.toString(),
              policy_classes: policy.classCounts?.(st.sequence) ?? {},
            }
          : null,
      );
    };
    const finish = (r: GenerationResult) => (r.finishReason === "stop" ? "stop" : "length");
    const logLine = async (r: GenerationResult, status: number) => {
      metrics.requests.inc({ endpoint, status: String(status) });
      metrics.finished.inc({ reason: r.finishReason });
      metrics.generatedTokens.inc(r.tokens.length);
      if (r.tokens.length > 0) metrics.ttft.observe(r.timeToFirstToken);
      if (r.tokens.length > 1) metrics.tpot.observe(r.timePerOutputToken);
      req.log.info(
        {
          id,
          endpoint,
          status,
          policy: policy.name,
          budget: policy.budget.toString(),
          prompt_tokens: prompt.length,
          completion_tokens: r.tokens.length,
          finish_reason: r.finishReason,
          ttft_s: r.timeToFirstToken,
          tpot_s: r.timePerOutputToken,
          kv: await statsOf(),
        },
        "request",
      );
    };

    if (!b.stream) {
      const r = await job.result;
      done = true;
      if (r.finishReason === "error") {
        req.log.error({ err: r.error, id }, "generation failed");
        await logLine(r, 500);
        const e = internalError();
        return reply.code(500).send(e.body());
      }
      if (r.finishReason === "cancelled") {
        await logLine(r, 499);
        // Client gone: nothing to send. Still connected: the server cancelled it (shutdown).
        if (reply.raw.destroyed) return reply;
        return reply
          .code(503)
          .send(
            new ApiError(
              503,
              "the request was cancelled: the server is shutting down",
              "server_error",
              null,
              "cancelled",
            ).body(),
          );
      }
      const stats = await statsOf();
      await logLine(r, 200);
      const lp =
        topLogprobs === undefined || !r.logprobs
          ? null
          : mergeLogprobs(
              r.logprobs.map((x) =>
                logprobPart({ token: x.token, text: "", logprob: x.logprob, topLogprobs: x.topLogprobs }),
              ),
              kind,
            );
      const choice =
        kind === "chat"
          ? {
              index: 0,
              message: { role: "assistant", content: r.text },
              logprobs: lp,
              finish_reason: finish(r),
            }
          : { index: 0, text: r.text, logprobs: lp, finish_reason: finish(r) };
      return reply.send({
        id,
        object,
        created,
        model: modelId,
        choices: [choice],
        usage: usage(r, stats),
        kv_stats: stats,
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
    const chunk = (delta: string, ev: TokenEvent | null, finishReason: string | null, first = false) =>
      kind === "chat"
        ? {
            id,
            object: chunkObject,
            created,
            model: modelId,
            choices: [
              {
                index: 0,
                delta: first ? { role: "assistant", content: delta } : finishReason ? {} : { content: delta },
                logprobs: ev ? logprobPart(ev) : null,
                finish_reason: finishReason,
              },
            ],
          }
        : {
            id,
            object: chunkObject,
            created,
            model: modelId,
            choices: [
              { index: 0, text: delta, logprobs: ev ? logprobPart(ev) : null, finish_reason: finishReason },
            ],
          };
    let first = true;
    for await (const ev of job) {
      if (res.destroyed) break;
      const c = chunk(ev.text, ev.token >= 0 ? ev : null, null, first);
      if (ev.trace) (c as Record<string, unknown>).kv_trace = ev.trace;
      send(c);
      first = false;
    }
    const r = await job.result;
    done = true;
    if (r.finishReason === "error") {
      req.log.error({ err: r.error, id }, "generation failed");
      send(internalError().body());
    } else if (!res.destroyed && r.finishReason !== "cancelled") {
      send(chunk("", null, finish(r)));
      const stats = await statsOf();
      if (b.stream_options?.include_usage)
        send({
          id,
          object: chunkObject,
          created,
          model: modelId,
          choices: [],
          usage: usage(r, stats),
          kv_stats: stats,
        });
    }
    if (!res.destroyed) {
      res.write("data: [DONE]\n\n");
      res.end();
    }
    await logLine(r, r.finishReason === "cancelled" ? 499 : r.finishReason === "error" ? 500 : 200);
  }

  app.get("/health", async () => ({
    status: closing ? "shutting_down" : "ok",
    model: modelId,
    running: scheduler.runningCount,
    queued: scheduler.queued,
  }));
  app.get("/metrics", async (_req, reply) => {
    const kv = scheduler.kvBytes();
    metrics.hotBytes.set(kv.hot);
    metrics.coldBytes.set(kv.cold);
    metrics.running.set(scheduler.runningCount);
    metrics.queueDepth.set(scheduler.queued);
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
  app.get("/v1/models", async (req) => {
    authed(req);
    const created = Math.floor(Date.now() / 1000);
    return {
      object: "list",
      data: [
        {
          id: modelId,
          object: "model",
          created,
          owned_by: "smallkv",
          max_model_len: ctx,
          assistant: o.assistant?.name ?? null,
          // Only what this server can run: assistant-reading policies need --assistant.
          kv_policies: Object.keys(policies).filter((n) => o.assistant || !policies[n].usesAssistant),
          num_layers: llm.config.numLayers,
          num_heads: llm.config.numHeads,
          num_kv_heads: llm.config.numKvHeads,
        },
      ],
    };
  });
  app.post<{ Body: CompletionBody }>(
    "/v1/completions",
    { schema: { body: completionBody } },
    async (req, reply) => {
      authed(req);
      checkModel(req.body.model);
      const p = req.body.prompt!;
      const ids =
        typeof p === "string"
          ? llm.tokenizer.encode(p)
          : typeof p[0] === "string"
            ? llm.tokenizer.encode(p[0] as string)
            : (p as number[]);
      return generate(req, reply, "completion", ids);
    },
  );
  app.post<{ Body: CompletionBody }>(
    "/v1/chat/completions",
    { schema: { body: chatBody } },
    async (req, reply) => {
      authed(req);
      checkModel(req.body.model);
      return generate(req, reply, "chat", chat.encode(toMessages(req.body.messages!)));
    },
  );
  app.post<{
    Body: {
      model?: string;
      prompt?: string;
      messages?: CompletionBody["messages"];
      add_special_tokens?: boolean;
    };
  }>("/tokenize", { schema: { body: tokenizeBody } }, async (req) => {
    authed(req);
    checkModel(req.body.model);
    const b = req.body;
    if (b.prompt === undefined && !b.messages) throw badRequest("give `prompt` or `messages`", "prompt");
    const tokens = b.messages
      ? chat.encode(toMessages(b.messages))
      : llm.tokenizer.encode(b.prompt!, b.add_special_tokens ?? true);
    return { tokens, count: tokens.length, max_model_len: ctx };
  });
  app.post<{ Body: { model?: string; tokens: number[]; per_token?: boolean } }>(
    "/detokenize",
    { schema: { body: detokenizeBody } },
    async (req) => {
      authed(req);
      checkModel(req.body.model);
      for (const t of req.body.tokens)
        if (t >= llm.config.vocabSize)
          throw badRequest(`token id ${t} is outside the vocabulary (${llm.config.vocabSize})`, "tokens");
      // per_token: each token's own text as well (the playground's token strip).
      const pieces = req.body.per_token
        ? req.body.tokens.map((t) => llm.tokenizer.decode([t], false))
        : undefined;
      return { prompt: llm.tokenizer.decode(req.body.tokens, false), ...(pieces ? { pieces } : {}) };
    },
  );

  const server: SmallKvServer = {
    app,
    scheduler,
    metrics,
    modelId,
    model,
    async shutdown(deadlineMs = 10_000) {
      closing = true;
      const finished = await scheduler.idle(deadlineMs);
      if (!finished) scheduler.cancelAll();
      await scheduler.idle(2_000);
      await app.close();
    },
  };
  for (const p of o.plugins ?? []) await p(app, server);
  return server;
}

function toMessages(ms: NonNullable<CompletionBody["messages"]>): ChatMessage[] {
  return ms.map((m) => ({
    role: m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((c) => c.text).join(""),
  }));
}

function mergeLogprobs(parts: (Record<string, unknown> | null)[], kind: "completion" | "chat") {
  const ps = parts.filter((p): p is Record<string, unknown> => p !== null);
  if (kind === "chat") return { content: ps.flatMap((p) => p.content as unknown[]) };
  let offset = 0;
  const out = {
    tokens: [] as string[],
    token_logprobs: [] as number[],
    top_logprobs: [] as unknown[],
    text_offset: [] as number[],
  };
  for (const p of ps) {
    const t = (p.tokens as string[])[0];
    out.tokens.push(t);
    out.token_logprobs.push((p.token_logprobs as number[])[0]);
    out.top_logprobs.push((p.top_logprobs as unknown[] | null)?.[0] ?? null);
    out.text_offset.push(offset);
    offset += t.length;
  }
  return out;
}

/** Per-step KV trace for the playground: stats, policy classes, and per layer/head token classes. */
export function traceOf(seq: import("@smallkv/runner").Sequence, policy: PolicyInstance, token: number) {
  const st = seq.stats();
  return {
    token,
    stats: st,
    policy_classes: policy.classCounts?.(seq) ?? {},
    policy_state: policy.describe?.(seq) ?? {},
    layers: layerClasses(seq),
  };
}

/** For each layer and kv head: positions in the hot set (K+V) and V-only, at the last step. */
function layerClasses(seq: import("@smallkv/runner").Sequence) {
  return seq.hot.map((h) => ({
    active: h.active,
    perQuery: h.perQuery,
    full: h.active
      ? Array.from({ length: h.full.count.length }, (_, g) => Array.from(h.full.positions(g)))
      : null,
    vOnly: h.active
      ? Array.from({ length: h.vOnly.count.length }, (_, g) => Array.from(h.vOnly.positions(g)))
      : null,
  }));
}
