// C ABI of the device half of @smallkv/tensor. Implemented by the CUDA runtime (dev_runtime.cu,
// kernels *.cu compiled by nvcc) and, for GPU-less test machines, by the emulator
// (dev_runtime_emu.cc with the same *.cu compiled as C++). Device pointers are opaque
// addresses; every call returns 0 or an error code, with text in skv_dev_last_error().
// Streams: 0 = compute, 1 = copy (cold -> hot moves), ordered by skv_dev_stream_wait.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {

enum SkvDevStatus { SKV_OK = 0, SKV_ENODEV = 1, SKV_EOOM = 2, SKV_EKERNEL = 3, SKV_EARG = 4 };
enum SkvDtype { SKV_F32 = 0, SKV_F16 = 1, SKV_BF16 = 2 };

const char* skv_dev_last_error();
// Selects the device, creates the two streams. `info` gets a one-line description.
int skv_dev_open(int device, char* info, int info_len);
int skv_dev_mem_info(size_t* free_bytes, size_t* total_bytes);
int skv_dev_malloc(void** p, size_t bytes);
int skv_dev_free(void* p);
// Pinned host memory mapped into the device address space (the cold store).
int skv_dev_host_alloc(void** host, void** dev, size_t bytes);
int skv_dev_host_free(void* host);
int skv_dev_upload(void* dst, const void* src, size_t bytes);
int skv_dev_download(void* dst, const void* src, size_t bytes);
int skv_dev_memset(void* dst, int value, size_t bytes, int stream);
int skv_dev_copy(void* dst, const void* src, size_t bytes, int stream);
int skv_dev_sync(int stream);
// Work queued on `waiter` after this call starts only when `waitee`'s queued work is done.
int skv_dev_stream_wait(int waiter, int waitee);

// ---- kernels (all on a stream, all float32 activations) ----
// out[n][d] = table[ids[n]] (table dtype any)
int skv_k_embedding(float* out, const void* table, int dtype, const int32_t* ids, int n, int d, int stream);
// out[n][d] = x * rsqrt(mean(x^2) + eps) * w
int skv_k_rmsnorm(float* out, const float* x, const float* w, int n, int d, float eps, int stream);
// y[m][n] (+)= x[m][k] . W[n][k]^T (+ bias[n]); W dtype any; F16/BF16 use tensor cores for m > 8.
int skv_k_gemm(float* y, const float* x, const void* w, int dtype, const float* bias, int m, int n, int k,
               int accumulate, int stream);
// HF rotate-half RoPE in place on x[T][H][D] at positions pos[T].
// inv_freq: D/2 frequencies replacing theta^(-2i/D) (null: none); scale multiplies cos and sin.
int skv_k_rope(float* x, const int32_t* pos, int T, int H, int D, float theta, const float* inv_freq, float scale,
               int stream);
// out[i] = silu(gate[i]) * up[i]   (out may alias gate)
int skv_k_silu_gate(float* out, const float* gate, const float* up, int64_t n, int stream);
// y[i] += x[i]
int skv_k_add(float* y, const float* x, int64_t n, int stream);
// Mixed causal GQA attention with the semantics of the CPU AttentionJob (kernels.h);
// `past` and `nV` are device arrays, `probs`/`scores`/`vo` may be null.
int skv_k_attention(const float* q, const float* k, const float* v, int cap, int T, const int32_t* past,
                    int maxPast, int Hq, int Hkv, int D, float scale, const float* vo, int vcap,
                    const int32_t* nV, int vmax, const float* w, int mode, float* out, float* probs,
                    float* scores, int scoreStart, int window, int stream);
// store[Hkv][cap][D] rows dst[t] = src[T][Hkv][D] rows t.
int skv_k_kv_write(float* store, int cap, int Hkv, int D, const float* src, int T, const int32_t* dst,
                   int stream);
// n moves: dst[head dh[i]][row dr[i]] = src[head sh[i]][row sr[i]] (rows of D floats). `src` may be
// mapped pinned host memory: the cold -> hot difference travels over the bus, nothing else does.
int skv_k_kv_move(float* dst, int dcap, const float* src, int scap, int D, const int32_t* moves, int n,
                  int stream);
}
