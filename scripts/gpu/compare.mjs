// Ours against HF transformers on the same checkpoint and GPU, and the device goals, as one
// table: reads what check.sh's runner and anchor stages wrote into OUTDIR, writes compare.json.
// Usage: node scripts/gpu/compare.mjs OUTDIR
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node scripts/gpu/compare.mjs OUTDIR");
  process.exit(2);
}
const load = (f) => (existsSync(join(dir, f)) ? JSON.parse(readFileSync(join(dir, f), "utf8")) : null);
const ours = load("runner-100m/runner.json")?.results?.[0] ?? null;
const large = load("runner-large/runner.json")?.results?.[0] ?? null;
const hf = load("anchor.json");
const fmt = (x, d = 0) => (x == null || !Number.isFinite(x) ? "-" : x.toFixed(d));
const goals = [];
const goal = (name, value, bound, unit = "") =>
  goals.push({ name, value, bound, met: value != null && value >= bound, unit });

console.log(`device: ${ours?.device?.name ?? hf?.device ?? "?"}`);
if (ours) {
  const b1 = ours.decode.find((d) => d.batch === 1);
  const b64 = ours.decode.find((d) => d.batch === 64);
  goal(
    "100M batch-1 decode / bandwidth roofline",
    b1 && b1.tokensPerSecond / ours.rooflineTokensPerSecond,
    0.25,
  );
  goal("100M batch 64 / batch 1 (tokens/s)", b1 && b64 && b64.tokensPerSecond / b1.tokensPerSecond, 30, "x");
  goal("100M prefill tokens/s", ours.prefill.tokensPerSecond, 100000);
}
if (large) {
  const b1 = large.decode.find((d) => d.batch === 1);
  goal(
    "0.45B batch-1 decode / bandwidth roofline",
    b1 && b1.tokensPerSecond / large.rooflineTokensPerSecond,
    0.5,
  );
}
const rows = [];
for (const B of [1, 16, 64]) {
  const o = ours?.decode.find((d) => d.batch === B)?.tokensPerSecond;
  const eager = hf?.decode.find((d) => d.mode === "eager" && d.batch === B)?.tokensPerSecond;
  const comp = hf?.decode.find((d) => d.mode === "compile" && d.batch === B)?.tokensPerSecond;
  const best = Math.max(eager ?? 0, comp ?? 0) || undefined;
  rows.push({
    batch: B,
    ours: o,
    hfEager: eager,
    hfCompile: comp,
    overBest: o && best && o / best,
    overEager: o && eager && o / eager,
  });
  if (o && best) goal(`batch ${B}: ours / HF best`, o / best, 1, "x");
  if (o && eager) goal(`batch ${B}: ours / HF eager`, o / eager, 3, "x");
}
console.log("\ndecode tokens/s, ~100M synthetic Llama, bf16 weights, same GPU");
console.log(
  `${"batch".padStart(5)} ${"ours".padStart(9)} ${"HF eager".padStart(9)} ${"HF compile".padStart(10)} ${"/best".padStart(6)} ${"/eager".padStart(7)}`,
);
for (const r of rows)
  console.log(
    `${String(r.batch).padStart(5)} ${fmt(r.ours).padStart(9)} ${fmt(r.hfEager).padStart(9)} ${fmt(r.hfCompile).padStart(10)} ${fmt(r.overBest, 2).padStart(6)} ${fmt(r.overEager, 2).padStart(7)}`,
  );
if (hf?.prefill)
  console.log(
    `prefill ${hf.prefill.tokens} tokens: ours ${fmt(ours?.prefill?.tokensPerSecond)} tok/s, HF ${fmt(hf.prefill.tokensPerSecond)} tok/s`,
  );
for (const e of hf?.errors ?? []) console.log(`HF note: ${e}`);
console.log("\ngoals");
for (const g of goals)
  console.log(
    `  ${g.met ? "met   " : "UNMET "} ${g.name}: ${fmt(g.value, g.value != null && g.value < 10 ? 3 : 0)}${g.unit} (goal >= ${g.bound}${g.unit})`,
  );
if (!ours) console.log("  (no runner-100m/runner.json: the runner stage did not finish)");
if (!hf) console.log("  (no anchor.json: the anchor stage did not finish)");
writeFileSync(
  join(dir, "compare.json"),
  JSON.stringify({ rows, goals, device: ours?.device ?? null }, null, 2),
);
