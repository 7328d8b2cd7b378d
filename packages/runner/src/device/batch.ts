import {
  ATTN_SEQ_INTS,
  type AttentionSeq,
  type Device,
  type DeviceBuffer,
  PROB_OUT_INTS,
  type ProbOut,
  packAddresses,
  packAttentionSeqs,
  packProbOuts,
  packRankLists,
  patchRankList,
  RANK_LIST_INTS,
  type RankList,
} from "@smallkv/tensor";
import type { ModelConfig } from "../config.js";
import { type DeviceRankPlan, passive } from "../policy-hook.js";
import type { Sequence } from "../sequence.js";
import type { DeviceHotRows, DeviceKvCache } from "./kv.js";
import type { Staging } from "./staging.js";

/** One step's sequence: its rows in the batch, and which logits it wants. */
export interface DeviceStepPart {
  seq: Sequence;
  tokens: ArrayLike<number>;
  row: number;
}

/** Device addresses of one layer's batched work. */
interface LayerMeta {
  records: number;
  kStores: number;
  vStores: number;
  /** The probability pass's outputs, one per record (0: no sequence asks this layer). */
  probOuts: number;
  /** How many of the step's ranked lists are this layer's (they all run in one launch before the layers). */
  rankCount: number;
}

/** Consecutive batched parts that share one attention launch (and its workspace). */
export interface AttentionGroup {
  first: number;
  count: number;
  maxT: number;
  maxKeys: number;
  /** maxKeys rounded up to a power of two (>= 256): the attention grid, fixed for a graph's life. */
  keyBucket: number;
}

/** What a step's kernels read from its one metadata upload. */
export interface StepMeta {
  ids: number;
  pos: number;
  /** Per row: its entry in the batch's KV append, or -1 (a per-sequence row). */
  entry: number;
  /** The sequences that go through the batched path (null: none this step). */
  batch: {
    parts: DeviceStepPart[];
    rows: number;
    groups: AttentionGroup[];
    caps: number;
    dst: number;
    rowIndex: number;
    /** The largest group's key bucket: the grid of the step's ranking and probability pass. */
    keyBucket: number;
    /** Every layer's ranked lists (rankCount of them, 0: none), ranked in one launch before the layers. */
    ranks: number;
    rankCount: number;
    layers: LayerMeta[];
  } | null;
}

/**
 * The batched path's workspace (partial outputs per query row and key chunk) is kept under
 * this many floats (256 MiB): a long prefill batch runs its attention in several launches.
 */
const PART_FLOATS_CAP = 2 ** 26;
/** Query rows per attention record: a longer step (prefill) is cut into records of this many rows. */
const CHUNK_ROWS = 256;
const keyBucket = (n: number) => Math.max(256, 2 ** Math.ceil(Math.log2(n)));

/**
 * A sequence whose policy needs nothing from the host (it neither selects, observes nor reads
 * queries, or it runs its device form), with its store in device memory: it joins the batched
 * path (one KV append and one attention launch per layer for all such sequences).
 */
export function batchable(seq: Sequence): boolean {
  // A model whose heads the batched kernels cannot read runs every sequence per sequence
  // (only a form that keeps probability rows, an assistant's, is made for it).
  const heads = !!seq.model?.runner?.batchedHeads;
  return heads && (passive(seq.policy) || seq.deviceForm !== null) && !(seq.kv as DeviceKvCache).pinned;
}

/**
 * Where a device-backend sequence's attention runs, where its store lives, and the device bytes
 * it holds (its store when that is in device memory, and its hot sets), for --stats and benches.
 */
export function devicePath(seq: Sequence): {
  path: "batched" | "per-sequence";
  /** Why a sequence whose policy selects or observes runs where it does. */
  policy: "none" | "device form" | "host";
  /** "pinned host": a host policy's f32 cold store; "spilled": past the device KV budget. */
  store: "device" | "pinned host" | "spilled";
  storeDtype: string;
  deviceBytes: number;
  hostBytes: number;
} {
  const kv = seq.kv as DeviceKvCache;
  const planes = (h: unknown) => (h as DeviceHotRows).planesBuf.reduce((a, b) => a + b.bytes, 0);
  return {
    path: batchable(seq) ? "batched" : "per-sequence",
    policy: seq.deviceForm ? "device form" : passive(seq.policy) ? "none" : "host",
    store: kv.pinned ? "pinned host" : kv.spilled ? "spilled" : "device",
    storeDtype: kv.storeDtype,
    deviceBytes: kv.deviceBytes + seq.hot.reduce((a, h) => a + planes(h.full) + planes(h.vOnly), 0),
    hostBytes: kv.hostBytes,
  };
}

const even = (n: number) => n + (n & 1);

