// ISA-generic kernel templates, written once against a vector traits class V
// (vec_portable.h, vec_avx2.h, vec_avx512.h). Each kernels_<isa>.cpp defines
// FUSEDRNN_ISA_NS to its own namespace, includes its traits and this file, and exports one
// KernelTable per dtype. Everything here lives in that namespace and uses no standard
// library templates, so no inline function compiled with one ISA's flags can be picked by
// the linker for another translation unit.
#pragma once

#include <cstdint>
#include <cstring>

#include "aligned_buffer.h"
#include "kernels.h"

#ifndef FUSEDRNN_ISA_NS
#error "define FUSEDRNN_ISA_NS before including kernels_impl.h"
#endif

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

template <typename T>
struct TanhConst;

// tanh(x) = sign(x) * -e / (2 + e) with e = expm1(-2|x|) in (-1, 0]: no cancellation
// anywhere, so tanh is as accurate as expm1 (a few ulp). expm1(y) = 2^n expm1(r) + (2^n - 1)
// with y = n ln2 + r, |r| <= ln2/2, and expm1(r) by its Taylor polynomial (exact enough on
// that interval: degree 8 for float, 13 for double).
template <>
struct TanhConst<float> {
  static constexpr float clamp = 20.0f;  // tanh(20) == 1 in float; keeps 2^n normal
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693145751953125f;  // few significant bits: n*ln2_hi exact
  static constexpr float ln2_lo = 1.42860682030941723212e-6f;
  static constexpr int ncoef = 7;  // 1/2!, ..., 1/8!
  static constexpr float coef[ncoef] = {1.0f / 2,   1.0f / 6,    1.0f / 24,   1.0f / 120,
                                        1.0f / 720, 1.0f / 5040, 1.0f / 40320};
};
template <>
struct TanhConst<double> {
  static constexpr double clamp = 40.0;
  static constexpr double log2e = 1.44269504088896340736;
  static constexpr double ln2_hi = 6.93147180369123816490e-01;
  static constexpr double ln2_lo = 1.90821492927058770002e-10;
  static constexpr int ncoef = 12;  // 1/2!, ..., 1/13!
  static constexpr double coef[ncoef] = {1.0 / 2,        1.0 / 6,         1.0 / 24,
                                         1.0 / 120,      1.0 / 720,       1.0 / 5040,
                                         1.0 / 40320,    1.0 / 362880,    1.0 / 3628800,
                                         1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
};

// Estrin's scheme, one level: q[i] = q[2i] + q[2i+1] * pw for the LEN terms (the odd one
// out carried up), then the next level with pw^2, down to q[0]. (A template per level,
// so that every loop has a constant trip count.)
template <class V, int LEN>
__attribute__((always_inline)) inline void estrin_combine(typename V::reg* q, typename V::reg pw) {
  if constexpr (LEN > 1) {
#pragma GCC unroll 8
    for (int i = 0; i < LEN / 2; ++i) q[i] = V::fma(q[2 * i + 1], pw, q[2 * i]);
    if constexpr (LEN % 2 == 1) q[LEN / 2] = q[LEN - 1];
    estrin_combine<V, (LEN + 1) / 2>(q, V::mul(pw, pw));
  }
}

// Always inlined: GCC 12 warns (-Wuninitialized, a false positive in its own AVX-512
// headers' _mm512_undefined) when it keeps this body out of line.
template <class V>
__attribute__((always_inline)) inline typename V::reg vtanh(typename V::reg x) {
  using T = typename V::scalar_t;
  using R = typename V::reg;
  using C = TanhConst<T>;
  const R ax = V::min(V::abs(x), V::set1(C::clamp));
  const R y = V::mul(ax, V::set1(T(-2)));
  const R n = V::round(V::mul(y, V::set1(C::log2e)));
  R r = V::fma(n, V::set1(-C::ln2_hi), y);
  r = V::fma(n, V::set1(-C::ln2_lo), r);
  // Estrin's scheme: c0 + c1 r, c2 + c3 r, ..., then those in pairs with r^2, then r^4, ...:
  // about the operations of Horner's rule with a dependency chain of log2(ncoef) fmas
  // instead of ncoef - 1 (tanh_array 0.241 -> 0.221 ns per float, 0.663 -> 0.593 per double,
  // C++ harness; same maximum error, 3 ulp).
  constexpr int NQ = (C::ncoef + 1) / 2;
  R q[NQ];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
    q[i] = 2 * i + 1 < C::ncoef ? V::fma(V::set1(C::coef[2 * i + 1]), r, V::set1(C::coef[2 * i]))
                                : V::set1(C::coef[2 * i]);
  estrin_combine<V, NQ>(q, V::mul(r, r));
  const R p = V::fma(V::mul(r, r), q[0], r);  // expm1(r)
  const R one = V::set1(T(1));
  const R two_n = V::scale2n(one, n);
  const R e = V::add(V::scale2n(p, n), V::sub(two_n, one));  // 2^n - 1 is exact
  const R t = V::div(V::sub(V::zero(), e), V::add(V::set1(T(2)), e));
  return V::select_nan(x, V::copysign(t, x));
}

template <class V>
inline typename V::reg act_forward(int act, typename V::reg x) {
  return act == 0 ? vtanh<V>(x) : V::relu(x);
}

// g phi'(pre) from the activation's output h, as torch's backward computes it: tanh
// g (1 - h^2); relu 0 where h <= 0, else g (a select, not a product: a NaN state passes g
// on, and a zero gradient stops an infinite or NaN g).
template <class V>
inline typename V::reg act_backward(int act, typename V::reg g, typename V::reg h) {
  return act == 0 ? V::mul(g, V::sub(V::set1(typename V::scalar_t(1)), V::mul(h, h)))
                  : V::relu_backward(g, h);
}

// Loads/stores of the epilogue operands: full vectors unmasked (a masked load cannot take
// its data from a recent store, which stalls the tile right after the micro-kernel).
template <class V, bool FULL>
inline typename V::reg ld(const typename V::scalar_t* p, typename V::mask m) {
  return FULL ? V::load(p) : V::load_masked(p, m);
}
template <class V, bool FULL>
inline void st(typename V::scalar_t* p, typename V::mask m, typename V::reg v) {
  if (FULL)
    V::store(p, v);
  else
    V::store_masked(p, m, v);
}

// ep as seen from row r0 on: its row pointers moved down r0 rows (a broadcast x1 row,
// ld1 == 0, stays where it is).
template <typename T>
inline cpu::Epilogue<T> ep_rows(const cpu::Epilogue<T>& ep, int64_t r0) {
  cpu::Epilogue<T> e = ep;
  e.out = ep.out + r0 * ep.ldo;
  if (e.x1 && e.ld1) e.x1 = ep.x1 + r0 * ep.ld1;
  if (e.x2) e.x2 = ep.x2 + r0 * ep.ld2;
  return e;
}

template <class V, bool FULL>
inline typename V::reg ep_value(const cpu::Epilogue<typename V::scalar_t>& ep, int64_t r, int64_t j,
                                typename V::reg acc, typename V::mask m) {
  using R = typename V::reg;
  switch (ep.kind) {
    case cpu::EpKind::kAct:
      return act_forward<V>(ep.act, V::add(acc, ld<V, FULL>(ep.x1 + r * ep.ld1 + j, m)));
    case cpu::EpKind::kActGrad: {
      R g = ep.x1 ? V::add(acc, ld<V, FULL>(ep.x1 + r * ep.ld1 + j, m)) : acc;
      return act_backward<V>(ep.act, g, ld<V, FULL>(ep.x2 + r * ep.ld2 + j, m));
    }
    case cpu::EpKind::kStore:
    default:
      return ep.x1 ? V::add(acc, ld<V, FULL>(ep.x1 + r * ep.ld1 + j, m)) : acc;
  }
}

// Epilogue of rows [0, mr) x columns [j0, j0 + ncols): acc[r*ldacc + (j - j0)]. The
// accumulator buffer may be read a full vector past ncols when acc_full (tile buffers).
template <class V>
inline void apply_epilogue(const cpu::Epilogue<typename V::scalar_t>& ep, int64_t mr, int64_t j0,
                           int64_t ncols, const typename V::scalar_t* acc, int64_t ldacc,
                           bool acc_full = false) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const typename V::mask all = V::tail_mask(W);
  for (int64_t r = 0; r < mr; ++r) {
    int64_t c = 0;
    for (; c + W <= ncols; c += W) {
      const R a = acc ? V::load(acc + r * ldacc + c) : V::zero();
      st<V, true>(ep.out + r * ep.ldo + j0 + c, all, ep_value<V, true>(ep, r, j0 + c, a, all));
    }
    if (c < ncols) {
      const typename V::mask m = V::tail_mask(int(ncols - c));
      const R a =
          acc ? (acc_full ? V::load(acc + r * ldacc + c) : V::load_masked(acc + r * ldacc + c, m))
              : V::zero();
      st<V, false>(ep.out + r * ep.ldo + j0 + c, m, ep_value<V, false>(ep, r, j0 + c, a, m));
    }
  }
}

