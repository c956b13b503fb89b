// Correctness of the CPU kernels against a naive float64 recurrence, bitwise equality
// across thread counts, and the accuracy of the SIMD tanh. Exit status 0 = all passed.
// --quick: the tanh sweeps 20x sparser (for emulated runs: scripts/test_aarch64.sh).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "fusedrnn.h"
#include "gemm_cpu.h"
#include "kernels.h"
#include "layer_cpu.h"

using namespace fusedrnn;

static int g_fail = 0;
static int g_tanh_thin = 1;  // --quick: 20
#define CHECK(cond, ...)                               \
  do {                                                 \
    if (!(cond)) {                                     \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
      ++g_fail;                                        \
    }                                                  \
  } while (0)

struct Case {
  int64_t T, B, H;
  bool packed, reverse;
  Activation act;
  bool use_h0, use_G, use_dhn, use_dh0, alias;
};

static std::vector<int64_t> make_batch_sizes(const Case& c, std::mt19937& rng) {
  std::vector<int64_t> bs(c.T, c.B);
  if (c.packed) {
    std::vector<int64_t> len(c.B);
    for (int64_t b = 0; b < c.B; ++b) len[b] = 1 + rng() % c.T;
    len[0] = c.T;
    std::sort(len.begin(), len.end(), std::greater<int64_t>());
    for (int64_t t = 0; t < c.T; ++t) {
      bs[t] = 0;
      for (int64_t b = 0; b < c.B; ++b) bs[t] += len[b] > t;
    }
  }
  return bs;
}

// Naive float64 forward + BPTT with the contract's semantics.
static void reference(const Case& c, const std::vector<int64_t>& bs, const std::vector<double>& P,
                      const std::vector<double>& W, const std::vector<double>* h0,
                      const std::vector<double>* G, const std::vector<double>* dhn,
                      std::vector<double>& h, std::vector<double>& hn, std::vector<double>& dP,
                      std::vector<double>& dh0) {
  const int64_t T = c.T, B = c.B, H = c.H;
  std::vector<int64_t> off(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) off[t + 1] = off[t] + bs[t];
  const int64_t N = off[T];
  h.assign(N * H, 0);
  hn.assign(B * H, 0);
  auto phi = [&](double x) { return c.act == Activation::kTanh ? std::tanh(x) : (x > 0 ? x : 0); };
  auto dphi = [&](double y) {
    return c.act == Activation::kTanh ? 1 - y * y : (y > 0 ? 1.0 : 0.0);
  };
  // per sequence b: its steps in forward-walk order
  for (int64_t b = 0; b < B; ++b) {
    int64_t len = 0;
    while (len < T && bs[len] > b) ++len;
    std::vector<double> prev(H, 0);
    if (h0)
      for (int64_t j = 0; j < H; ++j) prev[j] = (*h0)[b * H + j];
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = c.reverse ? len - 1 - i : i;
      const int64_t row = off[t] + b;
      for (int64_t j = 0; j < H; ++j) {
        double a = P[row * H + j];
        for (int64_t k = 0; k < H; ++k) a += prev[k] * W[j * H + k];
        h[row * H + j] = phi(a);
      }
      for (int64_t j = 0; j < H; ++j) prev[j] = h[row * H + j];
    }
    for (int64_t j = 0; j < H; ++j) hn[b * H + j] = prev[j];
  }
  dP.assign(N * H, 0);
  dh0.assign(B * H, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t len = 0;
    while (len < T && bs[len] > b) ++len;
    std::vector<double> dnext(H, 0);  // dL/dh of the current step from later steps
    if (dhn)
      for (int64_t j = 0; j < H; ++j) dnext[j] = (*dhn)[b * H + j];
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t t = c.reverse ? len - 1 - i : i;
      const int64_t row = off[t] + b;
      std::vector<double> d(H);
      for (int64_t j = 0; j < H; ++j)
        d[j] = (dnext[j] + (G ? (*G)[row * H + j] : 0)) * dphi(h[row * H + j]);
      for (int64_t j = 0; j < H; ++j) dP[row * H + j] = d[j];
      for (int64_t k = 0; k < H; ++k) {
        double a = 0;
        for (int64_t j = 0; j < H; ++j) a += d[j] * W[j * H + k];
        dnext[k] = a;
      }
    }
    for (int64_t j = 0; j < H; ++j) dh0[b * H + j] = dnext[j];
  }
}

template <typename T>
static double max_rel_err(const std::vector<T>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(double(got[i]) - want[i]) / (1e-3 + std::fabs(want[i]));
    if (!(d <= e)) e = d;  // NaN-safe
  }
  return e;
}

template <typename T>
static void run_case(const Case& c, std::mt19937& rng, double tol) {
  const int64_t T_ = c.T, B = c.B, H = c.H;
  std::vector<int64_t> bs = make_batch_sizes(c, rng);
  int64_t N = 0;
  for (auto v : bs) N += v;
  std::normal_distribution<double> nd(0.0, 1.0);
  const double ws = 1.0 / std::sqrt(double(H));
  std::vector<T> P(N * H), W(H * H), h0(B * H), G(N * H), dhn(B * H);
  for (auto& v : P) v = T(nd(rng));
  for (auto& v : W) v = T(nd(rng) * ws);
  for (auto& v : h0) v = T(nd(rng) * 0.5);
  for (auto& v : G) v = T(nd(rng));
  for (auto& v : dhn) v = T(nd(rng));
  auto dbl = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  std::vector<double> Pd = dbl(P), Wd = dbl(W), h0d = dbl(h0), Gd = dbl(G), dhnd = dbl(dhn);
  std::vector<double> rh, rhn, rdP, rdh0;
  reference(c, bs, Pd, Wd, c.use_h0 ? &h0d : nullptr, c.use_G ? &Gd : nullptr,
            c.use_dhn ? &dhnd : nullptr, rh, rhn, rdP, rdh0);

  const RecurrenceShape s{T_, B, H, c.packed ? bs.data() : nullptr, c.reverse, c.act};
  std::vector<T> first_h, first_dP, first_hn, first_dh0;
  for (int nt : {1, 2, 3}) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> h(N * H, nan), hn(B * H, nan), dP(N * H, nan), dh0(B * H, nan);
    T* hp = h.data();
    std::vector<T> Pc = P;
    if (c.alias) hp = Pc.data();  // h aliases P
    rnn_forward_cpu<T>(s, Pc.data(), W.data(), c.use_h0 ? h0.data() : nullptr, hp, H, hn.data(),
                       nt);
    if (c.alias) h = Pc;
    std::vector<T> Gc = G;
    T* dPp = dP.data();
    if (c.alias && c.use_G) dPp = Gc.data();  // dP aliases G
    rnn_backward_cpu<T>(s, W.data(), h.data(), H, c.use_G ? Gc.data() : nullptr, H,
                        c.use_dhn ? dhn.data() : nullptr, dPp, c.use_dh0 ? dh0.data() : nullptr,
                        nt);
    if (c.alias && c.use_G) dP = Gc;
    const double eh = max_rel_err(h, rh), ehn = max_rel_err(hn, rhn), ed = max_rel_err(dP, rdP);
    const double ed0 = c.use_dh0 ? max_rel_err(dh0, rdh0) : 0.0;
    CHECK(eh < tol && ehn < tol && ed < tol && ed0 < tol,
          "%s T=%ld B=%ld H=%ld packed=%d rev=%d act=%d h0=%d G=%d dhn=%d dh0=%d alias=%d nt=%d: "
          "err h %.3g hn %.3g dP %.3g dh0 %.3g",
          sizeof(T) == 4 ? "f32" : "f64", long(T_), long(B), long(H), c.packed, c.reverse,
          int(c.act), c.use_h0, c.use_G, c.use_dhn, c.use_dh0, c.alias, nt, eh, ehn, ed, ed0);
    if (nt == 1) {
      first_h = h, first_dP = dP, first_hn = hn, first_dh0 = dh0;
    } else {
      const bool same =
          std::memcmp(h.data(), first_h.data(), h.size() * sizeof(T)) == 0 &&
          std::memcmp(dP.data(), first_dP.data(), dP.size() * sizeof(T)) == 0 &&
          std::memcmp(hn.data(), first_hn.data(), hn.size() * sizeof(T)) == 0 &&
          (!c.use_dh0 || std::memcmp(dh0.data(), first_dh0.data(), dh0.size() * sizeof(T)) == 0);
      CHECK(same, "results with %d threads differ from 1 thread (T=%ld B=%ld H=%ld)", nt, long(T_),
            long(B), long(H));
    }
  }
}

