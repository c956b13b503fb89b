"""The GPU-machine scripts that can run without a GPU: they must not rot between the
sessions that have one."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cuda_breakdown_runs_on_the_cpu(tmp_path):
    """scripts/cuda_breakdown.py --device cpu: one table row per module and case, written to
    OUT/cuda_breakdown.md as printed."""
    proc = _run("scripts/cuda_breakdown.py", "--out", str(tmp_path), "--device", "cpu",
                "--cases", "1x8x3,2x4x2", "--repeats", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "cuda_breakdown.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "module" not in line]
    assert [row.split("|")[1:5] for row in rows] == [
        [" 1 ", " 8 ", " 3 ", " nn.RNN "],
        [" 1 ", " 8 ", " 3 ", " fusedrnn "],
        [" 2 ", " 4 ", " 2 ", " nn.RNN "],
        [" 2 ", " 4 ", " 2 ", " fusedrnn "],
    ]
    assert text in proc.stdout


def test_cuda_breakdown_lists_host_events(tmp_path):
    """--host-ops N: per module, the N host events with the most self time, our autograd
    Function's among fusedrnn's, torch's own among nn.RNN's."""
    proc = _run("scripts/cuda_breakdown.py", "--out", str(tmp_path), "--device", "cpu",
                "--cases", "1x8x3", "--repeats", "2", "--host-ops", "40")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "cuda_breakdown.md").read_text()
    sections = text.split("B=1 H=8 T=3 ")[1:]
    assert [s.split(":")[0] for s in sections] == ["nn.RNN", "fusedrnn"]
    ours = [line.split("x  ", 1)[1] for line in sections[1].splitlines()[1:] if "x  " in line]
    assert 0 < len(ours) <= 40
    assert "_EagerLayer" in ours and "_EagerLayer" not in sections[0]


def test_cuda_breakdown_names_a_bad_case(tmp_path):
    proc = _run("scripts/cuda_breakdown.py", "--out", str(tmp_path), "--device", "cpu",
                "--cases", "1x8")  # fmt: skip
    assert proc.returncode != 0
    assert "--cases: expected BxHxT items such as 16x1024x100, got '1x8'" in proc.stderr
