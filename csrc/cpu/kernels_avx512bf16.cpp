// The bfloat16 kernel table: AVX-512 BF16 dot products (vdpbf16ps) on bfloat16 operands
// with float32 accumulators. Built with the AVX-512 and AVX512_BF16 flags of simd.cmake;
// selected only where the CPU has them (kernels_generic.cpp).
//
// vdpbf16ps multiplies pairs: lane i of the accumulator takes a[2i] b[2i] + a[2i+1] b[2i+1]
// in one instruction, twice the multiply-adds of a float32 fma on the same vector width.
// So K is walked in pairs of k: the A element pair (A[r, k], A[r, k+1]) is broadcast as one
// 32-bit value, and the panels hold B's rows k and k+1 interleaved (kernels.h, kstep = 2).
// An odd K ends with the pair (A[r, K-1], 0) against (B[K-1, j], 0): nothing is read past
// a row of A.
//
// Epilogues compute in float32 (the float32 table's tanh and derivative) from bfloat16
// operands and round once, to nearest even, when they store. Each output element is one
// float32 accumulator taking one vdpbf16ps per k pair in order, whatever the tile or the
// thread (the forward's few-row path, gemv_nt_ep, sums lane-wise instead, in an order fixed
// by the shape): results are bitwise identical for any thread count, as in the other tables.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(FUSEDRNN_NO_BF16)
#define FUSEDRNN_ISA_NS avx512bf16
#include <immintrin.h>

#include <cstring>

#include "aligned_buffer.h"
#include "fusedrnn.h"
#include "kernels_impl.h"
#include "vec_avx512.h"

