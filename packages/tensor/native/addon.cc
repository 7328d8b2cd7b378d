// N-API bindings. Every argument is checked here as well as in TypeScript: a wrong
// call must raise a JS exception, never touch memory out of bounds.
#include <napi.h>
#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_api.h"
#include "kernels.h"

namespace {

// The arguments of one call, or of one job of a batched call (a JS array of the same list).
struct Args {
  Napi::Env env;
  const Napi::CallbackInfo* call = nullptr;
  Napi::Array list;
  bool failed = false;
  std::string prefix;

  // A list's elements are read once: each napi_get_element costs about as much as a short
  // attention's arithmetic, and an argument is looked at several times.
  std::vector<Napi::Value> items;

  explicit Args(const Napi::CallbackInfo& info) : env(info.Env()), call(&info) {}
  Args(Napi::Env e, Napi::Array l, std::string p) : env(e), list(l), prefix(std::move(p)) {
    const uint32_t n = l.Length();
    items.reserve(n);
    for (uint32_t i = 0; i < n; ++i) items.push_back(l.Get(i));
  }

  Napi::Value at(size_t i) const {
    if (call) return (*call)[i];
    return i < items.size() ? items[i] : env.Undefined();
  }
  size_t length() const { return call ? call->Length() : items.size(); }

  void fail(const std::string& msg) {
    if (!failed) Napi::RangeError::New(env, prefix + msg).ThrowAsJavaScriptException();
    failed = true;
  }

  template <typename T, napi_typedarray_type Type>
  T* array(size_t i, const char* name, size_t minLen, bool optional = false) {
    if (failed) return nullptr;
    // Raw N-API calls: three per argument (the wrappers make several more each).
    napi_value v = at(i);
    napi_valuetype vt;
    napi_typeof(env, v, &vt);
    if (optional && (vt == napi_null || vt == napi_undefined)) return nullptr;
    bool typed = false;
    napi_is_typedarray(env, v, &typed);
    napi_typedarray_type type = napi_int8_array;
    size_t len = 0;
    void* data = nullptr;
    if (typed) napi_get_typedarray_info(env, v, &type, &len, &data, nullptr, nullptr);
    if (!typed || type != Type) {
      fail(std::string(name) + ": expected a " + (Type == napi_float32_array ? "Float32Array" : "Int32Array"));
      return nullptr;
    }
    if (len < minLen) {
      fail(std::string(name) + ": length " + std::to_string(len) + " < required " + std::to_string(minLen));
      return nullptr;
    }
    return static_cast<T*>(data);
  }
  float* f32(size_t i, const char* name, size_t minLen, bool optional = false) {
    return array<float, napi_float32_array>(i, name, minLen, optional);
  }
  int32_t* i32(size_t i, const char* name, size_t minLen, bool optional = false) {
    return array<int32_t, napi_int32_array>(i, name, minLen, optional);
  }
  int integer(size_t i, const char* name, int min = 0) {
    if (failed) return 0;
    int32_t v = 0;
    if (napi_get_value_int32(env, at(i), &v) != napi_ok) {
      fail(std::string(name) + ": expected a number");
      return 0;
    }
    if (v < min) fail(std::string(name) + ": " + std::to_string(v) + " < " + std::to_string(min));
    return v;
  }
  double number(size_t i, const char* name) {
    if (failed) return 0;
    double v = 0;
    if (napi_get_value_double(env, at(i), &v) != napi_ok) {
      fail(std::string(name) + ": expected a number");
      return 0;
    }
    return v;
  }
};

// rope(x, pos, T, H, D, theta, invFreq|null, scale)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  Args a{info};
  const int T = a.integer(2, "T"), H = a.integer(3, "H", 1), D = a.integer(4, "D", 2);
  const double theta = a.number(5, "theta");
  if (!a.failed && D % 2 != 0) a.fail("D must be even");
  float* x = a.f32(0, "x", size_t(T) * H * D);
  int32_t* pos = a.i32(1, "pos", T);
  const float* inv = info.Length() > 6 ? a.f32(6, "invFreq", size_t(D / 2), true) : nullptr;
  const double scale = info.Length() > 7 ? a.number(7, "scale") : 1.0;
  if (a.failed) return info.Env().Undefined();
  skv::rope_f32(x, pos, T, H, D, theta, inv, scale);
  return info.Env().Undefined();
}

// attention(q, k, v, cap, T, past, Hq, Hkv, D, scale, out, probs|null, scores|null, scoreStart,
//           vo|null, vcap, nV|null, w|null, mode, window)
// Parses and checks one attention's argument list into a job (false: a JS exception is set).
// An index list: off[0..lists] non-decreasing from 0, within idx, counts equal to `counts`
// (when given), every slot in [0, limit).
const int32_t* IndexList(Args& a, size_t iIdx, size_t iOff, const char* name, int lists, const int32_t* counts,
                         int limit, const int32_t** offOut) {
  if (a.failed) return nullptr;
  const int32_t* off = a.i32(iOff, (std::string(name) + " offsets").c_str(), size_t(lists) + 1);
  const int32_t* idx = a.i32(iIdx, name, 0);
  if (a.failed) return nullptr;
  const size_t len = a.at(iIdx).As<Napi::Int32Array>().ElementLength();
  if (off[0] != 0) a.fail(std::string(name) + " offsets must start at 0");
  for (int g = 0; g < lists && !a.failed; ++g) {
    if (off[g + 1] < off[g] || size_t(off[g + 1]) > len) a.fail(std::string(name) + " offsets out of order or range");
    else if (counts != nullptr && off[g + 1] - off[g] != counts[g])
      a.fail(std::string(name) + ": list " + std::to_string(g) + " length differs from its count");
  }
  for (int32_t j = 0; j < (a.failed ? 0 : off[lists]); ++j)
    if (idx[j] < 0 || idx[j] >= limit) {
      a.fail(std::string(name) + ": slot " + std::to_string(idx[j]) + " outside the store");
      break;
    }
  *offOut = off;
  return idx;
}

