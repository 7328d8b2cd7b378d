// Reading a batched attention record (SkvAttnSeq) on the device: addresses and key lists.
#pragma once
#include "ck.h"
#include "dev_api.h"

namespace attn {

// A record's 64-bit address as a pointer.
template <class T>
__device__ inline T* as_ptr(int64_t a) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(a));
}
// Keys in kv head g's list: its selection's count, or n for a contiguous list.
__device__ inline int list_len(const SkvAttnSeq& s, int g) {
  return s.idx ? as_ptr<const int32_t>(s.cnt)[g] : static_cast<int>(s.n);
}
// The store row (the position) of key i of kv head g's list.
__device__ inline int list_row(const SkvAttnSeq& s, int g, int i) {
  return s.idx ? as_ptr<const int32_t>(s.idx)[static_cast<int64_t>(g) * s.icap + i] : i;
}

// Whether the tensor-core tiles (prefill.cu) take this record: a contiguous list without V-only
// rows, of at least minRows query rows (minRows 0: no record). The CUDA-core kernels skip those.
__device__ inline bool tile_record(const SkvAttnSeq& s, int minRows) {
  return minRows > 0 && s.T >= minRows && !s.idx && !s.vidx;
}

}  // namespace attn
