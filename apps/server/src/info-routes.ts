import type { FastifyInstance } from "fastify";
import { type CompletionBody, toMessages } from "./completions.js";
import { ApiError, badRequest } from "./errors.js";
import { detokenizeBody, tokenizeBody } from "./schemas.js";
import type { ServerContext } from "./server-context.js";

/** Health, metrics, the model list and tokenizer routes. */
export function registerInfoRoutes(app: FastifyInstance, s: ServerContext): void {
  const { llm } = s;
  // 503 while draining, so a load balancer's health check takes the replica out at once.
  app.get("/health", async (_req, reply) => {
    if (s.isClosing()) void reply.code(503);
    return {
      status: s.isClosing() ? "shutting_down" : "ok",
      model: s.modelId,
      running: s.scheduler.runningCount,
      queued: s.scheduler.queued,
      // The playground asks for a key when this is true (a 401 would say so anyway).
      api_key_required: s.apiKeyRequired,
    };
  });
  app.get("/metrics", async (_req, reply) => {
    const kv = s.scheduler.kvBytes();
    s.metrics.hotBytes.set(kv.hot);
    s.metrics.coldBytes.set(kv.cold);
    s.metrics.assistantBytes.set(kv.assistant);
    s.metrics.kvDeviceBytes.set(kv.device);
    s.metrics.kvHostBytes.set(kv.host);
    const devices = new Set([llm.device, s.assistant?.device].filter((d) => d != null));
    s.metrics.deviceBytes.set([...devices].reduce((a, d) => a + d.allocatedBytes, 0));
    s.metrics.running.set(s.scheduler.runningCount);
    s.metrics.queueDepth.set(s.scheduler.queued);
    return reply.type(s.metrics.registry.contentType).send(await s.metrics.registry.metrics());
  });
  const created = Math.floor(Date.now() / 1000);
  const modelObject = () => ({
    id: s.modelId,
    object: "model",
    created,
    owned_by: "smallkv",
    max_model_len: s.ctx,
    assistant: s.assistant?.name ?? null,
    // Only what this server can run: assistant-reading policies need --assistant.
    kv_policies: s.policies.runnable,
    // Names a request may give for file options (e.g. kv_policy_options.mapping).
    kv_policy_files: s.policies.fileNames,
    num_layers: llm.config.numLayers,
    num_heads: llm.config.numHeads,
    num_kv_heads: llm.config.numKvHeads,
  });
  app.get("/v1/models", async () => {
    s.checkOpen();
    return { object: "list", data: [modelObject()] };
  });
  app.get<{ Params: { id: string } }>("/v1/models/:id", async (req) => {
    s.checkOpen();
    if (req.params.id !== s.modelId)
      throw new ApiError(
        404,
        `the model ${JSON.stringify(req.params.id)} does not exist; this server serves ${JSON.stringify(s.modelId)}`,
        "invalid_request_error",
        "model",
        "model_not_found",
      );
    return modelObject();
  });
  app.post<{
    Body: {
      model?: string;
      prompt?: string;
      messages?: CompletionBody["messages"];
      add_special_tokens?: boolean;
    };
  }>("/tokenize", { schema: { body: tokenizeBody } }, async (req) => {
    s.checkOpen();
    s.checkModel(req.body.model);
    const b = req.body;
    if (b.prompt === undefined && !b.messages) throw badRequest("give `prompt` or `messages`", "prompt");
    const tokens = b.messages
      ? await s.chat.encodeAsync(toMessages(b.messages))
      : await llm.tokenizer.encodeAsync(b.prompt!, b.add_special_tokens ?? true);
    return { tokens, count: tokens.length, max_model_len: s.ctx };
  });
  app.post<{ Body: { model?: string; tokens: number[]; per_token?: boolean } }>(
    "/detokenize",
    { schema: { body: detokenizeBody } },
    async (req) => {
      s.checkOpen();
      s.checkModel(req.body.model);
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
}