// Parses and checks one attention's argument list into a job (false: a JS exception is set).
// Arguments 20..25 (optional): idx, off, newAt, vidx, voff, storeHeads of an indexed job.
bool ParseAttention(Args& a, skv::AttentionJob& job) {
  const int cap = a.integer(3, "cap"), T = a.integer(4, "T", 1), Hq = a.integer(6, "Hq", 1),
            Hkv = a.integer(7, "Hkv", 1), D = a.integer(8, "D", 1);
  const double scale = a.number(9, "scale");
  const int scoreStart = a.integer(13, "scoreStart");
  if (!a.failed && Hq % Hkv != 0) a.fail("Hq must be a multiple of Hkv");
  const bool indexed = a.length() > 20 && !a.at(20).IsNull() && !a.at(20).IsUndefined();
  const int storeHeads = indexed ? a.integer(25, "storeHeads", 1) : Hkv;
  if (!a.failed && indexed && Hkv % storeHeads != 0) a.fail("lists must be a multiple of the store's kv heads");
  int32_t* past = a.i32(5, "past", Hkv);
  int maxPast = 0;
  if (!a.failed) {
    for (int g = 0; g < Hkv; ++g) {
      if (past[g] < 0 || past[g] + T > cap) a.fail("past[" + std::to_string(g) + "] + T exceeds the store capacity");
      maxPast = past[g] > maxPast ? past[g] : maxPast;
    }
  }
  const size_t Lmax = size_t(maxPast) + T;
  const float* q = a.f32(0, "q", size_t(T) * Hq * D);
  // An int8 store (arguments 26..29: k8, v8, kScale, vScale) replaces the float k/v.
  const bool q8 = a.length() > 26 && !a.at(26).IsNull() && !a.at(26).IsUndefined();
  const size_t storeLen = size_t(storeHeads) * cap * D;
  const float* k = a.f32(1, "k", q8 ? 0 : storeLen);
  const float* v = a.f32(2, "v", q8 ? 0 : storeLen);
  const int8_t *k8 = nullptr, *v8 = nullptr;
  const float *kS = nullptr, *vS = nullptr;
  if (q8 && !a.failed) {
    auto i8 = [&](size_t i, const char* name) -> const int8_t* {
      if (!a.at(i).IsTypedArray() || a.at(i).As<Napi::TypedArray>().TypedArrayType() != napi_int8_array) {
        a.fail(std::string(name) + ": expected an Int8Array");
        return nullptr;
      }
      auto t = a.at(i).As<Napi::Int8Array>();
      if (t.ElementLength() < storeLen) a.fail(std::string(name) + ": shorter than the store");
      return t.Data();
    };
    k8 = i8(26, "k8");
    v8 = i8(27, "v8");
    kS = a.f32(28, "kScale", size_t(storeHeads) * cap);
    vS = a.f32(29, "vScale", size_t(storeHeads) * cap);
    if (!a.failed && !indexed && storeHeads != Hkv) a.fail("an int8 store needs one list per kv head");
  }
  float* out = a.f32(10, "out", size_t(T) * Hq * D);
  float* probs = a.f32(11, "probs", size_t(Hq) * T * Lmax, true);
  float* scores = a.f32(12, "scores", size_t(Hq) * Lmax, true);
  const int vcap = a.integer(15, "vcap");
  const int mode = a.integer(18, "mode");
  if (!a.failed && mode > 1) a.fail("mode must be 0 (literal) or 1 (mass)");
  const float* vo = q8 ? nullptr : a.f32(14, "vo", size_t(indexed ? storeHeads : Hkv) * vcap * D, true);
  // With an int8 store, V-only rows (indexed only) come from v8: their counts say they are there.
  const bool hasVOnly = vo != nullptr || (q8 && indexed && a.length() > 23 && !a.at(23).IsNull() && !a.at(23).IsUndefined());
  const int32_t* nV = nullptr;
  const float* w = nullptr;
  if (hasVOnly && !a.failed) {
    nV = a.i32(16, "nV", Hkv);
    int vmax = 0;
    for (int g = 0; g < Hkv && !a.failed; ++g) {
      if (nV[g] < 0 || nV[g] > vcap) a.fail("nV[" + std::to_string(g) + "] outside [0, vcap]");
      vmax = nV[g] > vmax ? nV[g] : vmax;
    }
    w = a.f32(17, "w", size_t(Hq) * T * vmax);
  }
  const int window = a.length() > 19 ? a.integer(19, "window") : 0;
  const int32_t *idx = nullptr, *off = nullptr, *vidx = nullptr, *voff = nullptr;
  int newAt = 0;
  if (indexed && !a.failed) {
    newAt = a.integer(22, "newAt");
    if (!a.failed && newAt + T > cap) a.fail("newAt + T exceeds the store capacity");
    if (!a.failed && window != 0) a.fail("an indexed attention has no window (its lists are the selection)");
    idx = IndexList(a, 20, 21, "idx", Hkv, past, newAt, &off);
    if (hasVOnly && !a.failed) {
      if (vcap != cap) a.fail("indexed V-only rows come from the store (vcap = cap)");
      vidx = IndexList(a, 23, 24, "vidx", Hkv, nV, newAt, &voff);
    }
  }
  if (a.failed) return false;
  job = skv::AttentionJob{q,   k,   v,  cap, T,    past,  Hq,     Hkv,        D,     static_cast<float>(scale),
                          vo,  vcap, nV, w,   mode, out,   probs,  scores,     scoreStart, window};
  job.idx = idx;
  job.off = off;
  job.newAt = newAt;
  job.vidx = vidx;
  job.voff = voff;
  job.storeHeads = storeHeads;
  job.k8 = k8;
  job.v8 = v8;
  job.kS = kS;
  job.vS = vS;
  return true;
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Args a{info};
  skv::AttentionJob job{};
  if (!ParseAttention(a, job)) return info.Env().Undefined();
  skv::attention_batch_f32(&job, 1);
  return info.Env().Undefined();
}

