// Model families beyond default-RoPE Llama: the fixtures in $SMALLKV_ASSETS/models/arch (made
// by an independent implementation that follows the transformers source, cross-checked
// against transformers itself), on the CPU path and on the emulator; random checkpoints of
// the remaining variants against the TypeScript reference; every refused field by its error.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  assetsDir,
  CheckpointError,
  Generator,
  Model,
  parseConfig,
  readConfig,
  type SyntheticModelOptions,
  writeSyntheticCheckpoint,
} from "../src/index.js";
import { LLM, maxAbsDiff, tempDir } from "./helpers.js";
import { referenceForward } from "./reference-model.js";

const ARCH = join(assetsDir(), "models", "arch");
const CASES = ["llama3", "qwen3", "qwen2-untied-bias"];

interface Expected {
  suggested_tolerance: { last_logits_abs: number };
  resolved: { inv_freq: number[]; head_dim: number; attention_factor: number };
  prompts: { name: string; ids: number[]; last_logits: number[]; greedy_ids: number[] }[];
}
const expected = (c: string): Expected => JSON.parse(readFileSync(join(ARCH, c, "expected.json"), "utf8"));

async function check(model: Model, e: Expected) {
  const rows: { prompt: string; maxDelta: number; greedy: boolean }[] = [];
  for (const p of e.prompts) {
    const seq = model.newSequence();
    const [logits] = await model.forward([{ seq, tokens: p.ids, logits: "last" }]);
    seq.release();
    const maxDelta = maxAbsDiff(logits, p.last_logits);
    const g = await new Generator(model).generate(p.ids, { maxTokens: 16, temperature: 0, stopTokens: [] });
    rows.push({
      prompt: p.name,
      maxDelta,
      greedy: JSON.stringify(g.tokens) === JSON.stringify(p.greedy_ids),
    });
  }
  return rows;
}

describe("the arch fixtures match the independent reference", () => {
  for (const c of CASES) {
    for (const device of ["cpu", "emulator"] as const) {
      it(`${c} on the ${device === "cpu" ? "CPU path" : "emulator (the CUDA kernels)"}`, async () => {
        const e = expected(c);
        const model = await Model.load(join(ARCH, c), { device, threads: 1 });
        try {
          const rows = await check(model, e);
          console.log(`${c} ${device}: ${JSON.stringify(rows)}`);
          for (const r of rows) {
            expect(r.maxDelta, `${r.prompt} logits`).toBeLessThan(e.suggested_tolerance.last_logits_abs);
            expect(r.greedy, `${r.prompt} greedy ids`).toBe(true);
          }
        } finally {
          model.close();
        }
      });
    }
  }

  it("llama3 RoPE frequencies equal the reference's resolved inv_freq", () => {
    const e = expected("llama3");
    const c = readConfig(join(ARCH, "llama3"));
    expect(c.rope.type).toBe("llama3");
    const inv = Array.from(c.rope.invFreq!);
    e.resolved.inv_freq.forEach((f, i) => expect(Math.abs(inv[i] - f) / f).toBeLessThan(1e-12));
    expect(c.headDim).toBe(16);
    expect(c.eosTokenIds).toEqual([2, 3]);
  });

  it("resolved fields: qwen3 q/k norm and head_dim 16 > hidden/heads; qwen2 biases, untied, window ignored", () => {
    const q3 = readConfig(join(ARCH, "qwen3"));
    expect([q3.qkNorm, q3.headDim, q3.qkvBias, q3.oBias, q3.tieWordEmbeddings]).toEqual([
      true,
      16,
      false,
      false,
      true,
    ]);
    const q2 = readConfig(join(ARCH, "qwen2-untied-bias"));
    expect([q2.qkvBias, q2.oBias, q2.tieWordEmbeddings, q2.headDim]).toEqual([true, false, false, 12]);
  });
});

const base: SyntheticModelOptions = {
  hiddenSize: 32,
  intermediateSize: 40,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  vocabSize: 512,
  maxPositions: 64,
  tokenizerFrom: LLM,
  scale: 0.2,
};

