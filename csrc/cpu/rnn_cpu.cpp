// The CPU recurrence driver: rnn_forward_cpu / rnn_backward_cpu / cpu_isa (fusedrnn.h).
//
// One call = one team of threads for the whole sequence. W_hh^T (forward) or W_hh
// (backward) is packed once into the micro-kernel's panels and reused for all T steps.
// Two ways to share a sequence between the threads:
// - columns (the default): the hidden units of a step are cut into chunks of panels; each
//   thread owns a fixed range of chunks, packs them itself (so they land in its own cache)
//   and computes them first at every step, then helps with chunks its partners have not
//   started (see Chunks). Every step needs all of the previous step's state, half of it
//   written by the partner: the threads meet once per step.
// - rows (see split_rows): each thread owns a fixed range of the batch rows for the whole
//   sequence and computes all their columns. A row's state depends on that row alone, so
//   the threads never meet after packing; each reads all of W_hh at every step, which
//   pays when the packed W_hh stays in every core's L2 next to its rows.
// Each output element is computed by exactly one thread with one fixed fma chain
// (kernels.h), whatever the tile it falls in, so results do not depend on the team or
// on the split.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "aligned_buffer.h"
#include "fusedrnn.h"
#include "kernels.h"
#include "thread_team.h"

namespace fusedrnn {

namespace {

using cpu::Epilogue;
using cpu::EpKind;
using cpu::KernelTable;

// Panel buffer reused across calls by the calling thread (aligned_buffer.h).
template <typename T>
T* panel_buffer(size_t elems) {
  thread_local cpu::AlignedBuffer buf;
  return static_cast<T*>(buf.get(elems * sizeof(T)));
}

// Accumulators of the unpacked path (few rows: see forward_direct, backward_direct), one
// buffer per thread.
template <typename T>
T* row_buffer(size_t elems) {
  thread_local cpu::AlignedBuffer buf;
  return static_cast<T*>(buf.get(elems * sizeof(T)));
}

// A thread's row_buffer for every step of the job (B rows at most), taken before it claims
// any work: should the allocation fail (std::bad_alloc), the thread leaves the job before
// holding a chunk the others would wait for at the step barrier, they take over its chunks,
// and team_run rethrows the exception on the caller (thread_team.cpp, GuardedJob).
template <typename T>
void reserve_rows(const RecurrenceShape& s) {
  row_buffer<T>(size_t(s.B * s.H));
}

// Short sequences of few rows (one decoding step, an RNNCell) skip packing W_hh: at
// B1-H1024-T1 packing W_hh^T took ~150 us for a 2 MFLOP product. Each step then reads W_hh
// in place (KernelTable::gemv_nt), whose sums run in another order than the packed
// kernel's: the choice depends on the shape only, never on the threads.
// (The bfloat16 table has these products with the epilogue fused: gemv_nt_ep, gemv_nn_ep.)
template <typename T>
bool forward_direct(const RecurrenceShape& s, const KernelTable<T>& k) {
  const bool unpacked = (k.gemv_nt && k.gemv_nn) || (k.gemv_nt_ep && k.gemv_nn_ep);
  return unpacked && s.B <= 8 && s.B * s.T <= 32;
}

// BPTT's own choice between W_hh in place and packed. There the two are the same chains
// (gemv_nn is bitwise the packed kernel), so the choice is speed alone: in place where
// forward_direct reads in place, unless W_hh is past L2 (over 512 KB) and the call has 8
// rows or more over its steps. There each strip of columns of gemv_nn walks W_hh down its
// rows from L3, while the packed tiles reuse each panel line for all their rows, and
// packing (about three one-row steps' time at H = 1024) pays for itself. Measured with
// `bench_kernels 20 B H T`, one thread, BPTT us, in place against packed (Zen 3, AVX2,
// session 27): float32 B4-H1024-T8 2550 against 1101, B8-H1024-T4 2545 / 1880, B2-H1024-T4
// 880 / 627, B1-H1024-T16 2135 / 1496, B2-H512-T8 354 / 234, B1-H1024-T8 958 / 901;
// float64 B4-H512-T8 1167 / 754, B1-H1024-T16 8118 / 4184; but B1-H1024-T4 453 / 696,
// B1-H1024-T1 110 / 390, B4-H256-T8 97 / 108 (W_hh 256 KB, in L2). The bound is that
// host's L2 (512 KB); on hosts with 1 MB (Zen 4, Zen 5) and for the AVX-512, NEON and
// portable tables, which take the same rule, not measured. The bfloat16 table keeps
// forward_direct's choice (not measured).
template <typename T>
bool backward_direct(const RecurrenceShape& s, const KernelTable<T>& k) {
  if (!forward_direct(s, k)) return false;
  if (!k.gemv_nn) return true;
  const int64_t w_bytes = s.H * s.H * int64_t(sizeof(T));
  return w_bytes <= (int64_t(512) << 10) || s.B * s.T < 8;
}

// Threads for a step of B rows: below ~32k multiply-adds per thread and step, waking and
// synchronizing a second thread costs more than it saves (measured end to end with
// benchmarks/cpu_table.py, the team on torch's OpenMP workers).
// FUSEDRNN_CPU_MIN_WORK in the environment overrides it (tests force teams on tiny sizes).
int64_t min_work_per_thread() {
  static const int64_t v = [] {
    const char* env = std::getenv("FUSEDRNN_CPU_MIN_WORK");
    const long long n = env ? std::atoll(env) : 0;
    return n > 0 ? int64_t(n) : int64_t(1) << 15;
  }();
  return v;
}

int choose_threads(int64_t B, int64_t H, int num_threads) {
  int64_t n = std::min<int64_t>(num_threads, cpu::hardware_threads());
  const int64_t work = B * H * H;
  n = std::min<int64_t>(n, std::max<int64_t>(1, work / min_work_per_thread()));
  return int(std::max<int64_t>(n, 1));
}

// Rows instead of columns (see the top of this file), when every thread gets at least 4
// rows (enough fma chains per tile) and either the packed W_hh fits in half of a core's L2
// (1 MB here) beside the rows' state, or the thread has 32 rows or more: then each W_hh
// element read from L3 serves enough multiply-adds. Measured end to end (fusedrnn.RNN,
// 2 threads, rows against columns): B16-H128-T1000 inference 2.65 -> 2.46 ms, B8-H256-T100
// 0.50 -> 0.47 ms, B64-H1024-T100 training 171.8 -> 167.5 ms; H = 512 (W_hh 1 MB) at
// B = 16 and 32 level or slightly behind, hence columns there. Never for the direct
// (unpacked) path. FUSEDRNN_CPU_SPLIT=rows or =cols in the environment forces a split
// (for measurements and tests; rows still needs a row per thread).
enum class Split { kAuto, kRows, kCols };

Split forced_split() {
  static const Split v = [] {
    const char* env = std::getenv("FUSEDRNN_CPU_SPLIT");
    if (env && std::strcmp(env, "rows") == 0) return Split::kRows;
    if (env && std::strcmp(env, "cols") == 0) return Split::kCols;
    return Split::kAuto;
  }();
  return v;
}

bool split_rows(const RecurrenceShape& s, int64_t packed_bytes, bool direct, int nt) {
  if (nt <= 1 || direct || s.B < nt) return false;
  const Split forced = forced_split();
  if (forced != Split::kAuto) return forced == Split::kRows;
  const int64_t rows = s.B / nt;
  return rows >= 32 || (rows >= 4 && packed_bytes <= (int64_t(512) << 10));
}

// The team of a call: its threads (choose_threads) and whether they split the rows. The
// columns give each thread chunks of panels, so no more threads than chunks; the rows give
// each thread all columns of its own rows, so the chunks do not limit them (until session
// 23 they did: at H <= 64, one chunk, a batch of any size ran on one thread).
struct TeamPlan {
  int threads;
  bool rows;
};

TeamPlan plan_team(const RecurrenceShape& s, int64_t nchunks, int64_t packed_bytes, bool direct,
                   int num_threads) {
  const int n = choose_threads(s.B, s.H, num_threads);
  if (split_rows(s, packed_bytes, direct, n)) return TeamPlan{n, true};
  const int cols = int(std::max<int64_t>(1, std::min<int64_t>(n, nchunks)));
  return TeamPlan{cols, split_rows(s, packed_bytes, direct, cols)};
}

// Pulls the epilogue operands of the next step (rows x [c0, c1)) toward L2 while this
// step computes: they stream from memory once per sequence, and the epilogue touches
// them in a burst that the hardware prefetcher does not anticipate. Skipped when the slice
// is too large to stay in L2 next to the panels.
template <typename T>
inline void prefetch_rows(const T* p, int64_t rows, int64_t ld, int64_t c0, int64_t c1) {
  if (!p || rows * (c1 - c0) * int64_t(sizeof(T)) > (256 << 10)) return;
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = reinterpret_cast<const char*>(p + r * ld + c0);
    const int64_t bytes = (c1 - c0) * int64_t(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
  }
}

// The columns of a step are cut into chunks of panels. Thread tid owns a fixed, contiguous
// range of chunks: it packs them (so they land in its cache) and computes them first at
// every step, in order. A thread done with its own chunks takes the ones its partners have
// not started, from the back of their ranges; a step ends when all its chunks are done.
// So a partner that the OS has descheduled (a shared or oversubscribed machine) costs at
// most the chunk it is in the middle of, instead of stalling every step at a barrier.
// Who computes a chunk never changes how: results stay bitwise identical.
struct Chunks {
  int64_t count = 0;
  int64_t panels_per_chunk = 1;
  std::unique_ptr<std::atomic<int64_t>[]> claimed;  // the last step that claimed the chunk
  std::unique_ptr<std::atomic<int>[]> packed;       // 0 not packed, 1 packing, 2 packed
  cpu::StepSync sync;