template <typename T>
static void tanh_check(const cpu::KernelTable<T>& k, const std::vector<T>& x, double* max_ulp,
                       T* worst) {
  std::vector<T> y(x.size());
  k.tanh(x.data(), y.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const T want = std::tanh(x[i]);
    const double ulp =
        std::fabs(double(y[i]) - double(want)) /
        (std::nextafter(std::fabs(want), std::numeric_limits<T>::infinity()) - std::fabs(want));
    if (!(ulp <= *max_ulp)) {
      *max_ulp = ulp;
      *worst = x[i];
    }
  }
}

template <typename T>
static void test_tanh(const cpu::KernelTable<T>& k) {
  // float: every 5th float with |x| < 12 (both signs, ~0.4e9 points) plus specials;
  // double: 4e6 random points log-uniform in [1e-18, 1e3]. --quick: every 100th float,
  // 2e5 doubles.
  double max_ulp = 0;
  T worst = 0;
  size_t count = 0;
  std::vector<T> x;
  auto flush = [&] {
    tanh_check(k, x, &max_ulp, &worst);
    count += x.size();
    x.clear();
  };
  if (sizeof(T) == 4) {
    const uint32_t step = 5u * uint32_t(g_tanh_thin);
    for (uint32_t u = 0; u < 0x41400000u; u += step) {  // |x| < 12
      float f;
      std::memcpy(&f, &u, 4);
      x.push_back(T(f));
      x.push_back(T(-f));
      if (x.size() >= (1u << 20)) flush();
    }
  } else {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 4000000 / g_tanh_thin; ++i) {
      const double e = std::ldexp(1.0, int(rng() % 70) - 60);
      const double v = e * (1.0 + double(rng() % 1000000) / 1e6);
      x.push_back(T(i % 2 ? v : -v));
      if (x.size() >= (1u << 20)) flush();
    }
  }
  const T specials[] = {T(0),
                        T(-0.0),
                        T(1e-30),
                        T(-1e-30),
                        T(9),
                        T(20),
                        T(40),
                        T(100),
                        T(-1e30),
                        std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity(),
                        std::numeric_limits<T>::denorm_min()};
  for (T v : specials) x.push_back(v);
  flush();
  T nan_in = std::numeric_limits<T>::quiet_NaN(), nan_out = 0;
  k.tanh(&nan_in, &nan_out, 1);
  std::printf("tanh %s %s: %zu points, max error %.2f ulp (at x = %.9g)\n", k.isa,
              sizeof(T) == 4 ? "f32" : "f64", count, max_ulp, double(worst));
  CHECK(max_ulp <= 4.0, "tanh error %.2f ulp at %.9g", max_ulp, double(worst));
  CHECK(std::isnan(nan_out), "tanh(NaN) is not NaN");
}

// gemm_cpu_rows must give gemm_cpu's bits on the gathered matrix: rows in scattered order,
// repeated rows, rows of zeros (nullptr), one and several K blocks, 1-3 threads.
template <typename T>
static void test_gemm_rows(std::mt19937& rng) {
  const int64_t shapes[][3] = {{1, 1, 1}, {17, 33, 40}, {64, 96, 1500}, {9, 300, 700}, {30, 50, 6}};
  int n = 0;
  for (auto& sh : shapes)
    for (int at = 0; at < 2; ++at)
      for (int acc = 0; acc < 2; ++acc) {
        const int64_t M = sh[0], N = sh[1], K = sh[2], R = K / 2 + 1;  // R source rows
        std::normal_distribution<double> nd(0, 1);
        std::vector<T> A(M * K), src(R * (N + 3)), C0(M * N), gathered(K * N, T(0));
        for (auto& v : A) v = T(nd(rng));
        for (auto& v : src) v = T(nd(rng));
        for (auto& v : C0) v = T(nd(rng));
        std::vector<const T*> rows(K);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t r = int64_t(rng() % (R + 1));  // R: a row of zeros
          rows[k] = r < R ? src.data() + r * (N + 3) : nullptr;
          if (rows[k]) std::memcpy(gathered.data() + k * N, rows[k], sizeof(T) * N);
        }
        const int64_t lda = at ? M : K;
        for (int nt : {1, 2, 3}) {
          std::vector<T> want = C0, got = C0;
          gemm_cpu<T>(M, N, K, A.data(), lda, at, gathered.data(), N, false, want.data(), N,
                      nullptr, acc, nt);
          gemm_cpu_rows<T>(M, N, K, A.data(), lda, at, rows.data(), got.data(), N, acc, nt);
          CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(T)) == 0,
                "gemm_cpu_rows M=%ld N=%ld K=%ld at=%d acc=%d nt=%d differs from gemm_cpu", long(M),
                long(N), long(K), at, acc, nt);
        }
        ++n;
      }
  std::printf("gemm_cpu_rows %s: %d cases x {1, 2, 3 threads}: %s\n",
              sizeof(T) == 4 ? "f32" : "f64", n, g_fail ? "FAILED" : "ok");
}

