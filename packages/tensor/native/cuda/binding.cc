// N-API surface of the device backend, shared by the CUDA addon (smallkv_cuda.node) and the
// emulator addon (smallkv_cuda_emu.node). Addresses cross as JS numbers (x86-64 addresses
// fit in 53 bits); shapes are checked in TypeScript (src/device.ts) and errors carry a code.
#include <napi.h>

#include <cstdint>
#include <string>

#include "dev_api.h"

namespace {

const char* code_name(int rc) {
  switch (rc) {
    case SKV_ENODEV: return "ENODEV";
    case SKV_EOOM: return "EOOM";
    case SKV_EARG: return "EARG";
    default: return "EKERNEL";
  }
}

bool check(Napi::Env env, int rc) {
  if (rc == SKV_OK) return true;
  Napi::Error e = Napi::Error::New(env, skv_dev_last_error());
  e.Set("code", Napi::String::New(env, code_name(rc)));
  e.ThrowAsJavaScriptException();
  return false;
}

template <class T = void>
T* ptr(const Napi::Value& v) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  return reinterpret_cast<T*>(static_cast<uintptr_t>(v.As<Napi::Number>().Int64Value()));
}
int i32(const Napi::Value& v) { return v.As<Napi::Number>().Int32Value(); }
int64_t i64(const Napi::Value& v) { return v.As<Napi::Number>().Int64Value(); }
float f32(const Napi::Value& v) { return v.As<Napi::Number>().FloatValue(); }
Napi::Number addr(Napi::Env env, const void* p) {
  return Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(p)));
}
// (data pointer, byte length) of a TypedArray argument.
std::pair<uint8_t*, size_t> bytes_of(const Napi::Value& v) {
  auto ta = v.As<Napi::TypedArray>();
  auto ab = ta.ArrayBuffer();
  return {static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset(), ta.ByteLength()};
}

#define ARGS(n)                                                                     \
  Napi::Env env = info.Env();                                                       \
  if (info.Length() < (n)) {                                                        \
    Napi::TypeError::New(env, "expected " #n " arguments").ThrowAsJavaScriptException(); \
    return env.Undefined();                                                         \
  }

Napi::Value Open(const Napi::CallbackInfo& info) {
  ARGS(1);
  char buf[512];
  if (!check(env, skv_dev_open(i32(info[0]), buf, sizeof buf))) return env.Undefined();
  return Napi::String::New(env, buf);
}

Napi::Value MemInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t f = 0, t = 0;
  if (!check(env, skv_dev_mem_info(&f, &t))) return env.Undefined();
  Napi::Object o = Napi::Object::New(env);
  o.Set("free", static_cast<double>(f));
  o.Set("total", static_cast<double>(t));
  return o;
}

Napi::Value Malloc(const Napi::CallbackInfo& info) {
  ARGS(1);
  void* p = nullptr;
  if (!check(env, skv_dev_malloc(&p, static_cast<size_t>(i64(info[0]))))) return env.Undefined();
  return addr(env, p);
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  ARGS(1);
  check(env, skv_dev_free(ptr(info[0])));
  return env.Undefined();
}

// Pinned host memory: returns [ArrayBuffer viewing it, host address, device address]. The
// ArrayBuffer does not own the memory: the caller frees it with hostFree and drops the views.
Napi::Value HostAlloc(const Napi::CallbackInfo& info) {
  ARGS(1);
  const size_t n = static_cast<size_t>(i64(info[0]));
  void *h = nullptr, *d = nullptr;
  if (!check(env, skv_dev_host_alloc(&h, &d, n))) return env.Undefined();
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, Napi::ArrayBuffer::New(env, h, n));
  out.Set(1u, addr(env, h));
  out.Set(2u, addr(env, d));
  return out;
}

Napi::Value HostFree(const Napi::CallbackInfo& info) {
  ARGS(1);
  check(env, skv_dev_host_free(ptr(info[0])));
  return env.Undefined();
}

