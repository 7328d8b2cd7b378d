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
inline int set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(error_buffer(), 512, fmt, ap);
  va_end(ap);
  return code;
}
}  // namespace skv_rt