// gemm_cpu_pair must give each product's gemm_cpu (gemm_cpu_rows) bits, for any team: the
// weight gradients' pair (a transposed A shared, one B by rows, several K blocks), unequal
// shapes, a product too small for the packed tiles, narrow ones (N = 2: narrow on every
// table), and accumulation into C.
template <typename T>
static void test_gemm_pair(std::mt19937& rng) {
  // {M, N, K} of each product, whether the second reads B by rows, accumulate
  const int64_t cases[][8] = {
      {64, 48, 1700, 64, 48, 1690, 1, 0},     {33, 17, 1040, 33, 17, 1039, 0, 1},
      {40, 300, 1100, 9, 5, 2000, 1, 1},      {20, 20, 5, 20, 20, 500, 0, 0},
      {3, 10, 1100, 70, 90, 1100, 1, 0},      {1, 1, 1, 1, 1, 1, 0, 0},
      {64, 48, 1700, 64, 64, 1650, 0, 0},      // unequal: one after the other
      {64, 64, 700, 64, 64, 690, 0, 0},        // one K block: the same
      {200, 200, 1500, 200, 200, 1450, 1, 0},  // a team for each
      {16, 2, 1700, 16, 2, 1690, 1, 0},        // both narrow (gemm_tn_narrow), a thread each
      {40, 2, 2100, 40, 2, 2000, 0, 1}};       // both narrow, several tiles and K blocks
  int n = 0;
  for (auto& c : cases) {
    std::normal_distribution<double> nd(0, 1);
    const int64_t M0 = c[0], N0 = c[1], K0 = c[2], M1 = c[3], N1 = c[4], K1 = c[5];
    const bool rows = c[6] != 0, acc = c[7] != 0;
    std::vector<T> A0(K0 * M0), B0(K0 * N0), A1(K1 * M1), B1(K1 * N1), C0(M0 * N0), C1(M1 * N1);
    for (auto* v : {&A0, &B0, &A1, &B1, &C0, &C1})
      for (auto& e : *v) e = T(nd(rng));
    std::vector<const T*> b_rows(K1);
    for (int64_t k = 0; k < K1; ++k) b_rows[k] = k % 7 == 3 ? nullptr : B1.data() + k * N1;
    for (int nt : {1, 2, 3, 4}) {
      std::vector<T> w0 = C0, w1 = C1, g0 = C0, g1 = C1;
      gemm_cpu<T>(M0, N0, K0, A0.data(), M0, true, B0.data(), N0, false, w0.data(), N0, nullptr,
                  acc, nt);
      if (rows)
        gemm_cpu_rows<T>(M1, N1, K1, A1.data(), M1, true, b_rows.data(), w1.data(), N1, acc, nt);
      else
        gemm_cpu<T>(M1, N1, K1, A1.data(), M1, true, B1.data(), N1, false, w1.data(), N1, nullptr,
                    acc, nt);
      const GemmArgs<T> p{M0, N0,    K0,      A0.data(), M0, true, B0.data(),
                          N0, false, nullptr, g0.data(), N0, acc};
      const GemmArgs<T> q{M1,        N1,        K1, A1.data(), M1,
                          true,      B1.data(), N1, false,     rows ? b_rows.data() : nullptr,
                          g1.data(), N1,        acc};
      gemm_cpu_pair<T>(p, q, nt);
      CHECK(std::memcmp(w0.data(), g0.data(), w0.size() * sizeof(T)) == 0 &&
                std::memcmp(w1.data(), g1.data(), w1.size() * sizeof(T)) == 0,
            "gemm_cpu_pair %ldx%ldx%ld + %ldx%ldx%ld (rows %d, acc %d) with %d threads differs "
            "from gemm_cpu",
            long(M0), long(N0), long(K0), long(M1), long(N1), long(K1), int(rows), int(acc), nt);
    }
    ++n;
  }
  std::printf("gemm_cpu_pair %s: %d cases x {1-4 threads}: %s\n", sizeof(T) == 4 ? "f32" : "f64", n,
              g_fail ? "FAILED" : "ok");
}

template <typename T>
static void test_gemm(std::mt19937& rng, double tol) {
  // {45, 70, 200}: 128 <= K < 512 with a row-major A, 6-row tiles over full and edge panels.
  const int64_t shapes[][3] = {{1, 1, 1},      {7, 5, 3},      {33, 65, 17},  {40, 70, 5},
                               {130, 47, 600}, {5, 300, 1000}, {301, 2, 257}, {12, 33, 8},
                               {30, 40, 14},   {45, 70, 200}};
  int n = 0;
  for (auto& sh : shapes)
    for (int at = 0; at < 2; ++at)
      for (int bt = 0; bt < 2; ++bt)
        for (int acc = 0; acc < 2; ++acc) {
          const int64_t M = sh[0], N = sh[1], K = sh[2];
          std::normal_distribution<double> nd(0, 1);
          std::vector<T> A(M * K), B(K * N), C0(M * N), bias(N);
          for (auto& v : A) v = T(nd(rng));
          for (auto& v : B) v = T(nd(rng));
          for (auto& v : C0) v = T(nd(rng));
          for (auto& v : bias) v = T(nd(rng));
          const int64_t lda = at ? M : K, ldb = bt ? K : N;
          std::vector<double> want(M * N);
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double s = acc ? double(C0[i * N + j]) : 0.0;
              for (int64_t k = 0; k < K; ++k)
                s += double(at ? A[k * lda + i] : A[i * lda + k]) *
                     double(bt ? B[j * ldb + k] : B[k * ldb + j]);
              want[i * N + j] = s + (acc ? 0.0 : double(bias[j]));
            }
          std::vector<T> first;
          for (int nt : {1, 2, 3}) {
            std::vector<T> C = C0;
            gemm_cpu<T>(M, N, K, A.data(), lda, at, B.data(), ldb, bt, C.data(), N,
                        acc ? nullptr : bias.data(), acc, nt);
            double e = 0;
            for (int64_t i = 0; i < M * N; ++i)
              e = std::max(e, std::fabs(double(C[i]) - want[i]) /
                                  (std::sqrt(double(K)) + std::fabs(want[i])));
            CHECK(e < tol, "gemm M=%ld N=%ld K=%ld at=%d bt=%d acc=%d nt=%d: err %.3g", long(M),
                  long(N), long(K), at, bt, acc, nt, e);
            if (nt == 1)
              first = C;
            else
              CHECK(std::memcmp(first.data(), C.data(), C.size() * sizeof(T)) == 0,
                    "gemm results with %d threads differ from 1 thread", nt);
          }
          ++n;
        }
  std::printf("gemm %s: %d cases x {1, 2, 3 threads}: %s\n", sizeof(T) == 4 ? "f32" : "f64", n,
              g_fail ? "FAILED" : "ok");
}

// A^T with long rows (lda of 1 KB or more), which a table may read from a copy
// (kernels_impl.h, gemm_copied_a: the AVX2 tables): the same A at lda = M, rows shorter
// than 1 KB (read in place), and in a buffer with lda = 1040 must give the same bits, with a
// bias or accumulating, over one and several K blocks and row blocks (90 rows at K = 1500),
// on 1 and 2 threads.
template <typename T>
static void test_copied_a_trans(std::mt19937& rng) {
  std::normal_distribution<double> nd(0, 1);
  const int64_t shapes[][3] = {{100, 40, 300}, {90, 17, 1500}, {13, 70, 64}};
  int n = 0;
  for (auto& sh : shapes)
    for (int acc = 0; acc < 2; ++acc)
      for (int nt : {1, 2}) {
        const int64_t M = sh[0], N = sh[1], K = sh[2], wide = 1040;
        std::vector<T> A(K * M), Aw(K * wide, T(-7)), B(K * N), C0(M * N), bias(N);
        for (auto& v : A) v = T(nd(rng));
        for (auto& v : B) v = T(nd(rng));
        for (auto& v : C0) v = T(nd(rng));
        for (auto& v : bias) v = T(nd(rng));
        for (int64_t k = 0; k < K; ++k)
          std::memcpy(Aw.data() + k * wide, A.data() + k * M, size_t(M) * sizeof(T));
        std::vector<T> C1 = C0, C2 = C0;
        gemm_cpu<T>(M, N, K, A.data(), M, true, B.data(), N, false, C1.data(), N,
                    acc ? nullptr : bias.data(), acc, nt);
        gemm_cpu<T>(M, N, K, Aw.data(), wide, true, B.data(), N, false, C2.data(), N,
                    acc ? nullptr : bias.data(), acc, nt);
        CHECK(std::memcmp(C1.data(), C2.data(), C1.size() * sizeof(T)) == 0,
              "gemm A^T M=%ld N=%ld K=%ld acc=%d nt=%d: lda %ld and %ld differ", long(M), long(N),
              long(K), acc, nt, long(M), long(wide));
        double e = 0;
        for (int64_t i = 0; i < M; i += 97)
          for (int64_t j = 0; j < N; ++j) {
            double want = acc ? double(C0[i * N + j]) : double(bias[j]);
            for (int64_t k = 0; k < K; ++k) want += double(A[k * M + i]) * double(B[k * N + j]);
            e = std::max(e, std::fabs(double(C2[i * N + j]) - want) /
                                (std::sqrt(double(K)) + std::fabs(want)));
          }
        CHECK(e < (sizeof(T) == 4 ? 1e-5 : 1e-13), "gemm A^T M=%ld K=%ld: err %.3g", long(M),
              long(K), e);
        ++n;
      }
  std::printf("gemm A^T in place vs lda %d %s: %d cases: %s\n", 1040,
              sizeof(T) == 4 ? "f32" : "f64", n, g_fail ? "FAILED" : "ok");
}

