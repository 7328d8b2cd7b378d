import { copyFileSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  CheckpointError,
  ContextLengthError,
  Generator,
  InvalidOptionError,
  Model,
  writeSyntheticCheckpoint,
} from "../src/index.js";
import { LLM, tempDir } from "./helpers.js";

function copyModel(): string {
  const dir = tempDir();
  for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    copyFileSync(join(LLM, f), join(dir, f));
  return dir;
}

/** A small checkpoint whose first F32 tensor is relabelled as `dtype` (header length unchanged). */
function withRelabelledTensor(dtype: string): string {
  const dir = tempDir();
  writeSyntheticCheckpoint(dir, {
    hiddenSize: 16,
    intermediateSize: 16,
    numLayers: 1,
    numHeads: 2,
    numKvHeads: 2,
    vocabSize: 512,
    maxPositions: 32,
    tokenizerFrom: LLM,
  });
  const file = join(dir, "model.safetensors");
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = buf
    .subarray(8, 8 + n)
    .toString("utf8")
    .replace('"dtype":"F32"', `"dtype":"${dtype}"`);
  writeFileSync(file, Buffer.concat([buf.subarray(0, 8), Buffer.from(header), buf.subarray(8 + n)]));
  return dir;
}

async function loadError(dir: string): Promise<CheckpointError> {
  try {
    await Model.load(dir);
  } catch (e) {
    expect(e).toBeInstanceOf(CheckpointError);
    return e as CheckpointError;
  }
  throw new Error("expected the load to fail");
}

describe("bad checkpoints get clear, typed errors", () => {
  it("missing config.json", async () => {
    const dir = tempDir();
    const e = await loadError(dir);
    expect(e.code).toBe("CONFIG_MISSING");
    expect(e.message).toMatch(/config\.json not found/);
  });

  it("corrupt config.json", async () => {
    const dir = copyModel();
    writeFileSync(join(dir, "config.json"), "{ not json");
    expect((await loadError(dir)).code).toBe("CONFIG_INVALID");
  });

  it("config with an invalid field names the field", async () => {
    const dir = copyModel();
    const c = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    c.num_key_value_heads = 3;
    writeFileSync(join(dir, "config.json"), JSON.stringify(c));
    const e = await loadError(dir);
    expect(e.code).toBe("CONFIG_INVALID");
    expect(e.message).toMatch(/num_key_value_heads/);
  });

  it("unsupported architecture", async () => {
    const dir = copyModel();
    const c = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    c.architectures = ["GPTNeoXForCausalLM"];
    c.model_type = "gpt_neox";
    writeFileSync(join(dir, "config.json"), JSON.stringify(c));
    const e = await loadError(dir);
    expect(e.code).toBe("UNSUPPORTED_ARCHITECTURE");
    expect(e.message).toMatch(/GPTNeoXForCausalLM/);
  });

  it("truncated safetensors", async () => {
    const dir = copyModel();
    truncateSync(join(dir, "model.safetensors"), 500_000);
    const e = await loadError(dir);
    expect(e.code).toBe("SAFETENSORS_TRUNCATED");
    expect(e.message).toMatch(/model\.safetensors/);
  });

  it("a safetensors file shorter than its header length", async () => {
    const dir = copyModel();
    truncateSync(join(dir, "model.safetensors"), 5);
    expect((await loadError(dir)).code).toBe("SAFETENSORS_TRUNCATED");
  });

  it("dtype mismatch: byte range does not fit the declared dtype and shape", async () => {
    // Same byte count, wrong dtype.
    const e = await loadError(withRelabelledTensor("F16"));
    expect(e.code).toBe("DTYPE_MISMATCH");
    expect(e.message).toMatch(/do not hold shape/);
  });

  it("unsupported dtype", async () => {
    const e = await loadError(withRelabelledTensor("I32"));
    expect(e.code).toBe("DTYPE_MISMATCH");
    expect(e.message).toMatch(/I32/);
  });

  it("weights whose shape contradicts the config", async () => {
    const dir = copyModel();
    const c = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    c.intermediate_size = 100;
    writeFileSync(join(dir, "config.json"), JSON.stringify(c));
    const e = await loadError(dir);
    expect(e.code).toBe("SHAPE_MISMATCH");
    expect(e.message).toMatch(/gate_proj/);
  });

  it("missing weights file and missing shard", async () => {
    const dir = tempDir();
    copyFileSync(join(LLM, "config.json"), join(dir, "config.json"));
    copyFileSync(join(LLM, "tokenizer.json"), join(dir, "tokenizer.json"));
    expect((await loadError(dir)).code).toBe("WEIGHTS_MISSING");
    mkdirSync(join(dir, "x"));
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { "model.norm.weight": "model-00001-of-00002.safetensors" } }),
    );
    expect((await loadError(dir)).code).toBe("WEIGHTS_MISSING");
  });

  it("missing tokenizer", async () => {
    const dir = tempDir();
    for (const f of ["config.json", "model.safetensors"]) copyFileSync(join(LLM, f), join(dir, f));
    expect((await loadError(dir)).code).toBe("TOKENIZER_MISSING");
  });
});

describe("bad requests get typed errors and leave the model usable", () => {
  it("a prompt longer than the context", async () => {
    const model = await Model.load(LLM);
    const g = new Generator(model);
    expect(() => g.submit(new Array(513).fill(300))).toThrow(ContextLengthError);
    const seq = model.newSequence();
    await expect(model.forward([{ seq, tokens: new Array(513).fill(300) }])).rejects.toThrow(
      /does not fit the model's context of 512/,
    );
    expect(() => g.submit([600])).toThrow(InvalidOptionError);
    expect(() => g.submit("hi", { temperature: -1 })).toThrow(/temperature/);
    expect(() => g.submit("hi", { topP: 0 })).toThrow(/topP/);
    await expect(model.forward([{ seq, tokens: [5], logits: "first" as "last" }])).rejects.toThrow(/logits/);
    // "argmax" gives the greedy token of the last position, as the host's argmax of its logits.
    const [logits] = await model.forward([{ seq: model.newSequence(), tokens: [1, 300, 301] }]);
    const [greedy] = await model.forward([
      { seq: model.newSequence(), tokens: [1, 300, 301], logits: "argmax" },
    ]);
    expect([...greedy]).toEqual([logits.indexOf(Math.max(...logits))]);
    const r = await g.generate("Once", { temperature: 0, maxTokens: 5 });
    expect(r.tokens.length).toBe(5);
  });

  it("generation stops at the end of the context with finish reason length", async () => {
    const model = await Model.load(LLM);
    const r = await new Generator(model).generate(new Array(508).fill(300), {
      temperature: 0,
      maxTokens: 50,
      stopTokens: [],
    });
    expect(r.tokens.length).toBe(4);
    expect(r.finishReason).toBe("length");
  });
});