const variants: [string, Partial<SyntheticModelOptions>][] = [
  ["Llama, linear RoPE scaling", { ropeScaling: { type: "linear", factor: 4 } }],
  [
    "Llama, YaRN RoPE (attention factor)",
    { ropeScaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 16 } },
  ],
  [
    "Llama, YaRN RoPE without original_max_position_embeddings",
    { ropeScaling: { rope_type: "yarn", factor: 2, beta_fast: 16 } },
  ],
  [
    "Llama, dynamic NTK RoPE (prefill past the trained context)",
    { ropeScaling: { rope_type: "dynamic", factor: 2, original_max_position_embeddings: 4 } },
  ],
  [
    "Llama, llama3 RoPE via rope_parameters",
    {
      extraConfig: {
        rope_scaling: undefined,
        rope_parameters: {
          rope_type: "llama3",
          rope_theta: 500000,
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 8,
        },
      },
    },
  ],
  ["Llama, attention_bias (q/k/v/o) and mlp_bias", { qkvBias: true, mlpBias: true }],
  [
    "Qwen3, q/k norm and attention_bias, head_dim 16",
    { architecture: "Qwen3ForCausalLM", headDim: 16, qkvBias: true },
  ],
  [
    "Mistral, sliding_window null",
    { architecture: "MistralForCausalLM", extraConfig: { sliding_window: null } },
  ],
  [
    "Mistral, sliding_window at least the context (no window)",
    { architecture: "MistralForCausalLM", extraConfig: { sliding_window: 64 } },
  ],
];

describe("random checkpoints of the other variants match the TypeScript reference (CPU and emulator)", () => {
  for (const [name, o] of variants) {
    it(name, async () => {
      const dir = tempDir();
      const tensors = writeSyntheticCheckpoint(dir, { ...base, ...o, seed: name.length });
      const config = readConfig(dir);
      const ids = [1, 17, 300, 42, 5, 99, 250, 7, 8, 400, 3];
      // RoPE from config.json through transformers' formulas, not from the parsed config.
      const raw = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
      const want = referenceForward(config, tensors, ids, raw);
      for (const device of ["cpu", "emulator"] as const) {
        const model = await Model.load(dir, { threads: 1, device });
        const seq = model.newSequence();
        const [pre] = await model.forward([{ seq, tokens: ids, logits: "all" }]);
        let worst = 0;
        for (let t = 0; t < ids.length; t++)
          worst = Math.max(worst, maxAbsDiff(pre.subarray(t * 512, (t + 1) * 512), want[t]));
        model.close();
        expect(worst, device).toBeLessThan(2e-4);
      }
      expect(Math.max(...want[3]) - Math.min(...want[3])).toBeGreaterThan(0.1);
    });
  }
});

