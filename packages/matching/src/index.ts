export {
  type AttentionSet,
  collectAttention,
  formatReport,
  type HeadMatch,
  HeadMatching,
  identityOf,
  MatchingMismatchError,
  type MatchingReport,
  MATCH_METRICS,
  type MatchMetric,
  type MatchOptions,
  type ModelIdentity,
  matchModels,
  type SimilarityStats,
} from "./matching.js";
export { columnSums, jaccard, oldRowTops, ownTops, rowCosine, rowCoverage, rowTops, topSet } from "./similarity.js";
export { DEFAULT_WINDOW, matchingWindow, type WindowOptions } from "./window.js";
