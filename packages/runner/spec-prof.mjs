import { AssistedModel, Generator, Model } from "@smallkv/runner";
import { createPolicy } from "@smallkv/policies";
import { readFileSync } from "node:fs";
const dir = "/work/shared/models/";
const llm = await Model.load(dir + "stories260K", { threads: 2 });
const slm = await Model.load(dir + (process.env.SLM ?? "stories260K-slm"), { threads: 2 });
const pair = new AssistedModel(llm, slm);
const text = readFileSync("/work/shared/data/tinystories-valid.txt", "utf8");
const prompt = llm.tokenizer.encode(text.slice(0, 3000)).slice(0, 140);
const policy = process.env.POLICY ?? "full";
const B = Number(process.env.B ?? 1);
const spec = process.env.K ? (process.env.K === "adaptive" ? { k: 4, adaptive: true } : { k: Number(process.env.K) }) : undefined;
async function run(n) {
  const g = new Generator(pair);
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: B }, async (_, i) => g.generate(prompt.slice(i), { temperature: 0, maxTokens: n, stopTokens: [], policy: await createPolicy(policy.split("@")[0], policy.split("@")[1] ?? 1), speculative: spec })));
  return { ms: performance.now() - t0, rs };
}
await run(16);
const l0 = { ...llm.timing }, s0 = { ...slm.timing };
const { ms, rs } = await run(Number(process.env.N ?? 64));
const d = (a, b, k) => ((a[k] - b[k]) * 1000).toFixed(1);
console.log(`wall ${ms.toFixed(1)} ms  llm fwd ${d(llm.timing, l0, "forward")} ms (${llm.timing.steps - l0.steps} steps, policy ${d(llm.timing, l0, "policy")}, attn ${d(llm.timing, l0, "attention")})  slm fwd ${d(slm.timing, s0, "forward")} ms (${slm.timing.steps - s0.steps} steps)`, rs[0].speculative ?? "");