// Row strides: h (and P) in a wider buffer (ldh > H), G in a wider buffer (ldg > H) or one
// row for all rows (ldg = 0). Results must equal the contiguous ones bitwise.
template <typename T>
static void test_strides(std::mt19937& rng) {
  std::normal_distribution<double> nd(0, 1);
  int checked = 0;
  const int64_t shapes[][3] = {{6, 5, 37}, {4, 17, 64}};
  for (const auto& sh : shapes) {
    for (int packed = 0; packed < 2; ++packed) {
      for (int rev = 0; rev < 2; ++rev) {
        const Case c{sh[0], sh[1], sh[2], bool(packed), bool(rev), Activation::kTanh,
                     true,  true,  true,  true,         false};
        const std::vector<int64_t> bs = make_batch_sizes(c, rng);
        const int64_t H = c.H, B = c.B;
        int64_t N = 0;
        for (int64_t v : bs) N += v;
        std::vector<T> P(N * H), W(H * H), h0(B * H), dhn(B * H), row(H);
        for (auto& v : P) v = T(nd(rng));
        for (auto& v : W) v = T(nd(rng) / std::sqrt(double(H)));
        for (auto& v : h0) v = T(nd(rng));
        for (auto& v : dhn) v = T(nd(rng));
        for (auto& v : row) v = T(nd(rng));
        std::vector<T> G(N * H);  // every row the same, so ldg = 0 can stand for it
        for (int64_t r = 0; r < N; ++r) std::copy(row.begin(), row.end(), G.begin() + r * H);
        const RecurrenceShape s{c.T, B, H, packed ? bs.data() : nullptr, bool(rev)};
        for (int nt : {1, 2}) {
          std::vector<T> h(N * H), hn(B * H), dP(N * H), dh0(B * H);
          rnn_forward_cpu<T>(s, P.data(), W.data(), h0.data(), h.data(), H, hn.data(), nt);
          rnn_backward_cpu<T>(s, W.data(), h.data(), H, G.data(), H, dhn.data(), dP.data(),
                              dh0.data(), nt);
          const int64_t ldh = H + 3, ldg = H + 5;
          std::vector<T> hw(N * ldh, T(-7)), hnw(B * H), Gw(N * ldg, T(-9));
          for (int64_t r = 0; r < N; ++r) {
            std::copy(P.begin() + r * H, P.begin() + (r + 1) * H, hw.begin() + r * ldh);
            std::copy(G.begin() + r * H, G.begin() + (r + 1) * H, Gw.begin() + r * ldg);
          }
          rnn_forward_cpu<T>(s, hw.data(), W.data(), h0.data(), hw.data(), ldh, hnw.data(), nt);
          bool same_h = hn == hnw;
          for (int64_t r = 0; r < N; ++r) {
            same_h = same_h &&
                     std::equal(h.begin() + r * H, h.begin() + (r + 1) * H,
                                hw.begin() + r * ldh) &&
                     hw[r * ldh + H] == T(-7);  // the columns past H are not touched
          }
          CHECK(same_h,
                "forward with ldh = H + 3 differs (T=%ld B=%ld H=%ld packed=%d rev=%d "
                "nt=%d)",
                long(c.T), long(B), long(H), packed, rev, nt);
          for (int64_t ld : {ldg, int64_t(0)}) {
            std::vector<T> dPw(N * H), dh0w(B * H);
            rnn_backward_cpu<T>(s, W.data(), hw.data(), ldh, ld ? Gw.data() : row.data(), ld,
                                dhn.data(), dPw.data(), dh0w.data(), nt);
            CHECK(dPw == dP && dh0w == dh0,
                  "backward with ldh = H + 3, ldg = %ld differs (T=%ld B=%ld H=%ld packed=%d "
                  "rev=%d nt=%d)",
                  long(ld), long(c.T), long(B), long(H), packed, rev, nt);
            ++checked;
          }
        }
      }
    }
  }
  std::printf("strided h / G (%s): %d cases: %s\n", sizeof(T) == 4 ? "f32" : "f64", checked,
              g_fail ? "FAILED" : "ok");
}

// The first b of B sequences of a padded [Tn, B, H] buffer, as [Tn, b, H].
template <typename T>
static std::vector<T> first_sequences(const std::vector<T>& v, int64_t Tn, int64_t B, int64_t b,
                                      int64_t H) {
  std::vector<T> out(size_t(Tn * b * H));
  for (int64_t t = 0; t < Tn; ++t)
    std::copy_n(v.begin() + t * B * H, b * H, out.begin() + t * b * H);
  return out;
}