describe("sliding-window layers (Mistral, Qwen2/Qwen3 use_sliding_window, layer_types)", () => {
  const windowed: [string, Partial<SyntheticModelOptions>, (number | null)[]][] = [
    [
      "Mistral, sliding_window 4 on every layer",
      { architecture: "MistralForCausalLM", extraConfig: { sliding_window: 4 } },
      [4, 4],
    ],
    [
      "Qwen2, use_sliding_window with max_window_layers 1",
      {
        architecture: "Qwen2ForCausalLM",
        extraConfig: { use_sliding_window: true, sliding_window: 3, max_window_layers: 1 },
      },
      [null, 3],
    ],
    [
      "Qwen3, layer_types",
      {
        architecture: "Qwen3ForCausalLM",
        headDim: 8,
        extraConfig: { layer_types: ["sliding_attention", "full_attention"], sliding_window: 5 },
      },
      [5, null],
    ],
  ];
  for (const [name, o, want] of windowed) {
    it(`${name}: prefill and one-token decode steps match the reference (CPU and emulator)`, async () => {
      const dir = tempDir();
      const tensors = writeSyntheticCheckpoint(dir, { ...base, ...o, seed: name.length });
      const config = readConfig(dir);
      expect(config.slidingWindow).toEqual(want);
      const ids = [1, 17, 300, 42, 5, 99, 250, 7, 8, 400, 3, 12, 77];
      const ref = referenceForward(config, tensors, ids);
      // Without the window the logits differ: the test has teeth.
      const full = referenceForward(
        { ...config, slidingWindow: config.slidingWindow.map(() => null) },
        tensors,
        ids,
      );
      expect(maxAbsDiff(full[12], ref[12])).toBeGreaterThan(1e-3);
      for (const device of ["cpu", "emulator"] as const) {
        const model = await Model.load(dir, { threads: 1, device });
        const seq = model.newSequence();
        const [pre] = await model.forward([{ seq, tokens: ids.slice(0, 7), logits: "all" }]);
        let worst = 0;
        for (let t = 0; t < 7; t++)
          worst = Math.max(worst, maxAbsDiff(pre.subarray(t * 512, (t + 1) * 512), ref[t]));
        for (let t = 7; t < ids.length; t++) {
          const [l] = await model.forward([{ seq, tokens: [ids[t]] }]);
          worst = Math.max(worst, maxAbsDiff(l, ref[t]));
        }
        model.close();
        expect(worst, device).toBeLessThan(2e-4);
      }
    });
  }

  it("a sliding layer's store stays about its window (rows it can no longer read are dropped), and the logits stay right", async () => {
    const dir = tempDir();
    const o = { ...base, maxPositions: 256, seed: 21 };
    const tensors = writeSyntheticCheckpoint(dir, {
      ...o,
      architecture: "Qwen2ForCausalLM",
      extraConfig: { use_sliding_window: true, sliding_window: 4, max_window_layers: 1 },
    });
    const config = readConfig(dir);
    const ids = Array.from({ length: 150 }, (_, i) => (i * 37 + 11) % 500);
    const ref = referenceForward(config, tensors, ids);
    const model = await Model.load(dir, { threads: 1 });
    const seq = model.newSequence();
    const [pre] = await model.forward([{ seq, tokens: ids.slice(0, 10), logits: "all" }]);
    let worst = maxAbsDiff(pre.subarray(9 * 512, 10 * 512), ref[9]);
    for (let t = 10; t < ids.length; t++) {
      const [l] = await model.forward([{ seq, tokens: [ids[t]] }]);
      worst = Math.max(worst, maxAbsDiff(l, ref[t]));
    }
    expect(worst).toBeLessThan(2e-4);
    // Layer 0 is full attention: every token; layer 1 slides: its window only.
    expect(seq.kv.heldRows(0)).toBe(150);
    expect(seq.kv.heldRows(1)).toBe(4);
    expect(seq.kv.capOf(1)).toBeLessThanOrEqual(64);
    expect(seq.kv.capOf(0)).toBeGreaterThanOrEqual(150);
    // The stats count what is held: one full layer of 150 rows plus 4 rows.
    const rowBytes = 2 * config.numKvHeads * config.headDim * 4;
    expect(seq.stats().coldBytes).toBe((150 + 4) * rowBytes);
    seq.release();
  });

  it("a policy's selection on a sliding layer is narrowed to the window (a policy that keeps everything gives the windowed logits)", async () => {
    const dir = tempDir();
    const tensors = writeSyntheticCheckpoint(dir, {
      ...base,
      architecture: "MistralForCausalLM",
      extraConfig: { sliding_window: 4 },
      seed: 9,
    });
    const config = readConfig(dir);
    const ids = [1, 17, 300, 42, 5, 99, 250, 7, 8, 400, 3];
    const ref = referenceForward(config, tensors, ids);
    const keepAll = {
      name: "keep-all",
      select: (_s: unknown, _l: number, step: { start: number }) => ({
        full: Array.from({ length: config.numKvHeads }, () =>
          Int32Array.from({ length: step.start }, (_, i) => i),
        ),
      }),
    };
    const model = await Model.load(dir, { threads: 1 });
    const seq = model.newSequence(keepAll as never);
    await model.forward([{ seq, tokens: ids.slice(0, 5) }]);
    let worst = 0;
    for (let t = 5; t < ids.length; t++) {
      const [l] = await model.forward([{ seq, tokens: [ids[t]] }]);
      worst = Math.max(worst, maxAbsDiff(l, ref[t]));
    }
    // The hot set holds the window only (4 keys per layer and kv head: 3 old + the new one).
    expect(seq.hot[0].full.count[0]).toBeLessThanOrEqual(4);
    expect(worst).toBeLessThan(2e-4);
  });
});