Napi::Value Upload(const Napi::CallbackInfo& info) {
  ARGS(2);
  auto [p, n] = bytes_of(info[1]);
  check(env, skv_dev_upload(ptr(info[0]), p, n));
  return env.Undefined();
}

Napi::Value Download(const Napi::CallbackInfo& info) {
  ARGS(2);
  auto [p, n] = bytes_of(info[0]);
  check(env, skv_dev_download(p, ptr(info[1]), n));
  return env.Undefined();
}

Napi::Value Memset(const Napi::CallbackInfo& info) {
  ARGS(4);
  check(env, skv_dev_memset(ptr(info[0]), i32(info[1]), static_cast<size_t>(i64(info[2])), i32(info[3])));
  return env.Undefined();
}

Napi::Value Copy(const Napi::CallbackInfo& info) {
  ARGS(4);
  check(env, skv_dev_copy(ptr(info[0]), ptr(info[1]), static_cast<size_t>(i64(info[2])), i32(info[3])));
  return env.Undefined();
}

Napi::Value Sync(const Napi::CallbackInfo& info) {
  ARGS(1);
  check(env, skv_dev_sync(i32(info[0])));
  return env.Undefined();
}

Napi::Value StreamWait(const Napi::CallbackInfo& info) {
  ARGS(2);
  check(env, skv_dev_stream_wait(i32(info[0]), i32(info[1])));
  return env.Undefined();
}

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  ARGS(7);
  check(env, skv_k_embedding(ptr<float>(info[0]), ptr(info[1]), i32(info[2]), ptr<int32_t>(info[3]), i32(info[4]),
                             i32(info[5]), i32(info[6])));
  return env.Undefined();
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  ARGS(7);
  check(env, skv_k_rmsnorm(ptr<float>(info[0]), ptr<float>(info[1]), ptr<float>(info[2]), i32(info[3]), i32(info[4]),
                           f32(info[5]), i32(info[6])));
  return env.Undefined();
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  ARGS(10);
  check(env, skv_k_gemm(ptr<float>(info[0]), ptr<float>(info[1]), ptr(info[2]), i32(info[3]), ptr<float>(info[4]),
                        i32(info[5]), i32(info[6]), i32(info[7]), i32(info[8]), i32(info[9])));
  return env.Undefined();
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  ARGS(11);
  check(env, skv_k_rope(ptr<float>(info[0]), ptr<int32_t>(info[1]), i32(info[2]), i32(info[3]), i32(info[4]),
                        f32(info[5]), ptr<float>(info[6]), f32(info[7]), ptr<float>(info[8]), i32(info[9]),
                        i32(info[10])));
  return env.Undefined();
}

Napi::Value SiluGate(const Napi::CallbackInfo& info) {
  ARGS(5);
  check(env, skv_k_silu_gate(ptr<float>(info[0]), ptr<float>(info[1]), ptr<float>(info[2]), i64(info[3]), i32(info[4])));
  return env.Undefined();
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  ARGS(4);
  check(env, skv_k_add(ptr<float>(info[0]), ptr<float>(info[1]), i64(info[2]), i32(info[3])));
  return env.Undefined();
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  ARGS(23);
  check(env, skv_k_attention(ptr<float>(info[0]), ptr<float>(info[1]), ptr<float>(info[2]), i32(info[3]), i32(info[4]),
                             ptr<int32_t>(info[5]), i32(info[6]), i32(info[7]), i32(info[8]), i32(info[9]),
                             f32(info[10]), ptr<float>(info[11]), i32(info[12]), ptr<int32_t>(info[13]), i32(info[14]),
                             ptr<float>(info[15]), i32(info[16]), ptr<float>(info[17]), ptr<float>(info[18]),
                             ptr<float>(info[19]), i32(info[20]), i32(info[21]), i32(info[22])));
  return env.Undefined();
}

