export { TensorShapeError } from "./errors.js";
export {
  type AttentionArgs,
  type AttentionResult,
  attention,
  buildInfo,
  type CudaInfo,
  cudaInfo,
  kvGather,
  kvWrite,
  mixedAttention,
  rope,
  setThreads,
  sum,
  topk,
  type VOnlyRows,
} from "./ops.js";
export * as reference from "./reference.js";
