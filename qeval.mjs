import { readFileSync } from "node:fs";
import { logSoftmax, Model } from "@smallkv/runner";

const text = readFileSync("../shared/data/tinystories-valid.txt", "utf8");
const docs = text
  .split(/\n\s*\n/)
  .filter((d) => d.length > 400)
  .slice(0, 24);
for (const name of (process.env.MODELS ?? "stories260K").split(",")) {
  const ref = await Model.load(`../shared/models/${name}`, { threads: 2 });
  const variants = JSON.parse(process.env.VARIANTS ?? '[["int8",64],["int4",32],["int4",16]]');
  const models = await Promise.all(
    variants.map(([w, g]) =>
      Model.load(`../shared/models/${name}`, { threads: 2, weights: w, groupSize: g }),
    ),
  );
  const V = ref.config.vocabSize;
  const acc = variants.map(() => ({ nll: 0, kl: 0, top1: 0 }));
  let nllRef = 0,
    n = 0;
  for (const d of docs) {
    const ids = ref.tokenizer.encode(d).slice(0, 256);
    const run = async (m) => {
      const s = m.newSequence();
      const [l] = await m.forward([{ seq: s, tokens: ids, logits: "all" }]);
      s.release();
      return l;
    };
    const lr = await run(ref);
    const lq = await Promise.all(models.map(run));
    for (let i = 0; i + 1 < ids.length; i++) {
      const pr = logSoftmax(lr.subarray(i * V, (i + 1) * V));
      nllRef -= pr[ids[i + 1]];
      let am = 0;
      for (let v = 1; v < V; v++) if (pr[v] > pr[am]) am = v;
      lq.forEach((l, k) => {
        const pq = logSoftmax(l.subarray(i * V, (i + 1) * V));
        acc[k].nll -= pq[ids[i + 1]];
        let kl = 0,
          bm = 0;
        for (let v = 0; v < V; v++) {
          kl += Math.exp(pr[v]) * (pr[v] - pq[v]);
          if (pq[v] > pq[bm]) bm = v;
        }
        acc[k].kl += kl;
        acc[k].top1 += bm === am ? 1 : 0;
      });
      n++;
    }
  }
  const pplRef = Math.exp(nllRef / n);
  console.log(`${name}: f32 ppl ${pplRef.toFixed(3)} (${n} tokens)`);
  variants.forEach(([w, g], k) => {
    const ppl = Math.exp(acc[k].nll / n);
    console.log(
      `  ${w} g${g}: ppl ${ppl.toFixed(3)} (${((ppl / pplRef - 1) * 100).toFixed(2)}%), KL ${(acc[k].kl / n).toFixed(4)}, top-1 agree ${((acc[k].top1 / n) * 100).toFixed(1)}%`,
    );
  });
}
