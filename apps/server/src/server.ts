import { builtinPolicies, type OptionValue, type PolicyFactory } from "@smallkv/policies";
import {
  AssistedModel,
  ContextLengthError,
  InvalidOptionError,
  type Model,
  PrefixCache,
  type PrefixCacheOptions,
  type StepModel,
} from "@smallkv/runner";
import Fastify, { type FastifyInstance, LogController } from "fastify";
import { type MetricsAccess, registerAuth } from "./auth.js";
import { ChatFormatter } from "./chat-template.js";
import { type CompletionBody, completionHandlers } from "./completions.js";
import { ApiError, badRequest, internalError } from "./errors.js";
import { registerInfoRoutes } from "./info-routes.js";
import { ServerMetrics } from "./metrics.js";
import { type PolicyFiles, PolicyResolver } from "./policy-request.js";
import { Scheduler } from "./scheduler.js";
import { chatBody, completionBody } from "./schemas.js";
import type { ServerContext } from "./server-context.js";

/** The prefix cache's default byte budget. */
export const DEFAULT_PREFIX_CACHE_BYTES = 256 * 2 ** 20;

/** Generator option names as the API spells them. */
const API_PARAM: Record<string, string> = {
  maxTokens: "max_tokens",
  topK: "top_k",
  topP: "top_p",
  logitBias: "logit_bias",
  stopTokens: "stop",
};

export interface ServerOptions {
  model: Model;
  /** Assistant model for SmallKV requests (same tokenizer). */
  assistant?: Model;
  /** The id clients send as `model` (default: the checkpoint folder name). */
  modelId?: string;
  defaultPolicy?: string;
  defaultBudget?: string | number;
  /** Options of the default policy (server configuration: a file option here is a path). */
  defaultPolicyOptions?: Record<string, OptionValue>;
  /**
   * Files policy options may name, by option and name (`{ mapping: { wiki: "/srv/m.json" } }`):
   * loaded and checked at start; a request selects one by name, never by path.
   */
  policyFiles?: PolicyFiles;
  /**
   * Require `Authorization: Bearer <apiKey>` on every route but `/health`, `/metrics` (see
   * `metricsAccess`) and the playground's static files; checked before the body is read.
   */
  apiKey?: string;
  /**
   * Prompt blocks kept across requests: a later prompt with the same beginning prefills only
   * the rest (default: 256 MiB, blocks of 128 tokens; false: off). See PrefixCache.
   */
  prefixCache?: PrefixCacheOptions | false;
  /** `/metrics`: "public" (default, for Prometheus) or `{ key }` (its own bearer key). */
  metricsAccess?: MetricsAccess;
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
  /** The prefix cache (null: off). */
  prefixCache: PrefixCache | null;
  /** Stop accepting requests, let in-flight ones finish for up to `deadlineMs`, cancel the rest, close. */
  shutdown(deadlineMs?: number): Promise<void>;
}

export async function createServer(o: ServerOptions): Promise<SmallKvServer> {
  const llm = o.model;
  const model: StepModel = o.assistant ? new AssistedModel(llm, o.assistant) : llm;
  const modelId = o.modelId ?? llm.name;
  const metrics = new ServerMetrics();
  const prefixCache =
    o.prefixCache === false
      ? null
      : new PrefixCache(o.prefixCache ?? { maxBytes: DEFAULT_PREFIX_CACHE_BYTES });
  if (prefixCache) metrics.watchPrefixCache(() => prefixCache.stats);
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
          (v?.instancePath ?? "").replace(/^\//, "").split("/")[0] ||
          v?.params?.missingProperty ||
          v?.params?.additionalProperty ||
          null;
        e = badRequest(`invalid request: ${err.message.replace(/^body\/?/, "")}`, param);
      } else if (err instanceof InvalidOptionError)
        e = badRequest(err.message, API_PARAM[err.option] ?? err.option);
      else if (err instanceof ContextLengthError)
        e = new ApiError(413, err.message, "invalid_request_error", null, "context_length_exceeded");
      else if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE")
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
  registerAuth(app, { apiKey: o.apiKey, metrics: o.metricsAccess }, (req) =>
    metrics.requests.inc({ endpoint: req.routeOptions.url ?? "unknown", status: "401" }),
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

  const checkOpen = () => {
    if (closing)
      throw new ApiError(503, "the server is shutting down", "server_error", null, "shutting_down");
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

  const policyResolver = new PolicyResolver({
    policies,
    llm,
    assistant: o.assistant,
    defaultPolicy: o.defaultPolicy,
    defaultBudget: o.defaultBudget,
    defaultPolicyOptions: o.defaultPolicyOptions,
    files: o.policyFiles,
  });
  const context: ServerContext = {
    llm,
    model,
    assistant: o.assistant,
    modelId,
    ctx,
    maxTokensLimit: o.maxTokensLimit ?? ctx,
    requestTimeoutMs: o.requestTimeoutMs ?? 120_000,
    metrics,
    prefixCache,
    scheduler,
    chat,
    policies: policyResolver,
    isClosing: () => closing,
    apiKeyRequired: o.apiKey !== undefined,
    checkOpen,
    checkModel,
  };
  registerInfoRoutes(app, context);
  const handlers = completionHandlers(context);
  app.post<{ Body: CompletionBody }>(
    "/v1/completions",
    { schema: { body: completionBody } },
    handlers.completion,
  );
  app.post<{ Body: CompletionBody }>(
    "/v1/chat/completions",
    { schema: { body: chatBody } },
    handlers.chatCompletion,
  );

  const server: SmallKvServer = {
    app,
    scheduler,
    metrics,
    modelId,
    model,
    prefixCache,
    async shutdown(deadlineMs = 10_000) {
      closing = true;
      const finished = await scheduler.idle(deadlineMs);
      if (!finished) scheduler.cancelAll();
      await scheduler.idle(2_000);
      await app.close();
      await llm.tokenizer.close();
    },
  };
  for (const p of o.plugins ?? []) await p(app, server);
  return server;
}
