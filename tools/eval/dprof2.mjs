import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { createPolicy } from "@smallkv/policies";
import { AssistedModel, Model } from "@smallkv/runner";

const B = Number(process.env.B ?? 4),
  CTX = Number(process.env.CTX ?? 2048),
  G = Number(process.env.G ?? 12);
const POL = process.env.POLICY ?? "smallkv";
const llm = await Model.load("/tmp/smallkv-bench/llm-100m", { threads: 1 });
const slm = await Model.load("/tmp/smallkv-bench/slm-100m", { threads: 1 });
const pair = new AssistedModel(llm, slm);
const pols = await Promise.all(Array.from({ length: B }, () => createPolicy(POL, 0.2)));
const model = pols[0].usesAssistant ? pair : llm;
const seqs = pols.map((p) => model.newSequence(p));
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
  a0 = pair.timing.slm;
const t0 = performance.now();
for (let g = 0; g < G; g++)
  logits = await model.forward(seqs.map((seq, i) => ({ seq, tokens: [am(logits[i])] })));
const dt = (performance.now() - t0) / G;
if (process.env.PROF) {
  const { profile } = await sess.post("Profiler.stop");
  writeFileSync("/tmp/dprof_full/x.cpuprofile", JSON.stringify(profile));
}
console.log(
  POL,
  `B${B}x${CTX}`,
  "step ms",
  dt.toFixed(1),
  "policy share",
  ((llm.timing.policy - p0) / (llm.timing.forward - f0)).toFixed(3),
  "slm ms",
  ((pair.timing.slm - a0) / G).toFixed(1),
);
