// The emulated runtime behind dev_api.h: "device" memory is host memory, streams run in
// order at once (so stream waits are no-ops), and kernels execute through emu.h.
#include <cstdlib>
#include <cstring>

#include "dev_api.h"
#include "emu.h"
#include "launch_check.h"
#include "runtime_common.h"

namespace {
// The emulated runtime's "last error", with CUDA's semantics: a failed allocation sets it and
// it stays set until read (cudaGetLastError), so the next launch check reports it. This is how
// the emulator shows what a GPU would: a failed call that does not clear it breaks a kernel.
thread_local int g_last_error = SKV_OK;
thread_local char g_last_text[160] = "";
}  // namespace

void* skv_stream(int stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }
void skv_clear_last_error() { g_last_error = SKV_OK; }
int skv_check_launch(const char* kernel) {
  const int e = g_last_error;
  g_last_error = SKV_OK;
  if (e == SKV_OK) return SKV_OK;
  return skv_rt::set_error(SKV_EKERNEL, "%s: %s (left by an earlier call)", kernel, g_last_text);
}
int skv_arg_error(const char* message) { return skv_rt::set_error(SKV_EARG, "%s", message); }

extern "C" {
const char* skv_dev_last_error() { return skv_rt::error_buffer(); }
int skv_dev_open(int device, char* info, int info_len) {
  if (device != 0) return skv_rt::set_error(SKV_ENODEV, "the emulator has one device (0), not %d", device);
  std::snprintf(info, info_len, "CUDA emulator (CPU)|00|%zu|1|0", static_cast<size_t>(1) << 34);
  return SKV_OK;
}
int skv_dev_mem_info(size_t* f, size_t* t) {
  *f = *t = static_cast<size_t>(1) << 34;
  return SKV_OK;
}
int skv_dev_malloc(void** p, size_t bytes) {
  *p = std::aligned_alloc(256, ((bytes > 0 ? bytes : 1) + 255) / 256 * 256);
  if (*p) return SKV_OK;
  // As cudaMalloc does: the failure becomes the runtime's last error ...
  g_last_error = SKV_EOOM;
  std::snprintf(g_last_text, sizeof g_last_text, "out of memory (emulated cudaErrorMemoryAllocation)");
  // ... which the failed-call path clears, as runtime.cu's does.
  return skv_rt::failed_call(SKV_EOOM, "out of memory allocating %zu bytes", bytes);
}
int skv_dev_free(void* p) {
  std::free(p);
  return SKV_OK;
}
int skv_dev_host_alloc(void** host, void** dev, size_t bytes) {
  const int r = skv_dev_malloc(host, bytes);
  *dev = *host;
  return r;
}
int skv_dev_host_free(void* host) { return skv_dev_free(host); }
int skv_dev_upload(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return SKV_OK;
}
int skv_dev_download(void* dst, const void* src, size_t bytes) {
  if (::emu::capturing()) return skv_rt::set_error(SKV_EKERNEL, "download: not allowed while a graph is captured");
  std::memcpy(dst, src, bytes);
  return SKV_OK;
}
int skv_dev_memset(void* dst, int value, size_t bytes, int) {
  ::emu::submit([=] { std::memset(dst, value, bytes); });
  return SKV_OK;
}
int skv_dev_copy(void* dst, const void* src, size_t bytes, int) {
  ::emu::submit([=] { std::memmove(dst, src, bytes); });
  return SKV_OK;
}
int skv_dev_sync(int) {
  if (::emu::capturing()) return skv_rt::set_error(SKV_EKERNEL, "synchronize: not allowed while a graph is captured");
  return SKV_OK;
}
int skv_dev_capture_begin(int) {
  if (::emu::capturing()) return skv_rt::set_error(SKV_EKERNEL, "capture: already capturing");
  ::emu::capture_begin();
  return SKV_OK;
}
int skv_dev_capture_end(int, void** graph) {
  if (!::emu::capturing()) return skv_rt::set_error(SKV_EKERNEL, "capture: not capturing");
  *graph = ::emu::capture_end();
  return SKV_OK;
}
int skv_dev_graph_launch(void* graph, int) {
  ::emu::replay(graph);
  return SKV_OK;
}
int skv_dev_graph_free(void* graph) {
  ::emu::graph_free(graph);
  return SKV_OK;
}
int skv_dev_stream_wait(int, int) { return SKV_OK; }
}
