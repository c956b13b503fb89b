// fusedrnn core kernel contract: plain C++ on raw pointers, no torch, no Python.
//
// Shape letters used everywhere in csrc/:
//   T  time steps            B  batch size (the largest, = batch_sizes[0])
//   I  input features        H  hidden units
//   N  rows of packed time-major data, N = sum_t batch_sizes[t]  (padded input: N = T*B)
//
// Packed layout (the PackedSequence / cuDNN layout): the rows of step t are
// [off_t, off_t + batch_sizes[t]) with off_t = sum_{s<t} batch_sizes[s]; row off_t + b
// belongs to sequence b. batch_sizes is non-increasing, so sequence b is active at
// steps 0 .. len_b - 1. Every matrix is row-major and contiguous.
//
// One call runs one layer in one direction over the whole sequence. The forward
// direction walks t = 0..T-1; the reverse direction walks t = T-1..0, and sequence b
// joins at its own last step t = len_b - 1, starting from h0[b].
//
// The caller (python/fusedrnn/ops.py) has checked every size, dtype, device and
// contiguity; the kernels assume checked inputs.
#pragma once

#include <cstdint>

namespace fusedrnn {

enum class Activation : int { kTanh = 0, kRelu = 1 };

// A bfloat16 value as stored (torch.bfloat16's bits): the kernels of bfloat16 layers
// (rnn_forward_cpu / rnn_backward_cpu<bfloat16_t>, where cpu_has_bf16()) read and write
// bfloat16 and compute in float32 (float32 accumulators, one rounding per stored value).
struct bfloat16_t {
  uint16_t bits;
};
static_assert(sizeof(bfloat16_t) == 2, "bfloat16_t must be two bytes");

struct RecurrenceShape {
  int64_t T = 0;
  int64_t B = 0;
  int64_t H = 0;
  // [T] host memory, non-increasing, batch_sizes[0] == B, batch_sizes[T-1] >= 1.
  // nullptr means padded input: every step has all B rows (N = T*B).
  const int64_t* batch_sizes = nullptr;
  bool reverse = false;
  Activation act = Activation::kTanh;
};

// Forward recurrence  h_t = phi(P_t + h_prev W_hh^T)  over all T steps.
//   P    [N,H]  input projection x W_ih^T + b_ih + b_hh
//   W_hh [H,H]  (out, in)
//   h0   [B,H]  initial state, or nullptr for zeros
//   h    [N,H]  out: the hidden state of every row. h may alias P (in place).
//   ldh         row stride of P and h (H, or more: one direction's columns of a
//               bidirectional layer's [N, 2H] output)
//   hn   [B,H]  out: the final state of each sequence (its last active step; for
//               the reverse direction, step 0)
// num_threads: the team size the caller allows (torch.get_num_threads()); the kernel
// may use fewer. Results are bitwise identical for any num_threads.
template <typename scalar_t>
void rnn_forward_cpu(const RecurrenceShape& s, const scalar_t* P, const scalar_t* W_hh,
                     const scalar_t* h0, scalar_t* h, int64_t ldh, scalar_t* hn, int num_threads);

// BPTT recurrence  d_t = (G_t + d_next W_hh) * phi'(h_t), walking opposite to the
// forward direction; d_next is the d of the step the forward pass went to next, or
// dhn at a sequence's final step.
//   W_hh [H,H]  (out, in)
//   h    [N,H]  hidden states from the forward call, row stride ldh (>= H)
//   G    [N,H]  dL/dh from the output, or nullptr for zeros; row r at G + r*ldg, so
//               ldg = H is contiguous, ldg > H a column slice of a wider matrix (one
//               direction of a bidirectional output) and ldg = 0 one row for every row
//               (the gradient of a sum, which autograd hands over expanded)
//   dhn  [B,H]  dL/dhn, or nullptr for zeros
//   dP   [N,H]  out: d_t = dL/d(pre-activation) of every row. dP may alias G (ldg = H).
//   dh0  [B,H]  out: dL/dh0 = d_first W_hh, or nullptr if not wanted
// The weight, bias and input gradients are single large GEMMs on dP done by the caller.
template <typename scalar_t>
void rnn_backward_cpu(const RecurrenceShape& s, const scalar_t* W_hh, const scalar_t* h,
                      int64_t ldh, const scalar_t* G, int64_t ldg, const scalar_t* dhn,
                      scalar_t* dP, scalar_t* dh0, int num_threads);

// The instruction set the CPU kernels selected at run time ("avx512", "avx2", "generic").
const char* cpu_isa();

// Whether this CPU runs the bfloat16 recurrence kernels (AVX-512 BF16 dot products, and
// FUSEDRNN_CPU_ISA not capping the choice below AVX-512). rnn_forward_cpu and
// rnn_backward_cpu<bfloat16_t> throw std::runtime_error where it is false.
bool cpu_has_bf16();

}  // namespace fusedrnn
