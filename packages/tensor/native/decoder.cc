// A whole Llama-family decoder step on the CPU, for small models (a draft model): at a few
// hundred thousand parameters a step is a few microseconds of arithmetic, and what costs is
// per-call overhead (one onnxruntime call per layer, or a graph of a hundred nodes). Here a
// step is one call: embedding, every layer (RMSNorm, QKV, optional per-head q/k norm, RoPE,
// causal GQA attention over the cache, output projection, SwiGLU MLP), final norm, LM head.
#include <cmath>
#include <vector>

#include "kernels.h"

namespace skv {

namespace {

// y[t][n] = sum_k x[t][k] W[n][k] (+ b[n]); W in PyTorch Linear layout [N][K].
void linear(const float* x, int T, int K, const float* W, const float* b, int N, float* y) {
  if (T >= 8) {
    // Many rows (a draft model's catch-up prefill): x transposed once, so each output column
    // is vertical multiply-adds over the rows, with no horizontal sum per output.
    thread_local std::vector<float> xt, acc;
    xt.resize(size_t(K) * T);
    acc.resize(size_t(T));
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < K; ++k) xt[size_t(k) * T + t] = x[static_cast<int64_t>(t) * K + k];
    for (int n = 0; n < N; ++n) {
      const float* w = W + static_cast<int64_t>(n) * K;
      float* a = acc.data();
      std::fill(a, a + T, 0.f);
      for (int k = 0; k < K; ++k) {
        const float wk = w[k];
        const float* xk = xt.data() + size_t(k) * T;
#pragma omp simd
        for (int t = 0; t < T; ++t) a[t] += xk[t] * wk;
      }
      for (int t = 0; t < T; ++t) y[static_cast<int64_t>(t) * N + n] = b ? a[t] + b[n] : a[t];
    }
    return;
  }
  for (int t = 0; t < T; ++t) {
    const float* xt = x + static_cast<int64_t>(t) * K;
    float* yt = y + static_cast<int64_t>(t) * N;
    for (int n = 0; n < N; ++n) {
      const float* w = W + static_cast<int64_t>(n) * K;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int k = 0; k < K; ++k) acc += xt[k] * w[k];
      yt[n] = b ? acc + b[n] : acc;
    }
  }
}

// RMSNorm of `rows` vectors of n: y = x / sqrt(mean(x^2) + eps) * w.
void rms_norm(const float* x, int rows, int n, const float* w, float eps, float* y) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * n;
    float* yr = y + static_cast<int64_t>(r) * n;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int i = 0; i < n; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

}  // namespace

int64_t decoder_layer_floats(const DecoderShape& s) {
  const int64_t d = s.d, qd = int64_t(s.Hq) * s.D, kvd = int64_t(s.Hkv) * s.D, I = s.I;
  const int64_t qkv = qd + 2 * kvd;
  return d + qkv * d + (s.qkvBias ? qkv : 0) + (s.qkNorm ? 2 * s.D : 0) + d * qd + (s.oBias ? d : 0) + d +
         2 * I * d + (s.mlpBias ? 2 * I : 0) + d * I + (s.mlpBias ? d : 0);
}

int64_t decoder_weight_floats(const DecoderShape& s) {
  return s.L * decoder_layer_floats(s) + s.d + 2 * int64_t(s.V) * s.d;
}