namespace fusedrnn {
namespace avx512bf16 {
namespace {

using bf16 = bfloat16_t;
using V = VecAvx512<float>;
using Ep = cpu::Epilogue<bf16>;
constexpr int W = V::W;            // float32 lanes of a vector
constexpr int PV = Tiling<V>::PV;  // vectors per panel row
constexpr int NR = Tiling<V>::NR;  // panel width in columns

inline const uint16_t* u16(const bf16* p) { return reinterpret_cast<const uint16_t*>(p); }
inline uint16_t* u16(bf16* p) { return reinterpret_cast<uint16_t*>(p); }

// 16 bfloat16 values to float32 (exact: a bfloat16 is the top half of a float32).
inline __m512 load16(const bf16* p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
inline __m512 load16_masked(const bf16* p, __mmask16 m) {
  const __m256i v = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
// float32 to bfloat16, rounded to nearest even (vcvtneps2bf16).
inline __m256i round16(__m512 v) {
  const __m256bh b = _mm512_cvtneps_pbh(v);
  __m256i i;
  std::memcpy(&i, &b, sizeof(i));
  return i;
}
template <bool FULL>
inline __m512 ld(const bf16* p, __mmask16 m) {
  return FULL ? load16(p) : load16_masked(p, m);
}
template <bool FULL>
inline void st(bf16* p, __mmask16 m, __m512 v) {
  if (FULL)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), round16(v));
  else
    _mm256_mask_storeu_epi16(p, m, round16(v));
}

// The epilogue of one vector: row r, columns [j, j + 16) (masked by m unless FULL).
template <bool FULL>
inline void ep_store(const Ep& ep, int64_t r, int64_t j, __m512 acc, __mmask16 m) {
  __m512 v;
  switch (ep.kind) {
    case cpu::EpKind::kAct:
      v = act_forward<V>(ep.act, _mm512_add_ps(acc, ld<FULL>(ep.x1 + r * ep.ld1 + j, m)));
      break;
    case cpu::EpKind::kActGrad: {
      const __m512 g = ep.x1 ? _mm512_add_ps(acc, ld<FULL>(ep.x1 + r * ep.ld1 + j, m)) : acc;
      v = act_backward<V>(ep.act, g, ld<FULL>(ep.x2 + r * ep.ld2 + j, m));
      break;
    }
    case cpu::EpKind::kStore:
    default:
      v = ep.x1 ? _mm512_add_ps(acc, ld<FULL>(ep.x1 + r * ep.ld1 + j, m)) : acc;
      break;
  }
  st<FULL>(ep.out + r * ep.ldo + j, m, v);
}

inline __mmask16 tail(int64_t n) { return n >= W ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
inline __mmask32 tail32(int64_t n) {
  return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1u);
}

inline __m512bh as_bh(__m512i v) {
  __m512bh b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// The epilogue of row r on the columns [c0, c1): full vectors, then a masked tail;
// acc(c, m) gives the accumulators of the columns [c, c + 16) (m: the valid ones).
template <class Acc>
inline void ep_columns(const Ep& ep, int64_t r, int64_t c0, int64_t c1, const Acc& acc) {
  int64_t c = c0;
  for (; c + W <= c1; c += W) ep_store<true>(ep, r, c, acc(c, __mmask16(0xFFFF)), 0xFFFF);
  if (c < c1) {
    const __mmask16 m = tail(c1 - c);
    ep_store<false>(ep, r, c, acc(c, m), m);
  }
}

// The register tile: MR rows x NP panels over all K; the accumulators start at zero, or at
// seed[r*lds + c] (a K-blocked product continuing its float32 chains), and are stored to
// out[r*ldo + c], c < NP*NR, or (ROUNDED) rounded to rounded[r*ldo + c].
template <int MR, int NP, bool ROUNDED = false>
inline void micro_kernel(int64_t K, const bf16* a, int64_t lda, const bf16* bp, int64_t pstride,
                         const float* seed, int64_t lds, float* out, int64_t ldo,
                         bf16* rounded = nullptr) {
  constexpr int NV = NP * PV;
  __m512 c[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      c[r][v] = seed ? _mm512_loadu_ps(seed + r * lds + v * W) : _mm512_setzero_ps();
  const uint16_t* au = u16(a);
  const uint16_t* b[NP];
#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p) b[p] = u16(bp) + p * pstride;
  const int64_t pairs = K / 2;
  for (int64_t q = 0; q < pairs; ++q) {
    __m512bh bv[NV];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p)
#pragma GCC unroll 4
      for (int u = 0; u < PV; ++u)
        bv[p * PV + u] = as_bh(_mm512_loadu_si512(b[p] + q * 2 * NR + u * 2 * W));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, au + r * lda + 2 * q, sizeof(pair));
      const __m512bh av = as_bh(_mm512_set1_epi32(int(pair)));
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], av, bv[v]);
    }
  }
  if (K & 1) {  // the last k alone: (A[r, K-1], 0), the panels hold (B[K-1, j], 0)
    __m512bh bv[NV];
    for (int p = 0; p < NP; ++p)
      for (int u = 0; u < PV; ++u)
        bv[p * PV + u] = as_bh(_mm512_loadu_si512(b[p] + pairs * 2 * NR + u * 2 * W));
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = as_bh(_mm512_set1_epi32(int(uint32_t(au[r * lda + K - 1]))));
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      if constexpr (ROUNDED)
        st<true>(rounded + r * ldo + v * W, 0xFFFF, c[r][v]);
      else
        _mm512_storeu_ps(out + r * ldo + v * W, c[r][v]);
    }
}

// Where a tile's sums go: through the epilogue (sums == nullptr), or as float32 sums to
// sums[r*ld + j] for every column of the tile's panels, seeded from there when seed.
struct Sums {
  float* sums = nullptr;
  int64_t ld = 0;
  bool seed = false;
};

// One tile: rows [r0, r0 + MR) of a, panels [p, p + NP), the epilogue on the columns below N
// (or the float32 sums, see Sums).
template <int MR, int NP>
void tile(int64_t K, const bf16* a, int64_t lda, const bf16* bp, int64_t pstride, int64_t p,
          int64_t N, const Ep& ep, int64_t r0, const Sums& s) {
  constexpr int NV = NP * PV;
  if (s.sums) {
    float* c = s.sums + r0 * s.ld + p * NR;
    micro_kernel<MR, NP>(K, a + r0 * lda, lda, bp + p * pstride, pstride, s.seed ? c : nullptr,
                         s.ld, c, s.ld);
    return;
  }
  const int64_t j0 = p * NR;
  const int64_t ncols = N - j0 < NP * NR ? N - j0 : NP * NR;
  if (ep.kind == cpu::EpKind::kStore && !ep.x1 && ncols == NP * NR) {
    // A plain store of whole panels: rounded from the registers (products that compute
    // little and write much, a single step's weight gradients, are bound by this store).
    micro_kernel<MR, NP, true>(K, a + r0 * lda, lda, bp + p * pstride, pstride, nullptr, 0, nullptr,
                               ep.ldo, ep.out + r0 * ep.ldo + j0);
    return;
  }
  alignas(64) float acc[MR * NV * W];
  micro_kernel<MR, NP>(K, a + r0 * lda, lda, bp + p * pstride, pstride, nullptr, 0, acc, NV * W);
  const Ep e = ep_rows(ep, r0);
  for (int r = 0; r < MR; ++r)
    ep_columns(e, r, j0, j0 + ncols,
               [&](int64_t c, __mmask16) { return _mm512_load_ps(acc + r * NV * W + (c - j0)); });
}

