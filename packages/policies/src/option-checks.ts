import { PolicyOptionError } from "./errors.js";
import type { OptionSchema } from "./sdk.js";

/**
 * Checks of option values for a policy's `validate` hook: each throws PolicyOptionError
 * naming the option, so a bad value is a caller's error at configuration time.
 */
export function optionChecks<O extends OptionSchema>(policy: string, o: O) {
  const bad = (msg: string): never => {
    throw new PolicyOptionError(policy, msg);
  };
  return {
    bad,
    oneOf(key: keyof O & string, values: readonly string[]) {
      if (!values.includes(String(o[key])))
        bad(`${key} must be one of ${values.join(", ")}, got ${JSON.stringify(o[key])}`);
    },
    /** A number in [min, max] (integer when `integer`). */
    number(key: keyof O & string, min: number, max = Number.POSITIVE_INFINITY, integer = false) {
      const v = o[key] as number;
      if (!(typeof v === "number" && v >= min && v <= max && (!integer || Number.isInteger(v))))
        bad(
          `${key} must be ${integer ? "an integer" : "a number"} in [${min}, ${max === Number.POSITIVE_INFINITY ? "∞" : max}], got ${JSON.stringify(v)}`,
        );
    },
    /** A number > min (exclusive), up to max. */
    above(key: keyof O & string, min: number, max = Number.POSITIVE_INFINITY) {
      const v = o[key] as number;
      if (!(typeof v === "number" && v > min && v <= max))
        bad(`${key} must be > ${min}${max < Number.POSITIVE_INFINITY ? ` and <= ${max}` : ""}, got ${v}`);
    },
  };
}
