"""Scanner-line classifier: is a package moving normally, slipping, or jamming?

A warehouse scanner line samples three sensors at 10 Hz while a package crosses the
scanner zone:

  belt speed    m/s, from the drive encoder
  vibration     g RMS, from an accelerometer on the belt frame
  position      m, the package's position in the zone, from a laser range finder

The pattern over time tells the package's state:

  normal     the package rides with the belt: its position advances at belt speed
  slipping   the package slides on the belt: it advances at 45-85 % of belt speed from a
             random onset on, in stick-slip jerks that show as vibration bursts
  jamming    the package catches on a guide rail: from a random onset on it stops, the
             vibration jumps, and the belt speed sags under the extra load

Sequences have 20 to 60 samples (the package leaves the zone or the line times out), so
a batch is a ``PackedSequence``. The classifier reads belt speed, vibration and the
package's speed (the position's change per sample) through a one-layer ``fusedrnn.RNN``
whose final state feeds a linear layer. ``--compare`` trains the same model with
``torch.nn.RNN`` from the same initial weights on the same batches.

    python examples/scanner_line.py              # fusedrnn.RNN
    python examples/scanner_line.py --compare    # and torch.nn.RNN, side by side
    python examples/scanner_line.py --small      # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fusedrnn

CLASSES = ("normal", "slipping", "jamming")
DT = 0.1  # s between samples


def make_sequence(label: int, rng: np.random.Generator) -> np.ndarray:
    """One package's sensor readings ``[steps, 3]``: belt speed, vibration, position."""
    steps = int(rng.integers(20, 61))
    t = np.arange(steps) * DT
    nominal = rng.uniform(0.8, 1.2)  # the line's set speed, m/s
    belt = nominal * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t))
    roller = rng.uniform(2.0, 4.0)  # Hz, roller rumble
    vibration = 0.10 + 0.02 * np.sin(2 * np.pi * roller * t + rng.uniform(0, 2 * np.pi))
    ratio = np.full(steps, rng.uniform(0.96, 1.0))  # a package rides at ~belt speed
    onset = int(rng.integers(int(0.2 * steps), int(0.7 * steps)))
    after = np.arange(steps) >= onset

    if CLASSES[label] == "slipping":
        slip = rng.uniform(0.45, 0.85)
        jerks = rng.random(steps) < 0.3  # stick-slip: short grips and releases
        ratio[after] = np.where(jerks[after], slip + 0.3, slip - 0.1)
        vibration = vibration + after * jerks * rng.uniform(0.05, 0.12)
    elif CLASSES[label] == "jamming":
        ratio[after] = 0.0
        since = np.maximum(t - t[onset], 0.0)
        belt = belt * (1 - after * rng.uniform(0.1, 0.25) * (1 - np.exp(-since / 0.5)))
        vibration = vibration + after * (
            rng.uniform(0.1, 0.2) + 0.3 * np.exp(-since / 0.3)  # impact, then strain hum
        )

    position = np.cumsum(belt * np.clip(ratio, 0, None) * DT) + rng.uniform(0.0, 0.3)
    readings = np.stack(
        [
            belt + rng.normal(0, 0.01, steps),
            vibration + rng.normal(0, 0.015, steps),
            position + rng.normal(0, 0.01, steps),
        ],
        axis=1,
    )
    return readings


def features(readings: np.ndarray) -> np.ndarray:
    """The model's inputs: belt speed, vibration and the package's speed, which is the
    position's change per sample. Fixed, physical scaling: no statistics of the data
    set are used, so none leak from the test set."""
    belt, vibration, position = readings.T
    package_speed = np.diff(position, prepend=position[0] - belt[0] * DT) / DT
    return np.stack(
        [(belt - 1.0) / 0.2, (vibration - 0.15) / 0.1, (package_speed - 1.0) / 0.2], axis=1
    )


def make_dataset(n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), size=n)
    sequences = [
        torch.tensor(features(make_sequence(int(y), rng)), dtype=torch.float32) for y in labels
    ]
    return sequences, torch.tensor(labels)