// The widest tile of MR rows whose accumulators fit the register file (Tiling::np_max:
// the float32 AVX-512 tiles, since the accumulators are the same float32 vectors).
template <int MR>
void tile_np(int np, int64_t K, const bf16* a, int64_t lda, const bf16* bp, int64_t pstride,
             int64_t p, int64_t N, const Ep& ep, int64_t r0, const Sums& s) {
  constexpr int NPM = Tiling<V>::np_max(MR);
  if constexpr (NPM >= 4) {
    if (np >= 4) return tile<MR, 4>(K, a, lda, bp, pstride, p, N, ep, r0, s);
  }
  if constexpr (NPM >= 3) {
    if (np >= 3) return tile<MR, 3>(K, a, lda, bp, pstride, p, N, ep, r0, s);
  }
  if constexpr (NPM >= 2) {
    if (np >= 2) return tile<MR, 2>(K, a, lda, bp, pstride, p, N, ep, r0, s);
  }
  tile<MR, 1>(K, a, lda, bp, pstride, p, N, ep, r0, s);
}

void tile_dispatch(int mr, int np, int64_t K, const bf16* a, int64_t lda, const bf16* bp,
                   int64_t pstride, int64_t p, int64_t N, const Ep& ep, int64_t r0, const Sums& s) {
#define FUSEDRNN_BF16_TILE(n)                                \
  case n:                                                    \
    tile_np<n>(np, K, a, lda, bp, pstride, p, N, ep, r0, s); \
    break;
  switch (mr) {
    FUSEDRNN_BF16_TILE(1)
    FUSEDRNN_BF16_TILE(2)
    FUSEDRNN_BF16_TILE(3)
    FUSEDRNN_BF16_TILE(4)
    FUSEDRNN_BF16_TILE(5)
    FUSEDRNN_BF16_TILE(6)
    FUSEDRNN_BF16_TILE(7)
    FUSEDRNN_BF16_TILE(8)
    FUSEDRNN_BF16_TILE(9)
    FUSEDRNN_BF16_TILE(10)
    FUSEDRNN_BF16_TILE(11)
    FUSEDRNN_BF16_TILE(12)
    FUSEDRNN_BF16_TILE(13)
    FUSEDRNN_BF16_TILE(14)
    default:
      break;
  }
#undef FUSEDRNN_BF16_TILE
}

// A^T (a[k*lda + r], k < K) for rows [0, m) as row-major pairs: dst[r*ldd + k], with a zero
// at k = K when K is odd (the pair the micro-kernel reads whole). Blocks of 16 rows x 16
// pairs: 16 vectors of (row r's pair q) words for 16 r, transposed in registers, so each
// row's 16 pairs are one 64-byte store; the edges element by element.
void transpose_pairs(const bf16* a, int64_t lda, int64_t m, int64_t K, bf16* dst, int64_t ldd) {
  const uint16_t* s = u16(a);
  uint16_t* d = u16(dst);
  const int64_t pairs = (K + 1) / 2;
  const int64_t full_q = (K / 2) / 16 * 16;  // pairs in whole blocks of 16 (both k inside K)
  const int64_t full_r = m / 16 * 16;
  // q blocks outer: the 32 rows of A^T a block reads (64 bytes of each per two r blocks)
  // are used whole before the next block's (r outer swept all of K first, and the other
  // half of each line came back from L2).
  for (int64_t q = 0; q < full_q; q += 16) {
    for (int64_t r = 0; r < full_r; r += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        const uint16_t* row = s + (2 * (q + i)) * lda + r;
        const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)row));
        const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(row + lda)));
        v[i] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      }
      transpose16(v);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(d + (r + i) * ldd + 2 * q, v[i]);
    }
  }
  auto one = [&](int64_t r, int64_t q) {
    const int64_t k = 2 * q;
    d[r * ldd + k] = s[k * lda + r];
    d[r * ldd + k + 1] = k + 1 < K ? s[(k + 1) * lda + r] : uint16_t(0);
  };
  for (int64_t r = 0; r < full_r; ++r)
    for (int64_t q = full_q; q < pairs; ++q) one(r, q);
  for (int64_t r = full_r; r < m; ++r)
    for (int64_t q = 0; q < pairs; ++q) one(r, q);
}

