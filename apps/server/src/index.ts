export { bearer, keyMatches, type MetricsAccess } from "./auth.js";
export { ChatFormatter, type ChatMessage } from "./chat-template.js";
export { ApiError } from "./errors.js";
export { type LoadOptions, type LoadResult, runLoad } from "./load.js";
export { ServerMetrics } from "./metrics.js";
export { PLAYGROUND_DIR, playground } from "./playground.js";
export type { PolicyFiles } from "./policy-request.js";
export { type Job, Scheduler } from "./scheduler.js";
export {
  createServer,
  DEFAULT_PREFIX_CACHE_BYTES,
  type ServerOptions,
  type SmallKvServer,
} from "./server.js";
export { traceOf } from "./trace.js";
