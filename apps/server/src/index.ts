export { bearer, keyMatches } from "./auth.js";
export { ChatFormatter, type ChatMessage } from "./chat-template.js";
export { ApiError } from "./errors.js";
export { type LoadOptions, type LoadResult, runLoad } from "./load.js";
export { ServerMetrics } from "./metrics.js";
export { PLAYGROUND_DIR, playground } from "./playground.js";
export { type Job, Scheduler } from "./scheduler.js";
export { createServer, type ServerOptions, type SmallKvServer, traceOf } from "./server.js";