// The few-row paths that read W in place must give the packed kernels' results bitwise
// where they claim to: gemm with B as it is (M <= 8) and BPTT (B <= 8, B * T <= 32, W_hh in
// L2 or under 8 rows: backward_direct). Rows are independent in both, so the first rows of
// a larger, packed call are the reference.
template <typename T>
static void test_in_place_matches_packed(std::mt19937& rng) {
  std::normal_distribution<double> nd(0, 1);
  int checked = 0;
  for (int64_t K : {int64_t(3), int64_t(100), int64_t(1500)}) {
    const int64_t N = 77;
    for (int acc = 0; acc < 2; ++acc) {
      std::vector<T> A(9 * K), B(K * N), C0(9 * N), bias(N);
      for (auto* v : {&A, &B, &C0, &bias})
        for (auto& e : *v) e = T(nd(rng));
      // 8 rows: two groups of 4; 1 and 5: a group of one row (its own strips on AVX2).
      for (int64_t m : {int64_t(8), int64_t(1), int64_t(5)})
        for (int nt : {1, 2}) {
          std::vector<T> Cp = C0, Cd = C0;
          gemm_cpu<T>(9, N, K, A.data(), K, false, B.data(), N, false, Cp.data(), N,
                      acc ? nullptr : bias.data(), acc, nt);
          gemm_cpu<T>(m, N, K, A.data(), K, false, B.data(), N, false, Cd.data(), N,
                      acc ? nullptr : bias.data(), acc, nt);
          CHECK(std::equal(Cd.begin(), Cd.begin() + m * N, Cp.begin()),
                "gemm with %ld rows (B read in place) differs from the packed 9-row gemm (K=%ld "
                "accumulate=%d nt=%d)",
                long(m), long(K), acc, nt);
          ++checked;
        }
    }
  }
  // H = 520: W_hh past 512 KB in float32, where BPTT packs it from 8 rows over the steps
  // (backward_direct): Bd = 8 and 5 packed, Bd = 1 in place.
  for (int64_t H : {int64_t(5), int64_t(64), int64_t(300), int64_t(520)}) {
    for (int rev = 0; rev < 2; ++rev) {
      const int64_t Tn = 4;
      std::vector<T> W(H * H), h(Tn * 9 * H), G(Tn * 9 * H), dhn(9 * H);
      for (auto& v : W) v = T(nd(rng) / std::sqrt(double(H)));
      for (auto& v : h) v = T(std::tanh(nd(rng)));
      for (auto& v : G) v = T(nd(rng));
      for (auto& v : dhn) v = T(nd(rng));
      const RecurrenceShape s9{Tn, 9, H, nullptr, bool(rev)};
      // The first Bd of the same 9 sequences: step t's rows are t*B .. t*B+B-1. Bd = 8 is
      // two groups of 4 rows; 1 and 5 have a group of one row: at Bd = 1 over chunks of 4
      // panels (the 8-vector strips on AVX2 from H = 64), at Bd = 5 over chunks of 2.
      for (int64_t Bd : {int64_t(8), int64_t(1), int64_t(5)}) {
        const std::vector<T> hd = first_sequences(h, Tn, 9, Bd, H);
        const std::vector<T> Gd = first_sequences(G, Tn, 9, Bd, H);
        const RecurrenceShape sd{Tn, Bd, H, nullptr, bool(rev)};
        for (int nt : {1, 2}) {
          std::vector<T> dP9(Tn * 9 * H), dh09(9 * H), dPd(Tn * Bd * H), dh0d(Bd * H);
          rnn_backward_cpu<T>(s9, W.data(), h.data(), H, G.data(), H, dhn.data(), dP9.data(),
                              dh09.data(), nt);
          rnn_backward_cpu<T>(sd, W.data(), hd.data(), H, Gd.data(), H, dhn.data(), dPd.data(),
                              dh0d.data(), nt);
          const bool same = std::equal(dh0d.begin(), dh0d.end(), dh09.begin()) &&
                            dPd == first_sequences(dP9, Tn, 9, Bd, H);
          CHECK(same,
                "BPTT with B = %ld (W_hh read in place) differs from B = 9 (packed) (H=%ld "
                "rev=%d nt=%d)",
                long(Bd), long(H), rev, nt);
          ++checked;
        }
      }
    }
  }
  // One-row packed tiles (1 x 4 panels on every table since session 27) against two-row
  // ones: a single sequence (B = 1, T = 40: packed, not in place) must give the first of
  // two sequences' bits, forward and BPTT, both directions.
  for (int64_t H : {int64_t(64), int64_t(100), int64_t(300)}) {
    for (int rev = 0; rev < 2; ++rev) {
      const int64_t Tn = 40;
      std::vector<T> W(H * H), P(Tn * 2 * H), G(Tn * 2 * H), dhn(2 * H);
      for (auto& v : W) v = T(nd(rng) / std::sqrt(double(H)));
      for (auto& v : P) v = T(nd(rng));
      for (auto& v : G) v = T(nd(rng));
      for (auto& v : dhn) v = T(nd(rng));
      const std::vector<T> P1 = first_sequences(P, Tn, 2, 1, H),
                           G1 = first_sequences(G, Tn, 2, 1, H);
      const RecurrenceShape s2{Tn, 2, H, nullptr, bool(rev)}, s1{Tn, 1, H, nullptr, bool(rev)};
      std::vector<T> h2(Tn * 2 * H), hn2(2 * H), h1(Tn * H), hn1(H);
      rnn_forward_cpu<T>(s2, P.data(), W.data(), nullptr, h2.data(), H, hn2.data(), 1);
      rnn_forward_cpu<T>(s1, P1.data(), W.data(), nullptr, h1.data(), H, hn1.data(), 1);
      std::vector<T> dP2(Tn * 2 * H), dh02(2 * H), dP1(Tn * H), dh01(H);
      rnn_backward_cpu<T>(s2, W.data(), h2.data(), H, G.data(), H, dhn.data(), dP2.data(),
                          dh02.data(), 1);
      rnn_backward_cpu<T>(s1, W.data(), h1.data(), H, G1.data(), H, dhn.data(), dP1.data(),
                          dh01.data(), 1);
      const bool same = std::equal(hn1.begin(), hn1.end(), hn2.begin()) &&
                        std::equal(dh01.begin(), dh01.end(), dh02.begin()) &&
                        h1 == first_sequences(h2, Tn, 2, 1, H) &&
                        dP1 == first_sequences(dP2, Tn, 2, 1, H);
      CHECK(same, "one sequence differs from the first of two (packed tiles, H=%ld rev=%d)",
            long(H), rev);
      ++checked;
    }
  }
  std::printf("in place vs packed (%s): %d cases: %s\n", sizeof(T) == 4 ? "f32" : "f64", checked,
              g_fail ? "FAILED" : "ok");
}

// A B with B at most one vector wide runs on gemm_narrow (B read in place, no panels): its
// columns must be bitwise those of the packed tiles, which a B one column wider than the
// table's narrow_n takes. Columns are independent, so the wider product's first columns are
// the reference: A as it is and transposed; B as it is, transposed and by rows (zero rows
// included); accumulating or not, with a bias or not; one tile and several (M past the
// tile height), K in one block and in several (past 512 for A^T, 2048 for A); 1-3 threads.
template <typename T>
static void test_narrow_matches_packed(std::mt19937& rng) {
  const cpu::KernelTable<T>& k = cpu::select_kernels<T>();
  const int64_t wide = k.narrow_n + 1;
  std::normal_distribution<double> nd(0, 1);
  int checked = 0;
  for (int64_t M : {int64_t(3), int64_t(9), int64_t(16), int64_t(40)})
    for (int64_t K : {int64_t(13), int64_t(600), int64_t(1300), int64_t(2500)})
      for (int64_t N : {int64_t(1), std::max<int64_t>(1, k.narrow_n - 3), int64_t(k.narrow_n)})
        for (int at = 0; at < 2; ++at)
          for (int bform = 0; bform < 3; ++bform)  // B as it is, transposed, by rows
            for (int acc = 0; acc < 2; ++acc) {
              const bool bt = bform == 1, by_rows = bform == 2, with_bias = !by_rows && acc == at;
              std::vector<T> A(K * M), B(K * wide), C0(M * wide), bias(wide);
              for (auto* v : {&A, &B, &C0, &bias})
                for (auto& e : *v) e = T(nd(rng));
              const int64_t lda = at ? M : K, ldb = bt ? K : wide;
              std::vector<const T*> rows(K);
              for (int64_t kk = 0; kk < K; ++kk) {
                rows[kk] = kk % 5 == 2 ? nullptr : B.data() + kk * wide;
                if (by_rows && !rows[kk])  // the reference: zeros where a row is missing
                  std::fill(B.begin() + kk * wide, B.begin() + (kk + 1) * wide, T(0));
              }
              const T* b = with_bias ? bias.data() : nullptr;
              for (int nt : {1, 2, 3}) {
                std::vector<T> want = C0, got = C0;
                gemm_cpu<T>(M, wide, K, A.data(), lda, at, B.data(), ldb, bt, want.data(), wide, b,
                            acc, nt);
                if (by_rows)
                  gemm_cpu_rows<T>(M, N, K, A.data(), lda, at, rows.data(), got.data(), wide, acc,
                                   nt);
                else
                  gemm_cpu<T>(M, N, K, A.data(), lda, at, B.data(), ldb, bt, got.data(), wide, b,
                              acc, nt);
                bool same = true;
                for (int64_t i = 0; i < M; ++i)
                  for (int64_t j = 0; j < wide; ++j)  // the columns past N untouched
                    same = same && std::memcmp(&got[i * wide + j],
                                               j < N ? &want[i * wide + j] : &C0[i * wide + j],
                                               sizeof(T)) == 0;
                CHECK(same,
                      "narrow A B M=%ld N=%ld K=%ld at=%d B form %d acc=%d bias=%d nt=%d differs "
                      "from the packed tiles",
                      long(M), long(N), long(K), at, bform, acc, int(with_bias), nt);
                ++checked;
              }
            }
  std::printf("narrow vs packed (%s, narrow_n %d): %d cases: %s\n", sizeof(T) == 4 ? "f32" : "f64",
              k.narrow_n, checked, g_fail ? "FAILED" : "ok");
}

