"""Reliability: determinism, thread safety, no leaks, Ctrl-C, NaN/Inf like nn.RNN."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn


def _model_and_input(seed=0):
    torch.manual_seed(seed)
    model = fusedrnn.RNN(5, 24, num_layers=2, bidirectional=True)
    x = torch.randn(30, 6, 5)
    lengths = torch.tensor([30, 7, 19, 1, 30, 12])
    return model, x, lengths


def _outputs_and_grads(model, x, lengths):
    x = x.clone().requires_grad_(True)
    out, hn = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    loss = out.data.square().sum() + hn.sum()
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return [out.data.detach(), hn.detach(), *grads]


def test_repeated_runs_are_bitwise_identical():
    model, x, lengths = _model_and_input()
    first = _outputs_and_grads(model, x, lengths)
    for _ in range(3):
        for a, b in zip(_outputs_and_grads(model, x, lengths), first, strict=True):
            assert torch.equal(a, b)


def test_concurrent_python_threads_match_serial_results():
    """The kernels release the GIL; concurrent calls on one module must not interfere."""
    model, x, lengths = _model_and_input(1)
    inputs = [(x * (1 + 0.1 * i), lengths) for i in range(8)]
    serial = [_outputs_and_grads(model, *args) for args in inputs]
    results: list = [None] * len(inputs)
    errors: list = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = _outputs_and_grads(model, *inputs[i])
        except Exception as exc:  # surfaced below with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for got, want in zip(results, serial, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""), reason="ASan's quarantine holds freed memory"
)
def test_resident_memory_stays_flat_over_many_calls():
    torch.manual_seed(2)
    model = fusedrnn.RNN(5, 16, bidirectional=True)
    x = torch.randn(8, 6, 5)
    lengths = torch.tensor([8, 3, 5, 1, 8, 2])
    for _ in range(200):  # warm up allocator caches
        _outputs_and_grads(model, x, lengths)
    before = _rss_bytes()
    for _ in range(3000):
        _outputs_and_grads(model, x, lengths)
    growth = _rss_bytes() - before
    # Each call allocates ~10 KB of tensors and saves ~5 KB for backward: leaking any of it
    # would grow RSS by tens of MiB over 3000 calls.
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nan_and_inf_propagate_like_nn_rnn(nonlinearity):
    torch.manual_seed(3)
    ref = torch.nn.RNN(3, 4, nonlinearity=nonlinearity)
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(6, 3, 3)
    x[2, 0, 1] = float("nan")
    x[4, 1, 0] = float("inf")
    x[1, 2, 2] = -float("inf")
    for a, b in zip(ours(x), ref(x), strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_ctrl_c_during_long_calls_leaves_process_usable():
    """SIGINT while the kernels run: KeyboardInterrupt is raised (at the latest when the
    kernel call returns) and the process keeps working."""
    script = textwrap.dedent(
        """
        import signal, sys, threading, os, torch, fusedrnn
        torch.manual_seed(0)
        rnn = fusedrnn.RNN(64, 256)
        x = torch.randn(400, 32, 64)
        want = rnn(x[:3])[1]
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        calls = 0
        try:
            while True:
                out, hn = rnn(x)
                out.sum().backward()
                calls += 1
        except KeyboardInterrupt:
            print("interrupted after", calls, "calls", flush=True)
        assert torch.equal(rnn(x[:3])[1], want)
        print("recovered", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "interrupted" in proc.stdout and "recovered" in proc.stdout
