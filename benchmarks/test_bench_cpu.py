"""fusedrnn.RNN vs torch.nn.RNN on the CPU rows of issue 4, side by side (pytest-benchmark).

    pytest benchmarks/test_bench_cpu.py --benchmark-group-by=param:case,param:mode \\
        --benchmark-columns=min,median,rounds

Each group holds the two implementations for one case and mode, on the same weights and
inputs in the same process. Timings are reported, never asserted. The training peak-memory
test does assert: fusedrnn must not hold more memory than nn.RNN (peak resident set of a
training step in a fresh process, big cases left out).
"""

import pytest
import torch
from cpu_cases import CASES, infer_fn, make_pair, peak_rss_bytes, rss_measurable, train_fn

IMPLS = ["nn.RNN", "fusedrnn"]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def pair(case):
    return make_pair(case)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_cpu(benchmark, case, pair, impl, mode):
    ref, fused, x = pair
    module = ref if impl == "nn.RNN" else fused
    fn = (train_fn if mode == "train" else infer_fn)(module, x)
    benchmark.extra_info["gflop"] = case.flops(mode == "train") / 1e9
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(fn, rounds=5 if case.big else 30, warmup_rounds=1, iterations=1)


@pytest.mark.skipif(not rss_measurable(), reason="needs /proc/self/clear_refs and glibc")
@pytest.mark.parametrize("case_", [c for c in CASES if not c.big], ids=lambda c: c.name)
def test_cpu_train_peak_memory(case_):
    """Peak resident memory of a training step, each implementation in fresh processes
    (cpu_cases.peak_rss_bytes: everything the process holds, the C++ kernels' own
    buffers and MKL's included). One MiB of slack: the measure resolves pages, and the
    tiny cases read zero or a page either way."""
    peaks = {impl: peak_rss_bytes(case_, impl) for impl in IMPLS}
    assert peaks["fusedrnn"] <= peaks["nn.RNN"] + 2**20, peaks
