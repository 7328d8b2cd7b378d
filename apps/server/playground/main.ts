// The SmallKV playground: runs a prompt with a KV policy (with the per-step `kv_trace`
// stream extension) and with the full cache, side by side, and shows which tokens each
// layer and kv head read at every step.
import "./style.css";

interface LayerTrace {
  active: boolean;
  perQuery: boolean;
  full: number[][] | null;
  vOnly: number[][] | null;
}
interface Trace {
  token: number;
  text: string;
  stats: {
    tokens: number;
    hotBytes: number;
    coldBytes: number;
    classes: { full: number; vOnly: number; dropped: number };
  };
  policy_classes: Record<string, number>;
  policy_state: { matching?: number[][][] | null; recent?: number };
  layers: LayerTrace[];
}
interface ModelInfo {
  id: string;
  assistant: string | null;
  kv_policies: string[];
  num_layers: number;
  num_heads: number;
  num_kv_heads: number;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
// The API key, when the server wants one: typed into the page, kept for this tab only.
const KEY_STORE = "smallkv-api-key";
const headers = (): Record<string, string> => {
  const key = sessionStorage.getItem(KEY_STORE);
  return { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) };
};

/** A refused key (401): the page asks for another. */
class KeyRefused extends Error {}

const EXAMPLE =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball stuck in a tall tree. She wanted to get the ball, but the tree was too high. She asked her friend Tom to help her. Tom was a kind boy who liked to climb. He said, "I can help you, Lily!" Tom climbed the tree and got the ball.';

let model: ModelInfo;
let numLayers = 0;
let numKvHeads = 0;
let numHeads = 0;
let promptIds: number[] = [];
let traces: Trace[] = [];
let followLatest = true;
const pieces = new Map<number, string>();

async function api<T>(path: string, body?: unknown): Promise<T> {
  const r = await fetch(
    path,
    body === undefined
      ? { headers: headers() }
      : { method: "POST", headers: headers(), body: JSON.stringify(body) },
  );
  const j = await r.json();
  if (r.status === 401) throw new KeyRefused(j.error?.message ?? "API key refused");
  if (!r.ok) throw new Error(j.error?.message ?? `HTTP ${r.status}`);
  return j as T;
}

/** Texts of token ids, fetched once per unknown id in one batched request. */
async function piecesOf(ids: number[]): Promise<string[]> {
  const missing = [...new Set(ids.filter((id) => !pieces.has(id)))];
  if (missing.length) {
    const r = await api<{ pieces: string[] }>("/detokenize", { tokens: missing, per_token: true });
    missing.forEach((id, i) => pieces.set(id, r.pieces[i]));
  }
  return ids.map((id) => pieces.get(id)!);
}

let rendering = false;
let renderAgain = false;

/** Render, coalescing calls that arrive while a render waits for token texts. */
async function render() {
  if (rendering) {
    renderAgain = true;
    return;
  }
  rendering = true;
  try {
    do {
      renderAgain = false;
      await renderStep();
    } while (renderAgain);
  } finally {
    rendering = false;
  }
}

function option(sel: HTMLSelectElement, value: string, label = value) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  sel.append(o);
}

/** Show the key form with a plain message; the page waits there until a key is accepted. */
function askForKey(message: string) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $<HTMLButtonElement>("run").disabled = true;
  $<HTMLInputElement>("api-key").focus();
}

/** Load the model description (the first call that needs the key); false when the key is refused. */
async function loadModel(): Promise<boolean> {
  try {
    const models = await api<{ data: (ModelInfo & { max_model_len: number })[] }>("/v1/models");
    model = models.data[0];
  } catch (e) {
    if (!(e instanceof KeyRefused)) throw e;
    askForKey(
      sessionStorage.getItem(KEY_STORE)
        ? "The server refused this API key. Enter the right one."
        : "This server requires an API key. Enter it to use the playground.",
    );
    return false;
  }
  $("auth-message").textContent = sessionStorage.getItem(KEY_STORE) ? "API key accepted." : "";
  $<HTMLButtonElement>("run").disabled = false;
  $("model-name").textContent = model.id;
  $("assistant-name").textContent = model.assistant ?? "none";
  setupLayers();
  const policy = $<HTMLSelectElement>("policy");
  policy.replaceChildren();
  // The server lists only the policies it can run (assistant-reading ones need its --assistant).
  for (const p of model.kv_policies) option(policy, p);
  policy.value = model.kv_policies.includes("smallkv") && model.assistant ? "smallkv" : "h2o";
  return true;
}

