import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Device, DeviceError } from "@smallkv/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AttentionObservation,
  devicePath,
  Generator,
  InvalidOptionError,
  type KvPolicyHook,
  Model,
} from "../src/index.js";
import { churn, GOLDEN, golden, LLM, MODELS, maxAbsDiff } from "./helpers.js";

// The device backend runs the CUDA kernels; without a GPU (CI) it runs them through the CPU
// emulator, which checks the whole device path: weights, hot set moves, pinned cold store.
const probe = Device.probe();
if (!probe.available) console.log(`runner CUDA tests skipped: ${probe.reason}`);

const argmaxOf = (l: ArrayLike<number>) => {
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[best]) best = i;
  return best;
};

function deviceSuite(device: "emulator" | "cuda") {
  let dev: Model;
  let cpu: Model;
  beforeAll(async () => {
    dev = await Model.load(LLM, { device });
    cpu = await Model.load(LLM);
  });
  afterAll(() => dev?.close());

  const g = golden("stories260K");
  it("last-position logits of every golden prompt within 1e-4", async () => {
    for (const p of g.prompts) {
      const [logits] = await dev.forward([{ seq: dev.newSequence(), tokens: p.ids }]);
      expect(maxAbsDiff(logits, p.last_logits)).toBeLessThan(1e-4);
    }
  });

  for (const i of [0, 2]) {
    it(`greedy ids after golden prompt ${i} are exactly the golden ones`, async () => {
      const p = g.prompts[i];
      const r = await new Generator(dev).generate(p.ids, { temperature: 0, maxTokens: 64, stopTokens: [] });
      expect(r.tokens).toEqual(p.greedy_ids);
    });
  }

  it("the assistant checkpoints reproduce their golden greedy ids too", async () => {
    for (const name of ["stories260K-slm", "stories260K-slm-l"]) {
      const m = await Model.load(join(MODELS, name), { device });
      const p = golden(name).prompts[1];
      const r = await new Generator(m).generate(p.ids, { temperature: 0, maxTokens: 32, stopTokens: [] });
      expect(r.tokens).toEqual(p.greedy_ids.slice(0, 32));
      m.close();
    }
  });

  it("attention probabilities seen by a policy match the golden matrices", async () => {
    const [, H, T] = g.attention.shape;
    const want = new Float32Array(readFileSync(join(GOLDEN, g.attention.file)).buffer.slice(0));
    const seen: AttentionObservation[] = [];
    const seq = dev.newSequence({
      name: "observer",
      wantsAttention: () => "probs",
      observe: (_s, o) => seen.push(o),
    });
    await dev.forward([{ seq, tokens: g.attention.ids }]);
    let worst = 0;
    for (const o of seen)
      worst = Math.max(
        worst,
        maxAbsDiff(o.probs as Float32Array, want.subarray(o.layer * H * T * T, (o.layer + 1) * H * T * T)),
      );
    expect(seen.length).toBe(dev.config.numLayers);
    expect(worst).toBeLessThan(1e-5);
  });

  for (const mode of ["mass", "literal"] as const) {
    it(`a selecting policy (${mode} V-only rows, per-query-head layers, scores) gives the CPU path's logits and scores at every step`, async () => {
      const ids = cpu.tokenizer.encode(
        "Once upon a time, there was a little girl named Lily. She loved to play.",
      );
      const obs: Record<string, AttentionObservation[]> = { cpu: [], dev: [] };
      const watch = (key: string, p: KvPolicyHook): KvPolicyHook => ({
        ...p,
        observe: (_s, o) => obs[key].push(o),
      });
      const a = cpu.newSequence(watch("cpu", churn(mode)));
      const b = dev.newSequence(watch("dev", churn(mode)));
      let worst = 0;
      let tokens: number[] = ids.slice(0, 6);
      for (let stepNo = 0; stepNo < 12; stepNo++) {
        const [la] = await cpu.forward([{ seq: a, tokens }]);
        const [lb] = await dev.forward([{ seq: b, tokens }]);
        expect(a.fault).toBeNull();
        expect(b.fault).toBeNull();
        worst = Math.max(worst, maxAbsDiff(la, lb));
        tokens = [ids[6 + stepNo] ?? 1];
      }
      expect(worst).toBeLessThan(1e-4);
      expect(obs.dev.length).toBe(obs.cpu.length);
      // The same hot rows (the device keeps slot order, the CPU the selection's order) and the
      // same scores for each of them.
      const byPosition = (o: AttentionObservation) => {
        const Hq = cpu.config.numHeads;
        const lists = o.keyPositions.length;
        return Array.from({ length: Hq }, (_, h) => {
          const pos = o.keyPositions[Math.floor(h / (Hq / lists))];
          return Array.from(pos, (p, j) => [p, (o.scores as Float32Array)[h * o.Lmax + j]]).sort(
            (x, y) => x[0] - y[0],
          );
        });
      };
      for (let i = 0; i < obs.cpu.length; i++) {
        const [d, c] = [byPosition(obs.dev[i]), byPosition(obs.cpu[i])];
        expect(d.map((h) => h.map((x) => x[0]))).toEqual(c.map((h) => h.map((x) => x[0])));
        expect(maxAbsDiff(d.flat(2), c.flat(2))).toBeLessThan(1e-5);
      }
      // The hot set moved only differences, and the same number of rows on both backends.
      expect(b.stats().movedRows).toBe(a.stats().movedRows);
      expect(b.stats().hotBytes).toBe(a.stats().hotBytes);
    });
  }

  it("a batch of sequences with different policies equals each run alone", async () => {
    const ids = cpu.tokenizer.encode("The cat sat on the mat and looked at the dog.");
    // Two observing sequences (their read-backs wait for the layer together) beside a batched
    // one; what each policy observes is summarised as its scores weighted by key position.
    const seen: Record<string, number[]> = {};
    const watch = (key: string, p: KvPolicyHook): KvPolicyHook => ({
      ...p,
      observe: (_s, o) => {
        let x = 0;
        const Hq = cpu.config.numHeads;
        const lists = o.keyPositions.length;
        for (let h = 0; h < Hq; h++) {
          const pos = o.keyPositions[Math.floor(h / (Hq / lists))];
          pos.forEach((q, j) => {
            x += (o.scores as Float32Array)[h * o.Lmax + j] * (q + 1);
          });
        }
        (seen[key] ??= []).push(x);
      },
    });
    const s1 = dev.newSequence(watch("d1", churn("mass")));
    const s2 = dev.newSequence();
    const s3 = dev.newSequence(watch("d3", churn("literal")));
    const r1 = cpu.newSequence(watch("c1", churn("mass")));
    const r2 = cpu.newSequence();
    const r3 = cpu.newSequence(watch("c3", churn("literal")));
    const [d1, d2, d3] = await dev.forward([
      { seq: s1, tokens: ids },
      { seq: s2, tokens: ids.slice(0, 5) },
      { seq: s3, tokens: ids.slice(2) },
    ]);
    const [c1] = await cpu.forward([{ seq: r1, tokens: ids }]);
    const [c2] = await cpu.forward([{ seq: r2, tokens: ids.slice(0, 5) }]);
    const [c3] = await cpu.forward([{ seq: r3, tokens: ids.slice(2) }]);
    expect(maxAbsDiff(d1, c1)).toBeLessThan(1e-4);
    expect(maxAbsDiff(d2, c2)).toBeLessThan(1e-4);
    expect(maxAbsDiff(d3, c3)).toBeLessThan(1e-4);
    for (let step = 0; step < 3; step++) {
      const [e1, e2, e3] = await dev.forward([
        { seq: s1, tokens: [42 + step] },
        { seq: s2, tokens: [43, 44] },
        { seq: s3, tokens: [50 + step] },
      ]);
      const [f1] = await cpu.forward([{ seq: r1, tokens: [42 + step] }]);
      const [f2] = await cpu.forward([{ seq: r2, tokens: [43, 44] }]);
      const [f3] = await cpu.forward([{ seq: r3, tokens: [50 + step] }]);
      expect(maxAbsDiff(e1, f1)).toBeLessThan(1e-4);
      expect(maxAbsDiff(e2, f2)).toBeLessThan(1e-4);
      expect(maxAbsDiff(e3, f3)).toBeLessThan(1e-4);
    }
    for (const [d, c] of [
      ["d1", "c1"],
      ["d3", "c3"],
    ]) {
      expect(seen[d].length).toBe(seen[c].length);
      expect(seen[d].length).toBeGreaterThan(0);
      expect(maxAbsDiff(seen[d], seen[c])).toBeLessThan(1e-3);
    }
  });

  it("greedy tokens computed on the device ('argmax') equal the host's argmax of the logits", async () => {
    const ids = cpu.tokenizer.encode("Once upon a time there was a little bird.");
    const seqs = [dev.newSequence(), dev.newSequence(), dev.newSequence(churn("mass"))];
    const refs = [cpu.newSequence(), cpu.newSequence(), cpu.newSequence(churn("mass"))];
    const prompts = [ids, ids.slice(0, 4), ids.slice(2)];
    await dev.forward(seqs.map((seq, i) => ({ seq, tokens: prompts[i], logits: "none" as const })));
    const first = await cpu.forward(refs.map((seq, i) => ({ seq, tokens: prompts[i] })));
    let next = first.map((l) => argmaxOf(l));
    for (let step = 0; step < 4; step++) {
      const got = await dev.forward(
        seqs.map((seq, i) => ({ seq, tokens: [next[i]], logits: "argmax" as const })),
      );
      const want = await cpu.forward(refs.map((seq, i) => ({ seq, tokens: [next[i]] })));
      expect(got.map((g) => g.length)).toEqual([1, 1, 1]);
      next = want.map((l) => argmaxOf(l));
      expect(got.map((g) => g[0])).toEqual(next);
    }
  });

  it("the generator asks the device for its tokens (greedy or drawn with the request's seed; one integer back), and for logits when logprobs or a bias need them", async () => {
    const modes: string[] = [];
    const forward = dev.forward.bind(dev);
    const spy = Object.create(dev, {
      forward: {
        value: (inputs: Parameters<Model["forward"]>[0]) => {
          for (const i of inputs) modes.push(i.logits ?? "last");
          return forward(inputs);
        },
      },
    }) as Model;
    const o = { maxTokens: 6, temperature: 0, stopTokens: [] };
    const plain = await new Generator(spy).generate("Once upon a time", o);
    expect(modes.filter((m) => m === "argmax").length).toBe(6);
    const host = await new Generator(cpu).generate("Once upon a time", o);
    expect(plain.tokens).toEqual(host.tokens);
    modes.length = 0;
    const lp = await new Generator(spy).generate("Once upon a time", { ...o, logprobs: 2 });
    expect(modes).not.toContain("argmax");
    expect(lp.tokens).toEqual(host.tokens);
    expect(lp.logprobs).toHaveLength(6);
    modes.length = 0;
    await new Generator(spy).generate("Once upon a time", { ...o, logitBias: { 5: 1 } });
    expect(modes).not.toContain("argmax");
    // Seeded sampling: drawn on the device with the request's own stream, the host's tokens.
    modes.length = 0;
    const s = { maxTokens: 12, stopTokens: [], temperature: 0.9, topK: 20, topP: 0.9, seed: 7 };
    const drawn = await new Generator(spy).generate("Once upon a time", s);
    expect(modes.filter((m) => m === "sample").length).toBe(12);
    expect(drawn.tokens).toEqual((await new Generator(cpu).generate("Once upon a time", s)).tokens);
    const seq = dev.newSequence();
    await expect(dev.forward([{ seq, tokens: [1], logits: "sample" }])).rejects.toThrow(InvalidOptionError);
    await expect(
      dev.forward([
        { seq, tokens: [1], logits: "sample", sample: { temperature: 1, topK: 0, topP: 1, u: 1 } },
      ]),
    ).rejects.toThrow(/u must be in/);
  });

  it("decode steps replayed as CUDA graphs give the eager steps' logits, bit for bit, as lengths and stores grow", async () => {
    const eager = await Model.load(LLM, { device, graphs: false });
    try {
      const ids = cpu.tokenizer.encode("The little dog ran to the park to play with a red ball.");
      const long = [...ids, ...ids, ...ids, ...ids, ...ids].slice(0, 61);
      const prompts = [long, ids.slice(0, 3), long.slice(4)];
      const a = prompts.map(() => dev.newSequence());
      const b = prompts.map(() => eager.newSequence());
      await dev.forward(a.map((seq, i) => ({ seq, tokens: prompts[i], logits: "none" as const })));
      await eager.forward(b.map((seq, i) => ({ seq, tokens: prompts[i], logits: "none" as const })));
      // Eager once, captured, then replayed; the first sequence's store passes its first
      // capacity (64 rows) at the fourth step, so the stores move while the graph lives.
      let next = [5, 6, 7];
      const before = { ...dev.runner!.graphStats };
      for (let step = 0; step < 7; step++) {
        const ga = await dev.forward(a.map((seq, i) => ({ seq, tokens: [next[i]] })));
        const gb = await eager.forward(b.map((seq, i) => ({ seq, tokens: [next[i]] })));
        for (let i = 0; i < 3; i++) expect(ga[i]).toEqual(gb[i]);
        next = gb.map((l) => argmaxOf(l));
      }
      // Captured once (the store growth moves nothing a graph holds), replayed from then on.
      const after = dev.runner!.graphStats;
      expect([after.captured - before.captured, after.replayed - before.replayed]).toEqual([1, 5]);
      expect(eager.runner?.graphStats).toEqual({ captured: 0, replayed: 0 });
    } finally {
      eager.close();
    }
  });

  it("a bf16 device KV store halves the store's bytes and stays close to f32 rows", async () => {
    const p = g.prompts[2];
    const half = await Model.load(LLM, { device, deviceKv: "bf16" });
    try {
      const a = half.newSequence();
      const b = dev.newSequence();
      const [la] = await half.forward([{ seq: a, tokens: p.ids }]);
      const [lb] = await dev.forward([{ seq: b, tokens: p.ids }]);
      expect(maxAbsDiff(la, lb)).toBeLessThan(0.2); // the bf16 tolerance of the weights test below
      expect(maxAbsDiff(la, lb)).toBeGreaterThan(0); // rows really were rounded
      expect(a.stats().coldBytes * 2).toBe(b.stats().coldBytes);
      const [na] = await half.forward([{ seq: a, tokens: [7] }]);
      const [nb] = await dev.forward([{ seq: b, tokens: [7] }]);
      expect(maxAbsDiff(na, nb)).toBeLessThan(0.2);
      await expect(Model.load(LLM, { device, deviceKv: "int8" as "bf16" })).rejects.toThrow(
        InvalidOptionError,
      );
      // Only the batched path reads 16-bit rows: an observing policy's store stays f32 there.
      const observing = half.newSequence(churn("mass"));
      expect(devicePath(a)).toMatchObject({ path: "batched", store: "device", storeDtype: "bf16" });
      expect(devicePath(observing)).toMatchObject({
        path: "per-sequence",
        store: "pinned host",
        storeDtype: "f32",
      });
      const watcher = half.newSequence({ name: "watch", wantsAttention: () => "probs", observe: () => {} });
      expect(devicePath(watcher)).toMatchObject({ path: "per-sequence", store: "device", storeDtype: "f32" });
      // The device bytes are the store's allocation: the f32 twin of `a` (same length) holds twice as many.
      expect(devicePath(a).deviceBytes).toBeGreaterThanOrEqual(a.stats().coldBytes);
      expect(devicePath(b).deviceBytes).toBe(2 * devicePath(a).deviceBytes);
      const outs = await half.forward([
        { seq: observing, tokens: p.ids.slice(0, 8) },
        { seq: watcher, tokens: p.ids.slice(0, 8) },
        { seq: a, tokens: [9] },
      ]);
      expect(outs.every((o) => o.every(Number.isFinite))).toBe(true);
    } finally {
      half.close();
    }
  });

  it("a device KV budget keeps stores on the device while they fit, spills the rest to pinned host memory (same logits)", async () => {
    const ids = g.prompts[2].ids.slice(0, 40); // within a store's first 64 rows (no growth)
    // Room for one sequence's first store (64 rows a head, every layer, K and V, bf16), not for two.
    const c = dev.config;
    const one = 2 * c.numLayers * c.numKvHeads * 64 * c.headDim * 2;
    const tight = await Model.load(LLM, { device, deviceKv: "bf16", deviceKvBudget: (1.5 * one) / 2 ** 20 });
    const roomy = await Model.load(LLM, { device, deviceKv: "bf16" });
    try {
      const a = tight.newSequence();
      const b = tight.newSequence();
      const s = roomy.newSequence();
      expect(devicePath(a)).toMatchObject({ store: "device", hostBytes: 0 });
      expect(devicePath(b)).toMatchObject({
        path: "batched",
        store: "spilled",
        deviceBytes: 0,
        hostBytes: one,
      });
      const [la, lb] = await tight.forward([
        { seq: a, tokens: ids },
        { seq: b, tokens: ids },
      ]);
      const [lc] = await roomy.forward([{ seq: s, tokens: ids }]);
      expect(maxAbsDiff(la, lc)).toBe(0);
      expect(maxAbsDiff(lb, lc)).toBe(0);
      // Freed room is used again: a new sequence after `a` is released lands on the device.
      a.release();
      expect(devicePath(tight.newSequence()).store).toBe("device");
      await expect(Model.load(LLM, { device, deviceKvBudget: -1 })).rejects.toThrow(InvalidOptionError);
    } finally {
      tight.close();
      roomy.close();
    }
  });

  it("f16 and bf16 weights stay close to f32 (stated tolerances 0.05 and 0.2 on logits)", async () => {
    const p = g.prompts[2];
    for (const [dtype, tol] of [
      ["f16", 0.05],
      ["bf16", 0.2],
    ] as const) {
      const m = await Model.load(LLM, { device, dtype });
      const [logits] = await m.forward([{ seq: m.newSequence(), tokens: p.ids }]);
      expect(maxAbsDiff(logits, p.last_logits)).toBeLessThan(tol);
      m.close();
    }
  });
}

