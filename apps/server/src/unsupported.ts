import { badRequest } from "./errors.js";

/**
 * Parameters of the OpenAI API this server does not implement, with when a value uses them:
 * a request that does gets a 400 naming the parameter, never a silently different answer.
 * The body schemas accept these names (so that the refusal can name them); `completions`
 * ones exist only on /v1/completions. (`user`, `metadata`, `store`, `service_tier` are
 * accepted and ignored, as the README lists.)
 */
export const UNSUPPORTED: { name: string; used: (v: unknown) => boolean; completions?: true }[] = [
  { name: "tools", used: (v) => v != null },
  { name: "tool_choice", used: (v) => v != null && v !== "none" },
  { name: "functions", used: (v) => v != null },
  { name: "function_call", used: (v) => v != null && v !== "none" },
  { name: "parallel_tool_calls", used: (v) => v != null },
  { name: "response_format", used: (v) => v != null && (v as { type?: string }).type !== "text" },
  { name: "suffix", used: (v) => v != null && v !== "", completions: true },
  { name: "best_of", used: (v) => v != null && v !== 1, completions: true },
  { name: "echo", used: (v) => v === true, completions: true },
  { name: "n", used: (v) => v != null && v !== 1 },
  { name: "presence_penalty", used: (v) => v != null && v !== 0 },
  { name: "frequency_penalty", used: (v) => v != null && v !== 0 },
  { name: "modalities", used: (v) => v != null },
  { name: "audio", used: (v) => v != null },
  { name: "prediction", used: (v) => v != null },
];

/** Schema entries (any value) for the unsupported names of an endpoint. */
export function unsupportedProperties(completions: boolean): Record<string, object> {
  return Object.fromEntries(
    UNSUPPORTED.filter((u) => !u.completions || completions).map((u) => [u.name, {}]),
  );
}

/** 400 naming the first unsupported parameter a body uses. */
export function refuseUnsupported(b: Record<string, unknown>): void {
  for (const { name, used } of UNSUPPORTED)
    if (Object.hasOwn(b, name) && used(b[name]))
      throw badRequest(`${name} is not supported by this server (see its README for what is)`, name);
}
