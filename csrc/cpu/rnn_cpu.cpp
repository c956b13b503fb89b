// Portable fused CPU recurrence kernels: forward and BPTT for one layer and direction.
//
// Contract: csrc/fusedrnn.h. This translation unit holds the driver (packed/reverse
// walking, state sourcing, final-state gathering) and a portable row x matrix step.
// W_hh is packed once per call as a [K,H] matrix (k-major) so that the inner loop over
// hidden units is contiguous and vectorizes; every element is a sequential-k sum, so
// results do not depend on how rows or columns are split.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "fusedrnn.h"

namespace fusedrnn {
namespace {

// Step sizes of the packed layout: batch size and first row of every step.
struct PackedSteps {
  std::vector<int64_t> bs;   // [T]
  std::vector<int64_t> off;  // [T]
  std::vector<int64_t> len;  // [B] steps each sequence is active for
  PackedSteps(const RecurrenceShape& s) : bs(s.T), off(s.T), len(s.B, 0) {
    int64_t row = 0;
    for (int64_t t = 0; t < s.T; ++t) {
      bs[t] = s.batch_sizes ? s.batch_sizes[t] : s.B;
      off[t] = row;
      row += bs[t];
      for (int64_t b = 0; b < bs[t]; ++b) len[b] = t + 1;
    }
  }
};

// Wk[k*H + j]: forward uses W_hh^T (Wk[k][j] = W_hh[j][k]), backward uses W_hh itself.
template <typename scalar_t>
std::vector<scalar_t> pack_k_major(const scalar_t* W_hh, int64_t H, bool transpose) {
  std::vector<scalar_t> Wk(static_cast<size_t>(H * H));
  for (int64_t k = 0; k < H; ++k)
    for (int64_t j = 0; j < H; ++j) Wk[k * H + j] = transpose ? W_hh[j * H + k] : W_hh[k * H + j];
  return Wk;
}

// acc[j] = sum_k a[k] * Wk[k][j], k ascending.
template <typename scalar_t>
inline void row_times(const scalar_t* a, const scalar_t* Wk, int64_t H, scalar_t* acc) {
  std::fill(acc, acc + H, scalar_t(0));
  for (int64_t k = 0; k < H; ++k) {
    const scalar_t ak = a[k];
    const scalar_t* w = Wk + k * H;
    for (int64_t j = 0; j < H; ++j) acc[j] += ak * w[j];
  }
}

template <typename scalar_t>
inline scalar_t activate(scalar_t v, Activation act) {
  return act == Activation::kTanh ? std::tanh(v) : (v < scalar_t(0) ? scalar_t(0) : v);
}

// phi'(pre) expressed through the output h = phi(pre).
template <typename scalar_t>
inline scalar_t activate_grad(scalar_t h, Activation act) {
  return act == Activation::kTanh ? scalar_t(1) - h * h
                                  : (h > scalar_t(0) ? scalar_t(1) : scalar_t(0));
}

}  // namespace

template <typename scalar_t>
void rnn_forward_cpu(const RecurrenceShape& s, const scalar_t* P, const scalar_t* W_hh,
                     const scalar_t* h0, scalar_t* h, scalar_t* hn, int /*num_threads*/) {
  const int64_t T = s.T, B = s.B, H = s.H;
  const PackedSteps steps(s);
  const std::vector<scalar_t> Wk = pack_k_major(W_hh, H, /*transpose=*/true);
  std::vector<scalar_t> zeros, mixed, acc(static_cast<size_t>(H));
  if (!h0) {
    zeros.assign(static_cast<size_t>(B * H), scalar_t(0));
    h0 = zeros.data();
  }
  for (int64_t i = 0; i < T; ++i) {
    const int64_t t = s.reverse ? T - 1 - i : i;
    const int64_t m = steps.bs[t];
    // The previous state of rows 0..m-1.
    const scalar_t* prev;
    if (i == 0) {
      prev = h0;
    } else if (!s.reverse) {
      prev = h + steps.off[t - 1] * H;  // bs[t-1] >= m rows, all continuing
    } else {
      const int64_t carried = steps.bs[t + 1];  // rows that were active at step t+1
      prev = h + steps.off[t + 1] * H;
      if (carried < m) {  // sequences joining at this step start from h0
        mixed.resize(static_cast<size_t>(m * H));
        std::memcpy(mixed.data(), prev, sizeof(scalar_t) * carried * H);
        std::memcpy(mixed.data() + carried * H, h0 + carried * H,
                    sizeof(scalar_t) * (m - carried) * H);
        prev = mixed.data();
      }
    }
    for (int64_t r = 0; r < m; ++r) {
      row_times(prev + r * H, Wk.data(), H, acc.data());
      const scalar_t* p = P + (steps.off[t] + r) * H;
      scalar_t* out = h + (steps.off[t] + r) * H;
      for (int64_t j = 0; j < H; ++j) out[j] = activate(p[j] + acc[j], s.act);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t_last = s.reverse ? 0 : steps.len[b] - 1;
    std::memcpy(hn + b * H, h + (steps.off[t_last] + b) * H, sizeof(scalar_t) * H);
  }
}

template <typename scalar_t>
void rnn_backward_cpu(const RecurrenceShape& s, const scalar_t* W_hh, const scalar_t* h,
                      const scalar_t* G, const scalar_t* dhn, scalar_t* dP, scalar_t* dh0,
                      int /*num_threads*/) {
  const int64_t T = s.T, B = s.B, H = s.H;
  const PackedSteps steps(s);
  const std::vector<scalar_t> Wk = pack_k_major(W_hh, H, /*transpose=*/false);
  std::vector<scalar_t> acc(static_cast<size_t>(H));
  for (int64_t i = 0; i < T; ++i) {
    // Walk opposite to the forward pass.
    const int64_t t = s.reverse ? i : T - 1 - i;
    const int64_t m = steps.bs[t];
    // Rows whose forward successor step exists; the rest end here and take dhn.
    int64_t carried;
    const scalar_t* next;
    if (!s.reverse) {
      carried = t + 1 < T ? steps.bs[t + 1] : 0;
      next = carried ? dP + steps.off[t + 1] * H : nullptr;
    } else {
      carried = t > 0 ? m : 0;
      next = carried ? dP + steps.off[t - 1] * H : nullptr;
    }
    for (int64_t r = 0; r < m; ++r) {
      const int64_t row = steps.off[t] + r;
      if (r < carried) {
        row_times(next + r * H, Wk.data(), H, acc.data());
      } else if (dhn) {
        std::memcpy(acc.data(), dhn + r * H, sizeof(scalar_t) * H);
      } else {
        std::fill(acc.begin(), acc.end(), scalar_t(0));
      }
      const scalar_t* g = G ? G + row * H : nullptr;
      const scalar_t* hr = h + row * H;
      scalar_t* d = dP + row * H;
      for (int64_t j = 0; j < H; ++j) {
        const scalar_t incoming = (g ? g[j] : scalar_t(0)) + acc[j];
        d[j] = incoming * activate_grad(hr[j], s.act);
      }
    }
  }
  if (dh0) {
    for (int64_t b = 0; b < B; ++b) {
      // The first step the forward pass took for sequence b.
      const int64_t t_first = s.reverse ? steps.len[b] - 1 : 0;
      row_times(dP + (steps.off[t_first] + b) * H, Wk.data(), H, dh0 + b * H);
    }
  }
}

const char* cpu_isa() { return "generic"; }

template void rnn_forward_cpu<float>(const RecurrenceShape&, const float*, const float*,
                                     const float*, float*, float*, int);
template void rnn_forward_cpu<double>(const RecurrenceShape&, const double*, const double*,
                                      const double*, double*, double*, int);
template void rnn_backward_cpu<float>(const RecurrenceShape&, const float*, const float*,
                                      const float*, const float*, float*, float*, int);
template void rnn_backward_cpu<double>(const RecurrenceShape&, const double*, const double*,
                                       const double*, const double*, double*, double*, int);

}  // namespace fusedrnn
