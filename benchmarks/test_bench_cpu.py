"""fusedrnn.RNN vs torch.nn.RNN on the CPU rows of issue 4, side by side (pytest-benchmark).

    pytest benchmarks/test_bench_cpu.py --benchmark-group-by=param:case,param:mode \\
        --benchmark-columns=min,median,rounds

Each group holds the two implementations for one case and mode, on the same weights and
inputs in the same process. Timings are reported, never asserted. The training peak-memory
test does assert: fusedrnn must not hold more memory than nn.RNN.
"""

import pytest
import torch
from cpu_cases import CASES, MAIN, infer_fn, make_pair, peak_bytes, train_fn

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


@pytest.mark.parametrize("case_", MAIN[:6], ids=lambda c: c.name)
def test_cpu_train_peak_memory(case_):
    ref, fused, x = make_pair(case_)
    peaks = {}
    for name, module in (("nn.RNN", ref), ("fusedrnn", fused)):
        fn = train_fn(module, x)
        fn()  # warm-up: parameters' .grad allocated once
        peaks[name] = peak_bytes(fn)
    assert peaks["fusedrnn"] <= peaks["nn.RNN"], peaks
