/** Codes of checkpoint problems, for callers that branch on them. */
export type CheckpointErrorCode =
  | "CONFIG_MISSING"
  | "CONFIG_INVALID"
  | "UNSUPPORTED_ARCHITECTURE"
  | "WEIGHTS_MISSING"
  | "SAFETENSORS_INVALID"
  | "SAFETENSORS_TRUNCATED"
  | "DTYPE_MISMATCH"
  | "SHAPE_MISMATCH"
  | "TENSOR_MISSING"
  | "TOKENIZER_MISSING"
  | "TOKENIZER_INVALID"
  | "GGUF_INVALID";

/** A checkpoint directory that cannot be loaded. The message names the file and the problem. */
export class CheckpointError extends Error {
  override readonly name = "CheckpointError";
  constructor(
    readonly code: CheckpointErrorCode,
    message: string,
    readonly path?: string,
  ) {
    super(path ? `${message} (${path})` : message);
  }
}

/** A prompt (plus requested new tokens) that does not fit the model's context. */
export class ContextLengthError extends Error {
  override readonly name = "ContextLengthError";
  constructor(
    readonly tokens: number,
    readonly maxPositions: number,
  ) {
    super(`prompt of ${tokens} tokens does not fit the model's context of ${maxPositions} positions`);
  }
}

/** Invalid generation or request options (temperature < 0, top_p outside (0, 1], ...). */
export class InvalidOptionError extends Error {
  override readonly name = "InvalidOptionError";
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`${option}: ${message}`);
  }
}

/** A KV policy that threw or broke a rule of the policy contract. */
export class PolicyError extends Error {
  override readonly name = "PolicyError";
  constructor(
    readonly policy: string,
    readonly rule: string,
    message: string,
  ) {
    super(`policy "${policy}" broke rule "${rule}": ${message}`);
  }
}
