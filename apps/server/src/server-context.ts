import type { Model, PrefixCache, StepModel } from "@smallkv/runner";
import type { ChatFormatter } from "./chat-template.js";
import type { ServerMetrics } from "./metrics.js";
import type { PolicyResolver } from "./policy-request.js";
import type { Scheduler } from "./scheduler.js";

/** What the route handlers share: the models, the scheduler, the policies and the checks. */
export interface ServerContext {
  llm: Model;
  model: StepModel;
  assistant?: Model;
  modelId: string;
  /** The model's context length. */
  ctx: number;
  maxTokensLimit: number;
  requestTimeoutMs: number;
  metrics: ServerMetrics;
  /** Prompt blocks kept across requests (null: off). */
  prefixCache: PrefixCache | null;
  scheduler: Scheduler;
  chat: ChatFormatter;
  policies: PolicyResolver;
  isClosing(): boolean;
  /** Whether the API routes need a bearer key. */
  apiKeyRequired: boolean;
  /** Throws 503 while shutting down (the API key was checked before the body was read). */
  checkOpen(): void;
  /** Throws 404 for a model this server does not serve. */
  checkModel(model: string | undefined): void;
}