// attentionBatch([args of attention, ...]): every job in one parallel region.
Napi::Value AttentionBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "attentionBatch: expected an array of argument lists").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array jobs = info[0].As<Napi::Array>();
  std::vector<skv::AttentionJob> parsed(jobs.Length());
  for (uint32_t j = 0; j < jobs.Length(); ++j) {
    Napi::Value item = jobs.Get(j);
    if (!item.IsArray()) {
      Napi::TypeError::New(env, "attentionBatch: job " + std::to_string(j) + " is not an argument list")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Args a{env, item.As<Napi::Array>(), "job " + std::to_string(j) + ": "};
    if (!ParseAttention(a, parsed[j])) return env.Undefined();
  }
  skv::attention_batch_f32(parsed.data(), static_cast<int>(parsed.size()));
  return env.Undefined();
}

// kvWrite(store, cap, Hkv, D, src, T, dst)
Napi::Value KvWrite(const Napi::CallbackInfo& info) {
  Args a{info};
  const int cap = a.integer(1, "cap"), Hkv = a.integer(2, "Hkv", 1), D = a.integer(3, "D", 1), T = a.integer(5, "T");
  float* store = a.f32(0, "store", size_t(Hkv) * cap * D);
  const float* src = a.f32(4, "src", size_t(T) * Hkv * D);
  const int32_t* dst = a.i32(6, "dst", T);
  if (!a.failed) {
    for (int t = 0; t < T; ++t)
      if (dst[t] < 0 || dst[t] >= cap) a.fail("dst[" + std::to_string(t) + "] out of range");
  }
  if (a.failed) return info.Env().Undefined();
  skv::kv_write_f32(store, cap, Hkv, D, src, T, dst);
  return info.Env().Undefined();
}

// kvGather(src, scap, dst, dcap, Hkv, D, idx, off, dstStart)
Napi::Value KvGather(const Napi::CallbackInfo& info) {
  Args a{info};
  const int scap = a.integer(1, "scap"), dcap = a.integer(3, "dcap"), Hkv = a.integer(4, "Hkv", 1),
            D = a.integer(5, "D", 1);
  const float* src = a.f32(0, "src", size_t(Hkv) * scap * D);
  float* dst = a.f32(2, "dst", size_t(Hkv) * dcap * D);
  const int32_t* off = a.i32(7, "off", Hkv + 1);
  const int32_t* start = a.i32(8, "dstStart", Hkv);
  const int32_t* idx = a.i32(6, "idx", a.failed ? 0 : (off[Hkv] < 0 ? 0 : off[Hkv]));
  if (!a.failed) {
    if (off[0] != 0) a.fail("off[0] must be 0");
    for (int g = 0; g < Hkv && !a.failed; ++g) {
      if (off[g + 1] < off[g]) a.fail("off must be non-decreasing");
      else if (start[g] < 0 || start[g] + (off[g + 1] - off[g]) > dcap) a.fail("gathered rows exceed dst capacity");
      for (int i = off[g]; i < off[g + 1] && !a.failed; ++i)
        if (idx[i] < 0 || idx[i] >= scap) a.fail("idx[" + std::to_string(i) + "] out of range");
    }
  }
  if (a.failed) return info.Env().Undefined();
  skv::kv_gather_f32(src, scap, dst, dcap, Hkv, D, idx, off, start);
  return info.Env().Undefined();
}

// kvWriteQ8(store: Int8Array, scales, cap, Hkv, D, src, T, dst)
Napi::Value KvWriteQ8(const Napi::CallbackInfo& info) {
  Args a{info};
  const int cap = a.integer(2, "cap"), Hkv = a.integer(3, "Hkv", 1), D = a.integer(4, "D", 1), T = a.integer(6, "T");
  if (a.failed) return info.Env().Undefined();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int8_array) {
    a.fail("store: expected an Int8Array");
    return info.Env().Undefined();
  }
  auto st = info[0].As<Napi::Int8Array>();
  if (st.ElementLength() < size_t(Hkv) * cap * D) a.fail("store: shorter than Hkv*cap*D");
  float* scales = a.f32(1, "scales", size_t(Hkv) * cap);
  const float* src = a.f32(5, "src", size_t(T) * Hkv * D);
  const int32_t* dst = a.i32(7, "dst", T);
  for (int t = 0; t < T && !a.failed; ++t)
    if (dst[t] < 0 || dst[t] >= cap) a.fail("dst[" + std::to_string(t) + "] outside [0, cap)");
  if (a.failed) return info.Env().Undefined();
  skv::kv_write_q8(st.Data(), scales, cap, Hkv, D, src, T, dst);
  return info.Env().Undefined();
}