void decoder_step_f32(const DecoderShape& s, const float* weights, float* kv, int cap, int past, const int32_t* tokens,
                      int T, const float* inv_freq, double theta, double rope_scale, float* logits) {
  const int d = s.d, Hq = s.Hq, Hkv = s.Hkv, D = s.D, I = s.I, V = s.V, G = Hq / Hkv;
  const int qd = Hq * D, kvd = Hkv * D, qkv = qd + 2 * kvd;
  thread_local std::vector<float> x, h, buf, att, gu, act, q, k;
  x.resize(size_t(T) * d);
  h.resize(size_t(T) * d);
  buf.resize(size_t(T) * qkv);
  att.resize(size_t(T) * qd);
  gu.resize(size_t(T) * 2 * I);
  act.resize(size_t(T) * I);
  q.resize(size_t(T) * qd);
  k.resize(size_t(T) * kvd);
  std::vector<int32_t> pos(T), pastPerHead(Hkv, past);
  for (int t = 0; t < T; ++t) pos[t] = past + t;
  // Layout: per layer [inputNorm, Wqkv, bqkv?, qNorm?, kNorm?, Wo, bo?, postNorm, Wgate|up, bgate|up?,
  // Wdown, bdown?], then the final norm, the LM head [V][d] and the embedding [V][d].
  const int64_t per = decoder_layer_floats(s);
  const float* tail = weights + s.L * per;
  const float* embed = tail + d + int64_t(V) * d;
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < d; ++i) x[size_t(t) * d + i] = embed[int64_t(tokens[t]) * d + i];
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (int l = 0; l < s.L; ++l) {
    const float* p = weights + l * per;
    const float* inNorm = p;
    p += d;
    const float* wqkv = p;
    p += int64_t(qkv) * d;
    const float* bqkv = s.qkvBias ? p : nullptr;
    p += s.qkvBias ? qkv : 0;
    const float* qNorm = s.qkNorm ? p : nullptr;
    const float* kNorm = s.qkNorm ? p + D : nullptr;
    p += s.qkNorm ? 2 * D : 0;
    const float* wo = p;
    p += int64_t(d) * qd;
    const float* bo = s.oBias ? p : nullptr;
    p += s.oBias ? d : 0;
    const float* postNorm = p;
    p += d;
    const float* wgu = p;
    p += int64_t(2) * I * d;
    const float* bgu = s.mlpBias ? p : nullptr;
    p += s.mlpBias ? 2 * I : 0;
    const float* wdown = p;
    p += int64_t(d) * I;
    const float* bdown = s.mlpBias ? p : nullptr;

    rms_norm(x.data(), T, d, inNorm, s.eps, h.data());
    linear(h.data(), T, d, wqkv, bqkv, qkv, buf.data());
    // Rows of buf: [q (Hq·D) | k (Hkv·D) | v (Hkv·D)]; split into att (q) and the cache (k, v).
    for (int t = 0; t < T; ++t) {
      const float* r = buf.data() + size_t(t) * qkv;
      std::copy(r, r + qd, q.data() + size_t(t) * qd);
      std::copy(r + qd, r + qd + kvd, k.data() + size_t(t) * kvd);
    }
    if (s.qkNorm) {
      rms_norm(q.data(), T * Hq, D, qNorm, s.eps, q.data());
      rms_norm(k.data(), T * Hkv, D, kNorm, s.eps, k.data());
    }
    rope_f32(q.data(), pos.data(), T, Hq, D, theta, inv_freq, rope_scale);
    rope_f32(k.data(), pos.data(), T, Hkv, D, theta, inv_freq, rope_scale);
    // This layer's cache: K [Hkv][cap][D], then V [Hkv][cap][D].
    float* Kc = kv + int64_t(l) * 2 * Hkv * cap * D;
    float* Vc = Kc + int64_t(Hkv) * cap * D;
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < Hkv; ++g) {
        const float* kr = k.data() + size_t(t) * kvd + g * D;
        const float* vr = buf.data() + size_t(t) * qkv + qd + kvd + g * D;
        std::copy(kr, kr + D, Kc + (int64_t(g) * cap + past + t) * D);
        std::copy(vr, vr + D, Vc + (int64_t(g) * cap + past + t) * D);
      }
    // Causal attention (row t sees positions [0, past + t]) by the runner's own kernel.
    AttentionJob job{};
    job.q = q.data();
    job.k = Kc;
    job.v = Vc;
    job.cap = cap;
    job.T = T;
    job.past = pastPerHead.data();
    job.Hq = Hq;
    job.Hkv = Hkv;
    job.D = D;
    job.scale = scale;
    job.out = att.data();
    job.finish();
    attention_batch_f32(&job, 1);
    // Output projection and residual, then the MLP and residual.
    linear(att.data(), T, qd, wo, bo, d, h.data());
    for (size_t i = 0; i < size_t(T) * d; ++i) x[i] += h[i];
    rms_norm(x.data(), T, d, postNorm, s.eps, h.data());
    linear(h.data(), T, d, wgu, bgu, 2 * I, gu.data());
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < I; ++i) {
        const float a = gu[size_t(t) * 2 * I + i], u = gu[size_t(t) * 2 * I + I + i];
        act[size_t(t) * I + i] = a / (1.f + std::exp(-a)) * u;
      }
    linear(act.data(), T, I, wdown, bdown, d, h.data());
    for (size_t i = 0; i < size_t(T) * d; ++i) x[i] += h[i];
  }
  // The last row only: final norm and LM head.
  rms_norm(x.data() + size_t(T - 1) * d, 1, d, tail, s.eps, h.data());
  linear(h.data(), 1, d, tail + d, nullptr, V, logits);
}

}  // namespace skv
