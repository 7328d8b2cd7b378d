import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { createPolicy } from "@smallkv/policies";
import { AssistedModel, Model } from "@smallkv/runner";
import { native as NATIVE } from "../../packages/tensor/dist/native.js";
import { serialize } from "node:v8";
let RS_CALLS = 0, RS_MS = 0, RS_DUMP = false;
{
  const f = NATIVE.rankSplit;
  NATIVE.rankSplit = (...a) => {
    if (RS_DUMP && process.env.RS_DUMP) { writeFileSync(process.env.RS_DUMP, serialize(a)); RS_DUMP = false; }
    const t0 = performance.now(); try { return f(...a); } finally { RS_MS += performance.now() - t0; RS_CALLS++; }
  };
}

const B = Number(process.env.B ?? 4),
  CTX = Number(process.env.CTX ?? 2048),
  G = Number(process.env.G ?? 12);
const POL = process.env.POLICY ?? "smallkv";
const llm = await Model.load("/tmp/smallkv-bench/llm-100m", {
  threads: Number(process.env.TH ?? 2),
  hotRows: process.env.HOT ?? "copy",
});
const slm = await Model.load("/tmp/smallkv-bench/slm-100m", { threads: Number(process.env.TH ?? 2) });
const pair = new AssistedModel(llm, slm);
const ORT = { llm: 0, slm: 0, llmHead: 0 };
for (const [nm, m] of [["llm", llm], ["slm", slm]]) {
  for (const sess of m.layers) {
    const f = sess.run.bind(sess);
    sess.run = async (...a) => { const t0 = performance.now(); try { return await f(...a); } finally { ORT[nm] += performance.now() - t0; } };
  }
}
const [PNAME, ...POPTS] = POL.split(":");
const popts = Object.fromEntries(
  POPTS.join(":")
    .split(",")
    .filter(Boolean)
    .map((kv) => {
      const [k, v] = kv.split("=");
      return [k, Number.isNaN(Number(v)) ? v : Number(v)];
    }),
);
const pols = await Promise.all(Array.from({ length: B }, () => createPolicy(PNAME, 0.2, popts)));
const model = pols[0].usesAssistant ? pair : llm;
const seqs = pols.map((p) => model.newSequence(p));
const T = {};
for (const q of seqs)
  for (const m of ["select", "observe", "vOnlyWeights", "prepare", "wantsAttention"]) {
    const pol = q.policy;
    const f = pol[m];
    if (!f) continue;
    pol[m] = function (...a) {
      const t0 = performance.now();
      try {
        return f.apply(this, a);
      } finally {
        T[m] = (T[m] ?? 0) + performance.now() - t0;
      }
    };
  }
let s = 7;
const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), 3 + (s % 31990));
let logits = await model.forward(seqs.map((seq) => ({ seq, tokens: Array.from({ length: CTX }, rnd) })));
const am = (l) => {
  let b = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[b]) b = i;
  return b;
};
logits = await model.forward(seqs.map((seq, i) => ({ seq, tokens: [am(logits[i])] })));
const sess = new Session();
sess.connect();
if (process.env.PROF) {
  await sess.post("Profiler.enable");
  await sess.post("Profiler.start");
}
const p0 = llm.timing.policy,
  f0 = llm.timing.forward,
  a0 = pair.timing.slm,
  at0 = llm.timing.attention;
for (const k in T) T[k] = 0;
for (const k in ORT) ORT[k] = 0;
RS_CALLS = 0; RS_MS = 0; RS_DUMP = true;
const mv0 = seqs.reduce((a, q) => a + q.stats().movedRows, 0);
if (process.env.PERF_CTL) writeFileSync(process.env.PERF_CTL, "enable\n");
const t0 = performance.now();
for (let g = 0; g < G; g++)
  logits = await model.forward(seqs.map((seq, i) => ({ seq, tokens: [am(logits[i])] })));
const dt = (performance.now() - t0) / G;
if (process.env.PERF_CTL) writeFileSync(process.env.PERF_CTL, "disable\n");
if (process.env.PROF) {
  const { profile } = await sess.post("Profiler.stop");
  writeFileSync("/tmp/dprof/x.cpuprofile", JSON.stringify(profile));
}
console.log("rankSplit native us/call", (RS_MS * 1000 / RS_CALLS).toFixed(1), "calls/step", RS_CALLS / G);
console.log("ORT ms", (ORT.llm / G).toFixed(2), (ORT.slm / G).toFixed(2));
console.log(Object.fromEntries(Object.entries(T).map(([k, v]) => [k, (v / G).toFixed(2)])));
console.log(
  POL,
  `B${B}x${CTX}`,
  "step ms",
  dt.toFixed(1),
  "policy share",
  ((llm.timing.policy - p0) / (llm.timing.forward - f0)).toFixed(3),
  "slm ms",
  (((pair.timing.slm - a0) * 1000) / G).toFixed(1),
  "llm ms",
  (((llm.timing.forward - f0) * 1000) / G).toFixed(1),
  "policy ms",
  (((llm.timing.policy - p0) * 1000) / G).toFixed(1),
  "attn ms",
  (((llm.timing.attention - at0) * 1000) / G).toFixed(1),
);
console.log(
  "moved rows per step per seq-layer-head",
  (
    (seqs.reduce((a, q) => a + q.stats().movedRows, 0) - mv0) /
    G /
    B /
    llm.config.numLayers /
    llm.config.numKvHeads
  ).toFixed(1),
);
console.log(JSON.stringify(seqs[0].stats()), JSON.stringify(seqs[0].policy.classCounts?.(seqs[0]) ?? null));
console.log("rankedShare", seqs[0].policy.describe?.(seqs[0])?.rankedShare);
