#include "thread_team.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fusedrnn {
namespace cpu {

namespace {
// About 20-50 us of pause before yielding: longer than a barrier between balanced steps
// needs, short enough not to burn a timeslice when the partner thread is descheduled.
constexpr int kSpinIters = 2000;
constexpr int kYieldIters = 4;
}  // namespace

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
#else
  if (addr->load(std::memory_order_acquire) == expected) std::this_thread::yield();
#endif
}

void futex_wake_all(std::atomic<uint32_t>* addr) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
          nullptr, 0);
#else
  (void)addr;
#endif
}

// Waits until *gen != g: spin, then yield, then sleep (announced through *sleepers so the
// releaser only pays for a wake-up syscall when somebody sleeps).
static void wait_change(std::atomic<uint32_t>& gen, uint32_t g, std::atomic<int>& sleepers) {
  for (int i = 0; i < kSpinIters; ++i) {
    if (gen.load(std::memory_order_acquire) != g) return;
    cpu_relax();
  }
  for (int i = 0; i < kYieldIters; ++i) {
    if (gen.load(std::memory_order_acquire) != g) return;
    std::this_thread::yield();
  }
  sleepers.fetch_add(1, std::memory_order_seq_cst);
  while (gen.load(std::memory_order_seq_cst) == g) futex_wait(&gen, g);
  sleepers.fetch_sub(1, std::memory_order_relaxed);
}

static void release(std::atomic<uint32_t>& gen, std::atomic<int>& sleepers) {
  gen.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(&gen);
}

void StepSync::chunk_done(int64_t step) {
  if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == per_step_ * (step + 1))
    release(gen_, sleepers_);
}

void StepSync::wait_step(int64_t step) {
  const int64_t target = per_step_ * (step + 1);
  for (int i = 0; i < kSpinIters; ++i) {
    if (done_.load(std::memory_order_acquire) >= target) return;
    cpu_relax();
  }
  for (int i = 0; i < kYieldIters; ++i) {
    if (done_.load(std::memory_order_acquire) >= target) return;
    std::this_thread::yield();
  }
  uint32_t g = gen_.load(std::memory_order_seq_cst);
  while (done_.load(std::memory_order_seq_cst) < target) {
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    if (done_.load(std::memory_order_seq_cst) < target) futex_wait(&gen_, g);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    g = gen_.load(std::memory_order_seq_cst);
  }
}

namespace {

int query_hardware_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

}  // namespace

int hardware_threads() {
  // FUSEDRNN_CPU_CORES=n (read once) replaces the count: tests run teams of 3 or 4 threads
  // on a 2-core machine with it, so partitions that only larger machines would see get
  // checked (oversubscribed, but the results must not change).
  static const int forced = [] {
    const char* env = std::getenv("FUSEDRNN_CPU_CORES");
    const long n = env ? std::atol(env) : 0;
    return n > 0 ? int(std::min(n, 1024L)) : 0;
  }();
  if (forced) return forced;
  // sched_getaffinity is a system call (~0.5 us, as long as a whole single step of a small
  // RNN): ask once per 1024 calls, so that an affinity change is seen soon after.
  static std::atomic<int> cached{0};
  thread_local uint32_t calls = 0;
  int n = cached.load(std::memory_order_relaxed);
  if (n == 0 || (calls++ & 1023u) == 0) {
    n = query_hardware_threads();
    cached.store(n, std::memory_order_relaxed);
  }
  return n;
}

namespace {

class Team {
 public:
  int run(int nthreads, TeamFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (busy.owns_lock() && nthreads > 1) nthreads = grow(nthreads);
    if (!busy.owns_lock() || nthreads <= 1) {
      fn(ctx, 0, 1);
      return 1;
    }
    fn_ = fn;
    ctx_ = ctx;
    nthreads_ = nthreads;
    done_.store(0, std::memory_order_relaxed);
    // Wake only the workers of this job; the job fields stay unchanged until all of them
    // have reported done, so no worker can read a half-written job.
    for (int tid = 1; tid < nthreads; ++tid) release(slots_[tid]->gen, slots_[tid]->sleepers);
    fn(ctx, 0, nthreads);
    const uint32_t g = done_gen_.load(std::memory_order_acquire);
    for (int i = 0; i < kSpinIters; ++i) {
      if (done_.load(std::memory_order_acquire) == nthreads - 1) return nthreads;
      cpu_relax();
    }
    uint32_t cur = g;
    while (done_.load(std::memory_order_seq_cst) != nthreads - 1) {
      done_sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (done_.load(std::memory_order_seq_cst) != nthreads - 1) futex_wait(&done_gen_, cur);
      done_sleepers_.fetch_sub(1, std::memory_order_relaxed);
      cur = done_gen_.load(std::memory_order_acquire);
    }
    return nthreads;
  }

  static Team& instance() {
    // Leaked on purpose: workers never join, and a forked child must not touch them.
    static Team* team = new Team();
    return *team;
  }

 private:
  struct Slot {
    alignas(64) std::atomic<uint32_t> gen{0};
    std::atomic<int> sleepers{0};
  };

  Team() {
#if defined(__linux__)
    pthread_atfork(nullptr, nullptr, [] { instance().after_fork_in_child(); });
#endif
  }

  // A forked child has only the forking thread: forget the parent's workers (leaked).
  void after_fork_in_child() {
    new (&run_mutex_) std::mutex();
    for (Slot*& s : slots_) s = nullptr;
    slots_.clear();
  }

