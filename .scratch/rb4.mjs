import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const native = require("../tensor/build/Release/smallkv_tensor.node");
const D = 8,
  Hq = 8,
  Hkv = 4,
  cap = 2048,
  L = 1;
const k = new Float32Array(Hkv * cap * D).fill(0.1),
  v = new Float32Array(Hkv * cap * D).fill(0.2);
const q = new Float32Array(Hq * D),
  out = new Float32Array(Hq * D);
const past = new Int32Array(1 << 10).fill(L - 1).subarray(0, Hkv);
const args = [
  q,
  k,
  v,
  cap,
  1,
  past,
  Hq,
  Hkv,
  D,
  1 / Math.sqrt(D),
  out,
  null,
  null,
  0,
  null,
  0,
  null,
  null,
  0,
  0,
  null,
  null,
  0,
  null,
  null,
  Hkv,
  null,
  null,
  null,
  null,
];
let t0 = performance.now();
for (let i = 0; i < 50000; i++) native.attentionBatch([args]);
console.log("native only us/call", (((performance.now() - t0) * 1000) / 50000).toFixed(2));
t0 = performance.now();
for (let i = 0; i < 50000; i++) native.attentionBatch([]);
console.log("empty us/call", (((performance.now() - t0) * 1000) / 50000).toFixed(2));
const x = new Float32Array(4);
t0 = performance.now();
for (let i = 0; i < 50000; i++) native.sum(x);
console.log("sum us/call", (((performance.now() - t0) * 1000) / 50000).toFixed(2));
