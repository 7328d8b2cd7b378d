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
