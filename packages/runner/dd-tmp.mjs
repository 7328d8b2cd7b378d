import { Model } from "./dist/index.js";
const which = process.argv[2], opts = JSON.parse(process.argv[3] ?? "{}");
const m = await Model.load(which, opts);
const seq = m.newSequence();
await m.forward([{ seq, tokens: Array.from({ length: 64 }, (_, i) => 5 + i) }]);
const ts = [];
for (let i = 0; i < 40; i++) { const t = performance.now(); await m.forward([{ seq, tokens: [7 + i] }]); ts.push(performance.now() - t); }
ts.sort((a, b) => a - b);
console.log(which.split("/").pop(), JSON.stringify(opts), m.denseKind, "median step ms", ts[20].toFixed(2), "min", ts[0].toFixed(2));
