import { rope } from "@smallkv/tensor";

const q = new Float32Array(8 * 8);
const big = new Int32Array(1 << 16);
for (const mode of ["fresh", "view", "same"]) {
  const same = Int32Array.from([150]);
  const t0 = performance.now();
  for (let i = 0; i < 20000; i++) {
    const pos =
      mode === "fresh"
        ? Int32Array.from([150])
        : mode === "view"
          ? big.subarray(i % 1000, (i % 1000) + 1)
          : same;
    rope(q, pos, 8, 8, 10000);
  }
  console.log(mode, "rope us/call", (((performance.now() - t0) * 1000) / 20000).toFixed(2));
}