async function init() {
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $<HTMLInputElement>("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    $<HTMLInputElement>("api-key").value = "";
    void loadModel();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    void loadModel();
  });
  $<HTMLTextAreaElement>("prompt").value = EXAMPLE;
  $("example").addEventListener("click", () => ($<HTMLTextAreaElement>("prompt").value = EXAMPLE));
  $("run").addEventListener("click", () => void run());
  $("layer").addEventListener("change", () => void render());
  $("head").addEventListener("change", () => void render());
  $("step").addEventListener("input", () => {
    followLatest = Number($<HTMLInputElement>("step").value) === traces.length - 1;
    void render();
  });
  // /health is open: it says whether the API wants a key before any call is refused.
  const health = (await (await fetch("/health")).json()) as { api_key_required?: boolean };
  if (health.api_key_required) {
    $("auth").hidden = false;
    if (!sessionStorage.getItem(KEY_STORE)) {
      askForKey("This server requires an API key. Enter it to use the playground.");
      return;
    }
  }
  await loadModel();
}

/** POST a streaming request and call `onChunk` for every SSE data object. */
async function stream(body: Record<string, unknown>, onChunk: (c: Record<string, any>) => void) {
  const r = await fetch("/v1/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (r.status === 401) throw new KeyRefused((await r.json()).error?.message ?? "API key refused");
  if (!r.ok) throw new Error((await r.json()).error?.message ?? `HTTP ${r.status}`);
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = ev.replace(/^data: /, "");
      if (data === "[DONE]") return;
      const c = JSON.parse(data);
      if (c.error) throw new Error(c.error.message);
      onChunk(c);
    }
  }
}

async function run() {
  const btn = $<HTMLButtonElement>("run");
  btn.disabled = true;
  const status = $("status");
  status.textContent = "running…";
  const prompt = $<HTMLTextAreaElement>("prompt").value;
  const policy = $<HTMLSelectElement>("policy").value;
  const budget = Number($<HTMLSelectElement>("budget").value);
  $("policy-label").textContent = `${policy} @ ${budget * 100}%`;
  const common = {
    model: model.id,
    prompt,
    max_tokens: Number($<HTMLInputElement>("max-tokens").value),
    seed: Number($<HTMLInputElement>("seed").value),
    temperature: Number($<HTMLInputElement>("temperature").value),
  };
  traces = [];
  followLatest = true;
  const outP = $("out-policy");
  const outF = $("out-full");
  outP.textContent = "";
  outF.textContent = "";
  try {
    promptIds = (await api<{ tokens: number[] }>("/tokenize", { prompt })).tokens;
    const policyTokens: { id: number; text: string }[] = [];
    const fullTokens: { id: number; text: string }[] = [];
    const t0 = performance.now();
    let generated = 0;
    await Promise.all([
      stream({ ...common, kv_policy: policy, kv_budget: budget, kv_trace: true }, (c) => {
        const ch = c.choices?.[0];
        if (!ch) return;
        const tr: Trace | undefined = c.kv_trace;
        if (ch.text) outP.textContent += ch.text;
        if (tr) {
          traces.push(tr);
          policyTokens.push({ id: tr.token, text: ch.text });
          generated++;
          $("tps").textContent = (generated / ((performance.now() - t0) / 1000)).toFixed(1);
          const step = $<HTMLInputElement>("step");
          step.max = String(traces.length - 1);
          if (followLatest) step.value = String(traces.length - 1);
          void render();
        }
      }),
      stream({ ...common, kv_policy: "full" }, (c) => {
        const ch = c.choices?.[0];
        if (!ch) return;
        if (ch.text) outF.textContent += ch.text;
        if (ch.finish_reason === null || ch.finish_reason === undefined)
          fullTokens.push({ id: -1, text: ch.text });
      }),
    ]);
    highlightDivergence(outP.textContent ?? "", outF.textContent ?? "");
    status.textContent = `done: ${traces.length} steps`;
    status.dataset.done = "true";
  } catch (e) {
    status.textContent = `error: ${(e as Error).message}`;
    if (e instanceof KeyRefused) askForKey("The server refused the API key. Enter the right one.");
  } finally {
    btn.disabled = false;
  }
}

