import { type Device, type DeviceBuffer, toHalfBits } from "@smallkv/tensor";
import { observeAttention, observedPositions, planLayer, vOnlyWeightsInSlotOrder } from "../attend-policy.js";
import type { ModelConfig } from "../config.js";
import { type RopeKernelArgs, ropeKernelArgs } from "../rope.js";
import type { Sequence } from "../sequence.js";
import type { ModelWeights } from "../weights.js";
import type { DeviceHotRows, DeviceKvCache } from "./kv.js";
import { Staging } from "./staging.js";

/** A staged RoPE frequency table and its cos/sin factor (undefined: plain RoPE). */
type DeviceRope = { invFreq: number; scale: number } | undefined;

/** Weight storage on the device: f32 as loaded, or f16/bf16 for the tensor-core GEMM. */
export type WeightDtype = "f32" | "f16" | "bf16";

interface LayerBuffers {
  inputNorm: DeviceBuffer;
  postNorm: DeviceBuffer;
  q: DeviceBuffer;
  k: DeviceBuffer;
  v: DeviceBuffer;
  o: DeviceBuffer;
  gate: DeviceBuffer;
  up: DeviceBuffer;
  down: DeviceBuffer;
  qBias?: DeviceBuffer;
  kBias?: DeviceBuffer;
  vBias?: DeviceBuffer;
  oBias?: DeviceBuffer;
  gateBias?: DeviceBuffer;
  upBias?: DeviceBuffer;
  downBias?: DeviceBuffer;
  qNorm?: DeviceBuffer;
  kNorm?: DeviceBuffer;
}

/** One step's sequence: its rows in the batch, and which logits it wants. */
export interface DeviceStepPart {
  seq: Sequence;
  tokens: ArrayLike<number>;
  row: number;
}

/**
 * The device backend's forward pass: every weight, activation and hot KV row on the GPU;
 * the host only runs the policies and receives logits. A step queues all its kernels on the
 * compute stream and waits once, for the logits (policies that observe attention add one
 * wait per observed layer).
 */
export class DeviceRunner {
  private scratch = new Map<string, DeviceBuffer>();
  /** This step's query buffer (query-aware policies read their rows back). */
  private queryBuf!: DeviceBuffer;
  private readonly staging: Staging;
  /** Bytes of weights on the device. */
  readonly weightBytes: number;

  private constructor(
    readonly dev: Device,
    private readonly c: ModelConfig,
    private readonly embed: DeviceBuffer,
    private readonly norm: DeviceBuffer,
    private readonly lmHead: DeviceBuffer,
    private readonly layers: LayerBuffers[],
  ) {
    this.staging = new Staging(dev);
    this.weightBytes = [
      embed,
      norm,
      lmHead,
      ...layers.flatMap((l) => Object.values(l) as DeviceBuffer[]),
    ].reduce((a, b) => a + (b === lmHead && lmHead === embed ? 0 : b.bytes), 0);
  }

  static create(dev: Device, c: ModelConfig, w: ModelWeights, dtype: WeightDtype): DeviceRunner {
    const mat = (a: Float32Array) =>
      dtype === "f32" ? dev.upload(a) : dev.upload(toHalfBits(a, dtype), dtype);
    const vec = (a: Float32Array) => dev.upload(a);
    try {
      const layers = w.layers.map((l) => {
        const b: LayerBuffers = {
          inputNorm: vec(l.inputNorm),
          postNorm: vec(l.postNorm),
          q: mat(l.q),
          k: mat(l.k),
          v: mat(l.v),
          o: mat(l.o),
          gate: mat(l.gate),
          up: mat(l.up),
          down: mat(l.down),
        };
        for (const key of [
          "qBias",
          "kBias",
          "vBias",
          "oBias",
          "gateBias",
          "upBias",
          "downBias",
          "qNorm",
          "kNorm",
        ] as const) {
          const a = l[key];
          if (a) b[key] = vec(a);
        }
        return b;
      });
      const embed = mat(w.embed);
      const lmHead = w.lmHead === w.embed ? embed : mat(w.lmHead);
      return new DeviceRunner(dev, c, embed, vec(w.norm), lmHead, layers);
    } catch (e) {
      dev.releaseAll();
      throw e;
    }
  }

  private buf(name: string, n: number): DeviceBuffer {
    let b = this.scratch.get(name);
    if (!b || b.length < n) {
      b?.free();
      b = this.dev.alloc(Math.max(n, 1024));
      this.scratch.set(name, b);
    }
    return b;
  }

