"""The ``fusedrnn`` command line: argument errors, outputs, ``info``, ``bench``."""

from __future__ import annotations

import ctypes
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import fusedrnn
from fusedrnn.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The quick grid shrunk to one tiny shape: both modes, a few milliseconds of timing.
TINY_BENCH = ["bench", "--quick", "--seq", "4", "--batch", "2", "--input", "3", "--hidden", "5"]
TINY_BENCH += ["--min-time", "0.001"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--batch", "0"], "argument --batch: expected a positive integer, got 0"),
        (["bench", "--hidden", "-3"], "argument --hidden: expected a positive integer, got -3"),
        (["bench", "--seq", "abc"], "argument --seq: expected a positive integer, got 'abc'"),
        (["bench", "--seq", "10,x"], "argument --seq: expected a positive integer, got 'x'"),
        (["bench", "--layers", "100"], "argument --layers: 100 is too large (at most 64)"),
        (["bench", "--dtype", "float16"], "argument --dtype: invalid choice 'float16'"),
        (["bench", "--mode", "fast"], "argument --mode: invalid choice 'fast'"),
        (["bench", "--nonlinearity", "gelu"], "argument --nonlinearity: invalid choice 'gelu'"),
        (["bench", "--threads", "0"], "argument --threads: expected a positive integer, got 0"),
        (["bench", "--min-time", "0"], "argument --min-time: expected a positive number"),
        (["bench", "--min-time", "nan"], "argument --min-time: expected a positive number"),
        (["bench", "--device", "tpu"], "argument --device: invalid device 'tpu'"),
        (["bench", "--device", "meta"], "argument --device: 'meta' is not a CPU or CUDA device"),
        (["bench", "--device", "cpu,cpu:1"], "argument --device: 'cpu:1': the CPU is one device"),
        # gradcheck's --device has bench's checks (it took cpu:1 before session 28)
        (["gradcheck", "--device", "cpu:1"], "argument --device: 'cpu:1': the CPU is one device"),
        (["gradcheck", "--device", "meta"], "argument --device: 'meta' is not a CPU or CUDA"),
        (["bench", "--quick", "--full"], "argument --full: not allowed with argument --quick"),
        (
            ["bench", "--seq", "100000", "--batch", "100000", "--hidden", "4096"],
            "needs about",
        ),
        (["gradcheck", "--layers", "0"], "argument --layers: expected a positive integer, got 0"),
        (["gradcheck", "--nonlinearity", "sigmoid"], "argument --nonlinearity: invalid choice"),
        (["gradcheck", "--layout", "ragged"], "argument --layout: invalid choice 'ragged'"),
        (["gradcheck", "--checks", "vibes"], "argument --checks: invalid choice 'vibes'"),
        (["gradcheck", "--radii", "-1"], "argument --radii: expected a positive number, got -1"),
        (["gradcheck", "--radii", "50"], "argument --radii: spectral radius 50.0 is too large"),
        (["gradcheck", "--plot", "x.png"], "argument --plot: only with --flow"),
        (["gradcheck", "--radii", "0.5"], "argument --radii: only with --flow"),
        (["gradcheck", "--flow", "--layers", "2"], "argument --layers: not used with --flow"),
        (["gradcheck", "--flow", "--checks", "reference"], "argument --checks: not used with"),
        (["gradcheck", "--batch", "1000"], "argument --batch: 1000 is too large (at most 64)"),
        (["bench", "--max-hours", "0"], "argument --max-hours: expected a positive number"),
        (["bench", "--seed", "-1"], "argument --seed: expected an integer in 0..2**63-1"),
        (["gradcheck", "--seed", str(2**64)], "argument --seed: expected an integer in 0..2"),
        (["gradcheck", "--seed", "x"], "argument --seed: expected an integer, got 'x'"),
        (["bench", "--json", "/no/such/dir/b.json"], "argument --json: no directory"),
        (["bench", "--markdown", "/no/such/dir/b.md"], "argument --markdown: no directory"),
        (["gradcheck", "--json", "/no/such/dir/g.json"], "argument --json: no directory"),
        (["gradcheck", "--json", "/"], "argument --json: '/' is a directory"),
        (["bench", "--json", "newdir/"], "argument --json: 'newdir/' is a directory"),
        (["bench", "--markdown", ""], "argument --markdown: expected a file name, got ''"),
        (["bench", "--plot", "out.txt"], "argument --plot: expected a file name ending in one of"),
        (["gradcheck", "--flow", "--plot", "flow"], "argument --plot: expected a file name ending"),
        (["bench", "--plot", "b.pgf"], "argument --plot: expected a file name ending"),  # LaTeX
        # Two outputs in one file: the later write replaced the earlier, after the run.
        (
            ["bench", "--json", "o", "--markdown", "./o"],
            "arguments --json and --markdown: expected",
        ),
        (
            ["gradcheck", "--flow", "--json", "f.png", "--plot", "f.png"],
            "arguments --json and --plot",
        ),
        # The gradient checks and flows refuse what would take hours or most of the memory
        # (they ran it before, into a NumPy MemoryError or a silent hour).
        (
            [
                "gradcheck",
                "--seq",
                "2000",
                "--batch",
                "64",
                "--hidden",
                "256",
                "--layers",
                "1",
                "--directions",
                "1",
                "--nonlinearity",
                "tanh",
            ],
            "configuration tanh padded h0 L1 uni (T = 2000, B = 64, I = 3, H = 256) needs about",
        ),
        (
            [
                "gradcheck",
                "--seq",
                "100000",
                "--batch",
                "64",
                "--hidden",
                "512",
                "--checks",
                "reference",
            ],
            "needs about",
        ),
        (
            ["gradcheck", "--flow", "--seq", "100000", "--hidden", "1024"],
            "--flow (10 flows of T = 100000, H = 1024) needs about",
        ),
        # Few flops, hours of steps (the NumPy reference steps each sequence in Python):
        # accepted before session 28, about 6-7 h measured.
        (
            ["gradcheck", "--seq", "100000", "--batch", "64", "--hidden", "1", "--input", "1"],
            "the 16 configurations would step for about",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_argument_errors_name_the_option(argv, message, capsys):
    assert message in _error(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("command", ["bench", "gradcheck"])
def test_cuda_without_gpu_is_an_argument_error(command, capsys):
    err = _error([command, "--device", "cuda"], capsys)
    assert "argument --device: 'cuda' requested but CUDA is not available" in err


def test_info_prints_the_build_facts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("fusedrnn", "torch", "CPU kernel SIMD level", "threads", "visible GPUs"):
        assert label in out
    assert fusedrnn._C.cpu_isa() in out


def test_info_shows_the_cuda_build(monkeypatch, capsys):
    monkeypatch.setattr(fusedrnn._cuda, "available", lambda: True)
    monkeypatch.setattr(fusedrnn._cuda, "built_archs", lambda: ["80", "90"])
    facts = fusedrnn.info()
    assert facts["cuda_kernels_built"] is True and facts["cuda_archs"] == ["80", "90"]
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[-2:] == ["80,", "90"] for line in out.splitlines())
    assert re.search(r"^fusedrnn CUDA kernels built +yes$", out, re.MULTILINE)


def test_info_json_and_python_m():
    """``python -m fusedrnn`` runs the same CLI; ``fusedrnn.info()`` gives the same facts."""
    done = subprocess.run(
        [sys.executable, "-m", "fusedrnn", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    facts = json.loads(done.stdout)
    assert facts["fusedrnn"] == fusedrnn.__version__
    assert facts["cpu_isa"] == fusedrnn._C.cpu_isa()
    assert facts["cpu_bf16_kernels"] == fusedrnn._C.cpu_has_bf16()
    assert facts["cuda_kernels_built"] in (True, False)
    assert isinstance(facts["gpus"], list)
    assert set(facts) == set(fusedrnn.info())


def test_bench_writes_table_json_markdown_and_plot(tmp_path, capsys):
    paths = {k: tmp_path / f"bench.{k}" for k in ("json", "md", "png")}
    argv = [*TINY_BENCH, "--threads", "1", "--json", str(paths["json"])]
    argv += ["--markdown", str(paths["md"]), "--plot", str(paths["png"]), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for header in ("case", "nn.RNN ms", "fusedrnn ms", "speed-up", "GFLOP/s", "max error"):
        assert header in out
    assert torch.get_num_threads() == 1

    report = json.loads(paths["json"].read_text())
    results = report["results"]
    # The two quick shapes collapse into one after the size overrides: one case per mode.
    assert [r["mode"] for r in results] == ["inference", "training"]
    for r in results:
        assert (r["T"], r["B"], r["I"], r["H"]) == (4, 2, 3, 5)
        assert r["ok"] and r["error"] is None
        assert r["max_abs_error"] < 1e-5
        assert r["torch_ms"] > 0 and r["fusedrnn_ms"] > 0 and r["speedup"] > 0
        assert r["repeats"] >= 3
        forward = 2 * 4 * 2 * (3 * 5 + 5 * 5)
        assert r["flops"] == (3 * forward if r["mode"] == "training" else forward)
    assert report["meta"]["threads"] == 1
    assert report["meta"]["command"].startswith("fusedrnn bench --quick")

    lines = paths["md"].read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| case | nn.RNN ms | fusedrnn ms | speed-up | GFLOP/s |")
    assert len(table) == 2 + len(results)
    assert {line.count("|") for line in table} == {table[0].count("|")}
    assert any(line.startswith("- machine:") for line in lines)

    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_bench_refuses_a_run_estimated_past_max_hours(monkeypatch, capsys):
    """A run whose generous estimate exceeds --max-hours (default 2) is an argument error
    before any case runs, naming the longest case and the estimates (a case of 10^6 steps
    ran for most of an hour without a word; a helper's review); --max-hours raises the
    limit, and the presets, the README's plain `fusedrnn bench` included, are within it."""
    from fusedrnn import bench

    ran = []

    def run_case(case, *_):  # nothing runs: the guard is what is tested
        ran.append(case)
        return bench.Result(case, ok=True)

    monkeypatch.setattr(bench, "run_case", run_case)
    # Few flops, little memory, 4 x 10^6 steps of nn.RNN a call: hours.
    long = ["bench", "--quick", "--seq", "1000000", "--batch", "1", "--input", "1"]
    long += ["--hidden", "1", "--layers", "4", "--device", "cpu"]
    err = _error(long, capsys)
    assert "the 2 cases would take about" in err
    assert "the longest, cpu f32 train tanh T=1000000 B=1 I=1 H=1 L=4, about" in err
    assert "more than --max-hours 2: lower --seq" in err and "or raise --max-hours" in err
    assert not ran
    capsys.readouterr()
    assert main([*long, "--max-hours", "10"]) == 0 and len(ran) == 2
    assert "fusedrnn bench: 2 cases (about " in capsys.readouterr().out  # the estimate
    assert main(["bench"]) == 0  # the README's command, on the devices here
    for preset in bench.PRESETS:  # every dtype, on a CPU and a GPU (--device all's default)
        cases = bench.build_cases(preset, ["cpu", "cuda"], list(bench.DTYPES))
        seconds = sum(bench.case_seconds(c, bench.PRESETS[preset][1]) for c in cases)
        assert seconds < 2 * 3600, (preset, seconds)


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e999", "x", ""])
def test_max_hours_takes_a_positive_finite_number_in_both_commands(value, capsys):
    """gradcheck's --max-hours is bench's: one validation (_cli.positive_float), so the
    same values are refused with the same words (``=``: ``-inf`` as a value, not an option)."""
    messages = [
        _error([command, f"--max-hours={value}"], capsys).splitlines()[-1].split(": error: ")[1]
        for command in ("bench", "gradcheck")
    ]
    assert messages[0].startswith("argument --max-hours: expected a positive number, got ")
    assert messages[1] == messages[0]


def test_gradcheck_refuses_a_grid_estimated_past_max_hours(monkeypatch, capsys):
    """gradcheck's time guard takes --max-hours as bench's does: the limit (default 1, the
    hour it had fixed) is named in the refusal, a small one refuses a grid that a larger
    one lets through, and nothing is checked before the guard has passed."""
    from fusedrnn import gradcheck

    checked = []

    def check(config, **_):  # nothing runs: the guard is what is tested
        checked.append(config)
        return gradcheck.Report()

    monkeypatch.setattr(gradcheck, "check", check)
    # One configuration of 2000 x 64 one-unit steps: estimated at about 8 s.
    small = ["gradcheck", "--seq", "2000", "--batch", "64", "--hidden", "1", "--input", "1"]
    small += ["--nonlinearity", "tanh", "--layout", "padded", "--h0", "no"]
    small += ["--layers", "1", "--directions", "1"]
    err = _error([*small, "--max-hours", "0.001"], capsys)
    assert "the 1 configuration would step for about 8 s (long sequences: " in err
    assert "more than --max-hours 0.001: lower --seq or --batch" in err
    assert "or raise --max-hours" in err
    assert not checked
    assert main([*small, "--max-hours", "0.01"]) == 0 and len(checked) == 1
    capsys.readouterr()
    # The default is the hour gradcheck refused past before --max-hours.
    long = ["gradcheck", "--seq", "100000", "--batch", "64", "--hidden", "1", "--input", "1"]
    err = _error(long, capsys)
    assert "the 16 configurations would step for about 4.7 h" in err
    assert "more than --max-hours 1: lower" in err and "or raise --max-hours" in err
    assert len(checked) == 1
    assert main([*long, "--max-hours", "5"]) == 0 and len(checked) == 17


def test_gradcheck_refuses_flows_estimated_past_max_hours(monkeypatch, capsys):
    """--flow has its own estimate under --max-hours: the flops at a low rate, and the
    weights of each flow, made in NumPy (relu's eigenvalues: 80 s at H = 4096), which the
    1-TFLOP rule does not see (it passed 40 flows at H = 4096 and T = 10: 37 min by those times)."""
    from fusedrnn import gradcheck

    flows = []

    def gradient_flow(nonlinearity, radius, T, H, *_, **__):  # nothing runs
        flows.append((nonlinearity, radius))
        return np.ones(T + 1)

    monkeypatch.setattr(gradcheck, "gradient_flow", gradient_flow)
    radii = ",".join(str(r / 2) for r in range(1, 21))  # 0.5, 1.0, ..., 10.0
    wide = ["gradcheck", "--flow", "--seq", "10", "--hidden", "4096", "--radii", radii]
    err = _error(wide, capsys)
    assert "--flow (40 flows of T = 10, H = 4096) would take about 1.5 h (" in err
    assert "more than --max-hours 1: lower --seq or --hidden, or fewer --radii" in err
    assert "or raise --max-hours" in err
    assert not flows
    assert main([*wide, "--max-hours", "2"]) == 0 and len(flows) == 40
    capsys.readouterr()
    # The default flow (10 flows of T = 200, H = 64) is estimated at a fraction of a second.
    err = _error(["gradcheck", "--flow", "--max-hours", "1e-6"], capsys)
    assert "--flow (10 flows of T = 200, H = 64) would take about 63 ms" in err
    assert "more than --max-hours 1e-06" in err
    assert main(["gradcheck", "--flow", "--max-hours", "1e-3"]) == 0 and len(flows) == 50


def test_bench_runs_bfloat16_models(tmp_path, capsys):
    """--dtype bfloat16 benchmarks models converted to bfloat16, checked against nn.RNN
    in bfloat16 first."""
    path = tmp_path / "bench.json"
    argv = [*TINY_BENCH, "--dtype", "bfloat16", "--device", "cpu", "--json", str(path)]
    assert main([*argv, "--nonlinearity", "tanh,relu"]) == 0
    out = capsys.readouterr().out
    assert "cpu bf16 train tanh" in out and "ok (outputs)" in out
    results = json.loads(path.read_text())["results"]
    assert {r["dtype"] for r in results} == {"bfloat16"}
    assert all(r["ok"] and 0 < r["max_rel_error"] <= 5e-2 for r in results)
    # relu training in bfloat16: outputs only (a state rounding across 0 flips a gradient)
    checked = {(r["mode"], r["nonlinearity"]): r["checked"] for r in results}
    assert checked[("training", "relu")] == "outputs"
    assert checked[("training", "tanh")] == "outputs and gradients"


def test_bench_flags_a_nan_gradient_it_does_not_compare(monkeypatch, capsys):
    """relu training in bfloat16 compares outputs only, but a gradient that is NaN where
    nn.RNN's is finite still makes the case WRONG."""
    from fusedrnn import bench

    results = bench._Workload.results

    def nan_in_fused_gradient(self, module):
        out = results(self, module)
        if module is self.fused:
            out[-1] = torch.full_like(out[-1], float("nan"))
        return out

    monkeypatch.setattr(bench._Workload, "results", nan_in_fused_gradient)
    argv = [*TINY_BENCH, "--dtype", "bfloat16", "--nonlinearity", "relu", "--mode", "training"]
    assert main([*argv, "--device", "cpu"]) == 1
    assert "WRONG" in capsys.readouterr().out


@pytest.mark.parametrize("off", ["nn.RNN", "fusedrnn"])
def test_bench_asks_float64_which_module_is_off(monkeypatch, capsys, off):
    """Where the two modules disagree, nn.RNN in float64 on the same values decides: a case
    where nn.RNN's float32 gradient is off (as relu's gate flips made it at T=200, B=64,
    H=256) passes as `ok (float64)`, timed; one where fusedrnn's is off stays WRONG."""
    from fusedrnn import bench

    results = bench._Workload.results

    def one_off(self, module):
        out = results(self, module)
        float32 = next(module.parameters()).dtype == torch.float32
        if float32 and (module is self.reference) == (off == "nn.RNN"):
            out[-1] = out[-1] + 1e-2 * out[-1].abs().max()  # a gradient, off by 1e-2
        return out

    monkeypatch.setattr(bench._Workload, "results", one_off)
    argv = [*TINY_BENCH, "--mode", "training", "--device", "cpu"]
    assert main(argv) == (0 if off == "nn.RNN" else 1)
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("cpu f32 train")]
    assert rows
    for row in rows:
        if off == "nn.RNN":
            assert row.endswith("ok (float64)") and "x " in row  # timed: a speed-up
        else:
            assert row.endswith("WRONG (float64)")
    if off == "fusedrnn":
        assert "and from float64 by 1.0" in captured.err


def test_bench_flags_a_wrong_kernel_and_does_not_time_it(monkeypatch, capsys):
    """A fast wrong answer never looks good: the case is marked WRONG and not timed."""
    forward = fusedrnn.ops.forward_into_cpu  # the CPU forward: projection + recurrence

    def off_by_a_bit(dtype, T, B, H, I, batch_sizes, *args):
        forward(dtype, T, B, H, I, batch_sizes, *args)
        assert dtype == "float32" and batch_sizes == 0  # padded: h is [T*B, H]
        h_address, ldh = args[-4], args[-3]  # the arguments end with (h, ldh, hn, threads)
        assert ldh == H
        h = np.ctypeslib.as_array((ctypes.c_float * (T * B * H)).from_address(h_address))
        h += 1e-3

    monkeypatch.setattr(fusedrnn.ops, "forward_into_cpu", off_by_a_bit)
    assert main([*TINY_BENCH, "--mode", "inference", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("cpu f32 infer"))
    assert row.endswith("WRONG (float64)")  # float64 too finds fusedrnn off by 1e-3
    assert "1.0e-03" in row and "   -   " in row
    assert "fusedrnn differs from nn.RNN, and from float64 by" in captured.err


@pytest.mark.parametrize("failure", ["IndexError", "no_gradient"])
def test_bench_reports_any_module_failure_as_an_error_row(failure, monkeypatch, tmp_path, capsys):
    """Whatever a module raises, and a parameter left without a gradient, is that case's
    ERROR row; the other cases still run, the files are written and the exit status is 1
    (an IndexError and a None gradient used to end the run in a traceback)."""
    forward = fusedrnn.RNN.forward

    def broken(self, input, hx=None):
        raise IndexError("broken on purpose")

    def detached_hh(self, input, hx=None):
        saved = self._parameters["weight_hh_l0"]
        self._parameters["weight_hh_l0"] = saved.detach()
        try:
            return forward(self, input, hx)
        finally:
            self._parameters["weight_hh_l0"] = saved

    monkeypatch.setattr(fusedrnn.RNN, "forward", broken if failure == "IndexError" else detached_hh)
    path = tmp_path / "b.json"
    assert main([*TINY_BENCH, "--device", "cpu", "--json", str(path)]) == 1
    err = capsys.readouterr().err
    results = json.loads(path.read_text())["results"]
    if failure == "IndexError":
        assert "IndexError: broken on purpose" in err
        assert results and all(not r["ok"] for r in results)
    else:
        assert "AssertionError: no gradient for weight_hh_l0" in err
        assert any(r["ok"] for r in results)  # the inference cases


def test_json_is_strict_nan_and_infinities_are_null(tmp_path):
    from fusedrnn import _cli

    path = tmp_path / "x.json"
    _cli.write_json(str(path), {"a": float("nan"), "b": [1.5, float("inf")], "c": "ok"})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": "ok"}


@pytest.mark.cuda
def test_bench_on_cuda_times_with_events(tmp_path):
    pytest.importorskip("fusedrnn._C_cuda", reason="fusedrnn was built without CUDA kernels")
    path = tmp_path / "cuda.json"
    assert main([*TINY_BENCH, "--device", "cuda", "--json", str(path)]) == 0
    results = json.loads(path.read_text())["results"]
    assert {r["device"] for r in results} == {"cuda"}
    assert all(r["ok"] for r in results)


def test_bench_packed_case_is_checked_and_counts_only_real_steps(tmp_path):
    path = tmp_path / "packed.json"
    argv = [*TINY_BENCH, "--packed", "--layers", "2", "--bidirectional", "--mode", "training"]
    assert main([*argv, "--device", "cpu", "--json", str(path)]) == 0
    (result,) = json.loads(path.read_text())["results"]
    assert result["ok"] and result["packed"] and result["label"].endswith("L=2 bi packed")
    steps = 4 + 2  # lengths spread from T = 4 down to T/2 = 2
    layer0 = 2 * steps * (3 * 5 + 5 * 5)
    layer1 = 2 * steps * (10 * 5 + 5 * 5)  # input of layer 1: both directions, D*H = 10
    assert result["flops"] == 3 * 2 * (layer0 + layer1)


def test_a_file_that_cannot_be_written_at_the_end_is_one_line_not_a_traceback(tmp_path, capsys):
    """Found by a review (session 20): /dev/full (a full disk) passes the up-front check,
    and the write at the end raised an OSError traceback after the run. Now one line
    naming the file, the table printed, the other files written, status 1; and the command
    recorded in the Markdown is shell-quoted, so that it runs again as pasted."""
    markdown = tmp_path / "my results.md"
    argv = [*TINY_BENCH, "--mode", "inference", "--json", "/dev/full", "--markdown", str(markdown)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "fusedrnn bench: cannot write '/dev/full': No space left on device" in captured.err
    assert "Traceback" not in captured.err and "fusedrnn ms" in captured.out
    assert f"--markdown '{markdown}'`" in markdown.read_text()
    assert main(["gradcheck", "--flow", "--seq", "5", "--json", "/dev/full"]) == 1
    assert "fusedrnn gradcheck: cannot write '/dev/full'" in capsys.readouterr().err


def test_a_closed_pipe_and_ctrl_c_end_without_a_traceback(tmp_path):
    """`fusedrnn bench | head -1` printed a BrokenPipeError traceback; Ctrl-C a
    KeyboardInterrupt one (session 20's review). The files asked for are written before
    the table, so a reader that stops early does not cost them; and Ctrl-C still ends the
    process by SIGINT, so that a shell script running it stops too."""
    results = tmp_path / "r.json"
    command = [sys.executable, "-m", "fusedrnn", *TINY_BENCH, "--mode", "inference"]
    process = subprocess.Popen(
        [*command, "--json", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    process.stdout.readline()  # the first line (printed before the run), then the reader goes
    process.stdout.close()
    with process.stderr:
        err = process.stderr.read()
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in err, err
    assert json.loads(results.read_text())["results"]
    # SIGINT once the run has begun (its first line printed).
    process = subprocess.Popen(
        [sys.executable, "-m", "fusedrnn", "bench", "--min-time", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process.stdout.readline()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGINT  # (a shell reports 130)
    assert err.strip().endswith("fusedrnn bench: interrupted") and "Traceback" not in err


def test_durations_in_messages_read_as_their_size():
    """The time guards' estimates: whole seconds, minutes and hours, and under a second
    tenths or milliseconds (a sub-second estimate read "about 0 s", more than a limit)."""
    from fusedrnn import _cli

    cases = {0.0004: "0.4 ms", 0.03: "30 ms", 0.2: "0.2 s", 0.96: "1 s", 40: "40 s",
             200: "3 min", 5000: "1.4 h", 7200: "2 h"}  # fmt: skip
    for seconds, text in cases.items():
        assert _cli.duration(seconds) == text, seconds