// The products of gemm and gemm_acc: A as it is, or A^T copied into row-major pairs one
// block of rows at a time (the blocks for_each_tile would make, each copied once and read by
// every panel). The pairs of the copy are those the micro-kernel reads from a row-major A,
// so a transposed A gives the bits of its row-major copy.
void products(int64_t m, int64_t K, const bf16* a, int64_t lda, bool a_trans, const bf16* bp,
              int64_t pstride, int64_t p0, int64_t p1, int64_t N, const Ep& ep, const Sums& s) {
  auto run = [&](int64_t rows, const bf16* ar, int64_t ldr, const Ep& e, const Sums& sr) {
    for_each_tile<V>(rows, K, int64_t(sizeof(bf16)), p0, p1,
                     [&](int mr, int np, int64_t p, int64_t r) {
                       tile_dispatch(mr, np, K, ar, ldr, bp, pstride, p, N, e, r, sr);
                     });
  };
  if (!a_trans) return run(m, a, lda, ep, s);
  const int64_t ldd = (K + 1) / 2 * 2;
  const int64_t mc = row_block_rows(K, int64_t(sizeof(bf16)));  // for_each_tile's row blocks
  thread_local cpu::AlignedBuffer buf;
  for (int64_t rb = 0, re = 0; rb < m; rb = re) {
    re = row_block_end(m, rb, mc);
    bf16* t = static_cast<bf16*>(buf.get(size_t((re - rb) * ldd) * sizeof(bf16)));
    transpose_pairs(a + rb, lda, re - rb, K, t, ldd);
    Sums sr = s;
    if (sr.sums) sr.sums += rb * sr.ld;
    run(re - rb, t, ldd, ep_rows(ep, rb), sr);
  }
}

// KernelTable::gemm for bfloat16 operands, with the float32 table's blocking
// (for_each_tile); no cinit (a bfloat16 seed would round the sums twice: gemm_acc's float32
// sums carry a product across K blocks instead).
void gemm_bf16(int64_t m, int64_t K, const bf16* a, int64_t lda, bool a_trans, const bf16* bp,
               int64_t pstride, int64_t p0, int64_t p1, int64_t N, const bf16* /*cinit*/,
               int64_t /*ldc*/, const Ep& ep) {
  products(m, K, a, lda, a_trans, bp, pstride, p0, p1, N, ep, Sums{});
}

// KernelTable::gemm_acc: the float32 sums of panels [p0, p1) to c (see kernels.h).
void gemm_acc_bf16(int64_t m, int64_t K, const bf16* a, int64_t lda, bool a_trans, const bf16* bp,
                   int64_t pstride, int64_t p0, int64_t p1, float* c, int64_t ldc, bool seed) {
  products(m, K, a, lda, a_trans, bp, pstride, p0, p1, p1 * NR, Ep{}, Sums{c, ldc, seed});
}