  /** Run the layers for M rows; returns the requested rows' logits [R][V]. */
  step(parts: DeviceStepPart[], M: number, logitRows: number[]): Float32Array {
    const c = this.c;
    const { hiddenSize: d, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: I } = c;
    const dev = this.dev;
    const ids: number[] = [];
    const pos: number[] = [];
    for (const { seq, tokens } of parts) {
      seq.kv.ensure(seq.length + tokens.length);
      for (let i = 0; i < tokens.length; i++) {
        ids.push(tokens[i]);
        pos.push(seq.length + i);
      }
    }
    const idsPtr = this.staging.ints("ids", ids);
    const posPtr = this.staging.ints("pos", pos);
    const x = this.buf("x", M * d);
    const h = this.buf("h", M * d);
    const q = this.buf("q", M * Hq * D);
    this.queryBuf = q;
    const k = this.buf("k", M * Hkv * D);
    const v = this.buf("v", M * Hkv * D);
    const attn = this.buf("attn", M * Hq * D);
    const gate = this.buf("gate", M * I);
    const up = this.buf("up", M * I);
    dev.embedding(x, this.embed, idsPtr, M, d);
    const ropeTables = this.ropeTables(parts);
    for (let l = 0; l < c.numLayers; l++) {
      const w = this.layers[l];
      dev.rmsnorm(h, x, w.inputNorm, M, d, c.rmsNormEps);
      dev.gemm({ y: q, x: h, w: w.q, bias: w.qBias, m: M, n: Hq * D, k: d });
      dev.gemm({ y: k, x: h, w: w.k, bias: w.kBias, m: M, n: Hkv * D, k: d });
      dev.gemm({ y: v, x: h, w: w.v, bias: w.vBias, m: M, n: Hkv * D, k: d });
      if (w.qNorm && w.kNorm) {
        // Qwen3: RMSNorm of every head vector (rows of head_dim) before RoPE.
        dev.rmsnorm(q, q, w.qNorm, M * Hq, D, c.rmsNormEps);
        dev.rmsnorm(k, k, w.kNorm, M * Hkv, D, c.rmsNormEps);
      }
      this.rope(parts, ropeTables, q, k, posPtr, M);
      for (const { seq, tokens, row } of parts) {
        this.attend(
          seq,
          l,
          tokens.length,
          q.at(row * Hq * D),
          k.at(row * Hkv * D),
          v.at(row * Hkv * D),
          attn.at(row * Hq * D),
        );
      }
      dev.gemm({ y: x, x: attn, w: w.o, bias: w.oBias, m: M, n: d, k: Hq * D, accumulate: true });
      dev.rmsnorm(h, x, w.postNorm, M, d, c.rmsNormEps);
      dev.gemm({ y: gate, x: h, w: w.gate, bias: w.gateBias, m: M, n: I, k: d });
      dev.gemm({ y: up, x: h, w: w.up, bias: w.upBias, m: M, n: I, k: d });
      dev.siluGate(gate, gate, up, M * I);
      dev.gemm({ y: x, x: gate, w: w.down, bias: w.downBias, m: M, n: d, k: I, accumulate: true });
    }
    const R = logitRows.length;
    if (R === 0) {
      dev.sync(0);
      return new Float32Array(0);
    }
    const hs = this.buf("hsel", R * d);
    logitRows.forEach((src, i) => dev.copy(hs.at(i * d), x.at(src * d), d * 4));
    dev.rmsnorm(hs, hs, this.norm, R, d, c.rmsNormEps);
    const logits = this.buf("logits", R * c.vocabSize);
    dev.gemm({ y: logits, x: hs, w: this.lmHead, m: R, n: c.vocabSize, k: d });
    return dev.read(logits, new Float32Array(R * c.vocabSize));
  }

  /**
   * The step's RoPE tables in pinned memory, staged once before the layers: one for the whole
   * batch, or one per sequence with dynamic NTK (its frequencies follow its own length).
   */
  private ropeTables(parts: DeviceStepPart[]): DeviceRope[] {
    const { headDim: D, rope: r } = this.c;
    const stage = (name: string, f: RopeKernelArgs): DeviceRope =>
      f ? { invFreq: this.staging.floats(name, f.invFreq), scale: f.scale } : undefined;
    if (!r.dynamic) return [stage("ropeFreq", ropeKernelArgs(r, D, 0))];
    return parts.map(({ seq, tokens }, i) =>
      stage(`ropeFreq${i}`, ropeKernelArgs(r, D, seq.length + tokens.length)),
    );
  }