  void init(int64_t npanels, int64_t rows) {
    // Single-row steps need four panels per tile to keep enough fma chains in flight.
    panels_per_chunk = std::min<int64_t>(npanels, rows <= 3 ? 4 : 2);
    count = (npanels + panels_per_chunk - 1) / panels_per_chunk;
    claimed.reset(new std::atomic<int64_t>[size_t(count)]);
    packed.reset(new std::atomic<int>[size_t(count)]);
    for (int64_t c = 0; c < count; ++c) {
      claimed[c].store(-1, std::memory_order_relaxed);
      packed[c].store(0, std::memory_order_relaxed);
    }
    sync.reset(count);
  }
  int64_t first(int tid, int nt) const { return count * tid / nt; }
  int64_t last(int tid, int nt) const { return count * (tid + 1) / nt; }
  bool claim(int64_t c, int64_t step) {
    int64_t expected = step - 1;
    return claimed[c].load(std::memory_order_relaxed) == expected &&
           claimed[c].compare_exchange_strong(expected, step, std::memory_order_acq_rel);
  }
  template <class PackFn>
  void ensure_packed(int64_t c, PackFn&& pack) {
    if (packed[c].load(std::memory_order_acquire) == 2) return;
    int expected = 0;
    if (packed[c].compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
      pack(c);
      packed[c].store(2, std::memory_order_release);
      return;
    }
    while (packed[c].load(std::memory_order_acquire) != 2) cpu::cpu_relax();
  }
};

// Runs steps 0..nsteps-1 on this thread: work(chunk, step) for every chunk of every step,
// each exactly once across the team, step s + 1 only after all of step s.
template <class PackFn, class WorkFn>
void run_steps(Chunks& ch, int tid, int nt, int64_t nsteps, PackFn&& pack, WorkFn&& work) {
  const int64_t c0 = ch.first(tid, nt), c1 = ch.last(tid, nt);
  for (int64_t c = c0; c < c1; ++c) ch.ensure_packed(c, pack);
  if (nt == 1) {  // alone: no claims, no step counter (locked instructions, each a fence)
    for (int64_t i = 0; i < nsteps; ++i)
      for (int64_t c = 0; c < ch.count; ++c) work(c, i);
    return;
  }
  for (int64_t i = 0; i < nsteps; ++i) {
    auto run = [&](int64_t c) {
      if (!ch.claim(c, i)) return;
      ch.ensure_packed(c, pack);
      work(c, i);
      ch.sync.chunk_done(i);
    };
    for (int64_t c = c0; c < c1; ++c) run(c);
    for (int v = 1; v < nt; ++v) {
      const int victim = (tid + v) % nt;
      for (int64_t c = ch.last(victim, nt) - 1; c >= ch.first(victim, nt); --c) run(c);
    }
    ch.sync.wait_step(i);
  }
}

// split_rows: thread k of nt owns the rows [row_bound(k), row_bound(k + 1)) of every step.
// Padded: equal ranges. Packed (batch_sizes non-increasing), the first rows are the longest
// sequences, so equal ranges would leave most of the work with thread 0 (uniform lengths:
// about 3/4 of it with 2 threads, and the others idle for the second half of the
// sequence); the bounds balance the rows-times-steps instead: the smallest r with
// nt * sum_t min(bs[t], r) >= k * N.
int64_t row_bound(const RecurrenceShape& s, int k, int nt) {
  if (k <= 0) return 0;
  if (k >= nt) return s.B;
  if (!s.batch_sizes) return s.B * k / nt;
  int64_t N = 0;
  for (int64_t t = 0; t < s.T; ++t) N += s.batch_sizes[t];
  auto below = [&](int64_t r) {  // rows-times-steps of the rows [0, r)
    int64_t w = 0;
    for (int64_t t = 0; t < s.T; ++t) w += std::min(s.batch_sizes[t], r);
    return w;
  };
  int64_t lo = 0, hi = s.B;  // below(hi) * nt >= k * N always holds
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (below(mid) * nt >= N * k)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// split_rows: runs steps 0..nsteps-1 on this thread's rows [r0, r1) of every step (see
// row_bound), all columns: work(step, r0, r1). The panels are packed by the team, each
// thread its own chunks first; after that the threads never wait for each other.
template <class PackFn, class WorkFn>
void run_rows(Chunks& ch, const RecurrenceShape& s, int tid, int nt, int64_t nsteps, PackFn&& pack,
              WorkFn&& work) {
  for (int64_t c = ch.first(tid, nt); c < ch.last(tid, nt); ++c) ch.ensure_packed(c, pack);
  for (int64_t c = 0; c < ch.count; ++c) ch.ensure_packed(c, pack);
  const int64_t r0 = row_bound(s, tid, nt), r1 = row_bound(s, tid + 1, nt);
  if (r1 <= r0) return;
  for (int64_t i = 0; i < nsteps; ++i) work(i, r0, r1);
}

// Panels [p0, p1) and the columns [c0, c1) they hold.
struct Cols {
  int64_t p0, p1, c0, c1;
};

template <typename T>
struct Recurrence {
  const RecurrenceShape* s;
  const KernelTable<T>* k;
  std::vector<int64_t> bs;   // [T + 1], bs[T] = 0
  std::vector<int64_t> off;  // [T + 1] row offsets
  int64_t npanels = 0;
  int64_t pstride = 0;
  T* panels = nullptr;
  Chunks chunks;
  // H at most one vector (KernelTable::gemm_narrow): the steps read the one panel's rows (nr
  // apart) with the narrow tiles, which do not spend half their fmas on its zero padding.
  // The same chains and epilogues as the packed tiles: the same bits.
  bool narrow = false;

  Recurrence(const RecurrenceShape& shape, const KernelTable<T>& kt) : s(&shape), k(&kt) {
    const int64_t Tn = shape.T;
    bs.resize(Tn + 1);
    off.resize(Tn + 1);
    int64_t o = 0;
    for (int64_t t = 0; t < Tn; ++t) {
      bs[t] = shape.batch_sizes ? shape.batch_sizes[t] : shape.B;
      off[t] = o;
      o += bs[t];
    }
    bs[Tn] = 0;
    off[Tn] = o;
    npanels = (shape.H + kt.nr - 1) / kt.nr;
    pstride = (shape.H + kt.kstep - 1) / kt.kstep * kt.kstep * kt.nr;
    panels = panel_buffer<T>(size_t(npanels * pstride));
    chunks.init(npanels, shape.B);
    narrow = kt.gemm_narrow && shape.H <= kt.narrow_n && kt.kstep == 1;
  }

  // Packs the panels of chunk c from B[k][j] = W[k*rs + j*cs].
  void pack_chunk(int64_t c, const T* W, int64_t rs, int64_t cs) {
    const Cols q = chunk_cols(c);
    k->pack(W, rs, cs, s->H, s->H, q.p0, q.p1, panels, pstride);
  }

  // Panels [p0, p1) and columns [c0, c1) of chunk c.
  Cols chunk_cols(int64_t c) const {
    const int64_t p0 = c * chunks.panels_per_chunk;
    const int64_t p1 = std::min(npanels, p0 + chunks.panels_per_chunk);
    return Cols{p0, p1, std::min(p0 * k->nr, s->H), std::min(p1 * k->nr, s->H)};
  }
  Cols all_cols() const { return Cols{0, npanels, 0, s->H}; }
  int64_t packed_bytes() const { return npanels * pstride * int64_t(sizeof(T)); }
};

template <typename T>
struct ForwardJob {
  Recurrence<T> rec;
  const T* P;
  const T* W;
  const T* h0;
  T* h;
  int64_t ldh;  // row stride of P and h
  T* hn;
  bool direct;  // forward_direct: W_hh read in place, not packed
  bool rows;    // split_rows
  // Without h0: z = 0 W_hh^T (zeros, or NaN in the columns whose row of W_hh holds a NaN
  // or an infinity), added at the first step as torch.nn.RNN's product with its zero state
  // is: so a poisoned W_hh shows at the first step there too. zeros: a row of H zeros.
  T* z = nullptr;
  const T* zeros = nullptr;
};

// z's columns [c0, c1) (ForwardJob::z): the zero row times W_hh^T, W_hh read in place.
template <typename T>
void zero_state_product(const ForwardJob<T>& job, const Cols& q) {
  const KernelTable<T>& k = *job.rec.k;
  const int64_t H = job.rec.s->H;
  if (k.gemv_nt) {
    k.gemv_nt(1, H, job.zeros, H, job.W, H, q.c0, q.c1, job.z, H);
  } else {  // (the bfloat16 table: the product with a plain store as its epilogue)
    Epilogue<T> st;
    st.kind = EpKind::kStore;
    st.out = job.z;
    k.gemv_nt_ep(1, H, job.zeros, H, job.W, H, q.c0, q.c1, st);
  }
}

// rows x W_hh^T (a: rows lda apart) on the columns [c0, c1) of chunk panels [p0, p1), then
// the epilogue ep: W_hh read in place (forward_direct) or from the packed panels.
template <typename T>
void forward_product(const ForwardJob<T>& job, int64_t rows, const T* a, int64_t lda, int64_t p0,
                     int64_t p1, int64_t c0, int64_t c1, const Epilogue<T>& ep) {
  const Recurrence<T>& rc = job.rec;
  const int64_t H = rc.s->H;
  if (job.direct && rc.k->gemv_nt_ep) {
    rc.k->gemv_nt_ep(rows, H, a, lda, job.W, H, c0, c1, ep);
  } else if (job.direct) {
    T* acc = row_buffer<T>(size_t(rows * H));
    rc.k->gemv_nt(rows, H, a, lda, job.W, H, c0, c1, acc, H);
    rc.k->pointwise(rows, c0, c1, acc, H, ep);
  } else if (rc.narrow) {  // (one panel: p0 = 0, all H columns)
    rc.k->gemm_narrow(rows, H, a, lda, false, rc.panels, rc.k->nr, nullptr, H, nullptr, 0, ep);
  } else {
    rc.k->gemm(rows, H, a, lda, false, rc.panels, rc.pstride, p0, p1, H, nullptr, 0, ep);
  }
}

// Step i of the forward pass on the rows [ra, rb) (clipped to the step's) and the columns q.
template <typename T>
void forward_rows(ForwardJob<T>& job, int64_t i, int64_t ra, int64_t rb, const Cols& q) {
  const Recurrence<T>& rc = job.rec;
  const RecurrenceShape& s = *rc.s;
  const KernelTable<T>& k = *rc.k;
  const int64_t H = s.H;
  const int64_t p0 = q.p0, p1 = q.p1, c0 = q.c0, c1 = q.c1;
  const int64_t t = s.reverse ? s.T - 1 - i : i;
  const int64_t m = std::min(rc.bs[t], rb);
  if (ra >= m) return;  // none of these rows is active at this step
  Epilogue<T> e;
  e.kind = EpKind::kAct;
  e.act = int(s.act);
  const int64_t ldh = job.ldh;
  e.out = job.h + (rc.off[t] + ra) * ldh;
  e.ldo = ldh;
  e.x1 = job.P + (rc.off[t] + ra) * ldh;
  e.ld1 = ldh;
  // Rows [ra, mc) continue from the previous step; rows [mc, m) start from h0 (all rows at
  // the first step; in the reverse direction, the sequences that join at t).
  int64_t mc = ra;
  if (i > 0) {
    const int64_t tp = s.reverse ? t + 1 : t - 1;
    mc = std::max(ra, std::min(m, rc.bs[tp]));
    forward_product(job, mc - ra, job.h + (rc.off[tp] + ra) * ldh, ldh, p0, p1, c0, c1, e);
  }
  if (m > mc) {
    Epilogue<T> es = e;
    es.out += (mc - ra) * ldh;
    es.x1 += (mc - ra) * ldh;
    if (job.h0)
      forward_product(job, m - mc, job.h0 + mc * H, H, p0, p1, c0, c1, es);
    else
      k.pointwise(m - mc, c0, c1, job.z, 0, es);  // phi(P + 0 W_hh^T), z's one row for all
  }
  // Sequences whose last step this is: rows [bs[t+1], m) forward, all rows at t = 0 in
  // reverse.
  if (job.hn) {
    const int64_t r_end0 = s.reverse ? (t == 0 ? 0 : m) : rc.bs[t + 1];
    for (int64_t r = std::max(ra, r_end0); r < m; ++r)
      std::memcpy(job.hn + r * H + c0, job.h + (rc.off[t] + r) * ldh + c0,
                  sizeof(T) * size_t(c1 - c0));
  }
  if (i + 1 < s.T) {
    const int64_t tn = s.reverse ? t - 1 : t + 1;
    const int64_t mn = std::min(rc.bs[tn], rb);
    if (mn > ra) prefetch_rows(job.P + (rc.off[tn] + ra) * ldh, mn - ra, ldh, c0, c1);
  }
}

template <typename T>
void forward_thread(void* vctx, int tid, int nt) {
  auto& job = *static_cast<ForwardJob<T>*>(vctx);
  Recurrence<T>& rc = job.rec;
  const int64_t H = rc.s->H;
  // B[k][j] = W_hh[j][k]: the forward step multiplies by W_hh^T. With a chunk's columns
  // packed (every thread's, before its first step) come their columns of z.
  auto pack = [&](int64_t c) {
    if (!job.direct) rc.pack_chunk(c, job.W, 1, H);
    if (job.z) zero_state_product(job, rc.chunk_cols(c));
  };
  if (job.direct && !rc.k->gemv_nt_ep) reserve_rows<T>(*rc.s);
  if (job.rows)
    run_rows(rc.chunks, *rc.s, tid, nt, rc.s->T, pack, [&](int64_t i, int64_t r0, int64_t r1) {
      forward_rows(job, i, r0, r1, rc.all_cols());
    });
  else
    run_steps(rc.chunks, tid, nt, rc.s->T, pack,
              [&](int64_t c, int64_t i) { forward_rows(job, i, 0, rc.s->B, rc.chunk_cols(c)); });
}

template <typename T>
struct BackwardJob {
  Recurrence<T> rec;
  const T* W;
  const T* h;
  int64_t ldh;  // row stride of h
  const T* G;
  int64_t ldg;  // row stride of G: H, more (a column slice) or 0 (one row for all)
  const T* dhn;
  T* dP;
  T* dh0;
  bool direct;  // backward_direct: W_hh read in place (same results as packed)
  bool rows;    // split_rows
};

// rows x W_hh on the columns [c0, c1) of chunk panels [p0, p1), then the epilogue ep.
template <typename T>
void backward_product(const BackwardJob<T>& job, int64_t rows, const T* a, int64_t p0, int64_t p1,
                      int64_t c0, int64_t c1, const Epilogue<T>& ep) {
  const Recurrence<T>& rc = job.rec;
  const int64_t H = rc.s->H;
  if (job.direct && rc.k->gemv_nn_ep) {
    rc.k->gemv_nn_ep(rows, H, a, H, job.W, H, c0, c1, ep);
  } else if (job.direct) {
    T* acc = row_buffer<T>(size_t(rows * H));
    rc.k->gemv_nn(rows, H, a, H, job.W, H, c0, c1, nullptr, 0, acc, H);
    rc.k->pointwise(rows, c0, c1, acc, H, ep);
  } else if (rc.narrow) {  // (one panel: p0 = 0, all H columns)
    rc.k->gemm_narrow(rows, H, a, H, false, rc.panels, rc.k->nr, nullptr, H, nullptr, 0, ep);
  } else {
    rc.k->gemm(rows, H, a, H, false, rc.panels, rc.pstride, p0, p1, H, nullptr, 0, ep);
  }
}

// Step i of BPTT on the rows [ra, rb) (clipped to the step's) and the columns q; step T is
// dh0 = d_first W_hh.
template <typename T>
void backward_rows(BackwardJob<T>& job, int64_t i, int64_t ra, int64_t rb, const Cols& q) {
  const Recurrence<T>& rc = job.rec;
  const RecurrenceShape& s = *rc.s;
  const KernelTable<T>& k = *rc.k;
  const int64_t H = s.H;
  const int64_t p0 = q.p0, p1 = q.p1, c0 = q.c0, c1 = q.c1;
  Epilogue<T> store;  // dh0 = d W_hh
  store.kind = EpKind::kStore;
  store.ldo = H;
  if (i == s.T) {
    // Forward direction: every sequence starts at t = 0. Reverse: the sequences still
    // active at T - 1 started there.
    const int64_t t = s.reverse ? s.T - 1 : 0;
    const int64_t m = std::min(rc.bs[t], rb);
    store.out = job.dh0 + ra * H;
    if (m > ra) backward_product(job, m - ra, job.dP + (rc.off[t] + ra) * H, p0, p1, c0, c1, store);
    return;
  }
  const int64_t t = s.reverse ? i : s.T - 1 - i;
  const int64_t m = std::min(rc.bs[t], rb);
  Epilogue<T> e;
  e.kind = EpKind::kActGrad;
  e.act = int(s.act);
  e.out = job.dP + (rc.off[t] + ra) * H;
  e.ldo = H;
  e.x1 = job.G ? job.G + (rc.off[t] + ra) * job.ldg : nullptr;
  e.ld1 = job.ldg;
  e.x2 = job.h + (rc.off[t] + ra) * job.ldh;
  e.ld2 = job.ldh;
  // Rows [ra, mc) have a next (forward-wise) step whose d feeds back through W_hh; rows
  // [mc, m) end their sequence here and take dhn instead.
  int64_t mc = ra;
  if (!s.reverse) {
    mc = std::max(ra, std::min(m, rc.bs[t + 1]));
    if (mc > ra)
      backward_product(job, mc - ra, job.dP + (rc.off[t + 1] + ra) * H, p0, p1, c0, c1, e);
  } else if (t > 0) {
    mc = std::max(ra, m);
    if (m > ra) backward_product(job, m - ra, job.dP + (rc.off[t - 1] + ra) * H, p0, p1, c0, c1, e);
    // Sequences whose first (reverse) forward step was t - 1: dh0 = d_{t-1} W_hh.
    const int64_t d0 = std::max(ra, rc.bs[t]), mp = std::min(rc.bs[t - 1], rb);
    if (job.dh0 && mp > d0) {
      Epilogue<T> st = store;
      st.out = job.dh0 + d0 * H;
      backward_product(job, mp - d0, job.dP + (rc.off[t - 1] + d0) * H, p0, p1, c0, c1, st);
    }
  }
  if (m > mc) {
    Epilogue<T> ef = e;
    ef.out += (mc - ra) * H;
    if (ef.x1) ef.x1 += (mc - ra) * job.ldg;
    ef.x2 += (mc - ra) * job.ldh;
    k.pointwise(m - mc, c0, c1, job.dhn ? job.dhn + mc * H : nullptr, H, ef);
  }
  if (i + 1 < s.T) {
    const int64_t tn = s.reverse ? t + 1 : t - 1;
    const int64_t mn = std::min(rc.bs[tn], rb) - ra;
    if (mn > 0) {
      prefetch_rows(job.h + (rc.off[tn] + ra) * job.ldh, mn, job.ldh, c0, c1);
      if (job.ldg && job.G) prefetch_rows(job.G + (rc.off[tn] + ra) * job.ldg, mn, job.ldg, c0, c1);
    }
  }
}

template <typename T>
void backward_thread(void* vctx, int tid, int nt) {
  auto& job = *static_cast<BackwardJob<T>*>(vctx);
  Recurrence<T>& rc = job.rec;
  const int64_t H = rc.s->H;
  // B[k][j] = W_hh[k][j]: d_next W_hh.
  auto pack = [&](int64_t c) {
    if (!job.direct) rc.pack_chunk(c, job.W, H, 1);
  };
  if (job.direct && !rc.k->gemv_nn_ep) reserve_rows<T>(*rc.s);
  const int64_t nsteps = rc.s->T + (job.dh0 ? 1 : 0);
  if (job.rows)
    run_rows(rc.chunks, *rc.s, tid, nt, nsteps, pack, [&](int64_t i, int64_t r0, int64_t r1) {
      backward_rows(job, i, r0, r1, rc.all_cols());
    });
  else
    run_steps(rc.chunks, tid, nt, nsteps, pack,
              [&](int64_t c, int64_t i) { backward_rows(job, i, 0, rc.s->B, rc.chunk_cols(c)); });
}

}  // namespace

template <typename scalar_t>
void rnn_forward_cpu(const RecurrenceShape& s, const scalar_t* P, const scalar_t* W_hh,
                     const scalar_t* h0, scalar_t* h, int64_t ldh, scalar_t* hn, int num_threads) {
  if (s.T <= 0 || s.B <= 0 || s.H <= 0) return;
  const KernelTable<scalar_t>& k = cpu::select_kernels<scalar_t>();
  ForwardJob<scalar_t> job{Recurrence<scalar_t>(s, k), P,    W_hh, h0, h, ldh, hn,
                           forward_direct(s, k),       false};
  const TeamPlan team =
      plan_team(s, job.rec.chunks.count, job.rec.packed_bytes(), job.direct, num_threads);
  job.rows = team.rows;
  if (!h0) {
    thread_local std::vector<scalar_t> zero_state;  // [zeros | z], kept: no allocation per call
    zero_state.assign(2 * size_t(s.H), scalar_t{});
    job.zeros = zero_state.data();
    job.z = zero_state.data() + s.H;
  }
  cpu::team_run(team.threads, &forward_thread<scalar_t>, &job);
}

template <typename scalar_t>
void rnn_backward_cpu(const RecurrenceShape& s, const scalar_t* W_hh, const scalar_t* h,
                      int64_t ldh, const scalar_t* G, int64_t ldg, const scalar_t* dhn,
                      scalar_t* dP, scalar_t* dh0, int num_threads) {
  if (s.T <= 0 || s.B <= 0 || s.H <= 0) return;
  const KernelTable<scalar_t>& k = cpu::select_kernels<scalar_t>();
  BackwardJob<scalar_t> job{Recurrence<scalar_t>(s, k), W_hh, h, ldh, G, ldg, dhn, dP, dh0,
                            backward_direct(s, k),      false};
  const TeamPlan team =
      plan_team(s, job.rec.chunks.count, job.rec.packed_bytes(), job.direct, num_threads);
  job.rows = team.rows;
  cpu::team_run(team.threads, &backward_thread<scalar_t>, &job);
}

template void rnn_forward_cpu<float>(const RecurrenceShape&, const float*, const float*,
                                     const float*, float*, int64_t, float*, int);
template void rnn_forward_cpu<double>(const RecurrenceShape&, const double*, const double*,
                                      const double*, double*, int64_t, double*, int);
template void rnn_backward_cpu<float>(const RecurrenceShape&, const float*, const float*, int64_t,
                                      const float*, int64_t, const float*, float*, float*, int);
template void rnn_backward_cpu<double>(const RecurrenceShape&, const double*, const double*,
                                       int64_t, const double*, int64_t, const double*, double*,
                                       double*, int);
// bfloat16 (cpu_has_bf16()): select_kernels throws before any work where the CPU lacks it.
template void rnn_forward_cpu<bfloat16_t>(const RecurrenceShape&, const bfloat16_t*,
                                          const bfloat16_t*, const bfloat16_t*, bfloat16_t*,
                                          int64_t, bfloat16_t*, int);
template void rnn_backward_cpu<bfloat16_t>(const RecurrenceShape&, const bfloat16_t*,
                                           const bfloat16_t*, int64_t, const bfloat16_t*, int64_t,
                                           const bfloat16_t*, bfloat16_t*, bfloat16_t*, int);

const char* cpu_isa() { return cpu::select_kernels<float>().isa; }

}  // namespace fusedrnn
