// The CUDA runtime behind dev_api.h: a compute stream and a copy stream, device and mapped
// pinned host allocations, and errors turned into codes with readable text.
#ifndef SKV_EMU
#include <cuda_runtime.h>

#include "dev_api.h"
#include "launch_check.h"
#include "runtime_common.h"

namespace {
cudaStream_t g_streams[2] = {nullptr, nullptr};
bool g_open = false;

int fail(cudaError_t e, const char* what) {
  const int code = e == cudaErrorMemoryAllocation ? SKV_EOOM
                   : (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) ? SKV_ENODEV
                                                                                   : SKV_EKERNEL;
  // A failed cudaMalloc leaves cudaErrorMemoryAllocation as the last error: cleared here, or
  // the next kernel's launch check would fail with it.
  return skv_rt::failed_call(code, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}
#define CK_CALL(expr, what)               \
  do {                                    \
    const cudaError_t e_ = (expr);        \
    if (e_ != cudaSuccess) return fail(e_, what); \
  } while (0)
}  // namespace

void* skv_stream(int stream) { return g_streams[stream == 1 ? 1 : 0]; }
void skv_clear_last_error() { (void)cudaGetLastError(); }
int skv_check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? SKV_OK : fail(e, kernel);
}
int skv_arg_error(const char* message) { return skv_rt::set_error(SKV_EARG, "%s", message); }

extern "C" {
const char* skv_dev_last_error() { return skv_rt::error_buffer(); }

int skv_dev_open(int device, char* info, int info_len) {
  int n = 0;
  CK_CALL(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  if (device < 0 || device >= n) return skv_rt::set_error(SKV_ENODEV, "CUDA device %d does not exist (%d found)", device, n);
  CK_CALL(cudaSetDevice(device), "cudaSetDevice");
  if (!g_open) {
    // Mapped pinned memory is automatic with unified addressing (every 64-bit platform);
    // the flag matters only elsewhere and fails harmlessly once the context exists.
    if (cudaSetDeviceFlags(cudaDeviceMapHost) != cudaSuccess) (void)cudaGetLastError();
    CK_CALL(cudaStreamCreateWithFlags(&g_streams[0], cudaStreamNonBlocking), "cudaStreamCreate");
    CK_CALL(cudaStreamCreateWithFlags(&g_streams[1], cudaStreamNonBlocking), "cudaStreamCreate");
    g_open = true;
  }
  cudaDeviceProp p;
  CK_CALL(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  int clock = 0, bus = 0;
  cudaDeviceGetAttribute(&clock, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, device);
  const double gbps = 2.0 * clock * 1e3 * (bus / 8) / 1e9;
  std::snprintf(info, info_len, "%s|%d%d|%zu|%d|%.1f", p.name, p.major, p.minor, p.totalGlobalMem,
                p.multiProcessorCount, gbps);
  return SKV_OK;
}

int skv_dev_mem_info(size_t* f, size_t* t) {
  CK_CALL(cudaMemGetInfo(f, t), "cudaMemGetInfo");
  return SKV_OK;
}
int skv_dev_malloc(void** p, size_t bytes) {
  CK_CALL(cudaMalloc(p, bytes > 0 ? bytes : 1), "cudaMalloc");
  return SKV_OK;
}
int skv_dev_free(void* p) {
  CK_CALL(cudaFree(p), "cudaFree");
  return SKV_OK;
}
int skv_dev_host_alloc(void** host, void** dev, size_t bytes) {
  CK_CALL(cudaHostAlloc(host, bytes > 0 ? bytes : 1, cudaHostAllocMapped), "cudaHostAlloc");
  CK_CALL(cudaHostGetDevicePointer(dev, *host, 0), "cudaHostGetDevicePointer");
  return SKV_OK;
}
int skv_dev_host_free(void* host) {
  CK_CALL(cudaFreeHost(host), "cudaFreeHost");
  return SKV_OK;
}
int skv_dev_upload(void* dst, const void* src, size_t bytes) {
  CK_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_streams[0]), "upload");
  CK_CALL(cudaStreamSynchronize(g_streams[0]), "upload");
  return SKV_OK;
}
int skv_dev_download(void* dst, const void* src, size_t bytes) {
  CK_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_streams[0]), "download");
  CK_CALL(cudaStreamSynchronize(g_streams[0]), "download");
  return SKV_OK;
}
int skv_dev_memset(void* dst, int value, size_t bytes, int stream) {
  CK_CALL(cudaMemsetAsync(dst, value, bytes, static_cast<cudaStream_t>(skv_stream(stream))), "memset");
  return SKV_OK;
}
int skv_dev_copy(void* dst, const void* src, size_t bytes, int stream) {
  CK_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(skv_stream(stream))), "copy");
  return SKV_OK;
}
int skv_dev_sync(int stream) {
  CK_CALL(cudaStreamSynchronize(static_cast<cudaStream_t>(skv_stream(stream))), "synchronize");
  return SKV_OK;
}
int skv_dev_stream_wait(int waiter, int waitee) {
  cudaEvent_t ev;
  CK_CALL(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  CK_CALL(cudaEventRecord(ev, static_cast<cudaStream_t>(skv_stream(waitee))), "cudaEventRecord");
  CK_CALL(cudaStreamWaitEvent(static_cast<cudaStream_t>(skv_stream(waiter)), ev, 0), "cudaStreamWaitEvent");
  CK_CALL(cudaEventDestroy(ev), "cudaEventDestroy");
  return SKV_OK;
}
int skv_dev_capture_begin(int stream) {
  CK_CALL(cudaStreamBeginCapture(static_cast<cudaStream_t>(skv_stream(stream)), cudaStreamCaptureModeRelaxed),
          "cudaStreamBeginCapture");
  return SKV_OK;
}
int skv_dev_capture_end(int stream, void** graph) {
  cudaGraph_t g = nullptr;
  CK_CALL(cudaStreamEndCapture(static_cast<cudaStream_t>(skv_stream(stream)), &g), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  if (e != cudaSuccess) return fail(e, "cudaGraphInstantiate");
  *graph = exec;
  return SKV_OK;
}
int skv_dev_graph_launch(void* graph, int stream) {
  CK_CALL(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), static_cast<cudaStream_t>(skv_stream(stream))),
          "cudaGraphLaunch");
  return SKV_OK;
}
int skv_dev_graph_free(void* graph) {
  CK_CALL(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)), "cudaGraphExecDestroy");
  return SKV_OK;
}
}  // extern "C"
#endif
