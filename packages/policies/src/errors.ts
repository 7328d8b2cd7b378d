/** A budget that cannot be used (not a number, <= 0, a fraction above 1, ...). */
export class BudgetError extends Error {
  override readonly name = "BudgetError";
}

/** An unknown policy, an unknown option, or an option value of the wrong kind. */
export class PolicyOptionError extends Error {
  override readonly name = "PolicyOptionError";
  constructor(
    readonly policy: string,
    message: string,
  ) {
    super(`policy "${policy}": ${message}`);
  }
}