// topk(x, rows, n, k, out)
Napi::Value TopK(const Napi::CallbackInfo& info) {
  Args a{info};
  const int rows = a.integer(1, "rows"), n = a.integer(2, "n"), k = a.integer(3, "k");
  if (!a.failed && k > n) a.fail("k > n");
  const float* x = a.f32(0, "x", size_t(rows) * n);
  int32_t* out = a.i32(4, "out", size_t(rows) * k);
  if (a.failed) return info.Env().Undefined();
  skv::topk_f32(x, rows, n, k, out);
  return info.Env().Undefined();
}

// topPositions(scores: Float32Array|Float64Array, n, k, exclude: Uint8Array|null, out: Int32Array, byScore) -> count
Napi::Value TopPositions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a{info};
  const int n = a.integer(1, "n"), k = a.integer(2, "k");
  if (a.failed) return env.Undefined();
  const Napi::Value xs = info[0];
  const bool f64 = xs.IsTypedArray() && xs.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array;
  const double* x64 = nullptr;
  const float* x32 = nullptr;
  if (f64) {
    auto t = xs.As<Napi::Float64Array>();
    if (t.ElementLength() < size_t(n)) a.fail("scores: shorter than n");
    x64 = t.Data();
  } else {
    x32 = a.f32(0, "scores (Float32Array or Float64Array)", size_t(n));
  }
  const uint8_t* ex = nullptr;
  if (!a.failed && !info[3].IsNull() && !info[3].IsUndefined()) {
    if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      a.fail("exclude: expected a Uint8Array");
    else {
      auto m = info[3].As<Napi::Uint8Array>();
      if (m.ElementLength() < size_t(n)) a.fail("exclude: shorter than n");
      ex = m.Data();
    }
  }
  int32_t* out = a.i32(4, "out", size_t(std::min(n, k)));
  if (a.failed) return env.Undefined();
  const bool byScore = info.Length() > 5 && info[5].ToBoolean().Value();
  std::vector<uint64_t> work(n);
  const int m = f64 ? skv::top_positions_f64(x64, n, std::min(n, k), ex, out, work.data(), byScore)
                    : skv::top_positions_f32(x32, n, std::min(n, k), ex, out, work.data(), byScore);
  return Napi::Number::New(env, m);
}

// A typed array's data and length: false when v is not a typed array of type `type` (an
// empty one may have no data). A static empty buffer stands in for null data.
bool TypedData(napi_env env, napi_value v, napi_typedarray_type type, size_t* len, void** data) {
  static double empty[1] = {0};
  bool typed = false;
  napi_is_typedarray(env, v, &typed);
  if (!typed) return false;
  napi_typedarray_type t;
  *data = nullptr;
  napi_get_typedarray_info(env, v, &t, len, data, nullptr, nullptr);
  if (*data == nullptr) *data = empty;
  return t == type;
}
template <typename T>
const T* Typed(napi_env env, napi_value v, napi_typedarray_type type, size_t* len) {
  void* d = nullptr;
  return TypedData(env, v, type, len, &d) ? static_cast<const T*>(d) : nullptr;
}

// rankSplit(sources[], terms, weights, n, lists, assistantWeight|null, ownSums[]|null,
//           ownCounts[]|null, recent, exclude[]|null, adaptive, units|null, vOnly|null,
//           k|null, exact|null, exactShare, negligible, full, fullOff, vOnlyOut, vOff,
//           skipExcludedRecent?, evict?)
// One selection's arguments, read into `p` (its arrays of arrays kept there); false when one
// is bad (the exception is pending).
struct RankSplitParsed {
  skv::RankSplitArgs r;
  std::vector<const void*> src, sums, counts, excl;
  std::vector<size_t> srcLen, countLen;
  std::vector<uint8_t> srcF64;
  std::vector<int> countLenInt;
};