describe("device backend on the CPU emulator", () => deviceSuite("emulator"));
describe.skipIf(!probe.available)(`device backend on CUDA (${probe.reason})`, () => deviceSuite("cuda"));

describe("device selection", () => {
  it("auto falls back to the CPU with a message when no GPU can be used", async () => {
    const log: string[] = [];
    const m = await Model.load(LLM, { device: "auto", onLog: (s) => log.push(s) });
    expect(log).toHaveLength(1);
    if (probe.available) expect(m.device?.info.kind).toBe("cuda");
    else {
      expect(m.device).toBeNull();
      expect(log[0]).toMatch(/(no usable CUDA device|built without CUDA).*running on the CPU/);
    }
  });

  it("cuda without a GPU is a DeviceError; unknown devices and dtypes are option errors", async () => {
    if (!probe.available)
      await expect(Model.load(LLM, { device: "cuda" })).rejects.toBeInstanceOf(DeviceError);
    // @ts-expect-error: not a device
    await expect(Model.load(LLM, { device: "tpu" })).rejects.toBeInstanceOf(InvalidOptionError);
    // @ts-expect-error: not a dtype
    await expect(Model.load(LLM, { device: "emulator", dtype: "f8" })).rejects.toBeInstanceOf(
      InvalidOptionError,
    );
  });
});
