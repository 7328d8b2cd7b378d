import http from "node:http";
import type { AddressInfo } from "node:net";

/** The SSE error event a cut stream ends with (the server's own error events have this shape). */
export const REPLICA_LOST_EVENT = `event: error\ndata: ${JSON.stringify({
  error: {
    message: "the replica serving this stream stopped before it finished; the request was not retried",
    type: "server_error",
    param: null,
    code: "replica_lost",
  },
})}\n\n`;

/**
 * A pass-through HTTP proxy in front of one replica, between HAProxy and it. It changes
 * nothing while the replica answers. When the replica dies:
 * - before any byte of the response: the connection is closed with no response, so HAProxy
 *   sees an empty response and retries the request on another replica;
 * - during a stream (text/event-stream): the stream ends with an OpenAI error event and a
 *   proper end of the chunked response, so the client gets an error, not a cut connection;
 * - during another response: the connection is cut (the client sees a transport error).
 */
export class StreamGuard {
  private readonly server: http.Server;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  port = 0;

  constructor(readonly upstreamPort: number) {
    this.server = http.createServer((req, res) => this.forward(req, res));
    this.server.keepAliveTimeout = 65_000;
  }

  private forward(req: http.IncomingMessage, res: http.ServerResponse): void {
    let done = false;
    let sse = false;
    const lost = () => {
      if (done) return;
      done = true;
      if (!res.headersSent) {
        // No byte went out: an empty response, which HAProxy retries elsewhere.
        req.socket.destroy();
        return;
      }
      if (sse) {
        res.end(REPLICA_LOST_EVENT);
        return;
      }
      res.destroy();
    };
    const up = http.request(
      {
        host: "127.0.0.1",
        port: this.upstreamPort,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent: this.agent,
      },
      (ur) => {
        sse = String(ur.headers["content-type"] ?? "").startsWith("text/event-stream");
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        // SSE events go out as they come.
        res.flushHeaders();
        ur.on("data", (c: Buffer) => res.write(c));
        ur.on("end", () => {
          if (ur.complete) {
            done = true;
            res.end();
          } else lost();
        });
        ur.on("aborted", lost);
        ur.on("error", lost);
        ur.on("close", () => {
          if (!ur.complete) lost();
        });
      },
    );
    up.on("error", lost);
    // The client (HAProxy) went away: stop the upstream request too.
    res.on("close", () => {
      if (!done) {
        done = true;
        up.destroy();
      }
    });
    req.pipe(up);
  }

  async listen(port = 0): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(port, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this.port;
  }

  async close(): Promise<void> {
    this.agent.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