class Classifier(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, len(CLASSES))

    def forward(self, packed):
        _, h_n = self.rnn(packed)
        return self.head(h_n[-1])


def build_models(hidden: int, seed: int, compare: bool) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    fused = Classifier(fusedrnn.RNN(3, hidden, batch_first=True), hidden)
    models = {"fusedrnn.RNN": fused}
    if compare:
        reference = Classifier(nn.RNN(3, hidden, batch_first=True), hidden)
        reference.load_state_dict(fused.state_dict())  # the same initial weights
        models["torch.nn.RNN"] = reference
    return models


def evaluate(model: nn.Module, sequences, labels, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(sequences), batch):
            packed = pack_sequence(sequences[start : start + batch], enforce_sorted=False)
            correct += (model(packed).argmax(1) == labels[start : start + batch]).sum().item()
    return correct / len(sequences)


def train(model: nn.Module, data, args, log) -> float:
    """Train in place; return the training time in seconds."""
    sequences, labels = data
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order_rng = torch.Generator().manual_seed(args.seed)  # the same batches for every model
    elapsed = 0.0
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(sequences), generator=order_rng).tolist()
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            packed = pack_sequence([sequences[j] for j in idx], enforce_sorted=False)
            loss = nn.functional.cross_entropy(model(packed), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(idx)
        elapsed += time.perf_counter() - start
        log(f"  epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(order):.4f}")
    return elapsed


def _number(kind, low: float, what: str):
    """An argparse type: ``kind(text)``, finite and at least ``low``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    positive = _number(int, 1, "a positive integer")
    parser.add_argument("--compare", action="store_true", help="also train torch.nn.RNN")
    parser.add_argument(
        "--small", action="store_true", help="a few seconds, for CI (sizes not given: smaller)"
    )
    # (None: the default, or --small's where given)
    parser.add_argument("--train", type=positive, help="training sequences (2000)")
    parser.add_argument("--test", type=positive, help="test sequences (1000)")
    parser.add_argument("--epochs", type=positive, help="(6)")
    parser.add_argument("--hidden", type=positive, help="(48)")
    parser.add_argument("--batch", type=positive, default=64)
    parser.add_argument("--lr", type=_number(float, 1e-12, "a positive number"), default=5e-3)
    parser.add_argument("--threads", type=positive, help="torch.set_num_threads")
    parser.add_argument("--seed", type=_number(int, 0, "an integer >= 0"), default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)
    sizes = (
        dict(train=400, test=200, epochs=4, hidden=32)
        if args.small
        else dict(train=2000, test=1000, epochs=6, hidden=48)
    )
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None) -> dict[str, dict[str, float]]:
    """Run the example; return ``{model: {"accuracy": ..., "train_seconds": ...}}``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    train_data = make_dataset(args.train, args.seed)
    test_data = make_dataset(args.test, args.seed + 1)
    lengths = [len(s) for s in train_data[0]]
    print(
        f"scanner line: {args.train} training / {args.test} test packages, "
        f"{min(lengths)}-{max(lengths)} samples each, classes {', '.join(CLASSES)}; "
        f"{torch.get_num_threads()} threads"
    )
    results = {}
    for name, model in build_models(args.hidden, args.seed, args.compare).items():
        log(f"{name}: hidden {args.hidden}, {args.epochs} epochs, batch {args.batch}")
        seconds = train(model, train_data, args, log)
        accuracy = evaluate(model, *test_data)
        results[name] = {"accuracy": accuracy, "train_seconds": seconds}
        print(f"{name}: test accuracy {accuracy:.1%}, training time {seconds:.1f} s")
    if len(results) > 1:
        fused, ref = results["fusedrnn.RNN"], results["torch.nn.RNN"]
        print(
            f"training speed-up of fusedrnn.RNN over torch.nn.RNN: "
            f"{ref['train_seconds'] / fused['train_seconds']:.2f}x"
        )
    return results


if __name__ == "__main__":
    main()
