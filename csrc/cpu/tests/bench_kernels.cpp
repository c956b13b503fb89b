// Micro-benchmark of the CPU recurrence kernels (no Python): GFLOP/s of the recurrent
// product (2*N*H*H flops per pass) at the sizes of issue 4, forward and BPTT, per team size.
//   build/cpu-tests/bench_kernels [reps]      the table below
//   build/cpu-tests/bench_kernels reps B H T [f64]      one shape
//   build/cpu-tests/bench_kernels gemm                  the GEMMs of the large rows
//   build/cpu-tests/bench_kernels gemm M N K at bt [f64]   one product (at, bt: 0 or 1)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "fusedrnn.h"
#include "gemm_cpu.h"
#include "kernels.h"

using namespace fusedrnn;

// FUSEDRNN_BENCH_CPUTIME=1 times with the process CPU clock instead of the wall clock:
// on a shared machine it leaves out the time the process was not running (use with
// single-thread runs; with a team it also counts the time spent waiting at barriers).
static double now_seconds() {
  static const bool cpu = std::getenv("FUSEDRNN_BENCH_CPUTIME") != nullptr;
  timespec ts;
  clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

template <class F>
static double min_seconds(F&& f, int reps) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_seconds();
    f();
    best = std::min(best, now_seconds() - t0);  // min: preemption only adds time
  }
  return best;
}

template <typename T>
static void bench(int64_t B, int64_t H, int64_t Tn, int nt, int reps) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 1);
  const int64_t N = Tn * B;
  std::vector<T> P(N * H), W(H * H), h(N * H), hn(B * H), G(N * H), dP(N * H), dh0(B * H);
  for (auto& v : P) v = T(nd(rng));
  for (auto& v : W) v = T(nd(rng) / std::sqrt(float(H)));
  for (auto& v : G) v = T(nd(rng));
  RecurrenceShape s;
  s.T = Tn;
  s.B = B;
  s.H = H;
  const double flops = 2.0 * double(N) * H * H;
  const double tf = min_seconds(
      [&] { rnn_forward_cpu<T>(s, P.data(), W.data(), nullptr, h.data(), H, hn.data(), nt); },
      reps);
  const double tb = min_seconds(
      [&] {
        rnn_backward_cpu<T>(s, W.data(), h.data(), H, G.data(), H, nullptr, dP.data(), dh0.data(),
                            nt);
      },
      reps);
  std::printf(
      "%-4s B=%-4ld H=%-5ld T=%-5ld threads=%d  fwd %10.2f us %7.1f GFLOP/s   bwd %10.2f us %7.1f "
      "GFLOP/s\n",
      sizeof(T) == 4 ? "f32" : "f64", long(B), long(H), long(Tn), nt, tf * 1e6, flops / tf / 1e9,
      tb * 1e6, flops / tb / 1e9);
}

template <typename T>
static void bench_tanh() {
  std::vector<T> x(4096), y(4096);
  for (size_t i = 0; i < x.size(); ++i) x[i] = T(-4.0 + 8.0 * double(i) / double(x.size()));
  const auto& k = cpu::select_kernels<T>();
  const double t = min_seconds(
      [&] {
        for (int r = 0; r < 100; ++r) k.tanh(x.data(), y.data(), int64_t(x.size()));
      },
      9);
  std::printf("tanh %s: %.3f ns/element\n", sizeof(T) == 4 ? "f32" : "f64", t / 100 / 4096 * 1e9);
}

// C[M,N] = op(A) op(B): the input projection (x W_ih^T), dX (dP W_ih), dW (dP^T x).
template <typename T = float>
static void bench_gemm(int64_t M, int64_t N, int64_t K, bool at, bool bt, int nt, int reps = 5) {
  std::vector<T> A(M * K, T(0.5)), B(K * N, T(0.25)), C(M * N);
  const double t = min_seconds(
      [&] {
        gemm_cpu<T>(M, N, K, A.data(), at ? M : K, at, B.data(), bt ? K : N, bt, C.data(), N,
                    nullptr, false, nt);
      },
      reps);
  std::printf("gemm %s M=%-6ld N=%-5ld K=%-6ld at=%d bt=%d threads=%d  %8.3f ms %7.1f GFLOP/s\n",
              sizeof(T) == 4 ? "f32" : "f64", long(M), long(N), long(K), at, bt, nt, t * 1e3,
              2.0 * M * N * K / t / 1e9);
}

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  std::printf("isa: %s\n", cpu_isa());
  bench_tanh<float>();
  bench_tanh<double>();
  if (argc > 6 && std::string(argv[1]) == "gemm") {  // gemm M N K at bt [f64]
    const bool f64 = argc > 7 && std::string(argv[7]) == "f64";
    const int64_t M = std::atoll(argv[2]), N = std::atoll(argv[3]), K = std::atoll(argv[4]);
    const bool at = std::atoi(argv[5]) != 0, bt = std::atoi(argv[6]) != 0;
    for (int nt : {1, 2}) {
      if (f64)
        bench_gemm<double>(M, N, K, at, bt, nt, 9);
      else
        bench_gemm<float>(M, N, K, at, bt, nt, 9);
    }
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "gemm") {
    for (int nt : {1, 2}) {
      bench_gemm(25600, 1024, 1024, false, true, nt);   // x W_ih^T
      bench_gemm(25600, 1024, 1024, false, false, nt);  // dP W_ih
      bench_gemm(1024, 1024, 25600, true, false, nt);   // dP^T x
      bench_gemm(6400, 256, 256, false, true, nt);
      bench_gemm(256, 256, 6400, true, false, nt);
    }
    return 0;
  }
  if (argc > 2) {  // bench_kernels reps B H T [f64]
    const bool f64 = argc > 5 && std::string(argv[5]) == "f64";
    for (int nt : {1, 2}) {
      if (f64)
        bench<double>(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), nt, reps);
      else
        bench<float>(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), nt, reps);
    }
    return 0;
  }
  const int64_t rows[][3] = {{1, 64, 100},   {1, 256, 100},   {8, 256, 100},    {64, 256, 100},
                             {1, 1024, 100}, {64, 1024, 100}, {256, 1024, 100}, {16, 128, 1000},
                             {32, 256, 200}, {1, 32, 1}};
  for (auto& r : rows)
    for (int nt : {1, 2}) bench<float>(r[0], r[1], r[2], nt, reps);
  for (int nt : {1, 2}) bench<double>(64, 1024, 100, nt, reps);
  return 0;
}
