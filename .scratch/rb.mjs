import { attentionBatch, rope } from "@smallkv/tensor";

const q = new Float32Array(8 * 8),
  pos = Int32Array.from([150]);
let t0 = performance.now();
for (let i = 0; i < 20000; i++) rope(q, pos, 8, 8, 10000);
console.log("rope us/call", (((performance.now() - t0) * 1000) / 20000).toFixed(2));
const L = 150,
  D = 8,
  Hq = 8,
  Hkv = 4,
  cap = 256;
const k = new Float32Array(Hkv * cap * D).fill(0.1),
  v = new Float32Array(Hkv * cap * D).fill(0.2);
const out = new Float32Array(Hq * D);
t0 = performance.now();
for (let i = 0; i < 20000; i++) attentionBatch([{ q, k, v, cap, T: 1, past: L - 1, Hq, Hkv, D, out }]);
console.log("attention us/call", (((performance.now() - t0) * 1000) / 20000).toFixed(2));
