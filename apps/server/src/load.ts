/** A bounded load run: `concurrency` clients send requests back to back for `durationMs`. */
export interface LoadOptions {
  url: string;
  concurrency: number;
  durationMs: number;
  /** Body of each request (the prompt may vary per request through `prompt`). */
  body: (i: number) => Record<string, unknown>;
  path?: string;
  headers?: Record<string, string>;
}

export interface LoadResult {
  concurrency: number;
  seconds: number;
  requests: number;
  errors: number;
  /** Status codes of failed requests, with counts. */
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
        const r = await fetch(`${o.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json", ...o.headers },
          body: JSON.stringify(o.body(i)),
        });
        const j = (await r.json()) as { usage?: { completion_tokens?: number } };
        if (r.status !== 200) {
          errors++;
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          continue;
        }
        tokens += j.usage?.completion_tokens ?? 0;
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
    errorStatuses: statuses,
    requestsPerSecond: lat.length / seconds,
    tokensPerSecond: tokens / seconds,
    latencyP50: quantile(lat, 0.5),
    latencyP99: quantile(lat, 0.99),
    latencyMean: lat.reduce((a, b) => a + b, 0) / Math.max(1, lat.length),
  };
}
