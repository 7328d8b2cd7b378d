import { Model, Sequence } from "@smallkv/runner";

/**
 * A deep copy of a policy's per-sequence state (what a rollback puts back): typed arrays,
 * arrays, Maps, Sets, plain objects and class instances (prototype kept) are copied;
 * models, sequences and frozen objects are shared (they are not the policy's to change).
 * A policy whose state holds something else defines `copyState` itself.
 */
export function copyState<S>(state: S): S {
  return copy(state, new Map()) as S;
}

function copy(x: unknown, seen: Map<object, unknown>): unknown {
  if (x === null || typeof x !== "object") return x;
  if (x instanceof Model || x instanceof Sequence || Object.isFrozen(x)) return x;
  const done = seen.get(x);
  if (done !== undefined) return done;
  if (ArrayBuffer.isView(x)) {
    const out = (x as unknown as { slice(): unknown }).slice();
    seen.set(x, out);
    return out;
  }
  if (Array.isArray(x)) {
    const out: unknown[] = new Array(x.length);
    seen.set(x, out);
    for (let i = 0; i < x.length; i++) out[i] = copy(x[i], seen);
    return out;
  }
  if (x instanceof Map) {
    const out = new Map();
    seen.set(x, out);
    for (const [k, v] of x) out.set(copy(k, seen), copy(v, seen));
    return out;
  }
  if (x instanceof Set) {
    const out = new Set();
    seen.set(x, out);
    for (const v of x) out.add(copy(v, seen));
    return out;
  }
  const out = Object.create(Object.getPrototypeOf(x)) as Record<PropertyKey, unknown>;
  seen.set(x, out);
  for (const k of Reflect.ownKeys(x)) out[k] = copy((x as Record<PropertyKey, unknown>)[k], seen);
  return out;
}