// The forward recurrence at H <= narrow_n runs its steps on the narrow tiles. Each h_t[b, j]
// must be the packed kernel's value: phi(P_t[b, j] + (one fma chain over k in order of
// h_{t-1}[b, k] W_hh[j, k])), phi the table's own tanh (or relu). Emulated here with std::fma,
// so only where the table's fma is one (AVX2, AVX-512; the generic table on x86 multiplies
// and adds); padded and packed, both directions, 1-3 threads.
template <typename T>
static void test_narrow_recurrence_chain(std::mt19937& rng) {
  const cpu::KernelTable<T>& k = cpu::select_kernels<T>();
  if (std::strcmp(k.isa, "generic") == 0) {
    std::printf("narrow recurrence chain (%s): skipped (generic table)\n",
                sizeof(T) == 4 ? "f32" : "f64");
    return;
  }
  std::normal_distribution<double> nd(0, 1);
  int checked = 0;
  const int64_t Tn = 5, B = 37;
  const int64_t bsz[Tn] = {37, 30, 30, 12, 1};
  for (int64_t H : {int64_t(3), int64_t(k.narrow_n)})
    for (int act = 0; act < 2; ++act)
      for (int rev = 0; rev < 2; ++rev)
        for (int packed = 0; packed < 2; ++packed) {
          RecurrenceShape s{Tn, B, H, packed ? bsz : nullptr, bool(rev)};
          s.act = Activation(act);
          int64_t off[Tn + 1] = {0};
          for (int64_t t = 0; t < Tn; ++t) off[t + 1] = off[t] + (packed ? bsz[t] : B);
          const int64_t N = off[Tn];
          std::vector<T> P(N * H), W(H * H), h0(B * H);
          for (auto& v : P) v = T(nd(rng));
          for (auto& v : W) v = T(nd(rng) / std::sqrt(double(H)));
          for (auto& v : h0) v = T(nd(rng));
          // The emulation, step by step in the walking order.
          std::vector<T> want(N * H), pre(size_t(B * H));
          for (int64_t i = 0; i < Tn; ++i) {
            const int64_t t = rev ? Tn - 1 - i : i, tp = rev ? t + 1 : t - 1;
            const int64_t m = packed ? bsz[t] : B;
            for (int64_t b = 0; b < m; ++b) {
              const bool cont = i > 0 && b < (packed ? bsz[tp] : B);
              const T* hp = cont ? &want[(off[tp] + b) * H] : &h0[b * H];
              for (int64_t j = 0; j < H; ++j) {
                T acc = T(0);
                for (int64_t kk = 0; kk < H; ++kk) acc = std::fma(hp[kk], W[j * H + kk], acc);
                pre[b * H + j] = acc + P[(off[t] + b) * H + j];
              }
            }
            T* out = &want[off[t] * H];
            if (act == 0)
              k.tanh(pre.data(), out, m * H);
            else
              for (int64_t e = 0; e < m * H; ++e) out[e] = pre[e] > T(0) ? pre[e] : T(0);
          }
          for (int nt : {1, 2, 3}) {
            std::vector<T> h(N * H), hn(B * H);
            rnn_forward_cpu<T>(s, P.data(), W.data(), h0.data(), h.data(), H, hn.data(), nt);
            CHECK(std::memcmp(h.data(), want.data(), h.size() * sizeof(T)) == 0,
                  "narrow forward recurrence H=%ld act=%d rev=%d packed=%d nt=%d is not the "
                  "packed kernel's chain",
                  long(H), act, rev, packed, nt);
            ++checked;
          }
        }
  std::printf("narrow recurrence chain (%s): %d cases: %s\n", sizeof(T) == 4 ? "f32" : "f64",
              checked, g_fail ? "FAILED" : "ok");
}

// layer_backward_cpu's shortcuts for the eager path: ldg = -1 (one value for every element
// of G, the gradient of a sum) and dP = nullptr (its own workspace, cached when small)
// must give the results of a full G and a caller's dP bitwise.
template <typename T>
static void test_layer_backward_shortcuts(std::mt19937& rng) {
  std::normal_distribution<double> nd(0, 1);
  int checked = 0;
  const int64_t shapes[][4] = {{1, 1, 32, 32}, {5, 3, 17, 9}, {40, 64, 256, 256}};  // T B H I
  for (const auto& sh : shapes) {
    const int64_t Tn = sh[0], B = sh[1], H = sh[2], I = sh[3], N = Tn * B;
    std::vector<T> x(N * I), w_ih(H * I), w_hh(H * H), h0(B * H), dhn(B * H), h(N * H);
    for (auto* v : {&x, &w_ih, &w_hh, &h0, &dhn})
      for (auto& e : *v) e = T(nd(rng) / std::sqrt(double(H)));
    const T g = T(nd(rng));
    std::vector<T> G(N * H, g);
    const RecurrenceShape s{Tn, B, H, nullptr, Tn % 2 == 0};
    std::vector<T> hn(B * H);
    layer_forward_cpu<T>(s, I, x.data(), w_ih.data(), nullptr, nullptr, w_hh.data(), h0.data(),
                         h.data(), H, hn.data(), 2);
    auto run = [&](const T* G_, int64_t ldg, bool own_dP, int nt) {
      std::vector<T> dP(own_dP ? 0 : N * H), out(B * H + N * I + H * I + H * H + H);
      T* o = out.data();
      layer_backward_cpu<T>(s, I, x.data(), w_ih.data(), w_hh.data(), h0.data(), h.data(), H, G_,
                            ldg, dhn.data(), own_dP ? nullptr : dP.data(), o, o + B * H, false,
                            o + B * H + N * I, o + B * H + N * I + H * I,
                            o + B * H + N * I + H * I + H * H, nt);
      return out;
    };
    for (int nt : {1, 2}) {
      const std::vector<T> want = run(G.data(), H, false, nt);
      CHECK(run(&g, -1, false, nt) == want, "ldg = -1 differs (T=%ld B=%ld H=%ld nt=%d)", long(Tn),
            long(B), long(H), nt);
      for (int again = 0; again < 2; ++again)  // the second call reuses a cached workspace
        CHECK(run(G.data(), H, true, nt) == want, "dP = nullptr differs (T=%ld B=%ld H=%ld nt=%d)",
              long(Tn), long(B), long(H), nt);
      checked += 3;
    }
  }
  std::printf("layer backward shortcuts (%s): %d cases: %s\n", sizeof(T) == 4 ? "f32" : "f64",
              checked, g_fail ? "FAILED" : "ok");
}

