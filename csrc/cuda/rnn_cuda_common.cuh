// Pieces shared by the recurrence kernels (persistent, per-step, and the Hopper cluster
// kernel): number types, the walk over (packed) time steps, where a step's recurrent input
// row comes from, and the fused epilogue. They compute exactly the same function with the
// same per-step arithmetic, so which one runs never changes the math, only the schedule
// (and the order of each product's partial sums).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fusedrnn.h"

namespace fusedrnn {
namespace cuda_detail {

// ---- number types -------------------------------------------------------------------------
// acc_t: accumulation and recurrent-state type. Half types compute in float32.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccType<scalar_t>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_acc(acc_type<scalar_t> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}

// Four consecutive elements from 16-byte-aligned (8 for half types) shared memory.
__device__ __forceinline__ void load4(const float* p, float (&o)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double (&o)[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float (&o)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
}
__device__ __forceinline__ void load4(const __half* p, float (&o)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
  o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
}

// ---- activation ---------------------------------------------------------------------------
// Accurate libdevice tanh (no fast math: the tests compare against float64 NumPy).
// relu keeps NaN (x < 0 is false for NaN), as torch.relu does.
template <Activation ACT, typename acc_t>
__device__ __forceinline__ acc_t act_forward(acc_t x) {
  if constexpr (ACT == Activation::kTanh) {
    return tanh(x);
  } else {
    return x < acc_t(0) ? acc_t(0) : x;
  }
}
// g phi'(pre-activation) from the output h = phi(pre), as torch's backward computes it:
// tanh g (1 - h^2); relu 0 where h <= 0, else g (a select, not a product: a NaN state
// passes g on, and a zero gradient stops an infinite or NaN g).
template <Activation ACT, typename acc_t>
__device__ __forceinline__ acc_t act_backward(acc_t g, acc_t h) {
  if constexpr (ACT == Activation::kTanh) {
    return g * (acc_t(1) - h * h);
  } else {
    return h <= acc_t(0) ? acc_t(0) : g;
  }
}

// ---- the walk over time steps --------------------------------------------------------------
// A recurrence runs `nphase` phases k = 0, 1, ... in walking order. Phase k < T handles
// step t (t = k, or T-1-k when the walk is reversed); the backward recurrence adds a
// phase k = T, with no step, that only produces dh0 = d_first W_hh for the sequences
// whose first forward step was the last one walked.
//   bcur  rows active at this phase's step (0 at phase T)
//   bprev rows active at the previous phase (0 at phase 0): rows b < bprev carry a state
//         in from the previous phase; rows bprev <= b < bcur join here
//   bnext rows active at the next phase (0 at the last step): rows bnext <= b < bcur
//         leave after this step
//   off   first packed row of step t
struct Phase {
  int64_t off;
  int64_t bcur;
  int64_t bprev;
  int64_t bnext;
};

// Walks the phases in order. `batch_sizes` is host memory when the walker runs on the
// host (per-step kernel launches) and device memory inside the persistent kernel; nullptr
// means padded input. One implementation for both, so the two paths cannot disagree.
struct Walker {
  const int64_t* batch_sizes;
  int64_t B;
  int64_t T;
  bool reverse;  // walk t = T-1 .. 0
  int64_t off;
  int64_t bprev;

  __host__ __device__ Walker(const int64_t* bs, int64_t B_, int64_t T_, int64_t N, bool rev)
      : batch_sizes(bs), B(B_), T(T_), reverse(rev), off(rev ? N : 0), bprev(0) {}

  __host__ __device__ int64_t rows_at_phase(int64_t k) const {
    if (k < 0 || k >= T) return 0;
    const int64_t t = reverse ? T - 1 - k : k;
    return batch_sizes ? batch_sizes[t] : B;
  }
  // Phase k; call with k = 0, 1, 2, ... in order.
  __host__ __device__ Phase next(int64_t k) {
    Phase ph;
    ph.bcur = rows_at_phase(k);
    ph.bprev = bprev;
    ph.bnext = rows_at_phase(k + 1);
    if (reverse) off -= ph.bcur;
    ph.off = off;
    if (!reverse) off += ph.bcur;
    bprev = ph.bcur;
    return ph;
  }
};

// ---- one recurrence: everything a kernel needs -------------------------------------------------
// The forward and the BPTT recurrence share one shape:
//   out_t = epilogue(X_t, in_{t'} M)   with   in_{t'} = state of the previous phase,
//                                              or `init` for rows that join
// forward: M = W_hh^T, X = P,  init = h0,      epilogue h = phi(P + v)
// BPTT:    M = W_hh,   X = G,  init = zeros,   epilogue d = act_backward(G + (v or dhn), h)
// (forward without h0: init is zeros, and the product with them is computed, NaN of W_hh
// included, as torch does; BPTT: a joining row's v is dropped, see epilogue)
template <typename scalar_t>
struct RecParams {
  using acc_t = acc_type<scalar_t>;
  int64_t T, B, H, N;
  int64_t Hp;                   // H rounded up to a multiple of 4: row stride of the state
  const int64_t* batch_sizes;   // [T] device (persistent kernel) or nullptr (padded)
  bool walk_reverse;            // walking order of this recurrence
  int64_t nphase;               // T, or T+1 for BPTT with dh0 wanted
  const scalar_t* W;            // [H,H] W_hh (out, in)
  const scalar_t* init;         // [B,H] h0 for joining rows, or nullptr (zeros)
  const scalar_t* X;            // [N,H] forward: P; BPTT: G or nullptr
  const scalar_t* h;            // [N,H] BPTT: saved hidden states; forward: unused
  const scalar_t* dhn;          // [B,H] BPTT: dL/dhn or nullptr; forward: unused
  scalar_t* Y;                  // [N,H] out: forward h (may alias P); BPTT dP (may alias G)
  scalar_t* Yfinal;             // [B,H] out: forward hn; BPTT dh0; nullptr = not wanted
  acc_t* state;                 // [2,B,Hp] ping-pong state in the accumulation type
  unsigned long long* barrier;  // grid barrier counter (persistent kernel), zeroed per call
};

// Rows a phase computes: the active rows, plus (BPTT) the rows that just left and want dh0.
template <bool BWD>
__host__ __device__ __forceinline__ int64_t phase_rows(const Phase& ph, bool want_final) {
  if (!BWD) return ph.bcur;
  const int64_t extra = want_final ? ph.bprev : 0;
  return ph.bcur > extra ? ph.bcur : extra;
}

// The recurrent input of row b at this phase, element k (k < H).
template <typename scalar_t>
__device__ __forceinline__ acc_type<scalar_t> input_at(const RecParams<scalar_t>& p,
                                                       const Phase& ph,
                                                       const acc_type<scalar_t>* state_in,
                                                       int64_t b, int64_t k) {
  using acc_t = acc_type<scalar_t>;
  if (b < ph.bprev) return state_in[b * p.Hp + k];
  return p.init ? to_acc(p.init[b * p.H + k]) : acc_t(0);
}

// The epilogue's operands from global memory for output (row b of this phase, unit j): what
// it adds to v and, in BPTT, the saved state. They do not depend on the recurrence, so the
// persistent kernel loads them before the phase's product (off its critical path).
//   forward: x = P[b, j]
//   BPTT:    x = G[b, j] (0 without G), + dhn[b, j] for a row that joins here, h = h[b, j]
//            (rows b in [bcur, bprev), which only produce dh0, read nothing)
template <typename scalar_t>
struct EpilogueOperands {
  acc_type<scalar_t> x;
  acc_type<scalar_t> h;
};

template <typename scalar_t, bool BWD>
__device__ __forceinline__ EpilogueOperands<scalar_t> epilogue_operands(
    const RecParams<scalar_t>& p, const Phase& ph, int64_t b, int64_t j) {
  using acc_t = acc_type<scalar_t>;
  EpilogueOperands<scalar_t> o{acc_t(0), acc_t(0)};
  const int64_t idx = (ph.off + b) * p.H + j;
  if constexpr (!BWD) {
    o.x = to_acc(p.X[idx]);
  } else if (b < ph.bcur) {
    if (p.X) o.x = to_acc(p.X[idx]);
    if (b >= ph.bprev && p.dhn) o.x += to_acc(p.dhn[b * p.H + j]);
    o.h = to_acc(p.h[idx]);
  }
  return o;
}

// Fused epilogue for output (row b of this phase, unit j), v = (in M)[b, j], with its
// operands o (epilogue_operands of the same b, j). Every element is read and written by one
// thread, so Y may alias X. The state the next phase reads (rows b < bcur) goes to
// store_state(b, j, value): the global ping-pong buffer, or the cluster's shared memory.
template <typename scalar_t, bool BWD, Activation ACT, typename StoreState>
__device__ __forceinline__ void epilogue_apply(const RecParams<scalar_t>& p, const Phase& ph,
                                               int64_t b, int64_t j, acc_type<scalar_t> v,
                                               const EpilogueOperands<scalar_t>& o,
                                               StoreState&& store_state) {
  using acc_t = acc_type<scalar_t>;
  const int64_t idx = (ph.off + b) * p.H + j;
  if constexpr (!BWD) {
    const acc_t y = act_forward<ACT>(o.x + v);
    p.Y[idx] = from_acc<scalar_t>(y);
    store_state(b, j, y);
    if (b >= ph.bnext && p.Yfinal) p.Yfinal[b * p.H + j] = from_acc<scalar_t>(y);
  } else {
    if (b < ph.bcur) {
      // Rows b < bprev carry d from the previous phase: v = d_prev W_hh. Rows that join here
      // end their sequence at this step and take dhn instead (in o.x), with no product: v
      // (their zeros times W_hh) is dropped, not added, as torch's autograd and the CPU
      // kernel never form it; so a NaN or an infinity of W_hh does not reach their gradient
      // at the last step.
      const acc_t g = b < ph.bprev ? o.x + v : o.x;
      const acc_t d = act_backward<ACT>(g, o.h);
      p.Y[idx] = from_acc<scalar_t>(d);
      store_state(b, j, d);
    } else {
      // b in [bcur, bprev): the sequence's first forward step was the previous phase.
      p.Yfinal[b * p.H + j] = from_acc<scalar_t>(v);
    }
  }
}

// The epilogue with the state stored to the global ping-pong buffer state_out [B][Hp] (the
// per-step and persistent kernels), with operands o or loaded in place.
template <typename scalar_t, bool BWD, Activation ACT>
__device__ __forceinline__ void epilogue(const RecParams<scalar_t>& p, const Phase& ph,
                                         acc_type<scalar_t>* state_out, int64_t b, int64_t j,
                                         acc_type<scalar_t> v,
                                         const EpilogueOperands<scalar_t>& o) {
  const int64_t Hp = p.Hp;
  epilogue_apply<scalar_t, BWD, ACT>(
      p, ph, b, j, v, o, [state_out, Hp](int64_t bb, int64_t jj, acc_type<scalar_t> value) {
        state_out[bb * Hp + jj] = value;
      });
}

template <typename scalar_t, bool BWD, Activation ACT>
__device__ __forceinline__ void epilogue(const RecParams<scalar_t>& p, const Phase& ph,
                                         acc_type<scalar_t>* state_out, int64_t b, int64_t j,
                                         acc_type<scalar_t> v) {
  epilogue<scalar_t, BWD, ACT>(p, ph, state_out, b, j, v,
                               epilogue_operands<scalar_t, BWD>(p, ph, b, j));
}

}  // namespace cuda_detail
}  // namespace fusedrnn