function highlightDivergence(policyText: string, fullText: string) {
  let i = 0;
  while (i < policyText.length && i < fullText.length && policyText[i] === fullText[i]) i++;
  const mark = (el: HTMLElement, text: string) => {
    el.textContent = text.slice(0, i);
    if (i < text.length) {
      const m = document.createElement("mark");
      m.title = "differs from here on";
      m.textContent = text.slice(i);
      el.append(m);
    }
  };
  mark($("out-policy"), policyText);
  mark($("out-full"), fullText);
}

function setupLayers() {
  numLayers = model.num_layers;
  numKvHeads = model.num_kv_heads;
  numHeads = model.num_heads;
  const layer = $<HTMLSelectElement>("layer");
  layer.replaceChildren();
  for (let l = 0; l < numLayers; l++) option(layer, String(l));
  const head = $<HTMLSelectElement>("head");
  head.replaceChildren();
  for (let g = 0; g < numKvHeads; g++) option(head, String(g));
}

const fmtBytes = (b: number) =>
  b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`;

async function renderStep() {
  const step = Number($<HTMLInputElement>("step").value);
  const tr = traces[step];
  if (!tr) return;
  $("step-label").textContent = `${step + 1} / ${traces.length}`;
  $("hot").textContent = fmtBytes(tr.stats.hotBytes);
  $("cold").textContent = fmtBytes(tr.stats.coldBytes);
  $("ratio").textContent = (tr.stats.hotBytes / Math.max(1, tr.stats.coldBytes)).toFixed(3);
  const pc = Object.entries(tr.policy_classes);
  $("classes").textContent = pc.length
    ? pc.map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ")
    : `K+V ${tr.stats.classes.full}, V-only ${tr.stats.classes.vOnly}, dropped ${tr.stats.classes.dropped}`;
  const layer = Number($<HTMLSelectElement>("layer").value || 0);
  const g = Number($<HTMLSelectElement>("head").value || 0);
  const lt = tr.layers[layer];
  const matching = tr.policy_state.matching;
  // Per-query-head selections have one list per query head (the head select then picks a query head).
  const group = lt?.perQuery ? 1 : numHeads / numKvHeads;
  $("matched").textContent = matching
    ? Array.from({ length: group }, (_, i) => {
        const h = g * group + i;
        const [sl, sh] = matching[layer][h];
        return `LLM layer ${layer} head ${h} → SLM layer ${sl} head ${sh}`;
      }).join(" · ")
    : "no assistant matching for this policy (or the context is still below the matching window)";
  // The step's tokens: the prompt and what was generated before this step's token.
  const ids = [...promptIds, ...traces.slice(0, step).map((t) => t.token)].slice(0, tr.stats.tokens);
  const n = ids.length;
  const full = new Set(lt?.active && lt.full ? lt.full[g] : ids.map((_, i) => i));
  const vOnly = new Set(lt?.active && lt.vOnly ? lt.vOnly[g] : []);
  const recentCount = tr.policy_state.recent ?? 0;
  const strip = $("strip");
  const frag = document.createDocumentFragment();
  const texts = await piecesOf(ids);
  for (let p = 0; p < n; p++) {
    const cls = vOnly.has(p)
      ? "marginal"
      : full.has(p)
        ? lt?.active && p >= n - 1 - recentCount
          ? "recent"
          : "critical"
        : "dropped";
    const el = document.createElement("li");
    el.className = `tok ${cls}`;
    el.title = `#${p} ${cls}`;
    el.textContent = texts[p] === "" ? "·" : texts[p];
    frag.append(el);
  }
  strip.replaceChildren(frag);
}

void init();
