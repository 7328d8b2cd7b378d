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
  rope,
  setThreads,
  sum,
  topk,
} from "./ops.js";
export * as reference from "./reference.js";
