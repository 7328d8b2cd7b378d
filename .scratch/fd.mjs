import { Model } from "@smallkv/runner";

for (const name of ["stories260K-slm", "stories260K-slm-a", "stories260K"]) {
  const m = await Model.load("/work/shared/models/" + name, { threads: 1 });
  const dec = await m.fusedDecoder();
  const ids = m.tokenizer.encode("Once upon a time there was a little girl named Lily. She loved to play");
  const s = m.newSequence();
  const ref = [(await m.forward([{ seq: s, tokens: ids }]))[0].slice()];
  const st = dec.newState();
  const got = [(await dec.step(st, ids)).slice()];
  for (const t of [45, 300, 12]) {
    ref.push((await m.forward([{ seq: s, tokens: [t] }]))[0].slice());
    got.push((await dec.step(st, [t])).slice());
  }
  let worst = 0;
  ref.forEach((r, i) => r.forEach((x, j) => (worst = Math.max(worst, Math.abs(x - got[i][j])))));
  // timing
  let t0 = performance.now();
  for (let i = 0; i < 300; i++) {
    await dec.step(st, [7]);
    st.truncateTo(st.length - 1);
  }
  const fused = (performance.now() - t0) / 300;
  t0 = performance.now();
  for (let i = 0; i < 300; i++) {
    await m.forward([{ seq: s, tokens: [7] }]);
    s.truncateTo(s.length - 1);
  }
  const plain = (performance.now() - t0) / 300;
  console.log(
    name,
    "max |diff|",
    worst.toExponential(2),
    "fused ms",
    fused.toFixed(3),
    "per-layer ms",
    plain.toFixed(3),
  );
}
// batched vs single
{
  const m = await Model.load("/work/shared/models/stories260K-slm", { threads: 1 });
  const dec = await m.fusedDecoder();
  const A = dec.newState(),
    Bs = dec.newState(),
    A1 = dec.newState(),
    B1 = dec.newState();
  const ia = [5, 6, 7, 8, 9, 10, 11],
    ib = [20, 21, 22];
  const [la, lb] = await dec.stepMany([
    { state: A, tokens: ia },
    { state: Bs, tokens: ib },
  ]);
  const ra = await dec.step(A1, ia),
    rb = await dec.step(B1, ib);
  const [la2, lb2] = await dec.stepMany([
    { state: A, tokens: [3] },
    { state: Bs, tokens: [4, 5] },
  ]);
  const ra2 = (await dec.step(A1, [3])).slice(),
    rb2 = (await dec.step(B1, [4, 5])).slice();
  let w = 0;
  for (const [x, y] of [
    [la, ra],
    [lb, rb],
    [la2, ra2],
    [lb2, rb2],
  ])
    for (let j = 0; j < x.length; j++) w = Math.max(w, Math.abs(x[j] - y[j]));
  console.log("batched vs single max diff", w);
  let t0 = performance.now();
  const sts = [0, 1, 2, 3].map(() => {
    const s = dec.newState();
    return s;
  });
  for (const s of sts) await dec.step(s, ia);
  t0 = performance.now();
  for (let i = 0; i < 200; i++) {
    await dec.stepMany(sts.map((s) => ({ state: s, tokens: [7] })));
    for (const s of sts) s.truncateTo(s.length - 1);
  }
  console.log("batch4 fused ms", ((performance.now() - t0) / 200).toFixed(3));
  const seqs = [0, 1, 2, 3].map(() => m.newSequence());
  await m.forward(seqs.map((s) => ({ seq: s, tokens: ia })));
  t0 = performance.now();
  for (let i = 0; i < 200; i++) {
    await m.forward(seqs.map((s) => ({ seq: s, tokens: [7] })));
    for (const s of seqs) s.truncateTo(s.length - 1);
  }
  console.log("batch4 per-layer ms", ((performance.now() - t0) / 200).toFixed(3));
}
