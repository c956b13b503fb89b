// oneDNN's vanilla RNN (tanh), the CPU anchor of issue 4, timed like benchmarks/cpu_table.py:
// one layer, one direction, input size = H, float32, time per call, min over rounds.
// Not part of the package build. Build and run (Debian: apt-get install libdnnl-dev):
//   g++ -O2 -std=c++17 benchmarks/onednn/rnn_onednn.cpp -ldnnl -o build/rnn_onednn
//   build/rnn_onednn [rounds] [case, e.g. B1-H64-T100]
// Weights are reordered to the primitives' preferred layouts once, outside the timing, as
// a framework keeping them in that layout would. "train" = forward_training + backward
// (diff_src_layer, diff weights and bias, diff_src_iter).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static memory filled(const memory::desc& md, const engine& eng, float v) {
  memory m(md, eng);
  float* p = static_cast<float*>(m.get_data_handle());
  const size_t n = md.get_size() / sizeof(float);
  for (size_t i = 0; i < n; ++i) p[i] = v * float((i * 7919) % 1000) / 1000.0f - v / 2;
  return m;
}

static void run(int64_t B, int64_t H, int64_t T, int rounds) {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const int64_t I = H;
  auto md = [](memory::dims d, tag t) { return memory::desc(d, dt::f32, t); };
  auto src_layer = md({T, B, I}, tag::tnc), dst_layer = md({T, B, H}, tag::tnc);
  auto src_iter = md({1, 1, B, H}, tag::ldnc), dst_iter = md({1, 1, B, H}, tag::ldnc);
  auto wl_any = md({1, 1, I, 1, H}, tag::any), wi_any = md({1, 1, H, 1, H}, tag::any);
  auto wl_user = md({1, 1, I, 1, H}, tag::ldigo), wi_user = md({1, 1, H, 1, H}, tag::ldigo);
  auto bias = md({1, 1, 1, H}, tag::ldgo);
  const auto act = algorithm::eltwise_tanh;
  const auto dir = rnn_direction::unidirectional_left2right;

  auto m_src = filled(src_layer, eng, 1.0f), m_src_iter = filled(src_iter, eng, 0.5f);
  auto m_bias = filled(bias, eng, 0.1f), m_dst = memory(dst_layer, eng),
       m_dst_iter = memory(dst_iter, eng);
  auto m_wl_user = filled(wl_user, eng, 0.05f), m_wi_user = filled(wi_user, eng, 0.05f);

  auto time_it = [&](auto&& f) {
    f();
    double best = 1e30;
    for (int r = 0; r < rounds; ++r) {
      const double t0 = now();
      f();
      best = std::min(best, now() - t0);
    }
    return best;
  };

  // Inference.
  vanilla_rnn_forward::primitive_desc inf_pd(
      vanilla_rnn_forward::desc(prop_kind::forward_inference, act, dir, src_layer, src_iter, wl_any,
                                wi_any, bias, dst_layer, dst_iter),
      eng);
  memory m_wl(inf_pd.weights_layer_desc(), eng), m_wi(inf_pd.weights_iter_desc(), eng);
  reorder(m_wl_user, m_wl).execute(s, m_wl_user, m_wl);
  reorder(m_wi_user, m_wi).execute(s, m_wi_user, m_wi);
  memory m_ws_inf;
  vanilla_rnn_forward inf(inf_pd);
  const double t_inf = time_it([&] {
    inf.execute(s, {{DNNL_ARG_SRC_LAYER, m_src},
                    {DNNL_ARG_SRC_ITER, m_src_iter},
                    {DNNL_ARG_WEIGHTS_LAYER, m_wl},
                    {DNNL_ARG_WEIGHTS_ITER, m_wi},
                    {DNNL_ARG_BIAS, m_bias},
                    {DNNL_ARG_DST_LAYER, m_dst},
                    {DNNL_ARG_DST_ITER, m_dst_iter},
                    {DNNL_ARG_SCRATCHPAD, memory(inf_pd.scratchpad_desc(), eng)}});
    s.wait();
  });

  // Training: forward_training + backward.
  vanilla_rnn_forward::primitive_desc fwd_pd(
      vanilla_rnn_forward::desc(prop_kind::forward_training, act, dir, src_layer, src_iter, wl_any,
                                wi_any, bias, dst_layer, dst_iter),
      eng);
  vanilla_rnn_backward::primitive_desc bwd_pd(
      vanilla_rnn_backward::desc(prop_kind::backward, act, dir, src_layer, src_iter, wl_any, wi_any,
                                 bias, dst_layer, dst_iter, src_layer, src_iter, wl_any, wi_any,
                                 bias, dst_layer, dst_iter),
      eng, fwd_pd);
  memory f_wl(fwd_pd.weights_layer_desc(), eng), f_wi(fwd_pd.weights_iter_desc(), eng);
  memory b_wl(bwd_pd.weights_layer_desc(), eng), b_wi(bwd_pd.weights_iter_desc(), eng);
  reorder(m_wl_user, f_wl).execute(s, m_wl_user, f_wl);
  reorder(m_wi_user, f_wi).execute(s, m_wi_user, f_wi);
  reorder(m_wl_user, b_wl).execute(s, m_wl_user, b_wl);
  reorder(m_wi_user, b_wi).execute(s, m_wi_user, b_wi);
  memory ws(fwd_pd.workspace_desc(), eng);
  memory d_src(bwd_pd.diff_src_layer_desc(), eng), d_src_iter(bwd_pd.diff_src_iter_desc(), eng);
  memory d_wl(bwd_pd.diff_weights_layer_desc(), eng), d_wi(bwd_pd.diff_weights_iter_desc(), eng),
      d_bias(bwd_pd.diff_bias_desc(), eng);
  auto d_dst = filled(dst_layer, eng, 1.0f), d_dst_iter = filled(dst_iter, eng, 1.0f);
  memory fwd_scratch(fwd_pd.scratchpad_desc(), eng), bwd_scratch(bwd_pd.scratchpad_desc(), eng);
  vanilla_rnn_forward fwd(fwd_pd);
  vanilla_rnn_backward bwd(bwd_pd);
  const double t_train = time_it([&] {
    fwd.execute(s, {{DNNL_ARG_SRC_LAYER, m_src},
                    {DNNL_ARG_SRC_ITER, m_src_iter},
                    {DNNL_ARG_WEIGHTS_LAYER, f_wl},
                    {DNNL_ARG_WEIGHTS_ITER, f_wi},
                    {DNNL_ARG_BIAS, m_bias},
                    {DNNL_ARG_DST_LAYER, m_dst},
                    {DNNL_ARG_DST_ITER, m_dst_iter},
                    {DNNL_ARG_WORKSPACE, ws},
                    {DNNL_ARG_SCRATCHPAD, fwd_scratch}});
    // The backward primitive accumulates into the weight gradients: zero them per step.
    for (memory* m : {&d_wl, &d_wi, &d_bias})
      std::memset(m->get_data_handle(), 0, m->get_desc().get_size());
    bwd.execute(s, {{DNNL_ARG_SRC_LAYER, m_src},
                    {DNNL_ARG_SRC_ITER, m_src_iter},
                    {DNNL_ARG_WEIGHTS_LAYER, b_wl},
                    {DNNL_ARG_WEIGHTS_ITER, b_wi},
                    {DNNL_ARG_BIAS, m_bias},
                    {DNNL_ARG_DST_LAYER, m_dst},
                    {DNNL_ARG_DST_ITER, m_dst_iter},
                    {DNNL_ARG_WORKSPACE, ws},
                    {DNNL_ARG_DIFF_SRC_LAYER, d_src},
                    {DNNL_ARG_DIFF_SRC_ITER, d_src_iter},
                    {DNNL_ARG_DIFF_WEIGHTS_LAYER, d_wl},
                    {DNNL_ARG_DIFF_WEIGHTS_ITER, d_wi},
                    {DNNL_ARG_DIFF_BIAS, d_bias},
                    {DNNL_ARG_DIFF_DST_LAYER, d_dst},
                    {DNNL_ARG_DIFF_DST_ITER, d_dst_iter},
                    {DNNL_ARG_SCRATCHPAD, bwd_scratch}});
    s.wait();
  });
  const double gf = 2.0 * T * B * (I * H + H * H) / 1e9;
  std::printf("| B%ld-H%ld-T%ld | %.3f | %.3f | %.0f | %.0f |\n", long(B), long(H), long(T),
              t_inf * 1e3, t_train * 1e3, gf / t_inf, 3 * gf / t_train);
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 20;
  const char* only = argc > 2 ? argv[2] : nullptr;  // one case, e.g. B1-H64-T100 (any B, H, T)
  std::printf("oneDNN %d.%d.%d, vanilla RNN tanh, f32\n", dnnl_version()->major,
              dnnl_version()->minor, dnnl_version()->patch);
  std::printf(
      "| case | infer ms | train ms | infer GFLOP/s | train GFLOP/s |\n|---|---|---|---|---|\n");
  const int64_t rows[][3] = {{1, 64, 100},   {1, 256, 100},   {8, 256, 100},    {64, 256, 100},
                             {1, 1024, 100}, {64, 1024, 100}, {256, 1024, 100}, {16, 128, 1000}};
  auto run_case = [&](int64_t B, int64_t H, int64_t T) {
    const bool big = B * H * H * T >= 64LL * 1024 * 1024 * 100;
    run(B, H, T, big ? std::max(3, rounds / 4) : rounds);
  };
  if (only) {  // one of the rows above or any other size, e.g. B1-H16-T10000
    long B = 0, H = 0, T = 0;
    char rest = 0;
    if (std::sscanf(only, "B%ld-H%ld-T%ld%c", &B, &H, &T, &rest) != 3 || B < 1 || H < 1 || T < 1) {
      std::fprintf(stderr, "case must read B<batch>-H<hidden>-T<steps>, got %s\n", only);
      return 2;
    }
    run_case(B, H, T);
    return 0;
  }
  for (auto& r : rows) run_case(r[0], r[1], r[2]);
  return 0;
}