// The bfloat16 table's panels (kernels.h, kstep = 2): every packing path (rows of B
// contiguous, W^T as 32-bit pairs, any other stride) gives the documented layout, zeros in
// the padding (columns past N, the second half of an odd K's last pair), and writes
// nothing past its panels.
static void test_bf16_pack(std::mt19937& rng) {
  if (!cpu_has_bf16()) {
    std::printf("bf16 pack: skipped (no AVX512_BF16)\n");
    return;
  }
  const cpu::KernelTable<bfloat16_t>& k = cpu::select_kernels<bfloat16_t>();
  const int nr = k.nr;
  const int64_t sizes[][2] = {{1, 1},    {2, 32},   {3, 33},  {7, 5},  {64, 64},
                              {65, 100}, {130, 31}, {97, 64}, {80, 96}};
  int cases = 0;
  for (auto& sz : sizes) {
    const int64_t K = sz[0], N = sz[1];
    const int64_t npanels = (N + nr - 1) / nr, pstride = (K + 1) / 2 * 2 * nr;
    std::vector<uint16_t> Bkj(size_t(K * N)), Bt(size_t(N * K)), Bs(size_t(2 * K * N * 3));
    for (int64_t kk = 0; kk < K; ++kk)
      for (int64_t j = 0; j < N; ++j) {
        const uint16_t v = uint16_t(rng() & 0x7F7F);  // finite values
        Bkj[size_t(kk * N + j)] = v;                  // rows of B contiguous: rs N, cs 1
        Bt[size_t(j * K + kk)] = v;                   // W^T: rs 1, cs K
        Bs[size_t(kk * 3 + j * 3 * K)] = v;           // neither: rs 3, cs 3K
      }
    const struct {
      const uint16_t* src;
      int64_t rs, cs;
    } srcs[] = {{Bkj.data(), N, 1}, {Bt.data(), 1, K}, {Bs.data(), 3, 3 * K}};
    for (auto& src : srcs) {
      const size_t total = size_t(npanels * pstride);
      std::vector<uint16_t> dst(total + 64, 0xFFFF);
      // Two halves of the panels, as two threads' chunks would pack them.
      const int64_t mid = npanels / 2;
      auto* b = reinterpret_cast<const bfloat16_t*>(src.src);
      auto* d = reinterpret_cast<bfloat16_t*>(dst.data());
      k.pack(b, src.rs, src.cs, K, N, 0, mid, d, pstride);
      k.pack(b, src.rs, src.cs, K, N, mid, npanels, d, pstride);
      bool ok = true;
      for (int64_t p = 0; p < npanels; ++p)
        for (int64_t kk = 0; kk < (K + 1) / 2 * 2; ++kk)
          for (int64_t jj = 0; jj < nr; ++jj) {
            const int64_t j = p * nr + jj;
            const uint16_t want = kk < K && j < N ? Bkj[size_t(kk * N + j)] : 0;
            ok &= dst[size_t(p * pstride + kk / 2 * 2 * nr + 2 * jj + kk % 2)] == want;
          }
      for (size_t i = total; i < dst.size(); ++i) ok &= dst[i] == 0xFFFF;
      CHECK(ok, "bf16 pack K=%lld N=%lld rs=%lld cs=%lld", (long long)K, (long long)N,
            (long long)src.rs, (long long)src.cs);
      ++cases;
    }
  }
  std::printf("bf16 pack: %d cases: %s\n", cases, g_fail ? "FAILED" : "ok");
}

// The bfloat16 table's unpacked products (the driver's path for up to 8 rows of a short
// sequence): gemv_nn_ep is bitwise the packed gemm (the same chain); gemv_nt_ep sums in
// another order, so it is checked against float64 within float32 rounding of the sum
// before the epilogue's bfloat16 rounding (one bfloat16 ulp).
static uint16_t to_bf16(double v) {
  float f = float(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest even (finite values only)
  return uint16_t(u >> 16);
}
static double from_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static void test_bf16_unpacked(std::mt19937& rng) {
  if (!cpu_has_bf16()) {
    std::printf("bf16 unpacked: skipped (no AVX512_BF16)\n");
    return;
  }
  const cpu::KernelTable<bfloat16_t>& k = cpu::select_kernels<bfloat16_t>();
  std::normal_distribution<double> nd(0.0, 1.0);
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 7, 5}, {4, 64, 33}, {8, 33, 100}, {5, 100, 64}};
  int cases = 0;
  for (auto& sh : shapes) {
    const int64_t m = sh[0], K = sh[1], N = sh[2];
    auto fill = [&](std::vector<uint16_t>& v, size_t n, double scale) {
      v.resize(n);
      for (auto& x : v) x = to_bf16(nd(rng) * scale);
    };
    std::vector<uint16_t> a, wkn, wnk, g, h;
    fill(a, size_t(m * K), 1.0);
    fill(wkn, size_t(K * N), 1.0 / std::sqrt(double(K)));  // W[k, j], row-major
    wnk.resize(size_t(N * K));                             // the same values as W^T[j, k]
    for (int64_t kk = 0; kk < K; ++kk)
      for (int64_t j = 0; j < N; ++j) wnk[size_t(j * K + kk)] = wkn[size_t(kk * N + j)];
    fill(g, size_t(m * N), 1.0);
    fill(h, size_t(m * N), 0.5);
    auto bf = [](std::vector<uint16_t>& v) { return reinterpret_cast<bfloat16_t*>(v.data()); };
    cpu::Epilogue<bfloat16_t> ep;
    ep.kind = cpu::EpKind::kActGrad;
    ep.x1 = bf(g);
    ep.ld1 = N;
    ep.x2 = bf(h);
    ep.ld2 = N;
    ep.ldo = N;
    // gemv_nn_ep against the packed gemm on B = W: bitwise.
    std::vector<uint16_t> direct(size_t(m * N), 0xFFFF), packed(size_t(m * N), 0xFFFF);
    const int64_t npanels = (N + k.nr - 1) / k.nr, pstride = (K + 1) / 2 * 2 * k.nr;
    std::vector<uint16_t> panels(size_t(npanels * pstride));
    k.pack(bf(wkn), N, 1, K, N, 0, npanels, bf(panels), pstride);
    ep.out = bf(packed);
    k.gemm(m, K, bf(a), K, false, bf(panels), pstride, 0, npanels, N, nullptr, 0, ep);
    ep.out = bf(direct);
    k.gemv_nn_ep(m, K, bf(a), K, bf(wkn), N, 0, N, ep);
    CHECK(direct == packed, "bf16 gemv_nn_ep m=%lld K=%lld N=%lld: not the packed bits",
          (long long)m, (long long)K, (long long)N);
    // gemv_nt_ep (W^T read in place) against float64, columns [1, N) only: column 0 and
    // the memory past each row must stay untouched.
    std::vector<uint16_t> nt(size_t(m * N), 0xFFFF);
    ep.out = bf(nt);
    k.gemv_nt_ep(m, K, bf(a), K, bf(wnk), K, N > 1 ? 1 : 0, N, ep);
    bool ok = true;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < N; ++j) {
        const uint16_t got = nt[size_t(r * N + j)];
        if (j == 0 && N > 1) {
          ok &= got == 0xFFFF;
          continue;
        }
        double acc = 0;
        for (int64_t kk = 0; kk < K; ++kk)
          acc += from_bf16(a[size_t(r * K + kk)]) * from_bf16(wnk[size_t(j * K + kk)]);
        const double hv = from_bf16(h[size_t(r * N + j)]);
        const double want = (acc + from_bf16(g[size_t(r * N + j)])) * (1 - hv * hv);
        ok &= std::fabs(from_bf16(got) - want) <= std::ldexp(std::fabs(want), -7) + 1e-6;
      }
    CHECK(ok, "bf16 gemv_nt_ep m=%lld K=%lld N=%lld", (long long)m, (long long)K, (long long)N);
    ++cases;
  }
  std::printf("bf16 unpacked: %d cases: %s\n", cases, g_fail ? "FAILED" : "ok");
}

