export { measureReadBandwidth } from "./bandwidth.js";
export { type BenchOptions, type BenchRow, formatBench, runBench } from "./bench.js";
export { makeWindows, splitDocuments, type Window } from "./documents.js";
export {
  DEFAULT_BUDGETS,
  DEFAULT_POLICIES,
  type EvalOptions,
  type EvalResult,
  type EvalRow,
  formatEval,
  formatIsoMemory,
  type IsoRow,
  longRangePositions,
  type Metrics,
  parseSpec,
  plotEval,
  runEval,
} from "./eval.js";
export { barSpec, heatmapSpec, lineSpec, renderPlot } from "./plots.js";
export { type PrefixBenchRow, writeResultsPage } from "./results-page.js";
export {
  benchSpeculative,
  SPECULATIVE_HEADERS,
  type SpeculativeBenchOptions,
  type SpeculativeRow,
  speculativeCells,
} from "./speculative-bench.js";
export {
  LLM_100M,
  LLM_GPU,
  LLM_SMALL,
  randomTokens,
  type Shape,
  SLM_10M,
  SLM_GPU,
  SLM_SMALL,
  syntheticCheckpoint,
} from "./synthetic.js";
export { fmt, markdownTable, median, table, writeJson } from "./table.js";
export { runWeightsEval, type WeightsEvalOptions, type WeightsEvalRow } from "./weights-eval.js";
