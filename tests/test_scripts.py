"""The GPU-machine scripts that can run without a GPU: they must not rot between the
sessions that have one."""

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_cuda_host_profile_runs_on_the_cpu():
    """scripts/cuda_host_profile.py --device cpu: the timed calls that apply on the CPU (none
    of the CUDA launcher's), then cProfile of the steps by own and by cumulative time, with
    the module's forward among the functions."""
    proc = _run("scripts/cuda_host_profile.py", "--device", "cpu", "--case", "2x8x3",
                "--steps", "3", "--repeats", "3", "--top", "60")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "B=2 H=8 T=3, float32" in out
    labels = [line.split("  ")[1] for line in out.splitlines() if line.startswith("  ")]
    assert labels[:6] == ["training step", "forward (grad enabled)", "forward (no_grad)",
                          "backward", "aten::mm [T*B, H] x [H, H]",
                          "empty autograd.Function, fwd + bwd"]  # fmt: skip
    assert "_cuda.rnn_forward" not in out
    profiles = out.split("cProfile of 3 training steps, by ")[1:]
    assert [p.split(":")[0] for p in profiles] == ["tottime", "cumulative"]
    assert all("modules.py" in p and "(forward)" in p for p in profiles)


def test_cuda_host_profile_names_a_bad_case():
    proc = _run("scripts/cuda_host_profile.py", "--device", "cpu", "--case", "2x8")
    assert proc.returncode != 0
    assert "--case: expected BxHxT such as 1x256x100, got '2x8'" in proc.stderr


_FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3 in scripts/gpu_ab.sh: pip succeeds (unless the kernel file reads
# $FAIL_BUILD), the module path is this file, and the benchmark writes down the kernel file
# it would have been built from.
case "$1" in
  -m) [[ -n "${FAIL_BUILD:-}" ]] && grep -qx "$FAIL_BUILD" csrc/kernel.cuh && exit 1; exit 0 ;;
  -c) echo "$0" ;;
  scripts/bench_cuda.py) mkdir -p "$3" && cp csrc/kernel.cuh "$3/bench_cuda.md" ;;
  *) exit 3 ;;
esac
"""


def _ab_tree(tmp_path):
    """A copy of scripts/gpu_ab.sh in a tree of its own, with one kernel file, a baseline
    of it and a fake python."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / "csrc").mkdir()
    (tree / "scripts" / "gpu_ab.sh").write_text((ROOT / "scripts" / "gpu_ab.sh").read_text())
    (tree / "csrc" / "kernel.cuh").write_text("new\n")
    (tree / "base" / "csrc").mkdir(parents=True)
    (tree / "base" / "csrc" / "kernel.cuh").write_text("old\n")
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    return tree, fake


