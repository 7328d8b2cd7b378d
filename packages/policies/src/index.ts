export { Budget } from "./budget.js";
export { full } from "./builtin/full.js";
export { h2o } from "./builtin/h2o.js";
export { omniKv } from "./builtin/omnikv.js";
export { pod } from "./builtin/pod.js";
export { pyramidInfer } from "./builtin/pyramid-infer.js";
export { quest } from "./builtin/quest.js";
export { reversible } from "./builtin/reversible.js";
export { type SmallKvOptions, smallKv, smallKvPaper } from "./builtin/smallkv/policy.js";
export { SCORE_MODES, type ScoreMode } from "./builtin/smallkv/scoring.js";
export { type ClassSizes, parseRatio, splitBudget } from "./builtin/smallkv/split.js";
export { pyramidKv, snapKv } from "./builtin/snapkv.js";
export { specKv } from "./builtin/speckv.js";
export { streamingLlm } from "./builtin/streaming-llm.js";
export { tova } from "./builtin/tova.js";
export { BudgetError, PolicyOptionError } from "./errors.js";
export {
  calibratePodBlocks,
  layerSimilarity,
  loadPodBlocks,
  type PodBlocks,
  partitionLayers,
  savePodBlocks,
} from "./pod-blocks.js";
export {
  builtinPolicies,
  createPolicy,
  loadPolicyModule,
  parsePolicyOptions,
  registerPolicy,
  resolvePolicy,
} from "./registry.js";
export { type ScorerDefinition, type ScorerState, scorerPolicy } from "./scorer.js";
export { MeanAttention, ScoreTable } from "./scores.js";
export {
  definePolicy,
  type OptionSchema,
  type OptionValue,
  type PolicyContext,
  type PolicyDefinition,
  type PolicyFactory,
  type PolicyInstance,
  parseOptions,
} from "./sdk.js";
export { avgPool, Evictions, everyHead, maskOf, range, topPositions, union } from "./select.js";
