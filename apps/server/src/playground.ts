import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import type { FastifyInstance, RouteOptions } from "fastify";

/** Where the built page lives (apps/server/public, built by `vite build`). */
export const PLAYGROUND_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "public");

/**
 * Serve the playground page at "/" (a server plugin). Its files are public even when the server
 * wants an API key (the page holds no data and asks for the key); one route per built file, so
 * an unknown path still meets the key check rather than a static 404.
 */
export async function playground(app: FastifyInstance): Promise<void> {
  await app.register(async (scope) => {
    scope.addHook("onRoute", (route: RouteOptions) => {
      route.config = { ...(route.config as object), public: true };
    });
    if (!existsSync(join(PLAYGROUND_DIR, "index.html"))) {
      scope.get("/", async (_req, reply) =>
        reply.code(404).type("text/plain").send("the playground is not built: run `pnpm build`"),
      );
      return;
    }
    await scope.register(fastifyStatic, {
      root: PLAYGROUND_DIR,
      prefix: "/",
      index: ["index.html"],
      wildcard: false,
    });
  });
}
