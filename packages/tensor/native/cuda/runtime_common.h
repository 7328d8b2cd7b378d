// The error slot both runtimes share.
#pragma once
#include <cstdarg>
#include <cstdio>

#include "dev_api.h"

namespace skv_rt {
inline char* error_buffer() {
  static thread_local char buf[512] = "";
  return buf;
}
inline int vset_error(int code, const char* fmt, va_list ap) {
  std::vsnprintf(error_buffer(), 512, fmt, ap);
  return code;
}
inline int set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vset_error(code, fmt, ap);
  va_end(ap);
  return code;
}
}  // namespace skv_rt

// Clears the runtime's "last error" (CUDA: cudaGetLastError(); the emulator keeps its own).
// A failed runtime call leaves that error set in CUDA, and the next launch check would report
// it against an unrelated kernel: every failed call clears it (skv_rt::failed_call).
void skv_clear_last_error();

namespace skv_rt {
/** A runtime call failed: record the error text, clear the runtime's last error, return the code. */
inline int failed_call(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vset_error(code, fmt, ap);
  va_end(ap);
  skv_clear_last_error();
  return code;
}
}  // namespace skv_rt

