/** A bounded load run: `concurrency` clients send requests back to back for `durationMs`. */
export interface LoadOptions {
  url: string;
  concurrency: number;
  durationMs: number;
  /** Body of each request (the prompt may vary per request through `prompt`). */
  body: (i: number) => Record<string, unknown>;
  path?: string;
  headers?: Record<string, string>;
  /** Stream each response (SSE): a request succeeds when it ends with [DONE] and no error event. */
  stream?: boolean;
}

export interface LoadResult {
  concurrency: number;
  seconds: number;
  requests: number;
  errors: number;
  /** Failed requests that were not 429 (capacity refusals are the server working as meant). */
  errorsNon429: number;
  /** Status codes of failed requests, with counts ("stream:<code>" for an error event mid-stream). */
  errorStatuses: Record<string, number>;
  requestsPerSecond: number;
  tokensPerSecond: number;
  latencyP50: number;
  latencyP99: number;
  latencyMean: number;
}

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const path = o.path ?? "/v1/completions";
  const lat: number[] = [];
  let tokens = 0;
  let errors = 0;
  let n = 0;
  const statuses: Record<string, number> = {};
  const t0 = performance.now();
  const end = t0 + o.durationMs;
  const worker = async () => {
    while (performance.now() < end) {
      const i = n++;
      const s = performance.now();
      try {
        const body = o.stream
          ? { ...o.body(i), stream: true, stream_options: { include_usage: true } }
          : o.body(i);
        const r = await fetch(`${o.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json", ...o.headers },
          body: JSON.stringify(body),
        });
        const text = await r.text();
        if (r.status !== 200) {
          errors++;
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          continue;
        }
        let used: number | undefined;
        if (o.stream) {
          const bad = /^event: error\ndata: (.*)$/m.exec(text);
          if (bad || !text.trimEnd().endsWith("data: [DONE]")) {
            errors++;
            const code = bad ? (JSON.parse(bad[1]).error?.code ?? "error") : "unterminated";
            statuses[`stream:${code}`] = (statuses[`stream:${code}`] ?? 0) + 1;
            continue;
          }
          const u = /"usage":\{[^}]*"completion_tokens":(\d+)/.exec(text);
          used = u ? Number(u[1]) : 0;
        } else
          used = (JSON.parse(text) as { usage?: { completion_tokens?: number } }).usage?.completion_tokens;
        tokens += used ?? 0;
        lat.push((performance.now() - s) / 1000);
      } catch {
        errors++;
        statuses.network = (statuses.network ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  const seconds = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return {
    concurrency: o.concurrency,
    seconds,
    requests: lat.length,
    errors,
    errorsNon429: errors - (statuses["429"] ?? 0),
    errorStatuses: statuses,
    requestsPerSecond: lat.length / seconds,
    tokensPerSecond: tokens / seconds,
    latencyP50: quantile(lat, 0.5),
    latencyP99: quantile(lat, 0.99),
    latencyMean: lat.reduce((a, b) => a + b, 0) / Math.max(1, lat.length),
  };
}
