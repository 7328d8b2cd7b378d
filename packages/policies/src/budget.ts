import { BudgetError } from "./errors.js";

/**
 * A KV budget: a fraction of the current sequence length (recomputed every step) or an
 * absolute token count. One accounting for every policy: the cost of a layer's kv head
 * at a step is its K+V tokens plus half its V-only tokens, the step's own tokens included.
 */
export class Budget {
  private constructor(
    readonly kind: "fraction" | "tokens",
    readonly value: number,
  ) {}

  static fraction(f: number): Budget {
    if (!(f > 0 && f <= 1)) throw new BudgetError(`a budget fraction must be in (0, 1], got ${f}`);
    return new Budget("fraction", f);
  }

  static tokens(n: number): Budget {
    if (!(Number.isInteger(n) && n >= 1))
      throw new BudgetError(`a token budget must be an integer >= 1, got ${n}`);
    return new Budget("tokens", n);
  }

  /** "0.2", "20%", 0.2 -> 20% of the length; "128", 128 -> 128 tokens. */
  static parse(x: string | number | Budget): Budget {
    if (x instanceof Budget) return x;
    if (typeof x === "number") return x <= 1 ? Budget.fraction(x) : Budget.tokens(x);
    const s = String(x).trim();
    if (s.endsWith("%")) return Budget.fraction(Number(s.slice(0, -1)) / 100);
    const n = Number(s);
    if (s === "" || !Number.isFinite(n))
      throw new BudgetError(`budget ${JSON.stringify(x)} is neither a fraction nor a token count`);
    if (s.includes(".") || n <= 1) return Budget.fraction(n);
    return Budget.tokens(n);
  }

  /** Tokens (cost units) a layer's kv head may hold when the sequence has `length` tokens. */
  tokensAt(length: number): number {
    if (this.kind === "tokens") return this.value;
    return Math.max(1, Math.floor(this.value * length + 1e-9));
  }

  /** True when this budget keeps every token of a sequence of `length` tokens. */
  coversAll(length: number): boolean {
    return this.tokensAt(length) >= length;
  }

  toString(): string {
    return this.kind === "fraction" ? `${+(this.value * 100).toFixed(4)}%` : `${this.value} tokens`;
  }
}
