import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export function fmt(x: number | null | undefined, digits = 3): string {
  if (x === null || x === undefined) return "-";
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return String(x);
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 1) return x.toFixed(2);
  return x.toPrecision(digits);
}

/** Rows as an aligned text table. */
export function table(headers: string[], rows: (string | number | null)[][]): string {
  const cells = [
    headers,
    ...rows.map((r) => r.map((c) => (typeof c === "number" || c === null ? fmt(c) : c))),
  ];
  const w = headers.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const line = (r: (string | number | null)[]) => r.map((c, i) => String(c).padStart(w[i])).join("  ");
  return [line(cells[0]), w.map((x) => "-".repeat(x)).join("  "), ...cells.slice(1).map(line)].join("\n");
}

/** Rows as a Markdown table. */
export function markdownTable(headers: string[], rows: (string | number | null)[][]): string {
  const c = (x: string | number | null) => (typeof x === "number" || x === null ? fmt(x) : x);
  return [
    `| ${headers.join(" | ")} |`,
    `|${headers.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${r.map(c).join(" | ")} |`),
  ].join("\n");
}

export function writeJson(outDir: string, file: string, data: unknown): string {
  mkdirSync(outDir, { recursive: true });
  const p = join(outDir, file);
  writeFileSync(p, `${JSON.stringify(data, null, 2)}\n`);
  return p;
}

/** The median of a list of numbers (the mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}
