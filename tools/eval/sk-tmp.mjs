import { AssistedModel, Model, argmax } from "@smallkv/runner";
import { resolvePolicy } from "@smallkv/policies";
const [ctx, B, pol, opts] = [Number(process.argv[2] ?? 4096), Number(process.argv[3] ?? 1), process.argv[4] ?? "smallkv", JSON.parse(process.argv[5] ?? "{}")];
const W = process.env.W ?? "int8", AKV = process.env.AKV ?? "int8";
const llm = await Model.load("/tmp/smallkv-bench/llm-100m", { weights: W });
const slm = await Model.load("/tmp/smallkv-bench/slm-100m", { weights: process.env.AW ?? W, kvCold: AKV, dense: process.env.AD ?? "auto" });
const pair = new AssistedModel(llm, slm);
const f = await resolvePolicy(pol);
const model = f.usesAssistant ? pair : llm;
const seqs = Array.from({ length: B }, () => model.newSequence(f.create({ budget: 0.2, options: opts })));
let logits = await model.forward(seqs.map((seq, b) => ({ seq, tokens: Array.from({ length: ctx }, (_, i) => 3 + ((i * 7919 + b * 13) % 31000)) })));
const snap = () => ({ l: { ...llm.timing }, s: { ...slm.timing }, p: pair.timing.slm });
let tot = 0, N = Number(process.env.N ?? 30), a = null;
for (let i = 0; i < N + 2; i++) {
  if (i === 2) { a = snap(); tot = 0; }
  const t = performance.now();
  logits = await model.forward(seqs.map((seq, b) => ({ seq, tokens: [argmax(logits[b])] })));
  tot += performance.now() - t;
}
const b = snap(); const d = (x, y, k) => ((y[k] - x[k]) * 1000 / N).toFixed(2);
console.log(pol, JSON.stringify(opts), `B${B}x${ctx}`, "step", (tot / N).toFixed(2), "| llm fwd", d(a.l, b.l, "forward"), "attn", d(a.l, b.l, "attention"), "policy", d(a.l, b.l, "policy"), "| slm total", ((b.p - a.p) * 1000 / N).toFixed(2), "fwd", d(a.s, b.s, "forward"), "attn", d(a.s, b.s, "attention"), "policy", d(a.s, b.s, "policy"));
