// Fiber scheduler behind emu.h. x86-64 uses a hand-written stack switch (a few ns, no
// syscalls: kernels yield at every barrier and shuffle); other targets use ucontext.
#include "emu.h"

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

thread_local ThreadCtx* current = nullptr;

namespace {

enum Wait : int { kRunning = 0, kBlockBarrier = 1, kWarpBarrier = 2, kDone = 3 };

struct Fiber {
  ThreadCtx ctx;
  int wait = kRunning;
  int warp = 0;
  int lane = 0;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

struct BlockState {
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t stack_size = 0;
  std::vector<uint64_t> slots;  // warp exchange: [warp][32]
  std::vector<char> shared;
  const std::function<void()>* body = nullptr;
  Fiber* running = nullptr;
#if defined(__x86_64__)
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
};
thread_local BlockState* state = nullptr;

#if defined(__x86_64__)
// switch_stack(save, to): pushes the callee-saved registers, stores rsp in *save, loads
// `to` and pops the other context's registers.
extern "C" void skv_emu_switch(void** save, void* to);
asm(R"(
.text
.globl skv_emu_switch
.type skv_emu_switch,@function
skv_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size skv_emu_switch,.-skv_emu_switch
)");
#endif

void fiber_main() {
  BlockState* s = state;
  (*s->body)();
  s->running->wait = kDone;
#if defined(__x86_64__)
  void* dummy;
  skv_emu_switch(&dummy, s->sched_sp);
#else
  swapcontext(&s->running->uc, &s->sched);
#endif
  std::abort();  // a finished fiber is never resumed
}

#if defined(__x86_64__)
extern "C" void skv_emu_entry() { fiber_main(); }
#endif

void yield(int why) {
  BlockState* s = state;
  s->running->wait = why;
#if defined(__x86_64__)
  skv_emu_switch(&s->running->sp, s->sched_sp);
#else
  swapcontext(&s->running->uc, &s->sched);
#endif
  current = &s->running->ctx;
}

void resume(BlockState* s, Fiber* f) {
  s->running = f;
  current = &f->ctx;
#if defined(__x86_64__)
  skv_emu_switch(&s->sched_sp, f->sp);
#else
  swapcontext(&s->sched, &f->uc);
#endif
}

}  // namespace

void fail(const char* what) {
  std::fprintf(stderr, "[cuda-emu] %s\n", what);
  std::abort();
}

void syncthreads() { yield(kBlockBarrier); }

void warp_exchange(uint64_t mine, int src_lane, uint64_t* out) {
  BlockState* s = state;
  Fiber* f = s->running;
  uint64_t* w = &s->slots[static_cast<size_t>(f->warp) * 32];
  w[f->lane] = mine;
  yield(kWarpBarrier);
  *out = w[src_lane];
  yield(kWarpBarrier);  // nobody overwrites a slot before every lane has read
}

// 64-byte aligned (the buffer has 64 bytes of slack), as CUDA aligns it for WMMA tiles.
void* dynamic_shared() {
  return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(state->shared.data()) + 63) & ~uintptr_t{63});
}

