"""examples/scanner_line.py runs end to end in its small setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scanner_line.py"


@pytest.fixture
def scanner_line():
    spec = importlib.util.spec_from_file_location("scanner_line", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def test_small_run_learns_and_compares(scanner_line, capsys):
    # One thread: the small batches gain nothing from more, and CI machines are shared.
    results = scanner_line.main(["--small", "--compare", "--quiet", "--threads", "1"])
    assert set(results) == {"fusedrnn.RNN", "torch.nn.RNN"}
    for name, result in results.items():
        assert result["accuracy"] > 0.8, name  # three classes: chance is 1/3
        assert result["train_seconds"] > 0
    out = capsys.readouterr().out
    assert "fusedrnn.RNN: test accuracy" in out and "torch.nn.RNN: test accuracy" in out
    assert "training speed-up of fusedrnn.RNN over torch.nn.RNN" in out


def test_data_set_has_variable_lengths_and_all_classes(scanner_line):
    sequences, labels = scanner_line.make_dataset(300, seed=3)
    lengths = {len(s) for s in sequences}
    assert min(lengths) >= 20 and max(lengths) <= 60 and len(lengths) > 20
    assert set(labels.tolist()) == {0, 1, 2}
    assert all(s.shape[1] == 3 and torch.isfinite(s).all() for s in sequences)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        # (session 29: tracebacks from torch, NumPy or Adam, or --threads 0 ignored)
        (["--threads", "0"], "argument --threads: expected a positive integer, got '0'"),
        (["--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    ],
)
def test_bad_sizes_are_argument_errors(scanner_line, capsys, argv, message):
    with pytest.raises(SystemExit):
        scanner_line.main(argv)
    assert message in capsys.readouterr().err


def test_small_keeps_the_sizes_given(scanner_line):
    """--small shrinks only what is not given (it overrode --hidden and the rest before)."""
    args = scanner_line.parse_args(["--small", "--hidden", "8"])
    assert (args.hidden, args.train, args.epochs) == (8, 400, 4)
    assert scanner_line.parse_args([]).hidden == 48
