/** Thrown when a kernel gets arrays of the wrong type or size, or dimensions that do not fit. */
export class TensorShapeError extends Error {
  override readonly name = "TensorShapeError";
  constructor(
    readonly op: string,
    message: string,
  ) {
    super(`${op}: ${message}`);
  }
}

export function expectF32(op: string, name: string, a: unknown, minLen: number): Float32Array {
  if (!(a instanceof Float32Array)) throw new TensorShapeError(op, `${name} must be a Float32Array`);
  if (a.length < minLen) throw new TensorShapeError(op, `${name} has ${a.length} elements, needs ${minLen}`);
  return a;
}

export function expectI32(op: string, name: string, a: unknown, minLen: number): Int32Array {
  if (!(a instanceof Int32Array)) throw new TensorShapeError(op, `${name} must be an Int32Array`);
  if (a.length < minLen) throw new TensorShapeError(op, `${name} has ${a.length} elements, needs ${minLen}`);
  return a;
}

export function expectDim(op: string, name: string, v: unknown, min = 0): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > 2 ** 31 - 1) {
    throw new TensorShapeError(op, `${name} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}