bool ParseRankSplit(Args& a, RankSplitParsed& p) {
  Napi::Env env = a.env;
  skv::RankSplitArgs& r = p.r;
  r.n = a.integer(3, "n");
  r.lists = a.integer(4, "lists", 1);
  r.recent = a.integer(8, "recent");
  if (a.failed) return false;
  const int n = r.n, L = r.lists;
  const auto isNull = [&](size_t i) { return a.at(i).IsNull() || a.at(i).IsUndefined(); };
  // Arrays of typed arrays: each element's data, checked to hold at least minLen values.
  const auto arrays = [&](size_t i, const char* name, napi_typedarray_type type, size_t count, size_t minLen,
                          std::vector<const void*>& out, std::vector<size_t>* lens, std::vector<uint8_t>* f64) {
    if (a.failed) return;
    if (!a.at(i).IsArray()) return a.fail(std::string(name) + ": expected an array");
    napi_value arr = a.at(i);
    uint32_t length = 0;
    napi_get_array_length(env, arr, &length);
    if (count != 0 && length != count)
      return a.fail(std::string(name) + ": expected " + std::to_string(count) + " arrays");
    for (uint32_t j = 0; j < length; ++j) {
      size_t len = 0;
      napi_value v = nullptr;
      napi_get_element(env, arr, j, &v);
      const void* d = Typed<void>(env, v, type, &len);
      bool wide = false;
      if (d == nullptr && f64 != nullptr) {
        d = Typed<void>(env, v, napi_float64_array, &len);
        wide = d != nullptr;
      }
      if (d == nullptr) return a.fail(std::string(name) + "[" + std::to_string(j) + "]: wrong array type");
      if (len < minLen) return a.fail(std::string(name) + "[" + std::to_string(j) + "]: too short");
      out.push_back(d);
      if (lens) lens->push_back(len);
      if (f64) f64->push_back(wide ? 1 : 0);
    }
  };
  std::vector<const void*>& src = p.src;
  std::vector<size_t>& srcLen = p.srcLen;
  std::vector<uint8_t>& srcF64 = p.srcF64;
  arrays(0, "sources", napi_float32_array, 0, 0, src, &srcLen, &srcF64);
  if (a.failed) return false;
  size_t termLen = 0, wLen = 0;
  const int32_t* terms = Typed<int32_t>(env, a.at(1), napi_int32_array, &termLen);
  const double* weights = Typed<double>(env, a.at(2), napi_float64_array, &wLen);
  if (terms == nullptr || weights == nullptr || termLen % 3 != 0 || wLen < termLen / 3)
    return a.fail("terms/weights: need [list, source, offset] triples and a Float64Array weight each"), false;
  r.nterms = static_cast<int>(termLen / 3);
  for (int t = 0; t < r.nterms; ++t) {
    const int g = terms[3 * t], s = terms[3 * t + 1], off = terms[3 * t + 2];
    if (g < 0 || g >= L || s < 0 || size_t(s) >= src.size() || off < 0 || size_t(off) + n > srcLen[s])
      return a.fail("term " + std::to_string(t) + ": list, source or offset out of range"), false;
  }
  r.src = src.data();
  r.srcF64 = srcF64.data();
  r.terms = terms;
  r.weights = weights;
  std::vector<const void*>&sums = p.sums, &counts = p.counts, &excl = p.excl;
  std::vector<size_t>& countLen = p.countLen;
  std::vector<int>& countLenInt = p.countLenInt;
  if (!isNull(5)) {
    size_t len = 0;
    r.assistantWeight = Typed<double>(env, a.at(5), napi_float64_array, &len);
    if (r.assistantWeight == nullptr || len < size_t(L))
      return a.fail("assistantWeight: expected a Float64Array per list"), false;
    arrays(6, "ownSums", napi_float64_array, L, n, sums, nullptr, nullptr);
    arrays(7, "ownCounts", napi_float64_array, L, 0, counts, &countLen, nullptr);
    for (size_t x : countLen) countLenInt.push_back(static_cast<int>(std::min<size_t>(x, size_t(n))));
    r.ownSums = reinterpret_cast<const double* const*>(sums.data());
    r.ownCounts = reinterpret_cast<const double* const*>(counts.data());
    r.ownCountLen = countLenInt.data();
    if (a.failed) return false;
  }
  if (!isNull(9)) {
    arrays(9, "exclude", napi_uint8_array, L, n, excl, nullptr, nullptr);
    r.exclude = reinterpret_cast<uint8_t* const*>(const_cast<void**>(excl.data()));
    r.skipExcludedRecent = a.length() > 21 && a.at(21).IsBoolean() && a.at(21).As<Napi::Boolean>().Value();
    r.evict = a.length() > 22 && a.at(22).IsBoolean() && a.at(22).As<Napi::Boolean>().Value();
    if (a.failed) return false;
  }
  bool adaptive = false;
  napi_get_value_bool(env, a.at(10), &adaptive);
  r.adaptive = adaptive;
  size_t len = 0;
  if (r.adaptive) {
    r.units = Typed<double>(env, a.at(11), napi_float64_array, &len);
    if (r.units == nullptr || len < size_t(L)) a.fail("units: expected a Float64Array per list");
    r.vOnly = Typed<uint8_t>(env, a.at(12), napi_uint8_array, &len);
    if (r.vOnly == nullptr || len < size_t(L)) a.fail("vOnly: expected a Uint8Array per list");
    for (int g = 0; g < L && !a.failed; ++g)
      if (!(r.units[g] >= 0 && r.units[g] <= 1e9)) a.fail("units: must be in [0, 1e9]");
  } else {
    r.k = a.i32(13, "k", L);
    r.exact = a.i32(14, "exact", L);
    for (int g = 0; g < L && !a.failed; ++g)
      if (r.k[g] < 0 || r.exact[g] < 0) a.fail("k and exact must be >= 0");
  }
  r.exactShare = a.number(15, "exactShare");
  r.negligible = a.number(16, "negligible");
  r.full = a.i32(17, "full", size_t(L) * n);
  r.fullOff = a.i32(18, "fullOff", size_t(L) + 1);
  r.vOnlyOut = a.i32(19, "vOnlyOut", size_t(L) * n);
  r.vOff = a.i32(20, "vOff", size_t(L) + 1);
  if (a.failed) return false;
  return true;
}

Napi::Value RankSplit(const Napi::CallbackInfo& info) {
  Args a{info};
  RankSplitParsed p;
  if (ParseRankSplit(a, p)) skv::rank_split(p.r);
  return info.Env().Undefined();
}

// rankSplitMany([args of rankSplit, ...]): several selections, one team of threads.
Napi::Value RankSplitMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "rankSplitMany: expected an array of argument lists").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array calls = info[0].As<Napi::Array>();
  const uint32_t count = calls.Length();
  std::vector<RankSplitParsed> parsed(count);
  std::vector<skv::RankSplitArgs> args(count);
  for (uint32_t c = 0; c < count; ++c) {
    Napi::Value v = calls.Get(c);
    if (!v.IsArray()) {
      Napi::TypeError::New(env, "rankSplitMany: call " + std::to_string(c) + " is not an argument list").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Args a(env, v.As<Napi::Array>(), "call " + std::to_string(c) + ": ");
    if (!ParseRankSplit(a, parsed[c])) return env.Undefined();
    args[c] = parsed[c].r;
  }
  skv::rank_split_many(args.data(), static_cast<int>(count));
  return env.Undefined();
}