/**
 * Packs a step's metadata (token ids, positions, and for the batched sequences every layer's
 * attention records and KV destinations) into one buffer and uploads it once: the kernels
 * then read device memory, not mapped host memory.
 */
export class StepMetadata {
  private host: Int32Array = new Int32Array(0);
  private devBuf: DeviceBuffer | null = null;
  /** Bumped when the device buffer is reallocated (graphs hold its address). */
  generation = 0;

  constructor(
    private readonly dev: Device,
    private readonly c: ModelConfig,
    private readonly staging: Staging,
  ) {}

  prepare(parts: DeviceStepPart[], M: number): StepMeta {
    const L = this.c.numLayers;
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.c;
    const batch = parts.filter((p) => batchable(p.seq));
    // Attention records: a part's rows in chunks of at most CHUNK_ROWS (a long prefill is
    // several records, each seeing the keys up to its last row: the KV append before it wrote
    // them), in groups of consecutive records whose workspace fits the cap.
    const recs: { part: DeviceStepPart; j: number; r0: number; T: number }[] = [];
    batch.forEach((part, j) => {
      for (let r0 = 0; r0 < part.tokens.length; r0 += CHUNK_ROWS)
        recs.push({ part, j, r0, T: Math.min(CHUNK_ROWS, part.tokens.length - r0) });
    });
    const groups: AttentionGroup[] = [];
    recs.forEach(({ part, r0, T }, i) => {
      const g = groups.at(-1);
      const keys = part.seq.length + r0 + T;
      const fits = (count: number, t: number, k: number) =>
        count * t * Hq * (keyBucket(k) / 256) * (D + 2) <= PART_FLOATS_CAP;
      if (g && fits(g.count + 1, Math.max(g.maxT, T), Math.max(g.maxKeys, keys))) {
        g.count++;
        g.maxT = Math.max(g.maxT, T);
        g.maxKeys = Math.max(g.maxKeys, keys);
        g.keyBucket = keyBucket(g.maxKeys);
      } else groups.push({ first: i, count: 1, maxT: T, maxKeys: keys, keyBucket: keyBucket(keys) });
    });
    // The device forms' plans, per layer and batched part (a selection only for steps of one record).
    const plans = Array.from({ length: L }, (_, l) =>
      batch.map(({ seq, tokens }) => {
        const form = seq.deviceForm;
        const T = tokens.length;
        const step = { start: seq.length, T };
        const plan = form?.plan && T <= CHUNK_ROWS ? form.plan(seq, l, step) : null;
        const st = (seq.kv as DeviceKvCache).policy;
        if (st) st.planned[l] = plan !== null;
        return {
          plan,
          accumulate: form?.accumulate?.(seq, l, step) || null,
          rows: !!form?.rows,
        };
      }),
    );
    const rankCounts = plans.map((ps) => ps.reduce((a, p) => a + (p.plan ? Hkv : 0), 0));
    const probLayers = plans.map((ps) => ps.some((p) => p.accumulate || p.rows));
    const Mb = batch.reduce((a, p) => a + p.tokens.length, 0);
    const R = recs.length;
    const head = even(3 * M);
    const shared = even(3 * Mb);
    const layerInts = (l: number) => R * ATTN_SEQ_INTS + 4 * Mb + (probLayers[l] ? R * PROB_OUT_INTS : 0);
    const layerAt: number[] = [];
    let total = head + (R > 0 ? shared : 0);
    if (R > 0)
      for (let l = 0; l < L; l++) {
        layerAt.push(total);
        total += layerInts(l);
      }
    // Every layer's ranked lists, in layer order, after the layers: a step ranks them all in one
    // launch before its first layer (a ranking reads only what earlier steps left).
    const ranksAt = total;
    const rankTotal = rankCounts.reduce((a, x) => a + x, 0);
    if (R > 0) total += rankTotal * RANK_LIST_INTS;
    if (this.host.length < total) this.host = new Int32Array(Math.max(total, 2 * this.host.length));
    const h = this.host;
    let r = 0;
    for (const { seq, tokens } of parts)
      for (let i = 0; i < tokens.length; i++, r++) {
        h[r] = tokens[i];
        h[M + r] = seq.length + i;
        h[2 * M + r] = -1;
      }
    const layers: LayerMeta[] = [];
    if (R > 0) {
      let i = 0;
      for (const { seq, tokens, row } of batch) {
        const kv = seq.kv as DeviceKvCache;
        for (let t = 0; t < tokens.length; t++, i++) {
          h[head + i] = kv.cap;
          h[head + Mb + i] = seq.length + t;
          h[head + 2 * Mb + i] = row + t;
          h[2 * M + row + t] = i; // the batch entry of this row (rope-append writes its K/V)
        }
      }
      const stores: number[] = new Array(Mb);
      for (let l = 0; l < L; l++) {
        let at = layerAt[l];
        const window = this.c.slidingWindow?.[l] ?? 0;
        const seqs: AttentionSeq[] = recs.map(({ part, j, r0, T }) => {
          const { seq, row } = part;
          const kv = seq.kv as DeviceKvCache;
          const rec: AttentionSeq = {
            k: kv.dk[l],
            v: kv.dv[l],
            cap: kv.cap,
            n: seq.length + r0 + T,
            T,
            qRow: row + r0,
            window,
          };
          const plan = plans[l][j].plan;
          if (plan) selectionOf(rec, kv, l, Hq, Hkv, plan);
          return rec;
        });
        const records = at;
        packAttentionSeqs(seqs, h, at);
        at += R * ATTN_SEQ_INTS;
        const stores0 = at;
        for (const side of ["dk", "dv"] as const) {
          let j = 0;
          for (const { seq, tokens } of batch) {
            const p = (seq.kv as DeviceKvCache)[side][l].ptr;
            for (let t = 0; t < tokens.length; t++) stores[j++] = p;
          }
          packAddresses(stores, h, at);
          at += 2 * Mb;
        }
        let probOuts = 0;
        if (probLayers[l]) {
          probOuts = at;
          const outs: ProbOut[] = recs.map(({ part, j, r0, T }) => {
            const p = plans[l][j];
            return probOutOf(part, l, r0, T, p.accumulate, p.rows, Hkv);
          });
          packProbOuts(outs, h, at);
          at += R * PROB_OUT_INTS;
        }
        layers.push({
          records,
          kStores: stores0,
          vStores: stores0 + 2 * Mb,
          probOuts,
          rankCount: rankCounts[l],
        });
      }
      let at = ranksAt;
      for (let l = 0; l < L; l++)
        batch.forEach((part, j) => {
          const plan = plans[l][j].plan;
          if (!plan) return;
          h.set(rankRecords(part, l, plan, Hq, Hkv), at);
          at += Hkv * RANK_LIST_INTS;
        });
    }
    const bytes = total * 4;
    if (!this.devBuf || this.devBuf.length < total) {
      this.devBuf?.free();
      this.devBuf = this.dev.alloc(Math.max(total, 1024), "i32");
      this.generation++;
    }
    const pinned = this.staging.ints("meta", h.subarray(0, total));
    this.dev.copy(this.devBuf, pinned, bytes);
    const at = (i: number) => this.devBuf!.at(i);
    return {
      ids: at(0),
      pos: at(M),
      entry: at(2 * M),
      batch:
        R === 0
          ? null
          : {
              parts: batch,
              rows: Mb,
              groups,
              caps: at(head),
              dst: at(head + Mb),
              rowIndex: at(head + 2 * Mb),
              keyBucket: Math.max(...groups.map((g) => g.keyBucket)),
              ranks: rankTotal > 0 ? at(ranksAt) : 0,
              rankCount: rankTotal,
              layers: layers.map((m) => ({
                records: at(m.records),
                kStores: at(m.kStores),
                vStores: at(m.vStores),
                probOuts: m.probOuts ? at(m.probOuts) : 0,
                rankCount: m.rankCount,
              })),
            },
    };
  }