void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  if (nthreads <= 0 || nthreads > 1024) fail("launch: block size must be 1..1024 threads");
  if (shared_bytes > 227 * 1024) fail("launch: dynamic shared memory over 227 KiB");
  BlockState s;
  s.body = &body;
  s.stack_size = 256 * 1024;
  // Fiber stacks are reused across launches (zero-filling 256 KiB x 1024 per launch is slow).
  static thread_local std::vector<char>* pool = nullptr;
  if (pool == nullptr) pool = new std::vector<char>();
  if (pool->size() < s.stack_size * nthreads + 64) {
    pool->clear();
    pool->shrink_to_fit();
    pool->resize(s.stack_size * nthreads + 64);
  }
  s.stacks = pool->data();
  s.fibers.resize(nthreads);
  const int nwarps = (nthreads + 31) / 32;
  s.slots.assign(static_cast<size_t>(nwarps) * 32, 0);
  s.shared.assign(shared_bytes + 64, 0);
  BlockState* saved_state = state;
  ThreadCtx* saved_current = current;
  state = &s;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(s.shared.data(), 0xcd, s.shared.size());  // uninitialised shared memory is garbage
        for (int t = 0; t < nthreads; ++t) {
          Fiber& f = s.fibers[t];
          f.ctx.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          f.ctx.bid = dim3(bx, by, bz);
          f.ctx.bdim = block;
          f.ctx.gdim = grid;
          f.wait = kRunning;
          f.warp = t / 32;
          f.lane = t % 32;
          char* top = s.stacks + s.stack_size * (t + 1);
#if defined(__x86_64__)
          uintptr_t sp = reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15);
          sp -= 8;  // after `ret` pops the entry address, rsp % 16 == 8 as at a call
          void** stack = reinterpret_cast<void**>(sp);
          *--stack = reinterpret_cast<void*>(&skv_emu_entry);
          for (int r = 0; r < 6; ++r) *--stack = nullptr;
          f.sp = stack;
#else
          getcontext(&f.uc);
          f.uc.uc_stack.ss_sp = top - s.stack_size;
          f.uc.uc_stack.ss_size = s.stack_size;
          f.uc.uc_link = nullptr;
          makecontext(&f.uc, fiber_main, 0);
#endif
        }
        int live = nthreads;
        while (live > 0) {
          bool progressed = false;
          for (Fiber& f : s.fibers) {
            if (f.wait != kRunning) continue;
            resume(&s, &f);
            progressed = true;
            if (f.wait == kDone) --live;
          }
          // Release a warp whose live lanes all wait at a warp collective.
          for (int w = 0; w < nwarps; ++w) {
            bool all = true, any = false;
            for (int l = w * 32; l < std::min(nthreads, w * 32 + 32); ++l) {
              const int st = s.fibers[l].wait;
              if (st == kDone) continue;
              any = true;
              if (st != kWarpBarrier) all = false;
            }
            if (any && all) {
              for (int l = w * 32; l < std::min(nthreads, w * 32 + 32); ++l)
                if (s.fibers[l].wait == kWarpBarrier) s.fibers[l].wait = kRunning;
              progressed = true;
            }
          }
          bool all_block = live > 0;
          for (Fiber& f : s.fibers)
            if (f.wait != kDone && f.wait != kBlockBarrier) all_block = false;
          if (all_block) {
            for (Fiber& f : s.fibers)
              if (f.wait == kBlockBarrier) f.wait = kRunning;
            progressed = true;
          }
          if (!progressed && live > 0) fail("deadlock: threads of one block wait at different barriers (divergent __syncthreads or shuffle)");
        }
      }
  state = saved_state;
  current = saved_current;
}

namespace {
thread_local std::vector<std::function<void()>>* recording = nullptr;
}
void submit(std::function<void()> work) {
  if (recording) recording->push_back(std::move(work));
  else work();
}
bool capturing() { return recording != nullptr; }
void capture_begin() { recording = new std::vector<std::function<void()>>(); }
void* capture_end() {
  void* g = recording;
  recording = nullptr;
  return g;
}
void replay(void* graph) {
  for (auto& w : *static_cast<std::vector<std::function<void()>>*>(graph)) w();
}
void graph_free(void* graph) { delete static_cast<std::vector<std::function<void()>>*>(graph); }

float half2float(half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

half float2half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (a < 0x38800000u) {  // result is subnormal or zero: round (a as float) * 2^24
    float m;
    std::memcpy(&m, &a, 4);
    const float scaled = m * 16777216.f;  // exact in float for these magnitudes
    const uint32_t r = static_cast<uint32_t>(std::nearbyint(scaled));
    return {static_cast<uint16_t>(sign | r)};
  }
  const uint32_t e = ((a >> 23) - 127 + 15) << 10;
  const uint32_t m = (a >> 13) & 0x3ffu;
  uint32_t h = e | m;
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return {static_cast<uint16_t>(sign | h)};
}

}  // namespace emu
