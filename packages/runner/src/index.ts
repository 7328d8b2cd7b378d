export { assetsDir, resolveModelDir } from "./assets.js";
export {
  ASSISTANT_ROWS_MAX_FLOATS,
  AssistantMismatchError,
  AssistantState,
  AssistedModel,
  type StepModel,
} from "./assisted.js";
export { type Checkpoint, isGguf, openCheckpoint } from "./checkpoint.js";
export {
  type Architecture,
  type ModelConfig,
  parseConfig,
  readConfig,
  SUPPORTED_ARCHITECTURES,
} from "./config.js";
export { devicePath } from "./device/batch.js";
export { bf16ToF32, type DType, f16ToF32, f32ToBf16, f32ToF16 } from "./dtype.js";
export {
  CheckpointError,
  type CheckpointErrorCode,
  ContextLengthError,
  InvalidOptionError,
  PolicyError,
} from "./errors.js";
export { DecoderState, FusedDecoder } from "./fused-decoder.js";
export {
  type FinishReason,
  type GenerateOptions,
  type GenerationResult,
  type GenerationStream,
  Generator,
  generateBatch,
  type TokenEvent,
} from "./generate.js";
export { GgufFile, type GgufTensor } from "./gguf/file.js";
export { dequantizeRows, GGML, toMatMulNBits } from "./gguf/ggml-types.js";
export { type GgufWriteType, quantizeRows, writeGguf } from "./gguf/write.js";
export { KV_STORE_TYPES, KvCache, type KvRows, type KvStoreType } from "./kv-cache.js";
export {
  type HotRowsMode,
  type LoadOptions,
  Model,
  ONE_THREAD_MAX_PARAMETERS,
  type StepInput,
  type StepOutput,
} from "./model.js";
export {
  type DraftDecoder,
  type DraftState,
  NATIVE_DRAFT_MAX_PARAMETERS,
  NativeDecoder,
} from "./native-decoder.js";
export {
  type AttentionObservation,
  type AttentionRequest,
  type DevicePolicyForm,
  type DeviceRankPlan,
  fullCache,
  type KvPolicyHook,
  type LayerSelection,
  passive,
  type SequenceOptions,
  type StepInfo,
} from "./policy-hook.js";
export { PrefixCache, type PrefixCacheOptions, type PrefixCacheStats, policyScope } from "./prefix-cache.js";
export {
  dequantize,
  type QuantizedMatrix,
  quantize,
  quantizedBytes,
  WEIGHT_TYPES,
  type WeightType,
} from "./quant.js";
export {
  readSafetensorsHeader,
  SafetensorsStore,
  type TensorInfo,
  writeSafetensors,
  writeShardedSafetensors,
} from "./safetensors.js";
export { argmax, logSoftmax, Sampler, type SamplingOptions, seededRandom } from "./sampler.js";
export { type KvStats, policyHasState, Sequence, type SequenceSnapshot } from "./sequence.js";
export { readSmallTextFile } from "./small-file.js";
export {
  checkSpeculative,
  DraftTuner,
  expectedTokens,
  MAX_DRAFT,
  predictedSpeedup,
  type SpeculativeOptions,
  type SpeculativeStats,
  speculativeStats,
  verifyDraft,
} from "./speculative.js";
export { type SyntheticModelOptions, writeRandomTwin, writeSyntheticCheckpoint } from "./synthetic.js";
export { TEXT_CONTEXT_TOKENS, TextStream } from "./text-stream.js";
export { TextTokenizer } from "./tokenizer.js";
export { type LayerWeights, loadWeights, type ModelWeights } from "./weights.js";