def _run_ab(tree, fake, out, base="base", fail_build=""):
    env = {"PATH": "/usr/bin:/bin", "AB_BASE": base, "OUT": str(out), "PYTHON": str(fake),
           "FAIL_BUILD": fail_build}  # fmt: skip
    return subprocess.run(["bash", "scripts/gpu_ab.sh"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_gpu_ab_times_the_baseline_then_the_tree_and_restores_it(tmp_path):
    """scripts/gpu_ab.sh: the baseline leg runs on the overlaid file, the second on the
    tree's own, and the tree is as it was afterwards."""
    import tarfile

    tree, fake = _ab_tree(tmp_path)
    out = tmp_path / "out"
    proc = _run_ab(tree, fake, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tree / "csrc" / "kernel.cuh").read_text() == "new\n"
    with tarfile.open(out / "ab_results.tgz") as tar:
        legs = {
            name: tar.extractfile(f"./{name}/bench_cuda.md").read().decode()
            for name in ("ab_base", "ab_new")
        }
    assert legs == {"ab_base": "old\n", "ab_new": "new\n"}
    assert "gpu_ab status: 0" in (out / "gpu_ab.log").read_text()


def test_gpu_ab_refuses_a_baseline_file_not_in_the_tree(tmp_path):
    tree, fake = _ab_tree(tmp_path)
    (tree / "base" / "csrc" / "other.cuh").write_text("x\n")
    proc = _run_ab(tree, fake, tmp_path / "out")
    assert proc.returncode == 2
    assert "AB_BASE: csrc/other.cuh is not a file of the tree" in proc.stdout
    assert (tree / "csrc" / "kernel.cuh").read_text() == "new\n"


@pytest.mark.parametrize("failing", ["old", "new"])
def test_gpu_ab_restores_the_tree_when_a_build_fails(tmp_path, failing):
    """A failed build of either leg: status 1, the tree restored, the logs saved, and a
    warning when the installed build may not be the tree's (the last build failed)."""
    import tarfile

    tree, fake = _ab_tree(tmp_path)
    out = tmp_path / "out"
    proc = _run_ab(tree, fake, out, fail_build=failing)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (tree / "csrc" / "kernel.cuh").read_text() == "new\n"
    log = (out / "gpu_ab.log").read_text()
    leg = "ab_base" if failing == "old" else "ab_new"
    assert f"BUILD FAILED: {leg}" in log
    with tarfile.open(out / "ab_results.tgz") as tar:
        assert f"./build_{leg}.log" in tar.getnames()
    assert ("installed _C_cuda is not the tree's build (unknown)" in log) == (failing == "new")


def test_cluster_kernel_emulation_matches_the_reference():
    """scripts/emulate_cluster.py: the cluster kernel (rnn_cluster.cuh), emulated CTA by CTA
    in NumPy, against the float64 reference on a packed case, with its hazard checks."""
    proc = _run("scripts/emulate_cluster.py", "--quick", "--only", "(6, 5, 9")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no discrepancy, hazard or tainted read found" in proc.stdout


@pytest.mark.slow
def test_cluster_kernel_emulation_catches_planted_bugs():
    """The emulation's checks can fail: each bug planted in the emulated kernel is reported."""
    proc = _run("scripts/emulate_cluster.py", "--self-test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISSED" not in proc.stdout and proc.stdout.count("caught") >= 5


_FAKE_GPU_PYTHON = """#!/usr/bin/env bash
# Stands in for python3 (and compute-sanitizer, nvidia-smi) in scripts/gpu_check.sh: records
# each call in $CALLS and answers the one-line queries as a Hopper machine would.
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0")" in
  nvidia-smi) echo "NVIDIA H200, 580.00, 143771 MiB"; exit 0 ;;
  compute-sanitizer) exit 0 ;;
esac
[[ -n "${HANG:-}" && "$*" == "$HANG" ]] && exit 124  # as `timeout` ends a hung call
case "$1" in
  -c) case "$2" in
        *get_device_capability*) echo 1 ;;
        *torch.version.cuda*) echo 13.0 ;;
        *) echo "{}" ;;
      esac ;;
  -m) [[ "$2" == pytest ]] && echo "1 passed" ; exit 0 ;;
  *) exit 0 ;;
esac
"""


def _fake_gpu_check(tmp_path, status=0, **env_extra) -> tuple[str, list[str]]:
    """scripts/gpu_check.sh run with fake tools (a Hopper machine), which must exit with
    ``status``: its log and the calls it made, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(_FAKE_GPU_PYTHON)
    fake.chmod(0o755)
    for tool in ("compute-sanitizer", "nvidia-smi"):
        (bin_dir / tool).symlink_to(fake)
    calls = tmp_path / "calls.txt"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CALLS": str(calls),
        "OUT": str(tmp_path / "out"),
        "BUDGET": "200",
        "PYTHON": str(fake),
        **env_extra,
    }
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == status, proc.stdout + proc.stderr
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert f"gpu_check status: {status}" in log
    return log, calls.read_text().splitlines()


def test_gpu_check_runs_every_step_and_the_cluster_kernel_apart(tmp_path):
    """scripts/gpu_check.sh end to end with fake tools (no GPU): every step runs, and on a
    Hopper GPU the cluster kernel's checks run in processes of their own, after and apart
    from the other kernels'."""
    log, ran = _fake_gpu_check(tmp_path)
    assert "thread-block clusters: 1" in log
    expected = [
        "python3 -m pip install --no-build-isolation --no-deps -e .",
        "python3 scripts/cuda_stress.py",
        "python3 scripts/cuda_stress.py cluster",
        "python3 -m pytest -m cuda -k not cluster",
        "python3 -m pytest -m cuda -k cluster",
        "python3 scripts/bench_cuda.py --out",
        "python3 scripts/cuda_breakdown.py --out",
        "compute-sanitizer --tool memcheck",
        "compute-sanitizer --tool initcheck",
        "compute-sanitizer --tool racecheck --error-exitcode 9",
        "python3 -m pytest tests/test_large.py -m cuda -q",
        "python3 scripts/bench_cuda.py --out",
    ]
    position = 0
    for want in expected:  # in this order, each after the one before
        hits = [i for i, line in enumerate(ran) if i >= position and line.startswith(want)]
        assert hits, (want, ran)
        position = hits[0] + 1
    smoke = [line for line in ran if line.startswith("compute-sanitizer --tool")]
    assert sum(line.endswith("cuda_smoke.py") for line in smoke) == 4  # the validated kernels
    assert sum(line.endswith("cuda_smoke.py cluster") for line in smoke) == 2  # on its own


def test_gpu_check_skips_the_cluster_steps_after_the_cluster_kernel_hung(tmp_path):
    """A cluster kernel that never returns (its stress run ends by `timeout`) costs one
    step's limit, not every cluster step's: its tests, sanitizer runs and benchmark pass
    are skipped, the other kernels' steps all run, and the status says it failed."""
    log, ran = _fake_gpu_check(tmp_path, 1, HANG="scripts/cuda_stress.py cluster")
    assert "cuda_stress cluster: timed out" in log
    cluster = [line for line in ran if " -k cluster " in line or line.endswith(" cluster")]
    assert cluster == ["python3 scripts/cuda_stress.py cluster"], cluster
    paths = [line for line in ran if line.endswith("--paths") or "--paths " in line]
    assert len(paths) == 1 and paths[0].endswith("--paths --no-cluster"), paths
    assert "python3 -m pytest -m cuda -k not cluster" in "\n".join(ran)
    smoke = [line for line in ran if line.startswith("compute-sanitizer --tool")]
    assert len(smoke) == 4 and not any(line.endswith("cluster") for line in smoke)
