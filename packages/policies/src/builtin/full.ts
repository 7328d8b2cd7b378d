import { definePolicy } from "../sdk.js";

/** No compression: every token, every layer. */
export const full = definePolicy({
  name: "full",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  description: "no compression (the reference every other policy is measured against)",
  uncompressed: true,
  select: () => null,
});
