export {
  type AttentionSet,
  collectAttention,
  formatReport,
  type HeadMatch,
  HeadMatching,
  identityOf,
  MATCH_METRICS,
  MatchingMismatchError,
  type MatchingReport,
  type MatchMetric,
  type MatchOptions,
  type ModelIdentity,
  matchModels,
  type SimilarityStats,
} from "./matching.js";
export {
  columnSums,
  jaccard,
  nnls,
  oldRowTops,
  ownRows,
  ownTops,
  rowCosine,
  rowCoverage,
  rowTops,
  topSet,
} from "./similarity.js";
export { DEFAULT_WINDOW, matchingWindow, type WindowOptions } from "./window.js";