  free(): void {
    this.devBuf?.free();
    this.devBuf = null;
  }
}

/** A record's selection read in place: the lists its layer's ranking writes (and V-only rows with weights). */
function selectionOf(
  rec: AttentionSeq,
  kv: DeviceKvCache,
  l: number,
  Hq: number,
  Hkv: number,
  plan: DeviceRankPlan,
): void {
  const st = kv.policy!;
  const cap = st.cap;
  rec.select = { idx: st.idx!.ptr + l * Hkv * cap * 4, counts: st.counts!.ptr + l * Hkv * 4, icap: cap };
  if (plan.scores.kind === "assistant")
    rec.vOnly = {
      idx: st.vIdx!.ptr + l * Hkv * cap * 4,
      counts: st.vCounts!.ptr + l * Hkv * 4,
      vcap: cap,
      weights: st.weights!.ptr + l * Hq * cap * 4,
      vmax: cap,
      mode: plan.combine ?? "mass",
    };
}

/** Where one record's probabilities go: column sums into the score table, or the last row kept. */
function probOutOf(
  part: DeviceStepPart,
  l: number,
  r0: number,
  T: number,
  accumulate: { fromRow: number; replace?: boolean } | null,
  rows: boolean,
  Hkv: number,
): ProbOut {
  const st = (part.seq.kv as DeviceKvCache).policy;
  if (!st) return null;
  const cap = st.cap;
  if (accumulate && st.scores && accumulate.fromRow < r0 + T)
    return {
      kind: accumulate.replace ? "columnValues" : "columnSums",
      dst: st.scores.ptr + l * Hkv * cap * 4,
      stride: cap,
      rowFrom: Math.max(0, accumulate.fromRow - r0),
      counts: st.hits ? st.hits.ptr + l * Hkv * cap * 4 : undefined,
    };
  const last = part.tokens.length - 1;
  // A batched sequence's rows keep the stride its state was grown with (cap).
  if (rows && st.rows && last >= r0 && last < r0 + T)
    return { kind: "rows", dst: st.rowsOf(l), stride: st.rowStride, rowFrom: last - r0 };
  return null;
}

