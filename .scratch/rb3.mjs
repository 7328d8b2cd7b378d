import { attentionBatch } from "@smallkv/tensor";

const D = 8,
  Hq = 8,
  Hkv = 4,
  cap = 2048;
const k = new Float32Array(Hkv * cap * D).fill(0.1),
  v = new Float32Array(Hkv * cap * D).fill(0.2);
const q = new Float32Array(Hq * D),
  out = new Float32Array(Hq * D);
for (const L of [1, 16, 150, 1000]) {
  const t0 = performance.now();
  for (let i = 0; i < 20000; i++) attentionBatch([{ q, k, v, cap, T: 1, past: L - 1, Hq, Hkv, D, out }]);
  console.log(L, "attention us/call", (((performance.now() - t0) * 1000) / 20000).toFixed(2));
}
