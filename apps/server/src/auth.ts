import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { ApiError } from "./errors.js";

/** Compare a presented API key with the expected one in constant time (digests of equal length). */
export function keyMatches(presented: string | undefined, expected: string): boolean {
  const a = createHash("sha256")
    .update(presented ?? "")
    .digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b) && presented !== undefined;
}

/** The bearer token of an Authorization header, if any. */
export function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? "");
  return m ? m[1].trim() : undefined;
}

/** Who may read `/metrics`: anyone (Prometheus' usual scrape), or whoever holds its own key. */
export type MetricsAccess = "public" | { key: string };

export interface AuthOptions {
  /** The API key every route but `/health` (and public static files) requires. */
  apiKey?: string;
  /** `/metrics` access (default public, whatever `apiKey` is). */
  metrics?: MetricsAccess;
}

/** Route config flag of routes anyone may fetch (the playground's static files). */
export interface PublicRouteConfig {
  public?: boolean;
}

export const unauthorized = () =>
  new ApiError(
    401,
    "invalid or missing API key (Authorization: Bearer <key>)",
    "authentication_error",
    null,
    "invalid_api_key",
  );

/** The key a request must present, or null when the route is open. */
function requiredKey(req: FastifyRequest, o: AuthOptions): string | null {
  const url = req.routeOptions.url;
  if (url === "/health") return null;
  if ((req.routeOptions.config as PublicRouteConfig | undefined)?.public) return null;
  if (url === "/metrics") return o.metrics === undefined || o.metrics === "public" ? null : o.metrics.key;
  return o.apiKey ?? null;
}

/**
 * Check the key in the earliest request hook: before the body is read, parsed or validated,
 * so a client without a key learns nothing of the validation rules and cannot make the server
 * buffer a body. An unauthenticated request is answered 401 and its connection closed, so the
 * rest of its body is never read.
 */
export function registerAuth(
  app: FastifyInstance,
  o: AuthOptions,
  onRefused: (req: FastifyRequest) => void,
): void {
  app.addHook("onRequest", (req: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => {
    const key = requiredKey(req, o);
    if (key === null || keyMatches(bearer(req.headers.authorization), key)) return done();
    onRefused(req);
    const e = unauthorized();
    void reply
      .code(e.status)
      .header("connection", "close")
      .header("www-authenticate", 'Bearer realm="smallkv"')
      .send(e.body());
  });
}