template <class V>
struct Tiling {
  static constexpr int PV = 2;           // vectors per panel row
  static constexpr int NR = PV * V::W;   // panel width in elements
  static constexpr int NREG = V::nregs;  // vector registers of the ISA
  // Accumulators MR*NP*PV plus NP*PV panel vectors plus one broadcast, plus V::row_regs
  // per row (NEON multiplies by a lane of a register that holds that row's A element),
  // must fit the file: no accumulator spilled in the k loop.
  // One row without row registers: each panel vector feeds a single fma, as its memory
  // operand on x86 (the portable table loads it into one temporary register), so only the
  // accumulators and the broadcast need registers. (Counted as above, AVX2's 16 registers
  // gave a one-row step 3 panels: at H = 64, 4 panels, a step ran two tiles one after the
  // other, each a chain of K dependent fmas. Session 27.)
  static constexpr int np_max(int mr) {
    const int n = (mr == 1 && V::row_regs == 0) ? (NREG - 2) / PV
                                                : (NREG - 2 - V::row_regs * mr) / (PV * mr + PV);
    return n > 4 ? 4 : (n < 1 ? 1 : n);
  }
  static constexpr int MR_MAX = (NREG - 2 - PV) / (PV + V::row_regs);  // with NP = 1
  // Long K: the tallest tile that still spans two panels (half the broadcasts per fma),
  // when that is at least 5 rows: 6 with AVX-512, 5 with NEON; else MR_MAX (AVX2: 6 x 1).
  static constexpr int mr_two_panels() {
    int m = MR_MAX;
    while (m > 1 && np_max(m) < 2) --m;
    return m;
  }
  static constexpr int MR_LONG_K = mr_two_panels() >= 5 ? mr_two_panels() : MR_MAX;
};

// The register-tile micro-kernel: MR rows x NP panels, the full K, accumulators stored to
// out[r*ldo + v*W] (ldo = NP*NR). One sequential fma chain per element.
template <class V, int MR, int NP, bool ATRANS>
inline void micro_kernel(int64_t K, const typename V::scalar_t* a, int64_t lda,
                         const typename V::scalar_t* bp, int64_t pstride,
                         const typename V::scalar_t* cinit, int64_t ldc,
                         typename V::scalar_t* out) {
  using T = typename V::scalar_t;
  using R = typename V::reg;
  constexpr int W = V::W;
  constexpr int PV = Tiling<V>::PV;
  constexpr int NR = Tiling<V>::NR;
  constexpr int NV = NP * PV;
  R c[MR][NV];
  if (cinit) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = V::load(cinit + r * ldc + v * W);
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = V::zero();
  }
  const T* b[NP];
#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p) b[p] = bp + p * pstride;
  for (int64_t k = 0; k < K; ++k) {
    R bv[NV];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p)
