import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import type { FastifyInstance } from "fastify";

/** Where the built page lives (apps/server/public, built by `vite build`). */
export const PLAYGROUND_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "public");

/** Serve the playground page at "/" (a server plugin). */
export async function playground(app: FastifyInstance): Promise<void> {
  if (!existsSync(join(PLAYGROUND_DIR, "index.html"))) {
    app.get("/", async (_req, reply) =>
      reply.code(404).type("text/plain").send("the playground is not built: run `pnpm build`"),
    );
    return;
  }
  await app.register(fastifyStatic, { root: PLAYGROUND_DIR, prefix: "/", index: ["index.html"] });
}