// Packs panels [p0, p1) of B[k, j] = src[k*rs + j*cs] in k pairs (kernels.h).
void pack_bf16(const bf16* src, int64_t rs, int64_t cs, int64_t K, int64_t N, int64_t p0,
               int64_t p1, bf16* dst, int64_t pstride) {
  const uint16_t* s = u16(src);
  uint16_t* d = u16(dst);
  const int64_t pairs = (K + 1) / 2;
  if (cs == 1) {
    // Rows k and k + 1 of B are contiguous runs: interleave 32 columns of each into 64
    // values (lane 2i from row k, 2i + 1 from row k + 1).
    alignas(64) static const uint16_t lo_idx[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                                    37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                                    11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                    53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                    27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    const __m512i lo = _mm512_load_si512(lo_idx);
    const __m512i hi = _mm512_load_si512(hi_idx);
    for (int64_t q = 0; q < pairs; ++q) {
      const uint16_t* s0 = s + 2 * q * rs;
      const bool second = 2 * q + 1 < K;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t j0 = p * NR;
        const int64_t nc = N - j0 < NR ? N - j0 : NR;
        const __mmask32 m = tail32(nc);
        const __m512i r0 = _mm512_maskz_loadu_epi16(m, s0 + j0);
        const __m512i r1 =
            second ? _mm512_maskz_loadu_epi16(m, s0 + rs + j0) : _mm512_setzero_si512();
        uint16_t* out = d + p * pstride + q * 2 * NR;
        _mm512_storeu_si512(out, _mm512_permutex2var_epi16(r0, lo, r1));
        _mm512_storeu_si512(out + 2 * W, _mm512_permutex2var_epi16(r0, hi, r1));
      }
    }
    return;
  }
  // Column j of B is a run with stride rs. In blocks of 64 pairs, so the panel rows being
  // written stay in L1 while the 32 source columns are read (as in kernels_impl.h).
  constexpr int64_t QB = 64;
  if (rs == 1) {
    // W^T (the forward step): the pair (k, k + 1) of column j is one 32-bit word of row j
    // of W, copied whole (little-endian: k in the low half, as the panel wants it). An odd
    // K's last pair is (W[j, K-1], 0): nothing is read past the row.
    const int64_t full = K / 2;
    for (int64_t p = p0; p < p1; ++p) {
      uint32_t* dw = reinterpret_cast<uint32_t*>(d + p * pstride);
      const int64_t j0 = p * NR;
      const int64_t nc = N - j0 < NR ? N - j0 : NR;
      // Whole panels: 16 rows x 16 pairs at a time, transposed in registers (16 words of
      // 16 rows of W in, 16 runs of 16 panel words out); the odd K's last pair below.
      const int64_t vq = nc == NR ? full / 16 * 16 : 0;
      for (int64_t q = 0; q < vq; q += 16)
        for (int64_t jb = 0; jb < NR; jb += 16) {
          __m512i v[16];
          for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_si512(s + (j0 + jb + i) * cs + 2 * q);
          transpose16(v);
          for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dw + (q + i) * NR + jb, v[i]);
        }
      for (int64_t qb = vq; qb < pairs; qb += QB) {
        const int64_t qe = qb + QB < pairs ? qb + QB : pairs;
        const int64_t qf = qe < full ? qe : full;
        for (int64_t jj = 0; jj < NR; ++jj) {
          if (jj >= nc) {
            for (int64_t q = qb; q < qe; ++q) dw[q * NR + jj] = 0;
            continue;
          }
          const uint16_t* col = s + (j0 + jj) * cs;
          for (int64_t q = qb; q < qf; ++q) std::memcpy(&dw[q * NR + jj], col + 2 * q, 4);
          if (qe > full) dw[full * NR + jj] = col[K - 1];
        }
      }
    }
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    uint16_t* dp = d + p * pstride;
    const int64_t j0 = p * NR;
    const int64_t nc = N - j0 < NR ? N - j0 : NR;
    for (int64_t qb = 0; qb < pairs; qb += QB) {
      const int64_t qe = qb + QB < pairs ? qb + QB : pairs;
      for (int64_t jj = 0; jj < NR; ++jj) {
        const uint16_t* col = s + (j0 + jj) * cs;
        for (int64_t q = qb; q < qe; ++q) {
          const int64_t k = 2 * q;
          const bool in = jj < nc;
          dp[q * 2 * NR + 2 * jj] = in ? col[k * rs] : uint16_t(0);
          dp[q * 2 * NR + 2 * jj + 1] = in && k + 1 < K ? col[(k + 1) * rs] : uint16_t(0);
        }
      }
    }
  }
}

// Few rows (the driver's unpacked path: a short sequence of up to 8 rows) times W read in
// place, epilogue fused, in groups of up to 4 rows each reading W once (by_row_groups).

