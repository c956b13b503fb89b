// A persistent team of worker threads for the CPU recurrence (no OpenMP: torch ships its
// own libgomp, and a second OpenMP runtime in the process would oversubscribe the cores).
//
// run(n, fn, ctx) calls fn(ctx, tid, n) for tid = 0..n-1, tid 0 on the calling thread,
// and returns when all have returned. The workers are created on first use and live for
// the process; between jobs they spin briefly, then sleep on a futex. Inside a job the
// team synchronizes through StepSync.
//
// If another thread is already running a job (two Python threads calling at once) or the
// team cannot grow, run() uses fewer threads; the kernels' results do not depend on it.
#pragma once

#include <atomic>
#include <cstdint>

namespace fusedrnn {
namespace cpu {

// Completion of the chunks of consecutive steps: step i is done when count * (i + 1)
// chunk_done calls have been made. wait_step spins with pause, then yields, then sleeps,
// so threads on busy (shared, oversubscribed) cores never livelock.
class StepSync {
 public:
  void reset(int64_t chunks_per_step) {
    per_step_ = chunks_per_step;
    done_.store(0, std::memory_order_relaxed);
  }
  void chunk_done(int64_t step);
  void wait_step(int64_t step);

 private:
  int64_t per_step_ = 1;
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<uint32_t> gen_{0};
  std::atomic<int> sleepers_{0};
};

using TeamFn = void (*)(void* ctx, int tid, int nthreads);

// Runs fn on up to nthreads threads and returns how many it asked for (fn gets the count
// that actually runs, which may be smaller). An exception thrown by fn on any thread is
// rethrown here, on the caller, after every thread has returned (the first one, if several
// threads throw); fn must leave the others able to finish without it. The team is torch's OpenMP
// workers when torch's libgomp is loaded (see thread_team.cpp), else our own persistent team.
int team_run(int nthreads, TeamFn fn, void* ctx);

// Cores this process may use (at least 1; FUSEDRNN_CPU_CORES=n in the environment, read
// once, replaces the count: tests use it to run larger teams than the machine has).
int hardware_threads();

// Spin-then-sleep wait helpers shared by the barrier and the team (Linux futex, or yield).
void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected);
void futex_wake_all(std::atomic<uint32_t>* addr);
void cpu_relax();

}  // namespace cpu
}  // namespace fusedrnn