// kvCopyRows(src: Float32Array|Int8Array, scales|null, srcHeads, scap, dst, dstHeads, dcap, D, moves, count)
Napi::Value KvCopyRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a{info};
  const int srcHeads = a.integer(2, "srcHeads", 1), scap = a.integer(3, "scap"), dstHeads = a.integer(5, "dstHeads", 1),
            dcap = a.integer(6, "dcap"), D = a.integer(7, "D", 1), count = a.integer(9, "count");
  if (a.failed) return env.Undefined();
  size_t len = 0;
  const size_t need = size_t(srcHeads) * scap * D;
  const float* src = Typed<float>(env, info[0], napi_float32_array, &len);
  const int8_t* src8 = nullptr;
  const float* scales = nullptr;
  if (src == nullptr) {
    src8 = Typed<int8_t>(env, info[0], napi_int8_array, &len);
    size_t slen = 0;
    scales = Typed<float>(env, info[1], napi_float32_array, &slen);
    if (src8 == nullptr || scales == nullptr || slen < size_t(srcHeads) * scap)
      return a.fail("src: expected a Float32Array, or an Int8Array with its Float32Array scales"), env.Undefined();
  }
  if (len < need) return a.fail("src: shorter than srcHeads * scap * D"), env.Undefined();
  float* dst = a.f32(4, "dst", size_t(dstHeads) * dcap * D);
  const int32_t* moves = a.i32(8, "moves", size_t(count) * 4);
  if (a.failed) return env.Undefined();
  for (int i = 0; i < count; ++i) {
    const int32_t* m = moves + 4 * i;
    if (m[0] < 0 || m[0] >= dstHeads || m[1] < 0 || m[1] >= dcap || m[2] < 0 || m[2] >= srcHeads || m[3] < 0 ||
        m[3] >= scap)
      return a.fail("move " + std::to_string(i) + " is outside the stores"), env.Undefined();
  }
  skv::kv_copy_rows(src, src8, scales, scap, dst, dcap, D, moves, count);
  return env.Undefined();
}

// topkRagged(x, rows, stride, lens, ks, off, out)
Napi::Value TopKRagged(const Napi::CallbackInfo& info) {
  Args a{info};
  const int rows = a.integer(1, "rows"), stride = a.integer(2, "stride");
  const float* x = a.f32(0, "x", size_t(rows) * stride);
  const int32_t* lens = a.i32(3, "lens", rows);
  const int32_t* ks = a.i32(4, "ks", rows);
  const int32_t* off = a.i32(5, "off", size_t(rows) + 1);
  int32_t* out = a.i32(6, "out", 0);
  if (a.failed) return info.Env().Undefined();
  const size_t outLen = info[6].As<Napi::Int32Array>().ElementLength();
  for (int r = 0; r < rows && !a.failed; ++r) {
    if (lens[r] < 0 || lens[r] > stride || ks[r] < 0 || ks[r] > lens[r]) a.fail("row " + std::to_string(r) + ": need 0 <= k <= len <= stride");
    else if (off[r] < 0 || off[r + 1] - off[r] != ks[r] || size_t(off[r + 1]) > outLen) a.fail("row " + std::to_string(r) + ": bad output offsets");
  }
  if (a.failed) return info.Env().Undefined();
  skv::topk_ragged_f32(x, rows, stride, lens, ks, off, out);
  return info.Env().Undefined();
}

// decoderStep(shape[11] Int32 (L, d, Hq, Hkv, D, I, V, qkvBias, oBias, mlpBias, qkNorm), eps,
//             weights, kv, cap, past, tokens, invFreq|null, theta, ropeScale, logits)
Napi::Value DecoderStep(const Napi::CallbackInfo& info) {
  Args a{info};
  const int32_t* sh = a.i32(0, "shape", 11);
  if (a.failed) return info.Env().Undefined();
  skv::DecoderShape s{sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], sh[6], 0.f, sh[7] != 0, sh[8] != 0, sh[9] != 0, sh[10] != 0};
  if (s.L < 1 || s.d < 1 || s.Hq < 1 || s.Hkv < 1 || s.D < 2 || s.D % 2 != 0 || s.I < 1 || s.V < 1 || s.Hq % s.Hkv != 0)
    a.fail("shape: need positive sizes, an even head dim and Hq a multiple of Hkv");
  s.eps = static_cast<float>(a.number(1, "eps"));
  const int cap = a.integer(4, "cap", 1), past = a.integer(5, "past", 0);
  const float* w = a.f32(2, "weights", a.failed ? 0 : size_t(skv::decoder_weight_floats(s)));
  float* kv = a.f32(3, "kv", a.failed ? 0 : size_t(s.L) * 2 * s.Hkv * cap * s.D);
  const int32_t* tokens = a.i32(6, "tokens", 1);
  const float* inv = a.f32(7, "invFreq", size_t(s.D / 2), true);
  const double theta = a.number(8, "theta"), ropeScale = a.number(9, "ropeScale");
  float* logits = a.f32(10, "logits", size_t(s.V));
  if (a.failed) return info.Env().Undefined();
  const int T = static_cast<int>(info[6].As<Napi::Int32Array>().ElementLength());
  if (past + T > cap) a.fail("past + tokens (" + std::to_string(past + T) + ") exceeds cap " + std::to_string(cap));
  for (int t = 0; t < T && !a.failed; ++t)
    if (tokens[t] < 0 || tokens[t] >= s.V) a.fail("token " + std::to_string(tokens[t]) + " is outside the vocabulary");
  if (a.failed) return info.Env().Undefined();
  skv::decoder_step_f32(s, w, kv, cap, past, tokens, T, inv, theta, ropeScale, logits);
  return info.Env().Undefined();
}

