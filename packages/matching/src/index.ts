export {
  type AttentionSet,
  collectAttention,
  formatReport,
  type HeadMatch,
  HeadMatching,
  identityOf,
  MatchingMismatchError,
  type MatchingReport,
  type MatchMetric,
  type MatchOptions,
  type ModelIdentity,
  matchModels,
  type SimilarityStats,
} from "./matching.js";
export { columnSums, jaccard, rowCosine, topSet } from "./similarity.js";
export { DEFAULT_WINDOW, matchingWindow, type WindowOptions } from "./window.js";