  /** RoPE on the step's q and k with the tables of `ropeTables`. */
  private rope(
    parts: DeviceStepPart[],
    tables: DeviceRope[],
    q: DeviceBuffer,
    k: DeviceBuffer,
    posPtr: number,
    M: number,
  ): void {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D, rope: r, ropeTheta } = this.c;
    if (!r.dynamic) {
      this.dev.rope(q, posPtr, M, Hq, D, ropeTheta, 0, tables[0]);
      this.dev.rope(k, posPtr, M, Hkv, D, ropeTheta, 0, tables[0]);
      return;
    }
    parts.forEach(({ tokens, row }, i) => {
      const T = tokens.length;
      const p = posPtr + row * 4;
      this.dev.rope(q.at(row * Hq * D), p, T, Hq, D, ropeTheta, 0, tables[i]);
      this.dev.rope(k.at(row * Hkv * D), p, T, Hkv, D, ropeTheta, 0, tables[i]);
    });
  }

  /** One sequence's attention at one layer, through its policy (device twin of Model.attend). */
  private attend(
    seq: Sequence,
    layer: number,
    T: number,
    q: number,
    k: number,
    v: number,
    out: number,
  ): void {
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.c;
    const dev = this.dev;
    const kv = seq.kv as DeviceKvCache;
    const start = seq.length;
    const step = { start, T };
    kv.writeDevice(layer, k, v, start, T);
    // A query-aware policy reads this sequence's queries on the host (T x Hq x D floats).
    let query: Float32Array | undefined;
    if (seq.policy.wantsQuery) {
      query = dev.read(this.queryBuf, new Float32Array(T * Hq * D), (q - this.queryBuf.ptr) / 4);
    }
    const { sel, request, wantProbs, scoreStart, window } = planLayer(
      seq,
      layer,
      query ? { start, T, query } : step,
    );
    const hot = seq.hot[layer];
    const st = kv.staging;
    let Lmax: number;
    // Probabilities and scores land in device memory (atomics on mapped host memory are not
    // safe on every platform) and are read back once, after the kernel.
    type Out = { buf: DeviceBuffer; n: number } | null;
    let probs: Out = null;
    let scores: Out = null;
    const outputs = (L: number): [Out, Out] => {
      const p = wantProbs ? { buf: this.buf("probs", Hq * T * L), n: Hq * T * L } : null;
      const sc = typeof request === "object" ? { buf: this.buf("scores", Hq * L), n: Hq * L } : null;
      if (sc) dev.zero(sc.buf, 0, sc.n);
      return [p, sc];
    };
    if (!sel) {
      Lmax = start + T;
      [probs, scores] = outputs(Lmax);
      dev.attention({
        q,
        k: kv.dk[layer],
        v: kv.dv[layer],
        cap: kv.cap,
        T,
        past: st.ints(`past${layer}`, new Array(Hkv).fill(start)),
        maxPast: start,
        Hq,
        Hkv,
        D,
        out,
        probs: probs?.buf,
        scores: scores?.buf,
        scoreStart,
        window,
      });
    } else {
      const HkvHot = sel.perQueryHead ? Hq : Hkv;
      const full = hot.full as DeviceHotRows;
      const vOnlyRows = hot.vOnly as DeviceHotRows;
      full.apply(sel.full, [kv.dk[layer].ptr, kv.dv[layer].ptr], kv.cap, start + T);
      full.append([k, v], start, T);
      const past = sel.full.map((s) => s.length);
      let vOnly = null;
      const vsel = sel.vOnly;
      if (vsel?.some((x) => x.length > 0)) {
        vOnlyRows.apply(vsel, [kv.dv[layer].ptr], kv.cap, start + T);
        try {
          const weights = vOnlyWeightsInSlotOrder(seq, layer, step, sel, vOnlyRows);
          const vmax = Math.max(...vsel.map((x) => x.length));
          vOnly = {
            v: vOnlyRows.planesBuf[0],
            cap: vOnlyRows.cap,
            counts: st.ints(`vcount${layer}`, vOnlyRows.count),
            vmax,
            weights: st.floats(`vw${layer}`, weights),
            mode: sel.combine ?? "mass",
          };
        } catch (e) {
          seq.fault = e as Error;
        }
      } else vOnlyRows.clear();
      const maxPast = Math.max(...past);
      Lmax = maxPast + T;
      [probs, scores] = outputs(Lmax);
      dev.attention({
        q,
        k: full.planesBuf[0],
        v: full.planesBuf[1],
        cap: full.cap,
        T,
        past: st.ints(`past${layer}`, past),
        maxPast,
        Hq,
        Hkv: HkvHot,
        D,
        out,
        probs: probs?.buf,
        scores: scores?.buf,
        scoreStart,
        vOnly,
      });
    }
    if (request && seq.policy.observe && !seq.fault) {
      // The policy reads this layer's probabilities or scores now (read waits for stream 0).
      const p: Out = probs;
      const s: Out = scores;
      observeAttention(seq, {
        layer,
        start,
        T,
        probs: p ? dev.read(p.buf, new Float32Array(p.n)) : undefined,
        scores: s ? dev.read(s.buf, new Float32Array(s.n)) : undefined,
        Lmax,
        keyPositions: observedPositions(seq, layer, sel, Lmax),
      });
    }
  }

  release(): void {
    for (const b of this.scratch.values()) b.free();
    this.scratch.clear();
    this.staging.free();
    this.dev.releaseAll();
  }
}