// attentionRowTops(probs, T, mode, off, out)
Napi::Value AttentionRowTops(const Napi::CallbackInfo& info) {
  Args a{info};
  const int T = a.integer(1, "T", 1), mode = a.integer(2, "mode");
  if (!a.failed && mode > 2) a.fail("mode must be 0, 1 or 2");
  const float* probs = a.f32(0, "probs", size_t(T) * T);
  const int32_t* off = a.i32(3, "off", size_t(T) + 1);
  int32_t* out = a.i32(4, "out", 0);
  if (a.failed) return info.Env().Undefined();
  const size_t outLen = info[4].As<Napi::Int32Array>().ElementLength();
  if (off[0] != 0 || off[1] != 0) a.fail("row 0 has no tops (off[0] = off[1] = 0)");
  for (int u = 1; u < T && !a.failed; ++u) {
    const int n = mode == 0 ? u + 1 : u, k = off[u + 1] - off[u];
    if (k < 0 || k > n || size_t(off[u + 1]) > outLen) a.fail("row " + std::to_string(u) + ": bad offsets");
  }
  if (a.failed) return info.Env().Undefined();
  skv::attention_row_tops(probs, T, mode, off, out);
  return info.Env().Undefined();
}

// scatterAdd(acc: Float64Array, pos: Int32Array, src: Float32Array, offset, rows, stride, weight)
Napi::Value ScatterAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a{info};
  size_t accLen = 0, posLen = 0, srcLen = 0;
  double* acc = const_cast<double*>(Typed<double>(env, info[0], napi_float64_array, &accLen));
  const int32_t* pos = Typed<int32_t>(env, info[1], napi_int32_array, &posLen);
  const float* src = Typed<float>(env, info[2], napi_float32_array, &srcLen);
  if (acc == nullptr || pos == nullptr || src == nullptr)
    return a.fail("scatterAdd: expected Float64Array, Int32Array and Float32Array"), env.Undefined();
  const double offset = a.number(3, "offset"), rows = a.number(4, "rows"), stride = a.number(5, "stride");
  const double weight = a.number(6, "weight");
  if (a.failed) return env.Undefined();
  const int n = static_cast<int>(posLen);
  if (!(offset >= 0 && rows >= 0 && stride >= 0) || (rows > 0 && offset + (rows - 1) * stride + n > double(srcLen)))
    return a.fail("scatterAdd: rows outside src"), env.Undefined();
  for (int j = 0; j < n; ++j)
    if (pos[j] < 0 || size_t(pos[j]) >= accLen) return a.fail("scatterAdd: a position is outside acc"), env.Undefined();
  skv::scatter_add(acc, pos, n, src, static_cast<int64_t>(offset), static_cast<int>(rows), static_cast<int64_t>(stride),
                   weight);
  return env.Undefined();
}

Napi::Value Sum(const Napi::CallbackInfo& info) {
  Args a{info};
  const float* x = a.f32(0, "x", 0);
  if (a.failed) return info.Env().Undefined();
  const auto n = info[0].As<Napi::Float32Array>().ElementLength();
  return Napi::Number::New(info.Env(), skv::sum_f32(x, static_cast<int64_t>(n)));
}

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  int count = 0, code = 0;
  char msg[512] = {0};
  const int built = skv_cuda_info(&count, &code, msg, sizeof msg);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("built", Napi::Boolean::New(info.Env(), built != 0));
  o.Set("deviceCount", Napi::Number::New(info.Env(), count));
  o.Set("code", Napi::Number::New(info.Env(), code));
  o.Set("message", Napi::String::New(info.Env(), msg));
  return o;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("threads", Napi::Number::New(info.Env(), omp_get_max_threads()));
#if defined(__AVX512F__)
  o.Set("simd", Napi::String::New(info.Env(), "avx512"));
#elif defined(__AVX2__)
  o.Set("simd", Napi::String::New(info.Env(), "avx2"));
#elif defined(__SSE4_2__)
  o.Set("simd", Napi::String::New(info.Env(), "sse4.2"));
#else
  o.Set("simd", Napi::String::New(info.Env(), "baseline"));
#endif
#ifdef SMALLKV_PORTABLE
  o.Set("portable", Napi::Boolean::New(info.Env(), true));
#else
  o.Set("portable", Napi::Boolean::New(info.Env(), false));
#endif
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  Args a{info};
  const int n = a.integer(0, "threads", 1);
  if (!a.failed) omp_set_num_threads(n);
  return info.Env().Undefined();
}

