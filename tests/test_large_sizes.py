"""Sizes whose scratch memory the CPU kernels cannot get: a clear MemoryError, and the process
still usable after it.

A large legal input needs large scratch buffers inside the kernels (the packed W_hh of the
recurrence, ~H*H elements; each thread's packed panels of a GEMM, up to 1024 x N/threads).
When such an allocation fails, the call must raise (MemoryError, from std::bad_alloc) and
leave nothing behind that a later call trips over. Both tests emulate memory running out with
RLIMIT_AS in a child process (small sizes, a few seconds each: no `large` marker), so that a
crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status: Linux only"
    ),
    pytest.mark.skipif(
        bool(os.environ.get("LD_PRELOAD")),
        reason="a preloaded allocator or sanitizer (LD_PRELOAD) reserves address space itself",
    ),
]

# The child's helpers: its virtual size, and a block run with at most `extra` more of it.
_PRELUDE = """
import contextlib, resource
import torch, fusedrnn

def vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

@contextlib.contextmanager
def address_space(extra):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

def outcome(model, x, extra):  # model(x) with at most `extra` more address space
    try:
        with torch.no_grad(), address_space(extra):
            model(x)
        return "big: ran"
    except MemoryError:
        return "big: MemoryError"
"""


def _run_child(body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = _PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_failed_panel_allocation_leaves_the_thread_usable():
    """The recurrence packs W_hh into a thread_local AlignedBuffer (rnn_cpu.cpp, panel_buffer;
    aligned_buffer.h). A call at H = 4096 (64 MiB of panels) that cannot get them raises
    MemoryError; the next call on the same thread, at the H = 64 it ran before, must give
    its earlier result. (AlignedBuffer::get frees its old block, the new one fails, and it
    keeps the old size with a null pointer: the small call gets nullptr back and packs
    W_hh through it: SIGSEGV.)"""
    proc = _run_child(
        """
        torch.set_num_threads(1)
        torch.manual_seed(0)
        small = fusedrnn.RNN(1, 64)
        xs = torch.randn(1, 16, 1)
        with torch.no_grad():
            want = small(xs)[0]  # this thread's panel buffer: 16 KiB
        big = fusedrnn.RNN(1, 4096)  # its packed W_hh: 64 MiB
        xb = torch.randn(1, 16, 1)
        print(outcome(big, xb, 32 << 20), flush=True)
        with torch.no_grad():
            got = small(xs)[0]
        assert torch.equal(got, want)
        print("small: same result", flush=True)
        """
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "small: same result" in proc.stdout


@pytest.mark.parametrize("team", ["openmp", "own"])
def test_failed_allocation_inside_a_thread_team_raises_memory_error(team):
    """The packed GEMM's threads each pack their panels of B into a thread_local buffer
    (gemm_cpu.cpp, gemm_thread): x W_ih^T at I = 1024, H = 8192 on two threads, 16 MiB
    each. When that allocation fails, the call must raise MemoryError in Python, on both
    kinds of team (torch's OpenMP workers, or fusedrnn's own with
    FUSEDRNN_CPU_THREADS=own). (The std::bad_alloc was thrown inside the team's parallel
    region, where nothing caught it: std::terminate, SIGABRT.)"""
    env = {"FUSEDRNN_CPU_CORES": "2"}  # a team of two also on a one-core machine
    if team == "own":
        env["FUSEDRNN_CPU_THREADS"] = "own"
    proc = _run_child(
        """
        torch.set_num_threads(2)
        torch.manual_seed(0)
        warm = fusedrnn.RNN(64, 256)
        xw = torch.randn(4, 16, 64)
        with torch.no_grad():
            want = warm(xw)[0]  # the team's threads exist before the limit
        big = fusedrnn.RNN(1024, 8192, bias=False)
        xb = torch.randn(1, 16, 1024)
        out = outcome(big, xb, 8 << 20)
        with torch.no_grad():
            assert torch.equal(warm(xw)[0], want)  # the team still serves, as before
        print(out, flush=True)
        """,
        env=env,
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "big: MemoryError" in proc.stdout