Napi::Value KvWrite(const Napi::CallbackInfo& info) {
  ARGS(8);
  check(env, skv_k_kv_write(ptr<float>(info[0]), i32(info[1]), i32(info[2]), i32(info[3]), ptr<float>(info[4]),
                            i32(info[5]), ptr<int32_t>(info[6]), i32(info[7])));
  return env.Undefined();
}

Napi::Value KvMove(const Napi::CallbackInfo& info) {
  ARGS(10);
  check(env, skv_k_kv_move(ptr<float>(info[0]), i32(info[1]), ptr<float>(info[2]), i32(info[3]), i32(info[4]),
                           ptr<int32_t>(info[5]), i32(info[6]), ptr<float>(info[7]), ptr<float>(info[8]),
                           i32(info[9])));
  return env.Undefined();
}

Napi::Value Gemv(const Napi::CallbackInfo& info) {
  ARGS(18);
  check(env, skv_k_gemv(ptr<float>(info[0]), ptr<float>(info[1]), ptr<float>(info[2]), i32(info[3]), i32(info[4]),
                        ptr<float>(info[5]), ptr(info[6]), ptr(info[7]), i32(info[8]), ptr<float>(info[9]),
                        ptr<float>(info[10]), ptr<float>(info[11]), f32(info[12]), i32(info[13]), i32(info[14]),
                        i32(info[15]), i32(info[16]), i32(info[17])));
  return env.Undefined();
}

Napi::Value RopeAppend(const Napi::CallbackInfo& info) {
  ARGS(18);
  check(env, skv_k_rope_append(ptr<float>(info[0]), ptr<float>(info[1]), ptr<float>(info[2]), ptr<int32_t>(info[3]),
                               i32(info[4]), i32(info[5]), i32(info[6]), i32(info[7]), f32(info[8]), ptr<float>(info[9]),
                               f32(info[10]), ptr<int64_t>(info[11]), ptr<int64_t>(info[12]), ptr<int32_t>(info[13]),
                               ptr<int32_t>(info[14]), ptr<int32_t>(info[15]), i32(info[16]), i32(info[17])));
  return env.Undefined();
}

Napi::Value Argmax(const Napi::CallbackInfo& info) {
  ARGS(5);
  check(env, skv_k_argmax(ptr<int32_t>(info[0]), ptr<float>(info[1]), i32(info[2]), i32(info[3]), i32(info[4])));
  return env.Undefined();
}

Napi::Value Sample(const Napi::CallbackInfo& info) {
  ARGS(6);
  check(env, skv_k_sample(ptr<int32_t>(info[0]), ptr<float>(info[1]), ptr<SkvSample>(info[2]), i32(info[3]),
                          i32(info[4]), i32(info[5])));
  return env.Undefined();
}

Napi::Value AttentionBatch(const Napi::CallbackInfo& info) {
  ARGS(16);
  check(env, skv_k_attention_batch(ptr<SkvAttnSeq>(info[0]), i32(info[1]), i32(info[2]), i32(info[3]), i32(info[4]),
                                   i32(info[5]), i32(info[6]), f32(info[7]), i32(info[8]), ptr<float>(info[9]),
                                   ptr<float>(info[10]), ptr<float>(info[11]), i32(info[12]), ptr<float>(info[13]),
                                   i32(info[14]), i32(info[15])));
  return env.Undefined();
}

Napi::Value AttentionProbs(const Napi::CallbackInfo& info) {
  ARGS(13);
  check(env, skv_k_attention_probs(ptr<SkvAttnSeq>(info[0]), ptr<SkvProbOut>(info[1]), i32(info[2]), i32(info[3]),
                                   i32(info[4]), i32(info[5]), i32(info[6]), f32(info[7]), i32(info[8]),
                                   ptr<float>(info[9]), ptr<float>(info[10]), i32(info[11]), i32(info[12])));
  return env.Undefined();
}

