/** An error answered as an OpenAI-style error object: { error: { message, type, param, code } }. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (e.g. Retry-After). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param, null);
export const internalError = () =>
  new ApiError(
    500,
    "The server had an error while processing your request.",
    "server_error",
    null,
    "internal_error",
  );