// The bfloat16 GEMM (gemm_cpu / gemm_cpu_rows on bfloat16): float32 sums carried across K
// blocks (K > 1024), each element rounded once. Against float64: within one bfloat16
// rounding plus the float32 sum's error bound. Bitwise: 1-4 threads alike, a transposed A
// like its row-major copy, B given row by row like the gathered B.
static void test_bf16_gemm(std::mt19937& rng) {
  if (!cpu_has_bf16()) {
    std::printf("bf16 gemm: skipped (no AVX512_BF16)\n");
    return;
  }
  std::normal_distribution<double> nd(0.0, 1.0);
  using bf = bfloat16_t;
  auto cast = [](std::vector<uint16_t>& v) { return reinterpret_cast<bf*>(v.data()); };
  const int64_t shapes[][3] = {{1, 1, 1},     {3, 40, 17},    {8, 64, 64},  {9, 33, 1025},
                               {5, 70, 1100}, {64, 96, 2049}, {37, 50, 99}, {130, 33, 7},
                               {70, 96, 3},   {40, 64, 300}};
  int cases = 0;
  for (auto& sh : shapes) {
    const int64_t M = sh[0], N = sh[1], K = sh[2];
    for (int variant = 0; variant < 12; ++variant) {
      const bool at = variant & 1, bt = (variant >> 1) & 1;
      const int mode = variant >> 2;  // 0 plain, 1 bias, 2 accumulate
      const bool bias = mode == 1, acc = mode == 2;
      std::vector<uint16_t> A(static_cast<size_t>(M * K)), B(static_cast<size_t>(K * N)),
          b(static_cast<size_t>(N)), C0(static_cast<size_t>(M * N));
      for (auto& x : A) x = to_bf16(nd(rng));
      for (auto& x : B) x = to_bf16(nd(rng));
      for (auto& x : b) x = to_bf16(nd(rng));
      for (auto& x : C0) x = to_bf16(nd(rng));
      const int64_t lda = at ? M : K, ldb = bt ? K : N;
      auto a_at = [&](int64_t i, int64_t kk) {
        return from_bf16(A[size_t(at ? kk * M + i : i * K + kk)]);
      };
      auto b_at = [&](int64_t kk, int64_t j) {
        return from_bf16(B[size_t(bt ? j * K + kk : kk * N + j)]);
      };
      std::vector<uint16_t> first;
      for (int nt = 1; nt <= 4; ++nt) {
        std::vector<uint16_t> C = C0;
        gemm_cpu<bf>(M, N, K, cast(A), lda, at, cast(B), ldb, bt, cast(C), N,
                     bias ? cast(b) : nullptr, acc, nt);
        if (nt == 1) {
          first = C;
          bool ok = true;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double sum = 0, mag = 0;
              for (int64_t kk = 0; kk < K; ++kk) {
                const double t = a_at(i, kk) * b_at(kk, j);
                sum += t;
                mag += std::fabs(t);
              }
              const double add = bias  ? from_bf16(b[size_t(j)])
                                 : acc ? from_bf16(C0[size_t(i * N + j)])
                                       : 0;
              const double want = sum + add;
              const double got = from_bf16(C[size_t(i * N + j)]);
              // one bfloat16 rounding of the result (plus of the sum before C is added back)
              // and float32 sums of K terms
              const double tol = std::ldexp(std::fabs(want) + (acc ? std::fabs(sum) : 0), -8) +
                                 double(K + 2) * std::ldexp(mag + std::fabs(add), -24) + 1e-30;
              ok &= std::fabs(got - want) <= tol;
            }
          CHECK(ok, "bf16 gemm M=%lld N=%lld K=%lld at=%d bt=%d mode=%d: against float64",
                (long long)M, (long long)N, (long long)K, at, bt, mode);
        } else {
          CHECK(C == first, "bf16 gemm M=%lld N=%lld K=%lld at=%d bt=%d mode=%d: %d threads differ",
                (long long)M, (long long)N, (long long)K, at, bt, mode, nt);
        }
      }
      // The same product on A's row-major copy: the same bits, but where that copy takes
      // the few-row path with B^T (M <= 8: lane-wise sums, another order by design).
      if (at && !(M <= 8 && bt)) {
        std::vector<uint16_t> Ar(static_cast<size_t>(M * K)), C = C0;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t kk = 0; kk < K; ++kk) Ar[size_t(i * K + kk)] = A[size_t(kk * M + i)];
        gemm_cpu<bf>(M, N, K, cast(Ar), K, false, cast(B), ldb, bt, cast(C), N,
                     bias ? cast(b) : nullptr, acc, 2);
        CHECK(C == first, "bf16 gemm M=%lld N=%lld K=%lld bt=%d mode=%d: A^T not its copy's bits",
              (long long)M, (long long)N, (long long)K, bt, mode);
      }
      if (!bt && !bias) {  // B row by row (scattered, some rows absent = zeros)
        std::vector<const bf*> rows(static_cast<size_t>(K));
        std::vector<uint16_t> gathered(static_cast<size_t>(K * N), 0), C = C0, want = C0;
        for (int64_t kk = 0; kk < K; ++kk) {
          const int64_t src = (kk * 7 + 3) % K;
          const bool absent = kk % 5 == 4;
          rows[size_t(kk)] = absent ? nullptr : cast(B) + src * N;
          if (!absent) std::memcpy(&gathered[size_t(kk * N)], &B[size_t(src * N)], size_t(N) * 2);
        }
        gemm_cpu<bf>(M, N, K, cast(A), lda, at, cast(gathered), N, false, cast(want), N, nullptr,
                     acc, 2);
        gemm_cpu_rows<bf>(M, N, K, cast(A), lda, at, rows.data(), cast(C), N, acc, 3);
        CHECK(C == want,
              "bf16 gemm_cpu_rows M=%lld N=%lld K=%lld at=%d acc=%d: not gemm_cpu's bits",
              (long long)M, (long long)N, (long long)K, at, acc);
      }
      ++cases;
    }
  }
  std::printf("bf16 gemm: %d cases x {1-4 threads}: %s\n", cases, g_fail ? "FAILED" : "ok");
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      g_tanh_thin = 20;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  // "1, 2, 3 threads" below must mean it on a 2-core machine too: let the team grow past
  // the cores (thread_team.h; results must not depend on the team).
  setenv("FUSEDRNN_CPU_CORES", "4", 0);
  std::printf("isa: %s\n", cpu_isa());
  test_tanh(cpu::select_kernels<float>());
  test_tanh(cpu::select_kernels<double>());
  std::mt19937 rng(1234);
  test_gemm<float>(rng, 1e-5);
  test_gemm<double>(rng, 1e-13);
  test_gemm_rows<float>(rng);
  test_gemm_rows<double>(rng);
  test_copied_a_trans<float>(rng);
  test_copied_a_trans<double>(rng);
  test_gemm_pair<float>(rng);
  test_gemm_pair<double>(rng);
  test_strides<float>(rng);
  test_strides<double>(rng);
  test_in_place_matches_packed<float>(rng);
  test_in_place_matches_packed<double>(rng);
  test_narrow_matches_packed<float>(rng);
  test_narrow_matches_packed<double>(rng);
  test_narrow_recurrence_chain<float>(rng);
  test_narrow_recurrence_chain<double>(rng);
  test_layer_backward_shortcuts<float>(rng);
  test_layer_backward_shortcuts<double>(rng);
  test_bf16_pack(rng);
  test_bf16_unpacked(rng);
  test_bf16_gemm(rng);
  std::vector<Case> cases;
  const int64_t shapes[][3] = {{1, 1, 1},    {5, 3, 7},    {7, 1, 33},   {4, 13, 65},
                               {9, 29, 100}, {3, 64, 129}, {2, 257, 40}, {6, 5, 256}};
  for (auto& sh : shapes)
    for (int packed = 0; packed < 2; ++packed)
      for (int rev = 0; rev < 2; ++rev)
        for (int act = 0; act < 2; ++act) {
          const int v = int(rng() % 4);
          cases.push_back({sh[0], sh[1], sh[2], bool(packed), bool(rev), Activation(act), v != 0,
                           v != 1, v != 2, v != 3, v == 1 || v == 3});
        }
  for (const Case& c : cases) {
    run_case<double>(c, rng, 1e-9);
    run_case<float>(c, rng, 2e-3);
  }
  std::printf("%zu recurrence cases x {f32, f64} x {1, 2, 3 threads}: %s\n", cases.size(),
              g_fail ? "FAILED" : "ok");
  return g_fail ? 1 : 0;
}