Napi::Value RankSelect(const Napi::CallbackInfo& info) {
  ARGS(4);
  check(env, skv_k_rank_select(ptr<SkvRankList>(info[0]), i32(info[1]), i32(info[2]), i32(info[3])));
  return env.Undefined();
}

Napi::Value AttentionPartFloats(const Napi::CallbackInfo& info) {
  ARGS(5);
  return Napi::Number::New(env, static_cast<double>(skv_attn_part_floats(i32(info[0]), i32(info[1]), i32(info[2]),
                                                                         i32(info[3]), i32(info[4]), 0)));
}

Napi::Value KvAppend(const Napi::CallbackInfo& info) {
  ARGS(12);
  check(env, skv_k_kv_append(ptr<int64_t>(info[0]), ptr<int64_t>(info[1]), ptr<int32_t>(info[2]),
                             ptr<int32_t>(info[3]), ptr<int32_t>(info[4]), ptr<float>(info[5]), ptr<float>(info[6]),
                             i32(info[7]), i32(info[8]), i32(info[9]), i32(info[10]), i32(info[11])));
  return env.Undefined();
}

Napi::Value CaptureBegin(const Napi::CallbackInfo& info) {
  ARGS(1);
  check(env, skv_dev_capture_begin(i32(info[0])));
  return env.Undefined();
}

Napi::Value CaptureEnd(const Napi::CallbackInfo& info) {
  ARGS(1);
  void* g = nullptr;
  if (!check(env, skv_dev_capture_end(i32(info[0]), &g))) return env.Undefined();
  return addr(env, g);
}

Napi::Value GraphLaunch(const Napi::CallbackInfo& info) {
  ARGS(2);
  check(env, skv_dev_graph_launch(ptr(info[0]), i32(info[1])));
  return env.Undefined();
}

Napi::Value GraphFree(const Napi::CallbackInfo& info) {
  ARGS(1);
  check(env, skv_dev_graph_free(ptr(info[0])));
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
#define EXPORT(name, fn) exports.Set(name, Napi::Function::New(env, fn, name))
  EXPORT("open", Open);
  EXPORT("memInfo", MemInfo);
  EXPORT("malloc", Malloc);
  EXPORT("free", Free);
  EXPORT("hostAlloc", HostAlloc);
  EXPORT("hostFree", HostFree);
  EXPORT("upload", Upload);
  EXPORT("download", Download);
  EXPORT("memset", Memset);
  EXPORT("copy", Copy);
  EXPORT("sync", Sync);
  EXPORT("streamWait", StreamWait);
  EXPORT("embedding", Embedding);
  EXPORT("rmsnorm", RmsNorm);
  EXPORT("gemm", Gemm);
  EXPORT("rope", Rope);
  EXPORT("siluGate", SiluGate);
  EXPORT("add", Add);
  EXPORT("attention", Attention);
  EXPORT("kvWrite", KvWrite);
  EXPORT("kvMove", KvMove);
  EXPORT("gemv", Gemv);
  EXPORT("argmax", Argmax);
  EXPORT("sample", Sample);
  EXPORT("ropeAppend", RopeAppend);
  EXPORT("attentionBatch", AttentionBatch);
  EXPORT("attentionPartFloats", AttentionPartFloats);
  EXPORT("attentionProbs", AttentionProbs);
  EXPORT("rankSelect", RankSelect);
  EXPORT("kvAppend", KvAppend);
  EXPORT("captureBegin", CaptureBegin);
  EXPORT("captureEnd", CaptureEnd);
  EXPORT("graphLaunch", GraphLaunch);
  EXPORT("graphFree", GraphFree);
#undef EXPORT
#ifdef SKV_EMU
  exports.Set("emulated", Napi::Boolean::New(env, true));
#else
  exports.Set("emulated", Napi::Boolean::New(env, false));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