// M rows x W^T: each sum a W-lane dot product of 32 k per vdpbf16ps (masked past K: zeros),
// the 16 lanes then added in _mm512_reduce_add_ps's fixed order. Not the packed chain: the
// driver chooses this path by shape alone.
template <int M>
void nt_rows(int64_t K, const bf16* a, int64_t lda, const bf16* w, int64_t ldw, int64_t j0,
             int64_t j1, const Ep& ep) {
  constexpr int JB = 4;  // columns per pass: M x 4 accumulators, M + 1 operand vectors
  const uint16_t* au = u16(a);
  const uint16_t* wu = u16(w);
  for (int64_t j = j0; j < j1; j += W) {
    const int64_t nj = j1 - j < W ? j1 - j : W;
    alignas(64) float sums[M][W] = {};  // columns past nj go through the epilogue, unstored
    for (int64_t jb = 0; jb < nj; jb += JB) {
      const int nb = int(nj - jb < JB ? nj - jb : JB);
      __m512 c[M][JB];
      for (int r = 0; r < M; ++r)
        for (int q = 0; q < JB; ++q) c[r][q] = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 2 * W) {
        const __mmask32 mk = tail32(K - k);
        __m512bh av[M];
        for (int r = 0; r < M; ++r) av[r] = as_bh(_mm512_maskz_loadu_epi16(mk, au + r * lda + k));
        for (int q = 0; q < nb; ++q) {
          const __m512bh wv = as_bh(_mm512_maskz_loadu_epi16(mk, wu + (j + jb + q) * ldw + k));
          for (int r = 0; r < M; ++r) c[r][q] = _mm512_dpbf16_ps(c[r][q], av[r], wv);
        }
      }
      for (int r = 0; r < M; ++r)
        for (int q = 0; q < nb; ++q) sums[r][jb + q] = _mm512_reduce_add_ps(c[r][q]);
    }
    for (int r = 0; r < M; ++r)
      ep_columns(ep, r, j, j + nj, [&](int64_t, __mmask16) { return _mm512_load_ps(sums[r]); });
  }
}

void gemv_nt_ep_bf16(int64_t m, int64_t K, const bf16* a, int64_t lda, const bf16* w, int64_t ldw,
                     int64_t j0, int64_t j1, const Ep& ep) {
  if (j1 <= j0) return;
  by_row_groups(m, [&](auto rows, int64_t r0) {
    nt_rows<decltype(rows)::value>(K, a + r0 * lda, lda, w, ldw, j0, j1, ep_rows(ep, r0));
  });
}

// M rows x a row-major W: per 16 columns, rows k and k + 1 of W interleaved in registers
// into the panels' pairs, so each sum is the packed micro-kernel's chain (one vdpbf16ps per
// k pair, in order, from zero): bitwise the packed result.
template <int M>
void nn_rows(int64_t K, const bf16* a, int64_t lda, const bf16* w, int64_t ldw, int64_t j0,
             int64_t j1, const Ep& ep) {
  alignas(64) static const uint16_t pair_idx[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                    21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                    11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(pair_idx);
  const uint16_t* au = u16(a);
  const uint16_t* wu = u16(w);
  const int64_t pairs = K / 2;
  // A plain store (a single step's weight gradient, the few-k products of gemm_cpu): whole
  // panels go from the registers to memory, not through ep_columns' per-vector epilogue.
  const bool plain = ep.kind == cpu::EpKind::kStore && !ep.x1;
  for (int64_t j = j0; j < j1; j += NR) {
    const int64_t nc = j1 - j < NR ? j1 - j : NR;
    __mmask16 mv[PV];
    for (int u = 0; u < PV; ++u) mv[u] = tail(nc - u * W > 0 ? nc - u * W : 0);
    __m512 c[M][PV];
    for (int r = 0; r < M; ++r)
      for (int u = 0; u < PV; ++u) c[r][u] = _mm512_setzero_ps();
    auto panel = [&](const uint16_t* row0, const uint16_t* row1, int u) {
      const __m256i lo = _mm256_maskz_loadu_epi16(mv[u], row0 + j + u * W);
      const __m256i hi =
          row1 ? _mm256_maskz_loadu_epi16(mv[u], row1 + j + u * W) : _mm256_setzero_si256();
      return as_bh(
          _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)));
    };
    for (int64_t q = 0; q < pairs; ++q) {
      __m512bh bv[PV];
      for (int u = 0; u < PV; ++u) bv[u] = panel(wu + 2 * q * ldw, wu + (2 * q + 1) * ldw, u);
      for (int r = 0; r < M; ++r) {
        uint32_t pair;
        std::memcpy(&pair, au + r * lda + 2 * q, sizeof(pair));
        const __m512bh av = as_bh(_mm512_set1_epi32(int(pair)));
        for (int u = 0; u < PV; ++u) c[r][u] = _mm512_dpbf16_ps(c[r][u], av, bv[u]);
      }
    }
    if (K & 1) {  // (A[r, K-1], 0) against (W[K-1, j], 0), as in the packed kernel
      __m512bh bv[PV];
      for (int u = 0; u < PV; ++u) bv[u] = panel(wu + (K - 1) * ldw, nullptr, u);
      for (int r = 0; r < M; ++r) {
        const __m512bh av = as_bh(_mm512_set1_epi32(int(uint32_t(au[r * lda + K - 1]))));
        for (int u = 0; u < PV; ++u) c[r][u] = _mm512_dpbf16_ps(c[r][u], av, bv[u]);
      }
    }
    if (plain && nc == NR) {  // whole panels of a plain store: rounded from the registers
#pragma GCC unroll 8
      for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
        for (int u = 0; u < PV; ++u) st<true>(ep.out + r * ep.ldo + j + u * W, 0xFFFF, c[r][u]);
      continue;
    }
    for (int r = 0; r < M; ++r)
      ep_columns(ep, r, j, j + nc, [&](int64_t col, __mmask16) { return c[r][(col - j) / W]; });
  }
}

