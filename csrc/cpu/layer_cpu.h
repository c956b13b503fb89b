// One layer-direction of the Elman RNN on the CPU in one call each way: the recurrence
// kernels (fusedrnn.h) plus the GEMMs around them (gemm_cpu.h). One call from Python per
// pass instead of one per GEMM: on short sequences the calls, not the flops, dominate.
#pragma once

#include <cstdint>

#include "fusedrnn.h"

namespace fusedrnn {

// h = rnn_forward(P = x W_ih^T + b_ih + b_hh), in place in h.
//   x [N,I], w_ih [H,I], b_ih/b_hh [H] or nullptr, w_hh [H,H], h0 [B,H] or nullptr
//   h [N,H] out with row stride ldh >= H (2H: one direction of a bidirectional output),
//   hn [B,H] out
template <typename scalar_t>
void layer_forward_cpu(const RecurrenceShape& s, int64_t I, const scalar_t* x, const scalar_t* w_ih,
                       const scalar_t* b_ih, const scalar_t* b_hh, const scalar_t* w_hh,
                       const scalar_t* h0, scalar_t* h, int64_t ldh, scalar_t* hn, int num_threads);

// BPTT and every gradient of one layer-direction. Outputs are nullable:
//   h [N,H] from the forward call, row stride ldh (>= H)
//   G [N,H] with row stride ldg (see rnn_backward_cpu: ldg = H, > H, or 0 for one row),
//   or ldg = -1: one value *G for every element (the gradient of a sum, expanded)
//   dP [N,H] out (workspace; may alias G when ldg = H; nullptr: an internal workspace,
//   reused across calls up to cpu::kKeptBytes), dh0 [B,H], dx [N,I] (needs w_ih;
//   added to what dx holds when dx_accumulate: the second direction of a bidirectional
//   layer adds its share of the input gradient),
//   dw_ih [H,I] (needs x), dw_hh [H,H] (needs h0 or zero initial state: h0 == nullptr),
//   db [H] (the gradient of b_ih and of b_hh alike)
// Every sum runs in a fixed order: results are bitwise identical for any num_threads.
template <typename scalar_t>
void layer_backward_cpu(const RecurrenceShape& s, int64_t I, const scalar_t* x,
                        const scalar_t* w_ih, const scalar_t* w_hh, const scalar_t* h0,
                        const scalar_t* h, int64_t ldh, const scalar_t* G, int64_t ldg,
                        const scalar_t* dhn, scalar_t* dP, scalar_t* dh0, scalar_t* dx,
                        bool dx_accumulate, scalar_t* dw_ih, scalar_t* dw_hh, scalar_t* db,
                        int num_threads);

}  // namespace fusedrnn
