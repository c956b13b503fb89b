"""Run the property-based API fuzzer in a subprocess, so a crash is a test failure."""

import pathlib
import subprocess
import sys


def test_public_api_fuzz_never_crashes():
    script = pathlib.Path(__file__).with_name("fuzz_api.py")
    proc = subprocess.run(
        [sys.executable, str(script), "150"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"fuzzer exited with {proc.returncode} (negative: killed by signal)\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    assert "fuzz ok" in proc.stdout