void gemv_nn_ep_bf16(int64_t m, int64_t K, const bf16* a, int64_t lda, const bf16* w, int64_t ldw,
                     int64_t j0, int64_t j1, const Ep& ep) {
  if (j1 <= j0) return;
  by_row_groups(m, [&](auto rows, int64_t r0) {
    nn_rows<decltype(rows)::value>(K, a + r0 * lda, lda, w, ldw, j0, j1, ep_rows(ep, r0));
  });
}

// KernelTable::pointwise: the epilogue on rows r < m, columns [c0, c1), from the
// accumulators acc (bfloat16, e.g. dhn) or zeros.
void pointwise_bf16(int64_t m, int64_t c0, int64_t c1, const bf16* acc, int64_t ldacc,
                    const Ep& ep) {
  for (int64_t r = 0; r < m; ++r)
    ep_columns(ep, r, c0, c1, [&](int64_t c, __mmask16 m) {
      return acc ? load16_masked(acc + r * ldacc + c, m) : _mm512_setzero_ps();
    });
}

// KernelTable::pointwise_acc: the epilogue on rows r < m, columns [c0, c1), from float32 sums.
void pointwise_acc_bf16(int64_t m, int64_t c0, int64_t c1, const float* acc, int64_t ldacc,
                        const Ep& ep) {
  for (int64_t r = 0; r < m; ++r)
    ep_columns(ep, r, c0, c1, [&](int64_t c, __mmask16 mk) {
      return _mm512_maskz_loadu_ps(mk, acc + r * ldacc + c);
    });
}

// y = bfloat16(tanh(x)), the forward epilogue's tanh (tests).
void tanh_bf16(const bf16* x, bf16* y, int64_t n) {
  for (int64_t i = 0; i < n; i += W) {
    const __mmask16 m = tail(n - i);
    st<false>(y + i, m, vtanh<V>(load16_masked(x + i, m)));
  }
}

}  // namespace
}  // namespace avx512bf16

namespace cpu {
const KernelTable<bfloat16_t>* kernels_avx512_bf16() {
  static const KernelTable<bfloat16_t> t = [] {
    KernelTable<bfloat16_t> k;
    k.isa = "avx512_bf16";
    k.nr = avx512bf16::NR;
    k.kstep = 2;
    k.pack = &avx512bf16::pack_bf16;
    k.gemm = &avx512bf16::gemm_bf16;
    k.gemm_acc = &avx512bf16::gemm_acc_bf16;
    k.pointwise_acc = &avx512bf16::pointwise_acc_bf16;
    k.pointwise = &avx512bf16::pointwise_bf16;
    k.gemv_nt = nullptr;  // the unpacked products come with their epilogue fused:
    k.gemv_nn = nullptr;
    k.gemv_nt_ep = &avx512bf16::gemv_nt_ep_bf16;
    k.gemv_nn_ep = &avx512bf16::gemv_nn_ep_bf16;
    k.tanh = &avx512bf16::tanh_bf16;
    return k;
  }();
  return &t;
}
}  // namespace cpu
}  // namespace fusedrnn
#endif
