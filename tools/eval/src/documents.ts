import type { TextTokenizer } from "@smallkv/runner";

/**
 * Split TinyStories-style text into documents: a document starts at a paragraph that opens
 * with "Once upon a time" or "Once there" (and at the first paragraph); its paragraphs are
 * joined by a single newline, as the models were trained. Other texts without such openings
 * become one document per blank-line-separated block.
 */
export function splitDocuments(text: string): string[] {
  const paras = text
    .split(/\n\s*\n/)
    .map((p) => p.trim())
    .filter(Boolean);
  const starts = (p: string) => /^Once (upon a time|there)/.test(p);
  if (!paras.some(starts)) return paras;
  const docs: string[][] = [];
  for (const p of paras) {
    if (docs.length === 0 || starts(p)) docs.push([p]);
    else docs[docs.length - 1].push(p);
  }
  return docs.map((d) => d.join("\n"));
}

export interface Window {
  document: number;
  ids: number[];
}

/** Seeded shuffle (Fisher-Yates with an LCG) so a fixed seed picks the same documents. */
function shuffled<T>(xs: T[], seed: number): T[] {
  const a = xs.slice();
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = a.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** Windows of `length` tokens (BOS + document tokens), up to `perDocument` per document, from `documents` documents. */
export function makeWindows(
  text: string,
  tok: TextTokenizer,
  o: { length: number; documents: number; perDocument: number; seed: number; maxPositions: number },
): Window[] {
  if (o.length > o.maxPositions)
    throw new Error(`windows of ${o.length} tokens do not fit the model's context of ${o.maxPositions}`);
  const docs = splitDocuments(text);
  const order = shuffled(
    docs.map((_, i) => i),
    o.seed,
  );
  const out: Window[] = [];
  let used = 0;
  for (const d of order) {
    if (used >= o.documents) break;
    const ids = tok.encode(docs[d]);
    if (ids.length < o.length) continue;
    for (let w = 0; w < o.perDocument && (w + 1) * o.length <= ids.length; w++)
      out.push({ document: d, ids: ids.slice(w * o.length, (w + 1) * o.length) });
    used++;
  }
  return out;
}