#pragma GCC unroll 4
      for (int u = 0; u < PV; ++u) bv[p * PV + u] = V::load(b[p] + k * NR + u * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const R av = V::set1(ATRANS ? a[k * lda + r] : a[r * lda + k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = V::fma(av, bv[v], c[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V::store(out + r * NV * W + v * W, c[r][v]);
}

// Pulls rows [0, rows) x columns [j0, j0 + ncols) of p (rows ld apart) into L1: a tile's
// epilogue operands, requested before its micro-kernel runs (K steps of fmas, far longer
// than the loads take), so the epilogue finds them there. Without it the epilogue stalled
// on them: BPTT's h and output gradient, ~half of the epilogue's samples in a float64
// B64-H256 profile. WRITE = 1: the rows the epilogue stores (see tile), with the hint that
// they will be written: `prfm pstl1keep` on aarch64; on x86 `prefetcht0`, the read prefetch,
// since the ISA flags (simd.cmake) do not enable PRFCHW. A line no other core holds arrives
// exclusive either way, and a store to it needs no further request. (Every address
// requested lies in the row's columns; a line it starts may reach past them, which a
// prefetch, never faulting, does not mind.)
template <int WRITE = 0, typename T>
inline void prefetch_tile(const T* p, int64_t ld, int64_t rows, int64_t j0, int64_t ncols) {
  if (!p) return;
  if (ld == 0) rows = 1;  // one row for every row (a broadcast bias)
  const int64_t bytes = ncols * int64_t(sizeof(T));
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = reinterpret_cast<const char*>(p + r * ld + j0);
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, WRITE, 3);
  }
}

// One tile: rows [0, MR) of a, panels [p, p + NP), epilogue on the valid columns.
template <class V, int MR, int NP, bool ATRANS>
void tile(int64_t K, const typename V::scalar_t* a, int64_t lda, const typename V::scalar_t* bp,
          int64_t pstride, int64_t p, int64_t N, const typename V::scalar_t* cinit, int64_t ldc,
          const cpu::Epilogue<typename V::scalar_t>& ep, int64_t r0) {
  using T = typename V::scalar_t;
  constexpr int NR = Tiling<V>::NR;
  constexpr int NV = NP * Tiling<V>::PV;
  alignas(64) T acc[MR * NV * V::W];
  const int64_t j0 = p * NR;
  const int64_t ncols = (N - j0) < NP * NR ? (N - j0) : NP * NR;
  const T* ci = nullptr;
  int64_t ldci = 0;
  if (cinit && ncols == NP * NR) {
    ci = cinit + r0 * ldc + j0;  // full-width tile: seed straight from C
    ldci = ldc;
  } else if (cinit) {
    // Edge tile: seed through a zero-padded copy so padded columns read nothing outside C.
    for (int r = 0; r < MR; ++r)
      for (int64_t c = 0; c < NV * V::W; ++c)
        acc[r * NV * V::W + c] = c < ncols ? cinit[(r0 + r) * ldc + j0 + c] : T(0);
    ci = acc;
    ldci = NV * V::W;
  }
  const cpu::Epilogue<T> e = ep_rows(ep, r0);
  if constexpr (MR >= 4) {  // (a few rows' operands stay in cache, and their tiles are short)
    prefetch_tile(e.x1, e.ld1, MR, j0, ncols);
    if (e.kind == cpu::EpKind::kActGrad) prefetch_tile(e.x2, e.ld2, MR, j0, ncols);
    // The rows it stores, unless the tile reads them anyway (a seed from C, or the forward
    // recurrence's P in place): a product's output (x W^T, dP W_ih, a first K block of dW,
    // dh0) or the BPTT's dP. Without this, the stores of a K = 256 product stalled for their
    // lines: 78% of the epilogue's samples on the instruction after its store, the epilogue
    // 10-11% of the product's samples (3.6% with it; Zen 4, perf, session 19).
    if (!cinit && e.out != e.x1) prefetch_tile<1>(e.out, e.ldo, MR, j0, ncols);
  }
  micro_kernel<V, MR, NP, ATRANS>(K, ATRANS ? a + r0 : a + r0 * lda, lda, bp + p * pstride, pstride,
                                  ci, ldci, acc);
  apply_epilogue<V>(e, MR, j0, ncols, acc, NV * V::W, true);
}

template <class V, int MR, bool ATRANS>
inline int tile_np(int np, int64_t K, const typename V::scalar_t* a, int64_t lda,
                   const typename V::scalar_t* bp, int64_t pstride, int64_t p, int64_t N,
                   const typename V::scalar_t* cinit, int64_t ldc,
                   const cpu::Epilogue<typename V::scalar_t>& ep, int64_t r0) {
  constexpr int NPM = Tiling<V>::np_max(MR);
  if (np >= 4 && NPM >= 4) {
    tile<V, MR, (NPM >= 4 ? 4 : 1), ATRANS>(K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r0);
    return NPM >= 4 ? 4 : 1;
  }
  if (np >= 3 && NPM >= 3) {
    tile<V, MR, (NPM >= 3 ? 3 : 1), ATRANS>(K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r0);
    return NPM >= 3 ? 3 : 1;
  }
  if (np >= 2 && NPM >= 2) {
    tile<V, MR, (NPM >= 2 ? 2 : 1), ATRANS>(K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r0);
    return NPM >= 2 ? 2 : 1;
  }
  tile<V, MR, 1, ATRANS>(K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r0);
  return 1;
}

template <class V, bool ATRANS>
int tile_dispatch(int mr, int np, int64_t K, const typename V::scalar_t* a, int64_t lda,
                  const typename V::scalar_t* bp, int64_t pstride, int64_t p, int64_t N,
                  const typename V::scalar_t* cinit, int64_t ldc,
                  const cpu::Epilogue<typename V::scalar_t>& ep, int64_t r0) {
  constexpr int M = Tiling<V>::MR_MAX;
#define FUSEDRNN_TILE_CASE(n)                                                             \
  case n:                                                                                 \
    if constexpr (n <= M)                                                                 \
      return tile_np<V, n, ATRANS>(np, K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r0); \
    break;
  switch (mr) {
    FUSEDRNN_TILE_CASE(1)
    FUSEDRNN_TILE_CASE(2)
    FUSEDRNN_TILE_CASE(3)
    FUSEDRNN_TILE_CASE(4)
    FUSEDRNN_TILE_CASE(5)
    FUSEDRNN_TILE_CASE(6)
    FUSEDRNN_TILE_CASE(7)
    FUSEDRNN_TILE_CASE(8)
    FUSEDRNN_TILE_CASE(9)
    FUSEDRNN_TILE_CASE(10)
    FUSEDRNN_TILE_CASE(11)
    FUSEDRNN_TILE_CASE(12)
    FUSEDRNN_TILE_CASE(13)
    FUSEDRNN_TILE_CASE(14)
    default:
      break;
  }
#undef FUSEDRNN_TILE_CASE
  return 0;
}

// Row-block sizes: rows [r, r + mr) in one tile. Splits m into tiles of at most MR_MAX rows,
// as even as possible, so a 13-row remainder is not a 12 + 1.
template <class V>
inline int64_t next_mr(int64_t left, int M = Tiling<V>::MR_MAX) {
  if (left <= M) return left;
  const int64_t tiles = (left + M - 1) / M;
  return (left + tiles - 1) / tiles;
}

// From which K (of one K block) the tiles are the long-K ones (see for_each_tile):
// kLongKRows for gemm<V> with A read in place by rows (the micro-kernel broadcasts from MR
// rows of A at once, each its own stream); kLongK for A^T and for every product of the
// bfloat16 table (its own call, the default; not measured with the lower threshold).
constexpr int64_t kLongKRows = 128;
constexpr int64_t kLongK = 512;

// The row blocks of for_each_tile: mc rows (row_block_rows), a slice of A that stays in L2
// while all panels pass over it; the block from rb ends at row_block_end. The last block
// takes a remainder of up to mc / 4 rows: a step of 64 rows at H = 1024 (mc = 63) was a
// 63-row block and a 1-row one, which streamed every panel again for one row with a
// quarter-efficient tile (the recurrence at B64-H1024: 2% of its time).
inline int64_t row_block_rows(int64_t K, int64_t elem_bytes) {
  const int64_t mc = (256 * 1024) / (K * elem_bytes + 1);
  return mc < 16 ? 16 : mc;
}
inline int64_t row_block_end(int64_t m, int64_t rb, int64_t mc) {
  return m - rb <= mc + mc / 4 ? m : rb + mc;
}

// The blocking of gemm, for every table (the bfloat16 one too): calls tile(mr, np, p, r) for
// the tile of rows [r, r + mr) and panels [p, p + np), each once, in a fixed order.
// elem_bytes: the size of an A element; long_k: see kLongK.
template <class V, class TileFn>
void for_each_tile(int64_t m, int64_t K, int64_t elem_bytes, int64_t p0, int64_t p1,
                   const TileFn& tile, int64_t long_k = kLongK) {
  if (m <= 0 || p1 <= p0) return;
  const int64_t mc = row_block_rows(K, elem_bytes);
  // Long K: tiles of at most 6 rows, so a tile spans two panels (6 x 2 panels against 13 x 1
  // with AVX-512): half the broadcasts per fma and each panel streamed for half as many
  // tiles. Measured at H = 1024 (same-process A/B): x W^T 496 -> 508 GFLOP/s, BPTT up to
  // +3%, training B64-H1024 170.3 -> 168.1 ms; no change at K = 256 (Zen 5).
  // From K = 128 for a row-major A (session 19, Zen 4): a tile of 13-14 rows broadcasts
  // from 13-14 rows of A at once, each a stream from L2 when A's row block does not stay in
  // L1 between panels, as in a product. A scratch kernel on Zen 4 ran such tiles at 67-86
  // GFLOP/s per core with its rows in L2 (K = 1024-4096), against 108-115 for 6 x 2 panels
  // or for the same 14 rows packed into one stream (docs/cpu_kernels.md, "Session 19").
  const int mr_max = K >= long_k ? Tiling<V>::MR_LONG_K : Tiling<V>::MR_MAX;
  for (int64_t rb = 0, re = 0; rb < m; rb = re) {
    re = row_block_end(m, rb, mc);
    // Every tile of this row block spans the same panels: the widest the largest tile allows.
    const int npb = Tiling<V>::np_max(int(next_mr<V>(re - rb, mr_max)));
    for (int64_t p = p0; p < p1;) {
      const int np = int(p1 - p > npb ? npb : p1 - p);
      for (int64_t r = rb; r < re;) {
        const int64_t mr = next_mr<V>(re - r, mr_max);
        tile(int(mr), np, p, r);
        r += mr;
      }
      p += np;
    }
  }
}

// Whether gemm copies a transposed A (below): V::copy_a_trans where the traits say so.
template <class V>
constexpr auto copies_a_trans(int) -> decltype(V::copy_a_trans) {
  return V::copy_a_trans;
}
template <class V>
constexpr bool copies_a_trans(long) {
  return false;
}

// From which row length of A^T (lda in bytes) gemm copies it: from 1 KB, four rows k per
// page. Session 26 copied from 4 KB (float32 lda = 1024; at 2 KB its figures were level
// within the host's noise); session 27 measured the float64 table too and shorter rows,
// `bench_kernels gemm M N K 1 0 [f64]`, one thread, ms, the same Zen 3 host, in place
// against copied, alternated three times: float64 512 x 512 x 6400 (4 KB) 174-189 against
// 99-136, float64 1024 x 1024 x 6400 627-657 against 478-586, float64 256 x 256 x 6400
// (2 KB) 36-43 against 27-35, float32 512 x 512 x 6400 (2 KB) 67-80 against 49-64, float64
// 128 x 128 x 6400 (1 KB) 10.0-12.1 against 8.6-10.2, float32 256 x 256 x 6400 (1 KB)
// 17.0 against 15.5-19.1 (two threads 9.8-10.6 against 9.0-9.6).
constexpr int64_t kCopyATransMinLdBytes = 1024;

// gemm with A^T read from a copy: rows [rb, re) of A^T, all K, copied per row block into a
// compact buffer (K rows of the block's width, 64 bytes rounded), then the same tiles on it.
// In place, A^T's rows k lie lda elements apart (4 KB at lda = 1024), so a tile's K steps
// each touch another page (one L1 DTLB miss per k: 512 pages per K block) and the hardware
// prefetchers, which stay within a page, do not follow; in the copy, 8 rows k share a page
// (with rows of 1-2 KB, 2-4 rows k per page in place: still several pages per tile's K
// steps, and the copy measured faster there too, see kCopyATransMinLdBytes).
// The same fma chains on the same values: the results are the in-place path's, bit for bit.
// Measured on an AVX2 host (Zen 3, 2 cores, session 26), dW = dP^T x at 1024 x 1024 x 25600:
// see docs/cpu_kernels.md, "Session 26".
template <class V>
void gemm_copied_a(int64_t m, int64_t K, const typename V::scalar_t* a, int64_t lda,
                   const typename V::scalar_t* bp, int64_t pstride, int64_t p0, int64_t p1,
                   int64_t N, const typename V::scalar_t* cinit, int64_t ldc,
                   const cpu::Epilogue<typename V::scalar_t>& ep) {
  using T = typename V::scalar_t;
  constexpr int64_t line = 64 / int64_t(sizeof(T));          // elements per 64 bytes
  const int64_t mc = row_block_rows(K, int64_t(sizeof(T)));  // for_each_tile's row blocks
  thread_local cpu::AlignedBuffer scratch;
  for (int64_t rb = 0, re = 0; rb < m; rb = re) {
    re = row_block_end(m, rb, mc);
    const int64_t rows = re - rb, ld = (rows + line - 1) / line * line;
    T* buf = static_cast<T*>(scratch.get(size_t(K * ld) * sizeof(T)));
    for (int64_t k = 0; k < K; ++k)
      std::memcpy(buf + k * ld, a + k * lda + rb, size_t(rows) * sizeof(T));
    const T* ci = cinit ? cinit + rb * ldc : nullptr;
    const cpu::Epilogue<T> e = ep_rows(ep, rb);
    for_each_tile<V>(
        rows, K, int64_t(sizeof(T)), p0, p1,
        [&](int mr, int np, int64_t p, int64_t r) {
          tile_dispatch<V, true>(mr, np, K, buf, ld, bp, pstride, p, N, ci, ldc, e, r);
        },
        kLongK);
  }
}

template <class V>
void gemm(int64_t m, int64_t K, const typename V::scalar_t* a, int64_t lda, bool a_trans,
          const typename V::scalar_t* bp, int64_t pstride, int64_t p0, int64_t p1, int64_t N,
          const typename V::scalar_t* cinit, int64_t ldc,
          const cpu::Epilogue<typename V::scalar_t>& ep) {
  using T = typename V::scalar_t;
  if constexpr (copies_a_trans<V>(0)) {
    if (a_trans && lda * int64_t(sizeof(T)) >= kCopyATransMinLdBytes && m > Tiling<V>::MR_MAX)
      return gemm_copied_a<V>(m, K, a, lda, bp, pstride, p0, p1, N, cinit, ldc, ep);
  }
  for_each_tile<V>(
      m, K, int64_t(sizeof(T)), p0, p1,
      [&](int mr, int np, int64_t p, int64_t r) {
        if (a_trans)
          tile_dispatch<V, true>(mr, np, K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r);
        else
          tile_dispatch<V, false>(mr, np, K, a, lda, bp, pstride, p, N, cinit, ldc, ep, r);
      },
      a_trans ? kLongK : kLongKRows);
}

template <class V>
void pack(const typename V::scalar_t* src, int64_t rs, int64_t cs, int64_t K, int64_t N, int64_t p0,
          int64_t p1, typename V::scalar_t* dst, int64_t pstride) {
  using T = typename V::scalar_t;
  constexpr int NR = Tiling<V>::NR;
  constexpr int W = V::W;
  if (cs == 1) {
    // k outer: each k reads one contiguous run of B's row k (all panels [p0, p1)), so a
    // large B (x, h in dW = dP^T x) streams from memory row by row; panel by panel it was
    // read as 4 KB-strided columns whose memory latency nothing hid.
    for (int64_t k = 0; k < K; ++k) {
      const T* s = src + k * rs;
      for (int64_t p = p0; p < p1; ++p) {
        T* d = dst + p * pstride + k * NR;
        const int64_t j0 = p * NR;
        const int64_t nc = N - j0 < NR ? N - j0 : NR;
        for (int c = 0; c < NR; c += W) {
          const int64_t left = nc - c;
          if (left >= W) {
            V::store(d + c, V::load(s + j0 + c));
          } else {
            const typename V::mask m = V::tail_mask(left > 0 ? int(left) : 0);
            V::store(d + c, V::load_masked(s + j0 + c, m));
          }
        }
      }
    }
    return;
  }
  // A transposed source (rs == 1: W_hh^T, W_ih^T): column jj of the panel is row j of W.
  // W x W blocks: W vector loads (W rows of W, W consecutive k each) transposed in
  // registers into W vector stores (W panel rows, W columns each), so both sides move whole
  // vectors. Element by element (blocks of 64 k, as below) a 1024 x 1024 W took 0.49 ms
  // alone and ~1.3 ms inside a product on a Zen 4 (43% of x W_ih^T at T B = 100 on one
  // thread); in blocks 0.30 ms (docs/cpu_kernels.md, session 18).
  if (rs == 1) {
    for (int64_t p = p0; p < p1; ++p) {
      T* d = dst + p * pstride;
      const int64_t j0 = p * NR;
      const int64_t nc = N - j0 < NR ? N - j0 : NR;
      for (int c = 0; c < NR; c += W) {
        const int64_t rows = nc - c < 0 ? 0 : (nc - c < W ? nc - c : W);
        const T* s = rows > 0 ? src + (j0 + c) * cs : src;  // no pointer past the source
        for (int64_t k = 0; k < K; k += W) {
          const int64_t kn = K - k < W ? K - k : W;
          const typename V::mask m = V::tail_mask(int(kn));
          typename V::reg v[W];
          for (int i = 0; i < W; ++i) {
            if (i >= rows)
              v[i] = V::zero();
            else if (kn == W)
              v[i] = V::load(s + i * cs + k);
            else
              v[i] = V::load_masked(s + i * cs + k, m);
          }
          V::transpose(v);
          for (int64_t i = 0; i < kn; ++i) V::store(d + (k + i) * NR + c, v[i]);
        }
      }
    }
    return;
  }
  // Any other strides (not used by the kernels): element by element, in blocks of 64 k so
  // the panel rows being written stay in L1.
  constexpr int64_t KB = 64;
  for (int64_t p = p0; p < p1; ++p) {
    T* d = dst + p * pstride;
    const int64_t j0 = p * NR;
    const int64_t nc = N - j0 < NR ? N - j0 : NR;
    for (int64_t kb = 0; kb < K; kb += KB) {
      const int64_t ke = kb + KB < K ? kb + KB : K;
      for (int64_t jj = 0; jj < NR; ++jj) {
        const T* s = src + (j0 + jj) * cs;
        if (jj < nc) {
          for (int64_t k = kb; k < ke; ++k) d[k * NR + jj] = s[k * rs];
        } else {
          for (int64_t k = kb; k < ke; ++k) d[k * NR + jj] = T(0);
        }
      }
    }
  }
}

// Few-row products with a transposed right-hand side, read in place (no packing):
// acc[r*ldacc + j] = sum_k a[r*lda + k] * w[j*ldw + k] for r < m, j in [j0, j1).
// For a single step (x W_ih^T, h W_hh^T with one to four rows) packing W costs more than
// the product: this reads each row of W once, contiguously. Each element is a W-lane dot
// product (lane l sums k = l, l + W, ... in order, then the lanes are added pairwise in a
// fixed order), so it does not depend on threads, but it is not the packed kernel's
// sequential chain: callers choose it by shape alone.
// The few-row products take rows in groups of up to 4, each group reading W once:
// rows(RowCount<n>(), r0) for the group of n rows from r0, in order.
template <int N>
struct RowCount {
  static constexpr int value = N;
};
template <class Fn>
inline void by_row_groups(int64_t m, const Fn& rows) {
  for (int64_t r0 = 0; r0 < m; r0 += 4) {
    switch (m - r0 < 4 ? m - r0 : 4) {
      case 1:
        rows(RowCount<1>(), r0);
        break;
      case 2:
        rows(RowCount<2>(), r0);
        break;
      case 3:
        rows(RowCount<3>(), r0);
        break;
      default:
        rows(RowCount<4>(), r0);
        break;
    }
  }
}

template <class V>
inline typename V::scalar_t hsum(typename V::reg v) {
  using T = typename V::scalar_t;
  alignas(64) T l[V::W];
  V::store(l, v);
  for (int half = V::W / 2; half >= 1; half /= 2)
    for (int i = 0; i < half; ++i) l[i] += l[i + half];
  return l[0];
}

template <class V, int M>
void gemv_nt_rows(int64_t K, const typename V::scalar_t* a, int64_t lda,
                  const typename V::scalar_t* w, int64_t ldw, int64_t j0, int64_t j1,
                  typename V::scalar_t* acc, int64_t ldacc) {
  using R = typename V::reg;
  constexpr int W = V::W;
  constexpr int JBR = (Tiling<V>::NREG - M - 2) / M;
  constexpr int JB = JBR > 8 ? 8 : (JBR < 1 ? 1 : JBR);
  const int64_t Kv = K / W * W;
  const typename V::mask tail = V::tail_mask(int(K - Kv));
  for (int64_t j = j0; j < j1; j += JB) {
    const int nj = j1 - j < JB ? int(j1 - j) : JB;
    R c[M][JB];
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
      for (int q = 0; q < JB; ++q) c[r][q] = V::zero();
    if (nj == JB) {
      for (int64_t k = 0; k < Kv; k += W) {
        R av[M];
#pragma GCC unroll 4
        for (int r = 0; r < M; ++r) av[r] = V::load(a + r * lda + k);
#pragma GCC unroll 8
        for (int q = 0; q < JB; ++q) {
          const R wv = V::load(w + (j + q) * ldw + k);
#pragma GCC unroll 4
          for (int r = 0; r < M; ++r) c[r][q] = V::fma(av[r], wv, c[r][q]);
        }
      }
    } else {
      for (int64_t k = 0; k < Kv; k += W) {
        R av[M];
#pragma GCC unroll 4
        for (int r = 0; r < M; ++r) av[r] = V::load(a + r * lda + k);
        for (int q = 0; q < nj; ++q) {
          const R wv = V::load(w + (j + q) * ldw + k);
#pragma GCC unroll 4
          for (int r = 0; r < M; ++r) c[r][q] = V::fma(av[r], wv, c[r][q]);
        }
      }
    }
    if (K > Kv) {
      R av[M];
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r) av[r] = V::load_masked(a + r * lda + Kv, tail);
      for (int q = 0; q < nj; ++q) {
        const R wv = V::load_masked(w + (j + q) * ldw + Kv, tail);
#pragma GCC unroll 4
        for (int r = 0; r < M; ++r) c[r][q] = V::fma(av[r], wv, c[r][q]);
      }
    }
    for (int r = 0; r < M; ++r)
      for (int q = 0; q < nj; ++q) acc[r * ldacc + j + q] = hsum<V>(c[r][q]);
  }
}

template <class V>
void gemv_nt(int64_t m, int64_t K, const typename V::scalar_t* a, int64_t lda,
             const typename V::scalar_t* w, int64_t ldw, int64_t j0, int64_t j1,
             typename V::scalar_t* acc, int64_t ldacc) {
  by_row_groups(m, [&](auto rows, int64_t r0) {
    gemv_nt_rows<V, decltype(rows)::value>(K, a + r0 * lda, lda, w, ldw, j0, j1, acc + r0 * ldacc,
                                           ldacc);
  });
}

// Few rows times a row-major W read in place (no packing): acc[r*ldacc + j] =
// (cinit ? cinit[r*ldc + j] : 0) + sum_k a[r*lda + k] * w[k*ldw + j], r < m, j in [j0, j1).
// Each element is the packed micro-kernel's chain (one fma per k, in order, from zero or
// cinit), so the result is bitwise the packed kernel's: only the memory access differs.
// Columns in strips of JB vectors, each strip down all rows k of W; TAIL false: [j0, j1) is
// whole strips (no masked code compiled).
template <class V, int M, int JB, bool TAIL = true>
void gemv_nn_strips(int64_t K, const typename V::scalar_t* a, int64_t lda,
                    const typename V::scalar_t* w, int64_t ldw, int64_t j0, int64_t j1,
                    const typename V::scalar_t* cinit, int64_t ldc, typename V::scalar_t* acc,
                    int64_t ldacc) {
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t j = j0; j < j1; j += JB * W) {
    const int64_t ncols = j1 - j < JB * W ? j1 - j : JB * W;
    typename V::mask mk[JB];
#pragma GCC unroll 8
    for (int q = 0; q < JB; ++q) {
      const int64_t left = ncols - q * W;
      mk[q] = V::tail_mask(left >= W ? W : (left > 0 ? int(left) : 0));
    }
    R c[M][JB];
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
      for (int q = 0; q < JB; ++q)
        c[r][q] = cinit ? V::load_masked(cinit + r * ldc + j + q * W, mk[q]) : V::zero();
    if (!TAIL || ncols == JB * W) {
      for (int64_t k = 0; k < K; ++k) {
        R wv[JB];
#pragma GCC unroll 8
        for (int q = 0; q < JB; ++q) wv[q] = V::load(w + k * ldw + j + q * W);
#pragma GCC unroll 8
        for (int r = 0; r < M; ++r) {
          const R av = V::set1(a[r * lda + k]);
#pragma GCC unroll 8
          for (int q = 0; q < JB; ++q) c[r][q] = V::fma(av, wv[q], c[r][q]);
        }
      }
    } else if constexpr (TAIL) {
      for (int64_t k = 0; k < K; ++k) {
        R wv[JB];
#pragma GCC unroll 8
        for (int q = 0; q < JB; ++q) wv[q] = V::load_masked(w + k * ldw + j + q * W, mk[q]);
#pragma GCC unroll 8
        for (int r = 0; r < M; ++r) {
          const R av = V::set1(a[r * lda + k]);
#pragma GCC unroll 8
          for (int q = 0; q < JB; ++q) c[r][q] = V::fma(av, wv[q], c[r][q]);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
      for (int q = 0; q < JB; ++q) V::store_masked(acc + r * ldacc + j + q * W, mk[q], c[r][q]);
  }
}

template <class V, int M>
void gemv_nn_rows(int64_t K, const typename V::scalar_t* a, int64_t lda,
                  const typename V::scalar_t* w, int64_t ldw, int64_t j0, int64_t j1,
                  const typename V::scalar_t* cinit, int64_t ldc, typename V::scalar_t* acc,
                  int64_t ldacc) {
  constexpr int W = V::W;
  constexpr int JBR = (Tiling<V>::NREG - 2) / (M + 1);
  constexpr int JB = JBR > 4 ? 4 : (JBR < 1 ? 1 : JBR);
  // One row on a 16-register table without row registers (AVX2; the portable one too):
  // each W vector feeds a single fma, as its memory operand on x86 (the portable table loads
  // it into one temporary register), so only the accumulators and the broadcast take
  // registers: strips of 8 vectors, the chains both fma pipes need, where the columns fill
  // them (the rest in strips of JB, whose masked tail keeps its masks in registers). With
  // strips of 4 (32 float32 columns), BPTT of one sequence at H = 1024 ran at a quarter of
  // the forward's speed: each strip walks W down its rows, ldw elements apart, and twice the
  // strips fetched W from L3 twice as often (session 27; requesting the rows ahead by
  // software made it slower). AVX-512's strips of 4 vectors are already as wide in bytes
  // (not measured wider).
  if constexpr (M == 1 && V::row_regs == 0 && Tiling<V>::NREG <= 16) {
    const int64_t jw = j0 + (j1 - j0) / (8 * W) * (8 * W);
    gemv_nn_strips<V, M, 8, false>(K, a, lda, w, ldw, j0, jw, cinit, ldc, acc, ldacc);
    j0 = jw;
  }
  gemv_nn_strips<V, M, JB>(K, a, lda, w, ldw, j0, j1, cinit, ldc, acc, ldacc);
}

template <class V>
void gemv_nn(int64_t m, int64_t K, const typename V::scalar_t* a, int64_t lda,
             const typename V::scalar_t* w, int64_t ldw, int64_t j0, int64_t j1,
             const typename V::scalar_t* cinit, int64_t ldc, typename V::scalar_t* acc,
             int64_t ldacc) {
  by_row_groups(m, [&](auto rows, int64_t r0) {
    gemv_nn_rows<V, decltype(rows)::value>(K, a + r0 * lda, lda, w, ldw, j0, j1,
                                           cinit ? cinit + r0 * ldc : nullptr, ldc,
                                           acc + r0 * ldacc, ldacc);
  });
}

// KernelTable::gemm_narrow: A B with B at most one vector wide: a weight gradient over a
// small input or hidden size (dP^T x with I <= W), dX = dP W_ih with I <= W, the input
// projection and the recurrence's steps with H <= W. The packed tiles would pad such a B to
// a panel of two vectors and spend half their fmas on zeros; here a tile of MR rows is MR
// accumulators of one vector, and B's rows are read where they lie, one vector per k. Each
// element is still one fma chain over k in order (from zero or cinit), then the same
// epilogue: the packed kernel's bits.
template <class V>
struct Narrow {
  // Accumulators plus one B row, one broadcast and the mask (AVX2's masked loads take it in
  // a vector register), and one spare (plus the row registers of NEON). With 14 rows the
  // AVX2 tile kept an accumulator on the stack in its k loop (a review's disassembly):
  // 55-57 GFLOP/s against 72-89 with 12 (float32, A in cache; float64 27-29 against 34-44).
  static constexpr int MR_FIT = (V::nregs - 4) / (1 + V::row_regs);
  static constexpr int MR = MR_FIT < 16 ? MR_FIT : 16;
};

// Lines for a tile to request while it computes: rows [0, rows) of row_bytes each, ld bytes
// apart from base, one line per k step (and none once they are all requested).
struct LineStream {
  const char* base = nullptr;
  int64_t ld = 0, rows = 0, row_bytes = 0;
  int64_t row = 0, off = 0;
  inline void next() {
    if (row >= rows) return;
    __builtin_prefetch(base + row * ld + off, 0, 2);
    off += 64;
    if (off >= row_bytes) {
      off = 0;
      ++row;
    }
  }
};

// The operands of one narrow tile: A[r, k] = a[r*ar + k*ak]; B's row k at b + k*ldb, or
// b_rows[k] (a row of zeros where it is nullptr) when b_rows is set; the seeds at cinit
// (nullable; rows ldc apart); the epilogue's rows from the tile's first.
template <class V>
struct NarrowArgs {
  using T = typename V::scalar_t;
  const T* a;
  int64_t ar, ak;
  const T* b;
  int64_t ldb;
  const T* const* b_rows;
  typename V::mask mask;
  const T* cinit;
  int64_t ldc;
  cpu::Epilogue<T> ep;
};

template <class V, int MR>
void narrow_tile(int64_t K, const NarrowArgs<V>& g, LineStream pf) {
  using R = typename V::reg;
  const auto* a = g.a;
  R acc[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    acc[r] = g.cinit ? V::load_masked(g.cinit + r * g.ldc, g.mask) : V::zero();
  if (g.b_rows) {
    for (int64_t k = 0; k < K; ++k) {
      pf.next();
      // A missing row is zeros, multiplied all the same (an infinite A element gives NaN,
      // as the packed kernel's zero rows do).
      const R bv = g.b_rows[k] ? V::load_masked(g.b_rows[k], g.mask) : V::zero();
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[r] = V::fma(V::set1(a[r * g.ar + k * g.ak]), bv, acc[r]);
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      pf.next();
      const R bv = V::load_masked(g.b + k * g.ldb, g.mask);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[r] = V::fma(V::set1(a[r * g.ar + k * g.ak]), bv, acc[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    V::store_masked(g.ep.out + r * g.ep.ldo, g.mask,
                    ep_value<V, false>(g.ep, r, 0, acc[r], g.mask));
}

template <class V, int MR>
inline void narrow_rows(int mr, int64_t K, const NarrowArgs<V>& g, const LineStream& pf) {
  if constexpr (MR > 1) {
    if (mr < MR) return narrow_rows<V, MR - 1>(mr, K, g, pf);
  }
  narrow_tile<V, MR>(K, g, pf);
}

// Rows r < m, columns j < n (n <= V::W) of ep get epilogue((cinit ? cinit[r*ldc + j] : 0) +
// sum_k A[r, k] B[k, j]); A[r, k] = a[k*lda + r] when a_trans, else a[r*lda + k]; B[k, j] =
// b[k*ldb + j], or b_rows[k][j] when b_rows is set (zeros where it is nullptr). A product cut
// into K blocks (A^T in several tiles, or K > 2048) stores each block's sums to ep.out and
// continues from there: only with a kStore epilogue.
template <class V>
void gemm_narrow(int64_t m, int64_t K, const typename V::scalar_t* a, int64_t lda, bool a_trans,
                 const typename V::scalar_t* b, int64_t ldb,
                 const typename V::scalar_t* const* b_rows, int64_t n,
                 const typename V::scalar_t* cinit, int64_t ldc,
                 const cpu::Epilogue<typename V::scalar_t>& ep) {
  using T = typename V::scalar_t;
  if (m <= 0 || n <= 0) return;
  constexpr int MR = Narrow<V>::MR;
  const NarrowArgs<V> g{
      a, a_trans ? 1 : lda, a_trans ? lda : 1, b, ldb, b_rows, V::tail_mask(int(n)), cinit, ldc,
      ep};
  auto at = [&](int64_t r, int64_t k) {  // g moved to row r, k
    NarrowArgs<V> t = g;
    t.a = a + r * g.ar + k * g.ak;
    if (b_rows)
      t.b_rows = b_rows + k;
    else
      t.b = b + k * ldb;
    if (cinit) t.cinit = cinit + r * ldc;
    t.ep = ep_rows(ep, r);
    return t;
  };
  // One tile, or A as it is (rows of A read in order, each its own stream, as C's rows):
  // the whole K per tile, B (one vector per k) from L1 or L2 for the next tile. (Up to
  // K = 2048, a B of 128 KB of float32 with AVX-512; past it, K in blocks of 1024 as below.)
  if (m <= MR || (!a_trans && K <= 2048) || K <= 0) {  // (K = 0: the epilogue of cinit or 0)
    for (int64_t r = 0; r < m;) {
      const int mr = int(next_mr<V>(m - r, MR));
      narrow_rows<V, MR>(mr, K, at(r, 0), LineStream());
      r += mr;
    }
    return;
  }
  // Several tiles: K in blocks, so that a block of B is read from memory once and from L1 or
  // L2 by the other tiles. A^T: blocks whose rows of A (m elements each) fit in L2. There
  // each tile reads its own columns of A's rows, lda apart: a stride that the hardware
  // prefetchers do not follow (4 KB per k at m = 1024). So each tile requests its share of
  // the next block's rows of A, in address order, a line per k step as it computes (all at
  // once, they filled the miss buffers and stalled the tile). Each block's sums go to
  // ep.out (exactly: a store and a load) and the next continues from there; the epilogue
  // (its bias) joins after the last.
  int64_t kc = (256 * 1024) / (m * int64_t(sizeof(T)));
  kc = !a_trans ? 1024 : (kc < 16 ? 16 : (kc > 512 ? 512 : kc));
  int64_t ntiles = 0;
  for (int64_t r = 0; r < m; r += next_mr<V>(m - r, MR)) ++ntiles;
  for (int64_t kb = 0; kb < K; kb += kc) {
    const int64_t kcur = K - kb < kc ? K - kb : kc;
    const int64_t kn = kb + kcur, kn_rows = K - kn < kc ? K - kn : kc;  // the next block
    int64_t ti = 0;
    for (int64_t r = 0; r < m; ++ti) {
      LineStream pf;
      if (a_trans) {
        const int64_t k0 = kn + kn_rows * ti / ntiles, k1 = kn + kn_rows * (ti + 1) / ntiles;
        pf.base = reinterpret_cast<const char*>(a + k0 * lda);
        pf.ld = lda * int64_t(sizeof(T));
        pf.rows = k1 - k0;
        pf.row_bytes = m * int64_t(sizeof(T));
      }
      const int mr = int(next_mr<V>(m - r, MR));
      NarrowArgs<V> t = at(r, kb);
      if (kb > 0) {  // continue from the previous block's sums
        t.cinit = t.ep.out;
        t.ldc = t.ep.ldo;
      }
      if (kn < K) {  // not the last block: the plain sums
        t.ep.kind = cpu::EpKind::kStore;
        t.ep.x1 = nullptr;
      }
      narrow_rows<V, MR>(mr, kcur, t, pf);
      r += mr;
    }
  }
}

template <class V>
void pointwise(int64_t m, int64_t c0, int64_t c1, const typename V::scalar_t* acc, int64_t ldacc,
               const cpu::Epilogue<typename V::scalar_t>& ep) {
  if (c1 <= c0) return;
  for (int64_t r = 0; r < m; ++r)
    apply_epilogue<V>(ep_rows(ep, r), 1, c0, c1 - c0, acc ? acc + r * ldacc + c0 : nullptr, 0);
}

template <class V>
void tanh_array(const typename V::scalar_t* x, typename V::scalar_t* y, int64_t n) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(y + i, vtanh<V>(V::load(x + i)));
  if (i < n) {
    const typename V::mask m = V::tail_mask(int(n - i));
    V::store_masked(y + i, m, vtanh<V>(V::load_masked(x + i, m)));
  }
}

template <class V>
cpu::KernelTable<typename V::scalar_t> make_table() {
  cpu::KernelTable<typename V::scalar_t> t;
  t.isa = V::isa;
  t.nr = Tiling<V>::NR;
  t.pack = &pack<V>;
  t.gemm = &gemm<V>;
  t.pointwise = &pointwise<V>;
  t.gemv_nt = &gemv_nt<V>;
  t.gemv_nn = &gemv_nn<V>;
  t.gemm_narrow = &gemm_narrow<V>;
  t.narrow_n = V::W;
  t.tanh = &tanh_array<V>;
  return t;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