/**
 * The packed ranked lists of one sequence's layer (one per kv head, writing what selectionOf
 * reads). Packed once per store capacity and score source, then only the step's fields are
 * rewritten: a step of 64 sequences packs thousands of lists.
 */
function rankRecords(
  part: DeviceStepPart,
  l: number,
  plan: DeviceRankPlan,
  Hq: number,
  Hkv: number,
): Int32Array {
  const { seq, tokens } = part;
  const st = (seq.kv as DeviceKvCache).policy!;
  const assistant = plan.scores.kind === "assistant" ? plan.scores : null;
  const slm = assistant ? (seq.assistant!.seq.kv as DeviceKvCache).policy! : null;
  const blend = plan.blend ? Array.from(plan.blend).join(",") : "";
  const over = plan.scores.kind === "accumulated" ? (plan.scores.over ?? "list") : "assistant";
  const pool = plan.pool ? `${plan.pool.radius}:${plan.pool.limit}` : "";
  const key = `${st.cap}|${plan.rule.kind}|${plan.evict ? 1 : 0}|${slm ? `${slm.rowsOf(0)}:${slm.rowStride}` : over}|${blend}|${pool}`;
  const cached = st.records[l];
  const step = (g: number) => ({
    n: seq.length,
    T: tokens.length,
    recent: plan.recent,
    rule: ruleOf(plan, g),
  });
  if (cached && cached.key === key && cached.terms === assistant?.terms) {
    for (let g = 0; g < Hkv; g++) patchRankList(cached.packed, 0, g, step(g));
    return cached.packed;
  }
  const cap = st.cap;
  const G = Hq / Hkv;
  const lists: RankList[] = [];
  for (let g = 0; g < Hkv; g++) {
    const list = l * Hkv + g;
    const layerMean = plan.scores.kind === "accumulated" && plan.scores.over === "layer";
    const terms = assistant
      ? assistant.terms
          .filter((t) => t.list === g)
          .map((t) => ({ row: slm!.rowAt(t.layer, t.head), weight: t.weight }))
      : layerMean
        ? Array.from({ length: Hkv }, (_, h) => ({
            row: st.scores!.ptr + (l * Hkv + h) * cap * 4,
            weight: 1 / Hq,
          }))
        : [{ row: st.scores!.ptr + list * cap * 4, weight: 1 }];
    lists.push({
      ...step(g),
      exclude: plan.evict ? st.exclude!.ptr + list * cap : undefined,
      skipExcludedRecent: plan.evict,
      evict: plan.evict,
      terms,
      full: st.idx!.ptr + list * cap * 4,
      fullCount: st.counts!.ptr + list * 4,
      vOnly: assistant ? st.vIdx!.ptr + list * cap * 4 : undefined,
      vOnlyCount: assistant ? st.vCounts!.ptr + list * 4 : undefined,
      // Term i of list g is its query head g*G + i (one query row): its weights row.
      weights: assistant
        ? {
            w: st.weights!.ptr + (l * Hq + g * G) * cap * 4,
            stride: cap,
            gate: assistant.gate.slice(g * G, (g + 1) * G),
          }
        : undefined,
      pool: plan.pool,
      // Weakly matched heads: the scores blended with the sequence's own mean attention.
      blend:
        plan.blend && plan.blend[g] >= 0 && st.scores && st.hits
          ? {
              weight: plan.blend[g],
              sums: st.scores.ptr + list * cap * 4,
              counts: st.hits.ptr + list * cap * 4,
            }
          : undefined,
    });
  }
  const packed = packRankLists(lists);
  st.records[l] = { key, terms: assistant?.terms, packed };
  return packed;
}

function ruleOf(plan: DeviceRankPlan, g: number): RankList["rule"] {
  const r = plan.rule;
  return r.kind === "fixed"
    ? { kind: "fixed", k: r.k[g], exact: r.exact[g] }
    : {
        kind: "adaptive",
        units: r.units[g],
        vOnly: r.vOnly[g] === 1,
        exactShare: r.exactShare,
        negligible: r.negligible,
      };
}
