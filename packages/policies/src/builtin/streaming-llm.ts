import { optionChecks } from "../option-checks.js";
import { definePolicy } from "../sdk.js";
import { everyHead, range, union } from "../select.js";

/** StreamingLLM (Xiao et al. 2023): attention sinks plus a window of recent tokens. */
export const streamingLlm = definePolicy({
  name: "streamingllm",
  // Each layer reads only its own past: a verify step interleaves its rows inside each layer.
  verify: "layerwise",
  layerFields: [],
  description: "the first `sinks` tokens plus a window of the most recent ones",
  options: { sinks: 4 },
  validate: (o) => optionChecks("streamingllm", o).number("sinks", 0, 1 << 20, true),
  select(ctx) {
    const { start } = ctx.step;
    const sinks = Math.min(ctx.options.sinks, ctx.oldBudget, start);
    const window = ctx.oldBudget - sinks;
    return {
      full: everyHead(
        ctx.config.numKvHeads,
        union(range(0, sinks), range(Math.max(sinks, start - window), start)),
      ),
    };
  },
});
