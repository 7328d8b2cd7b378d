import { definePolicy } from "../sdk.js";

/** No compression: every token, every layer. */
export const full = definePolicy({
  name: "full",
  description: "no compression (the reference every other policy is measured against)",
  uncompressed: true,
  select: () => null,
});
