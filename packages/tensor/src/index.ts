export { ATTN_SEQ_INTS, type AttentionSeq, packAddresses, packAttentionSeqs } from "./attention-batch.js";
export {
  type DecoderLayerWeights,
  type DecoderShape,
  type DecoderStepArgs,
  decoderCacheFloats,
  decoderLayout,
  decoderStep,
  packDecoderWeights,
} from "./decoder.js";
export {
  ATTN_SEQ_BYTES,
  type AttentionBatchArgs,
  Device,
  type DeviceAttentionArgs,
  DeviceBuffer,
  DeviceError,
  DeviceGraph,
  type DeviceInfo,
  type DeviceKind,
  type DType,
  type GemmArgs,
  type GemvArgs,
  PinnedBuffer,
  type Ptr,
} from "./device.js";
export { TensorShapeError } from "./errors.js";
export {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  fromHalfBits,
  toHalfBits,
} from "./half.js";
export {
  type AttentionArgs,
  type AttentionResult,
  attention,
  attentionBatch,
  attentionRowTops,
  buildInfo,
  type CudaInfo,
  cudaInfo,
  type IndexedAttentionArgs,
  type Int8Store,
  indexedAttention,
  kvCopyRows,
  kvGather,
  kvWrite,
  kvWriteQ8,
  mixedAttention,
  type RopeFrequencies,
  type RowTopsMode,
  rope,
  scatterAdd,
  setThreads,
  sum,
  topk,
  topkRagged,
  topPositions,
  type VOnlyRows,
} from "./ops.js";
export {
  PROB_OUT_INTS,
  type ProbOut,
  packProbOuts,
  packRankLists,
  packSampling,
  patchRankList,
  RANK_LIST_INTS,
  RANK_TERMS,
  type RankList,
  type SampleParams,
} from "./policy-records.js";
export { QGEMM_TYPES, type QgemmType, QMatrix, qgemmRowBytes, swiglu } from "./qgemm.js";
export {
  type RankSplitArgs,
  RankSplitBuffers,
  type RankSplitResult,
  type RankSplitRule,
  rankSplit,
  rankSplitMany,
  scoresAsGiven,
} from "./rank-split.js";
export * as reference from "./reference.js";
export { keptTokens, type SamplingRule, sampleToken } from "./sample.js";