describe("every config field that changes the math and is not implemented is refused by name", () => {
  const llama = JSON.parse(readFileSync(join(ARCH, "llama3", "config.json"), "utf8"));
  const refusals: [string, Record<string, unknown>, string, RegExp][] = [
    [
      "a sliding window that is not a positive integer",
      { sliding_window: -3 },
      "CONFIG_INVALID",
      /"sliding_window" must be a positive integer or null/,
    ],
    [
      "layer_types of the wrong length",
      { layer_types: ["full_attention"] },
      "CONFIG_INVALID",
      /"layer_types" must list 2 layers/,
    ],
    [
      "linear-attention layers",
      { layer_types: ["linear_attention", "full_attention"] },
      "UNSUPPORTED_ARCHITECTURE",
      /layer type "linear_attention"/,
    ],
    [
      "Gemma 3 softcapping",
      { attn_logit_softcapping: 50 },
      "UNSUPPORTED_ARCHITECTURE",
      /attn_logit_softcapping/,
    ],
    [
      "Gemma 3 scaled queries",
      { query_pre_attn_scalar: 256 },
      "UNSUPPORTED_ARCHITECTURE",
      /query_pre_attn_scalar/,
    ],
    [
      "Gemma 3 architecture",
      { architectures: ["Gemma3ForCausalLM"], model_type: "gemma3" },
      "UNSUPPORTED_ARCHITECTURE",
      /unsupported architecture Gemma3ForCausalLM/,
    ],
    ["a multimodal config", { text_config: { hidden_size: 8 } }, "UNSUPPORTED_ARCHITECTURE", /multimodal/],
    ["mixture of experts", { num_local_experts: 8 }, "UNSUPPORTED_ARCHITECTURE", /mixture-of-experts/],
    ["partial rotary", { partial_rotary_factor: 0.5 }, "UNSUPPORTED_ARCHITECTURE", /partial_rotary_factor/],
    [
      "longrope",
      { rope_scaling: { rope_type: "longrope", factor: 2 } },
      "UNSUPPORTED_ARCHITECTURE",
      /rope type "longrope" is not supported/,
    ],
    ["gelu MLP", { hidden_act: "gelu" }, "UNSUPPORTED_ARCHITECTURE", /hidden_act "gelu"/],
    [
      "Mistral with attention_bias",
      { architectures: ["MistralForCausalLM"], rope_scaling: null, attention_bias: true },
      "UNSUPPORTED_ARCHITECTURE",
      /Mistral has no attention biases/,
    ],
    [
      "a llama3 rope without its fields",
      { rope_scaling: { rope_type: "llama3", factor: 8 } },
      "CONFIG_INVALID",
      /"low_freq_factor" must be a positive number/,
    ],
  ];
  it.each(refusals)("%s", (_name, patch, code, message) => {
    let err: unknown;
    try {
      parseConfig({ ...llama, ...patch });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CheckpointError);
    expect((err as CheckpointError).code).toBe(code);
    expect((err as Error).message).toMatch(message);
  });

  it("a refused checkpoint fails at load with the same error (not at the first step)", async () => {
    const dir = tempDir();
    writeSyntheticCheckpoint(dir, { ...base, extraConfig: { attn_logit_softcapping: 30 } });
    await expect(Model.load(dir)).rejects.toThrow(/attn_logit_softcapping/);
    writeFileSync(
      join(dir, "config.json"),
      JSON.stringify({ ...readConfigRaw(dir), attn_logit_softcapping: null }),
    );
    await expect(Model.load(dir)).resolves.toBeTruthy();
  });
});

function readConfigRaw(dir: string) {
  return JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
}
