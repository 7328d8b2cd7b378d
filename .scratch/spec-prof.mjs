import { readFileSync } from "node:fs";
import { createPolicy } from "@smallkv/policies";
import { AssistedModel, Generator, Model } from "@smallkv/runner";

const dir = "/work/shared/models/";
const llm = await Model.load(dir + "stories260K", { threads: Number(process.env.TH ?? 2) });
const slm = await Model.load(dir + (process.env.SLM ?? "stories260K-slm"), {
  threads: Number(process.env.TH ?? 2),
});
const pair = new AssistedModel(llm, slm);
const text = readFileSync("/work/shared/data/tinystories-valid.txt", "utf8");
const prompt = llm.tokenizer.encode(text.slice(0, 3000)).slice(0, 140);
const policy = process.env.POLICY ?? "full";
const B = Number(process.env.B ?? 1);
const spec = process.env.K
  ? process.env.K === "adaptive"
    ? { k: 4, adaptive: true }
    : { k: Number(process.env.K) }
  : undefined;
async function run(n) {
  const g = new Generator(pair);
  const t0 = performance.now();
  const rs = await Promise.all(
    Array.from({ length: B }, async (_, i) =>
      g.generate(prompt.slice(i), {
        temperature: 0,
        maxTokens: n,
        stopTokens: [],
        policy: await createPolicy(policy.split("@")[0], policy.split("@")[1] ?? 1),
        speculative: spec,
      }),
    ),
  );
  return { ms: performance.now() - t0, rs };
}
await run(16);
let best = null;
for (let r = 0; r < Number(process.env.R ?? 5); r++) {
  const l0 = { ...llm.timing },
    s0 = { ...slm.timing };
  const x = await run(Number(process.env.N ?? 64));
  const o = { ...x, l0, s0, l1: { ...llm.timing }, s1: { ...slm.timing } };
  if (!best || o.ms < best.ms) best = o;
}
const { ms, rs, l0, s0 } = best;
const L = best.l1,
  S = best.s1;
const d = (a, b, k) => ((a[k] - b[k]) * 1000).toFixed(1);
const sp = rs[0].speculative;
console.log(
  `${policy} K=${process.env.K ?? "-"} B=${B} wall ${ms.toFixed(1)} ms  llm fwd ${d(L, l0, "forward")} ms (${L.steps - l0.steps} steps, policy ${d(L, l0, "policy")}, attn ${d(L, l0, "attention")})  slm fwd ${d(S, s0, "forward")} ms (${S.steps - s0.steps} steps)`,
  sp ? `alpha ${sp.acceptanceRate.toFixed(2)} rounds ${sp.rounds}` : "",
);