  int grow(int want) {
    const int cap = hardware_threads();
    if (want > cap) want = cap;
    if (slots_.empty()) slots_.push_back(nullptr);  // tid 0 is the caller
    while (int(slots_.size()) < want) {
      Slot* slot = new Slot();
      try {
        std::thread(&Team::worker, this, slot).detach();
      } catch (...) {
        delete slot;
        break;
      }
      slots_.push_back(slot);
    }
    return int(slots_.size()) < want ? int(slots_.size()) : want;
  }

  void worker(Slot* slot) {
    uint32_t seen = 0;
    for (;;) {
      wait_change(slot->gen, seen, slot->sleepers);
      seen = slot->gen.load(std::memory_order_acquire);
      int tid = 1;
      while (slots_[tid] != slot) ++tid;  // stable while a job that includes us runs
      fn_(ctx_, tid, nthreads_);
      done_.fetch_add(1, std::memory_order_seq_cst);
      if (done_sleepers_.load(std::memory_order_seq_cst) > 0) {
        done_gen_.fetch_add(1, std::memory_order_seq_cst);
        futex_wake_all(&done_gen_);
      }
    }
  }

  std::mutex run_mutex_;
  std::vector<Slot*> slots_;
  TeamFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int nthreads_ = 0;
  alignas(64) std::atomic<int> done_{0};
  std::atomic<uint32_t> done_gen_{0};
  std::atomic<int> done_sleepers_{0};
};

// The OpenMP runtime already in the process (torch's libgomp), if any, found at run time
// without linking it. torch's OpenMP workers spin for milliseconds after each parallel
// torch op; a team of our own threads started meanwhile shares the cores with them (3
// runnable threads on 2 cores). Running our team on those same workers instead keeps one
// thread per core and starts without a wake-up. No second runtime is ever loaded: when
// none is present (plain C++, a torch without OpenMP) or FUSEDRNN_CPU_THREADS=own, our
// own persistent team runs the job.
struct Gomp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;
  int (*thread_num)() = nullptr;
  int (*num_threads)() = nullptr;
};

const Gomp* find_gomp() {
#if defined(__linux__)
  static const Gomp* gomp = []() -> const Gomp* {
    const char* env = std::getenv("FUSEDRNN_CPU_THREADS");
    if (env && std::strcmp(env, "own") == 0) return nullptr;
    std::string path;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) -> int {
          if (info->dlpi_name && std::strstr(info->dlpi_name, "libgomp")) {
            *static_cast<std::string*>(out) = info->dlpi_name;
            return 1;
          }
          return 0;
        },
        &path);
    if (path.empty()) return nullptr;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (!lib) return nullptr;
    static Gomp g;
    g.parallel = reinterpret_cast<decltype(g.parallel)>(dlsym(lib, "GOMP_parallel"));
    g.thread_num = reinterpret_cast<decltype(g.thread_num)>(dlsym(lib, "omp_get_thread_num"));
    g.num_threads = reinterpret_cast<decltype(g.num_threads)>(dlsym(lib, "omp_get_num_threads"));
    if (!g.parallel || !g.thread_num || !g.num_threads) return nullptr;
    return &g;
  }();
  return gomp;
#else
  return nullptr;
#endif
}

struct GompJob {
  const Gomp* gomp;
  TeamFn fn;
  void* ctx;
};

void gomp_trampoline(void* data) {
  const GompJob& job = *static_cast<const GompJob*>(data);
  job.fn(job.ctx, job.gomp->thread_num(), job.gomp->num_threads());
}

// A job whose threads may throw (std::bad_alloc from a thread's scratch buffer): an
// exception must not leave a thread of the team (out of an OpenMP region it is
// std::terminate; out of the caller's share of a Team job it would return while the
// workers still use the job). Each thread's exception is caught, the first one kept, and
// team_run rethrows it on the caller once every thread has returned. The kernels take their
// threads' scratch before they claim any work, so the others finish the job meanwhile (the
// recurrence's threads take over unclaimed chunks; the GEMMs' threads share nothing).
struct GuardedJob {
  TeamFn fn;
  void* ctx;
  std::mutex mutex;
  std::exception_ptr error;
};

void guarded(void* data, int tid, int nthreads) {
  auto& job = *static_cast<GuardedJob*>(data);
  try {
    job.fn(job.ctx, tid, nthreads);
  } catch (...) {
    std::lock_guard<std::mutex> lock(job.mutex);
    if (!job.error) job.error = std::current_exception();
  }
}

}  // namespace

int team_run(int nthreads, TeamFn fn, void* ctx) {
  nthreads = std::min(nthreads, hardware_threads());
  if (nthreads <= 1) {
    fn(ctx, 0, 1);  // on the caller alone: an exception leaves as it is
    return 1;
  }
  GuardedJob guard{fn, ctx, {}, nullptr};
  if (const Gomp* gomp = find_gomp()) {
    GompJob job{gomp, &guarded, &guard};
    gomp->parallel(&gomp_trampoline, &job, unsigned(nthreads), 0);
  } else {
    nthreads = Team::instance().run(nthreads, &guarded, &guard);
  }
  if (guard.error) std::rethrow_exception(guard.error);
  return nthreads;
}

}  // namespace cpu
}  // namespace fusedrnn
