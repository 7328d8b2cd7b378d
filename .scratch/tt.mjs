import { Model } from "@smallkv/runner";

const m = await Model.load("/work/shared/models/stories260K", { threads: Number(process.env.TH ?? 2) });
const s = m.newSequence();
await m.forward([{ seq: s, tokens: Array.from({ length: 140 }, (_, i) => 5 + i) }]);
for (const [T, lg] of [
  [1, "last"],
  [3, "last"],
  [3, "all"],
  [1, "last"],
  [5, "all"],
]) {
  const n = 200;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    await m.forward([{ seq: s, tokens: Array.from({ length: T }, () => 7), logits: lg }]);
    s.truncateTo(140);
  }
  console.log(T, lg, ((performance.now() - t0) / n).toFixed(3), "ms");
}