// Typed-array bytes of argument i (any typed array), or null with a RangeError.
static uint8_t* bytesOf(Args& a, size_t i, const char* name, size_t minLen) {
  if (a.failed) return nullptr;
  napi_value v = a.at(i);
  bool typed = false;
  napi_is_typedarray(a.env, v, &typed);
  napi_typedarray_type type = napi_int8_array;
  size_t len = 0;
  void* data = nullptr;
  if (typed) napi_get_typedarray_info(a.env, v, &type, &len, &data, nullptr, nullptr);
  if (!typed || type != napi_uint8_array) {
    a.fail(std::string(name) + ": expected a Uint8Array");
    return nullptr;
  }
  if (len < minLen) {
    a.fail(std::string(name) + ": length " + std::to_string(len) + " < required " + std::to_string(minLen));
    return nullptr;
  }
  return static_cast<uint8_t*>(data);
}

static bool qgemmType(Args& a, int type, int K) {
  if (type != skv::QGEMM_F32 && type != skv::QGEMM_Q8_0 && type != skv::QGEMM_Q4_0) {
    a.fail("type: " + std::to_string(type) + " is not F32 (0), Q4_0 (2) or Q8_0 (8)");
    return false;
  }
  if (type != skv::QGEMM_F32 && K % 32 != 0) {
    a.fail("K: " + std::to_string(K) + " is not a multiple of 32");
    return false;
  }
  return true;
}

// qgemmPackedBytes(type, N, K)
Napi::Value QgemmPackedBytes(const Napi::CallbackInfo& info) {
  Args a{info};
  const int type = a.integer(0, "type"), N = a.integer(1, "N", 1), K = a.integer(2, "K", 1);
  if (a.failed || !qgemmType(a, type, K)) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), static_cast<double>(skv::qgemm_packed_bytes(type, N, K)));
}

// qgemmPack(type, src: Uint8Array (N rows as the file stores them), N, K, dst: Uint8Array)
Napi::Value QgemmPack(const Napi::CallbackInfo& info) {
  Args a{info};
  const int type = a.integer(0, "type"), N = a.integer(2, "N", 1), K = a.integer(3, "K", 1);
  if (a.failed || !qgemmType(a, type, K)) return info.Env().Undefined();
  const size_t rowBytes = type == skv::QGEMM_F32 ? size_t(K) * 4 : size_t(K / 32) * (type == skv::QGEMM_Q8_0 ? 34 : 18);
  const uint8_t* src = bytesOf(a, 1, "src", rowBytes * N);
  uint8_t* dst = bytesOf(a, 4, "dst", size_t(skv::qgemm_packed_bytes(type, N, K)));
  if (a.failed) return info.Env().Undefined();
  skv::qgemm_pack(type, src, N, K, dst);
  return info.Env().Undefined();
}

// qgemm(type, packed, N, K, x: Float32Array [M][K], M, y: Float32Array [M][N], threads, add)
Napi::Value Qgemm(const Napi::CallbackInfo& info) {
  Args a{info};
  const int type = a.integer(0, "type"), N = a.integer(2, "N", 1), K = a.integer(3, "K", 1);
  const int M = a.integer(5, "M", 1), threads = a.integer(7, "threads", 1);
  if (a.failed || !qgemmType(a, type, K)) return info.Env().Undefined();
  const uint8_t* w = bytesOf(a, 1, "packed", size_t(skv::qgemm_packed_bytes(type, N, K)));
  const float* x = a.f32(4, "x", size_t(M) * K);
  float* y = a.f32(6, "y", size_t(M) * N);
  if (a.failed) return info.Env().Undefined();
  const bool add = info.Length() > 8 && info[8].IsBoolean() && info[8].As<Napi::Boolean>().Value();
  skv::qgemm(type, w, N, K, x, M, y, threads, add);
  return info.Env().Undefined();
}

// swiglu(gu: Float32Array [M][2I], M, I, out: Float32Array [M][I])
Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  Args a{info};
  const int M = a.integer(1, "M", 1), I = a.integer(2, "I", 1);
  const float* gu = a.f32(0, "gu", size_t(M) * 2 * I);
  float* out = a.f32(3, "out", size_t(M) * I);
  if (a.failed) return info.Env().Undefined();
  skv::swiglu_f32(gu, M, I, out);
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("attention", Napi::Function::New(env, Attention));
  exports.Set("attentionBatch", Napi::Function::New(env, AttentionBatch));
  exports.Set("kvWrite", Napi::Function::New(env, KvWrite));
  exports.Set("kvGather", Napi::Function::New(env, KvGather));
  exports.Set("kvCopyRows", Napi::Function::New(env, KvCopyRows));
  exports.Set("topk", Napi::Function::New(env, TopK));
  exports.Set("topPositions", Napi::Function::New(env, TopPositions));
  exports.Set("topkRagged", Napi::Function::New(env, TopKRagged));
  exports.Set("rankSplit", Napi::Function::New(env, RankSplit));
  exports.Set("rankSplitMany", Napi::Function::New(env, RankSplitMany));
  exports.Set("kvWriteQ8", Napi::Function::New(env, KvWriteQ8));
  exports.Set("sum", Napi::Function::New(env, Sum));
  exports.Set("scatterAdd", Napi::Function::New(env, ScatterAdd));
  exports.Set("attentionRowTops", Napi::Function::New(env, AttentionRowTops));
  exports.Set("decoderStep", Napi::Function::New(env, DecoderStep));
  exports.Set("qgemmPackedBytes", Napi::Function::New(env, QgemmPackedBytes));
  exports.Set("qgemmPack", Napi::Function::New(env, QgemmPack));
  exports.Set("qgemm", Napi::Function::New(env, Qgemm));
  exports.Set("swiglu", Napi::Function::New(env, Swiglu));
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  return exports;
}

}  // namespace

NODE_API_MODULE(smallkv_tensor, Init)
