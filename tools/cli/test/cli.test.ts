import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { assetsDir, TextTokenizer, writeSyntheticCheckpoint } from "@smallkv/runner";
import { describe, expect, it } from "vitest";

const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "bin.js");
const models = join(assetsDir(), "models");

function cli(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", input, timeout: 280_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** SmallKV at 20% with the aligned assistant, on the shipped model. */
const SMALLKV_GENERATE = [
  "generate",
  "-m",
  "stories260K",
  "-a",
  "stories260K-slm-a",
  "--policy",
  "smallkv",
  "--budget",
  "0.2",
];

function golden(name: string) {
  return JSON.parse(readFileSync(join(models, "golden", `${name}.json`), "utf8"));
}

describe("smallkv generate", () => {
  for (const name of ["stories260K", "stories260K-slm", "stories260K-slm-l"]) {
    it(`--greedy --json returns exactly the golden greedy ids of ${name}`, () => {
      const r = cli([
        "generate",
        "--model",
        join(models, name),
        "--prompt",
        "",
        "--max-tokens",
        "64",
        "--greedy",
        "--json",
      ]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout);
      const bos = golden(name).prompts.find((p: { name: string }) => p.name === "bos");
      expect(out.prompt_ids).toEqual(bos.ids);
      expect(out.ids).toEqual(bos.greedy_ids);
      expect(out.text).toBe(bos.greedy_text);
    });
  }

  it("--device emulator (the CUDA kernels on the CPU) with SmallKV gives the CPU's greedy text; --device auto says where it runs", () => {
    const args = [
      "generate",
      "--model",
      join(models, "stories260K"),
      "--assistant",
      join(models, "stories260K-slm"),
    ];
    const common = [
      "--policy",
      "smallkv",
      "--budget",
      "0.3",
      "--policy-option",
      "minContext=16",
      "--policy-option",
      "window=16",
    ];
    const prompt = [
      "--prompt",
      "Once upon a time, there was a little girl named Lily. She",
      "-n",
      "24",
      "--greedy",
      "--json",
    ];
    const cpu = cli([...args, ...common, ...prompt]);
    const emu = cli([...args, ...common, ...prompt, "--device", "emulator"]);
    expect(emu.code).toBe(0);
    expect(JSON.parse(emu.stdout).ids).toEqual(JSON.parse(cpu.stdout).ids);
    const auto = cli([...args, ...prompt, "--device", "auto"]);
    expect(auto.code).toBe(0);
    expect(auto.stderr).toMatch(
      /device auto: (running on CUDA|(no usable CUDA device|.*built without CUDA).* running on the CPU)/,
    );
    const bad = cli([...args, ...prompt, "--device", "tpu"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/Allowed choices are cpu, cuda, auto, emulator/);
  });

  it("--json text is exact: prompt + text == decode(prompt ids + ids), the first token's space kept", () => {
    const tok = new TextTokenizer(join(models, "stories260K"));
    for (const prompt of ["Once upon", "Lily and Tom"]) {
      const r = cli(["generate", "-m", "stories260K", "-p", prompt, "-n", "12", "--greedy", "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(prompt + j.text).toBe(tok.decode([...j.prompt_ids, ...j.ids]));
    }
    const once = JSON.parse(
      cli(["generate", "-m", "stories260K", "-p", "Once upon", "-n", "3", "--greedy", "--json"]).stdout,
    );
    expect(once.text.startsWith(" ")).toBe(true);
  });

  it("--stats piped: stats on stderr one per line, then a summary that says when the policy became active", () => {
    const args = SMALLKV_GENERATE;
    const r = cli([
      ...args,
      "-n",
      "30",
      "--greedy",
      "--stats",
      "--policy-option",
      "minContext=16",
      "-p",
      "Once upon a time, there was a little girl named Lily.",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines.filter((l) => /^step +\d+ /.test(l))).toHaveLength(30);
    const summary = lines[lines.length - 1];
    expect(summary).toMatch(
      /^summary {2}tokens 30 .* tok\/s .* mean hot [\d.]+ MiB .* policy smallkv@20% compressing from step \d+ \(\d+ tokens\)$/,
    );
    expect(r.stdout).not.toMatch(/step|summary/);
    const waiting = cli([...args, "-n", "5", "--greedy", "--stats", "-p", "Once upon a time"]);
    expect(waiting.stderr).toMatch(
      /never compressed \(context reached \d+ tokens; it waits for 100 tokens\)/,
    );
  });

  it("--stats on a terminal: the text is not cut by stats lines (they follow it)", () => {
    const args = ["generate", "-m", "stories260K", "-n", "20", "--greedy"];
    const cmd = [process.execPath, bin, ...args, "--stats", "-p", "'Once upon a time'"].join(" ");
    const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8", timeout: 280_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = r.stdout.replace(/\r/g, "");
    const text = cli([...args, "-p", "Once upon a time"]).stdout.trim();
    // The generated text appears whole, before the first stats line.
    expect(out.indexOf(text)).toBeGreaterThanOrEqual(0);
    expect(out.indexOf(text)).toBeLessThan(out.indexOf("step    1"));
    expect(out).toMatch(/summary {2}tokens 20/);
  });

  it("--weights int8 with --assistant-weights int4: SmallKV runs with both models quantized", () => {
    const run = (...weights: string[]) =>
      cli([
        ...SMALLKV_GENERATE,
        ...weights,
        "-n",
        "20",
        "--greedy",
        "--json",
        "-p",
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
      ]);
    const r = run("--weights", "int8", "--assistant-weights", "int4");
    expect(r.code, r.stderr).toBe(0);
    const q = JSON.parse(r.stdout);
    expect(q.ids.length).toBe(20);
    const f = JSON.parse(run().stdout);
    expect(f.weights.model.type).toBe("f32");
    expect(f.weights.assistant.type).toBe("f32");
    expect(q.weights.model.type).toBe("int8");
    expect(q.weights.assistant.type).toBe("int4");
    // The resident bytes show it (the f32 embedding table stays in all): int8 under half of
    // f32, and the int4 assistant smaller than the same assistant in int8.
    expect(q.weights.model.bytes / f.weights.model.bytes).toBeLessThan(0.5);
    const a8 = JSON.parse(run("--weights", "int8", "--assistant-weights", "int8").stdout);
    expect(a8.weights.assistant.type).toBe("int8");
    expect(q.weights.assistant.bytes).toBeLessThan(a8.weights.assistant.bytes);
    const bad = cli(["generate", "-m", "stories260K", "--weights", "int3", "-p", "x"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/int3/);
  });

  it("reads the prompt from stdin and streams text", () => {
    const r = cli(
      ["generate", "-m", join(models, "stories260K"), "-n", "20", "--greedy"],
      "Once upon a time, there was a little girl named Lily.",
    );
    expect(r.code).toBe(0);
    // The golden greedy run of this very prompt (an independent implementation): its first 20
    // ids, as text.
    const short = golden("stories260K").prompts.find((p: { name: string }) => p.name === "short");
    expect(short.text).toBe("Once upon a time, there was a little girl named Lily.");
    const tok = new TextTokenizer(join(models, "stories260K"));
    expect(r.stdout.trim()).toBe(tok.decode(short.greedy_ids.slice(0, 20), false).trim());
    expect(short.greedy_text.startsWith(r.stdout.trim())).toBe(true);
  });

  it("samples reproducibly with --seed", () => {
    const args = [
      "generate",
      "-m",
      join(models, "stories260K"),
      "-p",
      "Tom",
      "-n",
      "20",
      "-t",
      "0.9",
      "--top-p",
      "0.9",
      "--seed",
      "5",
      "--json",
    ];
    const a = JSON.parse(cli(args).stdout);
    const b = JSON.parse(cli(args).stdout);
    expect(a.ids).toEqual(b.ids);
    expect(a.ids.length).toBe(20);
  });
});

describe("smallkv score", () => {
  it("prints per-token log-probabilities whose sum matches the reported NLL", () => {
    const r = cli([
      "score",
      "-m",
      join(models, "stories260K"),
      "--text",
      "Once upon a time, there was a little girl named Lily.",
      "--json",
    ]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.tokens).toBe(16);
    expect(out.per_token[0].logprob).toBeNull();
    const sum = out.per_token.slice(1).reduce((a: number, t: { logprob: number }) => a + t.logprob, 0);
    expect(-sum / 15).toBeCloseTo(out.nll, 6);
    expect(out.perplexity).toBeGreaterThan(1);
    expect(out.perplexity).toBeLessThan(10); // the model knows this sentence well
  });
});

describe("bad input gives a clear error and a non-zero exit", () => {
  const tmp = () => {
    const d = join(tmpdir(), `smallkv-cli-${Math.random().toString(36).slice(2)}`);
    mkdirSync(d, { recursive: true });
    return d;
  };
  const copy = () => {
    const d = tmp();
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
      copyFileSync(join(models, "stories260K", f), join(d, f));
    return d;
  };

  it("missing config.json", () => {
    const r = cli(["generate", "-m", tmp(), "-p", "hi"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/CheckpointError \[CONFIG_MISSING\]: config\.json not found/);
  });

  it("corrupt config.json", () => {
    const d = copy();
    writeFileSync(join(d, "config.json"), "{");
    const r = cli(["generate", "-m", d, "-p", "hi"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/CONFIG_INVALID.*not valid JSON/);
  });

  it("truncated safetensors", () => {
    const d = copy();
    truncateSync(join(d, "model.safetensors"), 1000);
    const r = cli(["generate", "-m", d, "-p", "hi"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/SAFETENSORS_TRUNCATED/);
  });

  it("unsupported architecture", () => {
    const d = copy();
    const c = JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
    c.architectures = ["GPT2LMHeadModel"];
    writeFileSync(join(d, "config.json"), JSON.stringify(c));
    const r = cli(["generate", "-m", d, "-p", "hi"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/UNSUPPORTED_ARCHITECTURE.*GPT2LMHeadModel/);
  });

  it("a prompt longer than the context", () => {
    const r = cli(["generate", "-m", join(models, "stories260K"), "-p", "Once upon a time. ".repeat(200)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /ContextLengthError: prompt of \d+ tokens does not fit the model's context of 512/,
    );
  });

  it("bad option values", () => {
    const r = cli(["generate", "-m", join(models, "stories260K"), "-p", "hi", "--top-p", "2"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/topP: must be in \(0, 1\]/);
    const r2 = cli(["generate", "-m", join(models, "stories260K"), "-n", "many"]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/--max-tokens must be an integer/);
  });
});

describe("SmallKV on newer model families, end to end through the CLI", () => {
  const pair = (arch: "Qwen3ForCausalLM" | "LlamaForCausalLM", extra: Record<string, unknown>) => {
    const root = join(tmpdir(), `smallkv-pair-${arch}-${process.pid}`);
    const common = {
      architecture: arch,
      vocabSize: 512,
      maxPositions: 256,
      tokenizerFrom: join(models, "stories260K"),
      scale: 0.2,
      ...extra,
    };
    writeSyntheticCheckpoint(join(root, "llm"), {
      ...common,
      hiddenSize: 64,
      intermediateSize: 96,
      numLayers: 3,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      seed: 1,
    });
    writeSyntheticCheckpoint(join(root, "slm"), {
      ...common,
      hiddenSize: 32,
      intermediateSize: 48,
      numLayers: 2,
      numHeads: 2,
      numKvHeads: 1,
      headDim: 16,
      seed: 2,
    });
    return root;
  };
  it.each([
    ["a Qwen3-shaped pair (q/k norm, head_dim 16)", pair("Qwen3ForCausalLM", {})],
    [
      "a Llama-3-shaped pair (llama3 RoPE, GQA)",
      pair("LlamaForCausalLM", {
        ropeTheta: 500000,
        ropeScaling: {
          rope_type: "llama3",
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 64,
        },
      }),
    ],
  ])("generate --policy smallkv with %s", (_name, root) => {
    const r = cli([
      "generate",
      "-m",
      join(root, "llm"),
      "-a",
      join(root, "slm"),
      "--policy",
      "smallkv",
      "--budget",
      "0.2",
      "--policy-option",
      "minContext=16",
      "-n",
      "24",
      "--greedy",
      "--stats",
      "--json",
      "-p",
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ids.length).toBeGreaterThan(0);
    // The policy compressed: the hot set is smaller than the full store at the last step.
    const last = j.steps[j.steps.length - 1];
    expect(last.hotBytes).toBeLessThan(last.coldBytes);
  });
});
