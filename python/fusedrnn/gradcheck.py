"""``fusedrnn gradcheck``: every gradient of fusedrnn.RNN, checked three independent ways,
and its forward-mode derivatives a fourth.

For each configuration, a float64 fusedrnn.RNN computes ``L = sum(output * G) +
sum(h_n * G_n)`` for fixed random ``G, G_n`` and its gradients with respect to the input,
``h0`` and every weight and bias. They are checked against:

  reference    fusedrnn.reference (NumPy float64), one layer-direction at a time, composed
               over layers and directions here in NumPy; packed batches run one sequence
               at a time, so the packed layout is not shared with the code under test.
               The forward values (output, h_n) are compared too.
  finite-diff  central differences (L(p + eps) - L(p - eps)) / 2 eps of the fused forward,
               element by element (a random sample of large tensors).
  autograd     torch.autograd.gradcheck on (output, h_n) as functions of all inputs; on a
               failure, each input is checked alone to name the failing gradient.
  forward-mode torch.func.jvp of (output, h_n) along a random direction in each input
               (fusedrnn's forward-mode rule: the tangent recurrence, run by the BPTT
               kernel forwards in time), against central differences of the fused forward
               along the same direction, every output element.

Errors: abs = max |fused - expected|, rel = abs / max |expected|. A check passes when
abs <= atol + rtol * max |expected| (tolerances in the table).

``--flow`` measures ||dL/dh_t|| for every step t of a long sequence with the loss on the
last step, through the fused BPTT kernel, for several spectral radii of W_hh:

  tanh   W_hh = rho * Q, Q a random orthogonal matrix, weak inputs: every step multiplies
         the gradient by W_hh^T and by tanh' <= 1, so it vanishes for rho < 1; for
         rho > 1 it grows while the states are small, until tanh saturates.
  relu   W_hh >= 0 scaled to spectral radius rho, inputs and bias > 0, so every unit
         stays active (the linear regime), and g >= 0: the gradient shrinks or grows by
         rho per step.

Importable: ``check(module_or_config)`` returns a :class:`Report`; ``gradient_flow``
returns the norms.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import math
import operator
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import _cli, _cuda, ops, reference
from .modules import RNN, _forked_rng

__all__ = [
    "CHECKS",
    "Config",
    "Report",
    "Row",
    "add_arguments",
    "check",
    "default_grid",
    "gradient_flow",
    "reference_gradients",
    "run",
]

CHECKS = ("reference", "finite-diff", "autograd", "forward-mode")
# (atol, rtol) per check, float64.
TOLERANCES = {
    "reference": (1e-12, 1e-10),
    "finite-diff": (1e-7, 1e-5),
    "autograd": (1e-5, 1e-3),
    "forward-mode": (1e-7, 1e-5),
}
FD_EPS = 1e-6


def _int_or_none(value) -> int | None:
    """``value`` as an int (a NumPy integer too), None for anything else (a bool too)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name``."""
    number = _int_or_none(value)
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def _seed(value) -> int:
    """``value`` as a seed: an int in what NumPy's and torch's seeds take."""
    number = _int_or_none(value)
    if number is None or not 0 <= number < 2**63:
        raise ValueError(f"seed must be an int in 0..2**63-1, got {value!r}")
    return number


def _check_nonlinearity(value) -> None:
    if value not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {value!r}")


def _bool(name: str, value) -> bool:
    """A yes/no setting: a bool (NumPy's too), never a truthy value ('no' would be True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


@dataclass(frozen=True)
class Config:
    """One RNN configuration and the sizes of its test problem."""

    nonlinearity: str = "tanh"
    packed: bool = False
    h0: bool = True
    layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    T: int = 5
    B: int = 3
    I: int = 3
    H: int = 4
    batch_first: bool = False

    def __post_init__(self):
        # Sizes of at least 1: an empty problem would compare nothing and pass.
        for name in ("layers", "T", "B", "I", "H"):
            _positive_int(name, getattr(self, name))
        for name in ("packed", "h0", "bidirectional", "bias", "batch_first"):
            _bool(name, getattr(self, name))
        _check_nonlinearity(self.nonlinearity)

    @property
    def label(self) -> str:
        parts = [
            self.nonlinearity,
            "packed" if self.packed else "padded",
            "h0" if self.h0 else "no-h0",
            f"L{self.layers}",
            "bi" if self.bidirectional else "uni",
        ]
        if not self.bias:
            parts.append("no-bias")
        if self.batch_first:
            parts.append("batch-first")
        return " ".join(parts)

    def module(self, device: str | torch.device = "cpu", seed: int = 0) -> RNN:
        """A float64 fusedrnn.RNN of this configuration, its weights drawn from ``seed``
        (the caller's global random state is left as it was, on the CPU and the device)."""
        with _forked_rng(device):
            torch.manual_seed(seed)
            return RNN(
                self.I,
                self.H,
                self.layers,
                self.nonlinearity,
                self.bias,
                self.batch_first,
                0.0,
                self.bidirectional,
                device=device,
                dtype=torch.float64,
            )


def default_grid(**sizes) -> list[Config]:
    """tanh/relu x padded/packed x h0/no h0 x (1 layer uni, 2 layers bidirectional)."""
    return [
        Config(nonlinearity=nl, packed=packed, h0=h0, layers=layers, bidirectional=bi, **sizes)
        for nl, packed, h0, (layers, bi) in itertools.product(
            ("tanh", "relu"), (False, True), (True, False), ((1, False), (2, True))
        )
    ]


@dataclass
class Row:
    config: str
    check: str
    gradient: str  # output, h_n (forward values), input, h0, or a parameter name
    max_abs: float | None
    max_rel: float | None
    passed: bool
    note: str = ""

    @property
    def tolerance(self) -> str:
        atol, rtol = TOLERANCES[self.check]
        return f"atol {atol:.0e} rtol {rtol:.0e}"


@dataclass
class Report:
    """Rows of (configuration, check, gradient) with errors and verdicts."""

    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [row for row in self.rows if not row.passed]

    def extend(self, other: Report) -> None:
        self.rows.extend(other.rows)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "tolerances": {k: {"atol": a, "rtol": r} for k, (a, r) in TOLERANCES.items()},
            "rows": [dataclasses.asdict(row) | {"tolerance": row.tolerance} for row in self.rows],
        }

    def summary_table(self) -> str:
        """Max errors per kind of gradient over all configurations, layers and directions."""
        kinds: dict[str, dict[str, list[Row]]] = {}
        for row in self.rows:
            kind = re.sub(r"_l\d+(_reverse)?$", "", row.gradient)
            kinds.setdefault(kind, {}).setdefault(row.check, []).append(row)
        checks = [c for c in CHECKS if any(c in by_check for by_check in kinds.values())]
        headers = ["gradient"]
        for c in checks:
            headers += [f"{c} abs", f"{c} rel"] if c != "autograd" else ["autograd"]
        headers.append("verdict")
        rows = []
        for kind, by_check in kinds.items():
            cells = [kind]
            for c in checks:
                group = by_check.get(c, [])
                if c == "autograd":
                    cells.append(
                        f"{sum(r.passed for r in group)}/{len(group)} pass" if group else "-"
                    )
                    continue
                for attr in ("max_abs", "max_rel"):
                    values = [getattr(r, attr) for r in group if getattr(r, attr) is not None]
                    cells.append(_worst(values) if values else "-")
            everything = [r for group in by_check.values() for r in group]
            cells.append("pass" if all(r.passed for r in everything) else "FAIL")
            rows.append(cells)
        return _cli.format_table(headers, rows)

    def rows_table(self, rows: Sequence[Row] | None = None) -> str:
        rows = self.rows if rows is None else rows
        headers = [
            "configuration",
            "check",
            "gradient",
            "max abs",
            "max rel",
            "tolerance",
            "verdict",
        ]
        cells = [
            [
                r.config,
                r.check,
                r.gradient,
                _fmt(r.max_abs),
                _fmt(r.max_rel),
                r.tolerance,
                ("pass" if r.passed else "FAIL") + (f" ({r.note})" if r.note else ""),
            ]
            for r in rows
        ]
        return _cli.format_table(headers, cells)

    def format(self, verbose: bool = False) -> str:
        configs = len(dict.fromkeys(r.config for r in self.rows))
        parts = [self.rows_table() if verbose else self.summary_table()]
        if self.failures and not verbose:
            parts += ["", "failing rows:", self.rows_table(self.failures)]
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} failing rows)"
        parts += ["", f"gradcheck {verdict}: {configs} configurations, {len(self.rows)} rows"]
        return "\n".join(parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _worst(values: Sequence[float]) -> str:
    return _fmt(math.nan if any(math.isnan(v) for v in values) else max(values))


def _errors(got, want, check: str) -> tuple[float, float, bool]:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.nan, math.nan, False
    if want.size == 0:
        return 0.0, 0.0, True
    max_abs = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    atol, rtol = TOLERANCES[check]
    passed = bool(np.isfinite(max_abs) and max_abs <= atol + rtol * scale)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, max_rel, passed


# ---- the problem: a module, inputs and the loss ------------------------------------------


class _Problem:
    """A float64 copy of the module, inputs, output weights G and the scalar loss."""

    def __init__(self, module: RNN, config: Config, seed: int, device: torch.device):
        self.module, self.config, self.device = module, config, device
        rng = np.random.default_rng(seed)
        c = config
        D = 2 if c.bidirectional else 1
        if c.packed:
            lengths = rng.integers(1, c.T + 1, size=c.B)
            lengths[rng.integers(c.B)] = c.T  # the longest sequence fills T
            self.lengths: np.ndarray | None = lengths
            # Packing as row gathers (which forward mode goes through; torch's
            # pack_padded_sequence has no forward-mode rule): the time-major row of x that
            # each packed row holds, and the PackedSequence fields that go with them.
            rows = torch.arange(c.T * c.B, dtype=torch.float64).view(c.T, c.B, 1)
            packed = pack_padded_sequence(rows, torch.as_tensor(lengths), enforce_sorted=False)
            self.rows = packed.data.view(-1).long().to(device)
            self.packing = (
                packed.batch_sizes,
                packed.sorted_indices.to(device),
                packed.unsorted_indices.to(device),
            )
        else:
            self.lengths = None

        def tensor(a: np.ndarray) -> Tensor:
            return torch.tensor(a, dtype=torch.float64, device=device)

        x = rng.standard_normal((c.T, c.B, c.I))
        g_out = rng.standard_normal((c.T, c.B, D * c.H))
        if self.lengths is not None:  # padding takes no part: zero it so it is visibly unused
            valid = np.arange(c.T)[:, None] < self.lengths[None, :]
            x *= valid[..., None]
            g_out *= valid[..., None]
        self.x = tensor(x).requires_grad_()
        self.h0 = (
            tensor(0.5 * rng.standard_normal((c.layers * D, c.B, c.H))).requires_grad_()
            if c.h0
            else None
        )
        self.g_out = tensor(g_out)
        self.g_hn = tensor(rng.standard_normal((c.layers * D, c.B, c.H)))
        self.params = dict(module.named_parameters())

    def inputs(self) -> dict[str, Tensor]:
        """Every tensor with a gradient, by name: input, h0, then the parameters."""
        named = {"input": self.x}
        if self.h0 is not None:
            named["h0"] = self.h0
        named.update(self.params)
        return named

    def forward(self, x: Tensor, h0: Tensor | None, params: dict[str, Tensor] | None = None):
        """(output [T, B, D*H] padded with zeros, h_n) for time-major ``x``."""
        bf = self.config.batch_first
        T, B = x.shape[0], x.shape[1]
        if self.lengths is not None:  # packed input ignores batch_first
            inp = PackedSequence(x.reshape(T * B, -1).index_select(0, self.rows), *self.packing)
        else:
            inp = x.transpose(0, 1) if bf else x
        if params is None:
            out, hn = self.module(inp, h0)
        else:
            out, hn = torch.func.functional_call(self.module, params, (inp, h0))
        if self.lengths is not None:
            data = out.data
            padded = data.new_zeros(T * B, data.shape[1]).index_copy(0, self.rows, data)
            return padded.view(T, B, -1), hn
        return (out.transpose(0, 1) if bf else out), hn

    def loss(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(L, output, h_n)`` with ``L = sum(output * G) + sum(h_n * G_n)``."""
        out, hn = self.forward(self.x, self.h0)
        return (out * self.g_out).sum() + (hn * self.g_hn).sum(), out, hn

    def fused_gradients(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The fused module's gradients of every input, and its forward values."""
        named = self.inputs()
        for t in named.values():
            t.grad = None
        loss, out, hn = self.loss()
        loss.backward()
        grads = {}
        for name, t in named.items():
            grads[name] = (
                np.zeros(tuple(t.shape)) if t.grad is None else t.grad.detach().cpu().numpy()
            )
        return grads, out.detach().cpu().numpy(), hn.detach().cpu().numpy()


# ---- check 1: the NumPy float64 reference, composed over layers and directions -----------


def reference_gradients(
    params: dict[str, np.ndarray],
    config: Config,
    x: np.ndarray,
    h0: np.ndarray | None,
    lengths: np.ndarray | None,
    g_out: np.ndarray,
    g_hn: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Gradients of ``sum(out * g_out) + sum(hn * g_hn)`` and ``(out, hn)`` in NumPy float64.

    ``x`` is time-major ``[T, B, I]``; with ``lengths`` each sequence runs on its own over
    its first ``lengths[b]`` steps and the output is zero beyond them, as
    ``pad_packed_sequence`` returns it. Layers and directions are composed here: a layer's
    input is the concatenation of the directions below, and its input gradient is the sum
    of the directions' input gradients.
    """
    c = config
    D = 2 if c.bidirectional else 1
    T, B, _ = x.shape
    h0 = np.zeros((c.layers * D, B, c.H)) if h0 is None else h0
    out = np.zeros((T, B, D * c.H))
    hn = np.zeros((c.layers * D, B, c.H))
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    grads["input"] = np.zeros_like(x)
    grads["h0"] = np.zeros_like(h0)
    groups = (
        [(list(range(B)), T)]
        if lengths is None
        else [([b], int(length)) for b, length in enumerate(lengths)]
    )

    def weights(layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        names = [f"weight_ih{suffix}", f"weight_hh{suffix}", f"bias_ih{suffix}", f"bias_hh{suffix}"]
        return names, [params.get(name) for name in names]

    for rows, steps in groups:
        layer_inputs = []
        inp = x[:steps, rows]
        for layer in range(c.layers):
            layer_inputs.append(inp)
            outs = []
            for d in range(D):
                _, w = weights(layer, d)
                h, h_last = reference.rnn_forward(
                    inp, *w, h0[layer * D + d][rows], None, d == 1, c.nonlinearity
                )
                outs.append(h)
                hn[layer * D + d, rows] = h_last
            inp = np.concatenate(outs, axis=-1)
        out[:steps, rows] = inp

        grad = g_out[:steps, rows]
        for layer in reversed(range(c.layers)):
            grad_input = np.zeros_like(layer_inputs[layer])
            for d in range(D):
                names, w = weights(layer, d)
                g = reference.rnn_backward(
                    layer_inputs[layer],
                    *w,
                    h0[layer * D + d][rows],
                    grad[..., d * c.H : (d + 1) * c.H],
                    g_hn[layer * D + d][rows],
                    None,
                    d == 1,
                    c.nonlinearity,
                )
                for name, key in zip(names, ("w_ih", "w_hh", "b_ih", "b_hh"), strict=True):
                    if name in grads:
                        grads[name] += g[key]
                grads["h0"][layer * D + d, rows] = g["h0"]
                grad_input += g["x"]
            grad = grad_input
        grads["input"][:steps, rows] = grad
    return grads, out, hn


def _check_reference(problem: _Problem, fused: dict, out: np.ndarray, hn: np.ndarray) -> list:
    params = {k: v.detach().cpu().numpy() for k, v in problem.params.items()}
    h0 = None if problem.h0 is None else problem.h0.detach().cpu().numpy()
    want, want_out, want_hn = reference_gradients(
        params,
        problem.config,
        problem.x.detach().cpu().numpy(),
        h0,
        problem.lengths,
        problem.g_out.cpu().numpy(),
        problem.g_hn.cpu().numpy(),
    )
    results = [("output", out, want_out), ("h_n", hn, want_hn)]
    results += [(name, fused[name], want[name]) for name in fused]
    return [(name, *_errors(got, exp, "reference")) for name, got, exp in results]


# ---- check 2: central finite differences of the fused forward ---------------------------


def _check_finite_differences(
    problem: _Problem, fused: dict, rng: np.random.Generator, max_elements: int
) -> list:
    rows = []
    with torch.no_grad():
        for name, t in problem.inputs().items():
            n = t.numel()
            picked = (
                np.arange(n) if n <= max_elements else rng.choice(n, max_elements, replace=False)
            )
            numeric = np.empty(len(picked))
            for k, i in enumerate(picked):
                # The element by its index, in row-major order as reshape(-1) below counts:
                # a module's parameter may be any strided tensor (a transposed one could not
                # be viewed flat).
                at = tuple(int(j) for j in np.unravel_index(i, tuple(t.shape)))
                original = t[at].item()
                t[at] = original + FD_EPS
                plus = problem.loss()[0].item()
                t[at] = original - FD_EPS
                minus = problem.loss()[0].item()
                t[at] = original
                numeric[k] = (plus - minus) / (2 * FD_EPS)
            analytic = fused[name].reshape(-1)[picked]
            note = "" if n <= max_elements else f"{len(picked)} of {n} elements"
            rows.append((name, *_errors(analytic, numeric, "finite-diff"), note))
    return rows


# ---- check 3: torch.autograd.gradcheck ------------------------------------------------


def _check_autograd(problem: _Problem, fast_above: int) -> list:
    named = {k: v.detach().clone().requires_grad_() for k, v in problem.inputs().items()}
    names = list(named)
    param_names = list(problem.params)
    atol, rtol = TOLERANCES["autograd"]

    def run_gradcheck(active: set[str]) -> bool:
        values = {k: (v if k in active else v.detach()) for k, v in named.items()}

        def fn(*tensors: Tensor):
            given = dict(zip(names, tensors, strict=True))
            params = {k: given[k] for k in param_names}
            return problem.forward(given["input"], given.get("h0"), params)

        return torch.autograd.gradcheck(
            fn,
            tuple(values[k] for k in names),
            eps=FD_EPS,
            atol=atol,
            rtol=rtol,
            raise_exception=False,
            fast_mode=fast,
        )

    # Fast mode checks u^T J v for random u, v instead of every Jacobian entry.
    fast = sum(t.numel() for t in named.values()) > fast_above
    note = "fast mode" if fast else ""
    if run_gradcheck(set(names)):
        return [(name, None, None, True, note) for name in names]
    # Attribute the failure: check each input on its own.
    return [(name, None, None, run_gradcheck({name}), note) for name in names]


# ---- check 4: forward mode against central differences along a direction --------------


def _check_forward_mode(problem: _Problem, rng: np.random.Generator) -> list:
    named = {k: v.detach() for k, v in problem.inputs().items()}
    rows = []
    for name, value in named.items():
        direction = torch.as_tensor(
            rng.standard_normal(tuple(value.shape)), dtype=value.dtype, device=value.device
        )

        def outputs(t: Tensor, name: str = name) -> Tensor:
            given = dict(named, **{name: t})
            params = {k: given[k] for k in problem.params}
            out, hn = problem.forward(given["input"], given.get("h0"), params)
            return torch.cat((out.reshape(-1), hn.reshape(-1)))

        with warnings.catch_warnings():
            # torch.func.jvp's first use scripts torch's own decompositions, which warns
            # that torch.jit.script is deprecated (torch's own use, nothing to act on here).
            warnings.filterwarnings(
                "ignore", "`torch.jit.script` is deprecated", DeprecationWarning
            )
            _, tangent = torch.func.jvp(outputs, (value,), (direction,))
        with torch.no_grad():
            plus = outputs(value + FD_EPS * direction)
            minus = outputs(value - FD_EPS * direction)
        numeric = (plus - minus) / (2 * FD_EPS)
        got, want = tangent.detach().cpu().numpy(), numeric.cpu().numpy()
        rows.append((name, *_errors(got, want, "forward-mode")))
    return rows


# ---- the entry point --------------------------------------------------------------------


def _config_of(module: nn.Module, T: int, B: int, packed: bool, h0: bool) -> Config:
    return Config(
        nonlinearity=module.nonlinearity,
        packed=packed,
        h0=h0,
        layers=module.num_layers,
        # (a module's own flags, as torch reads them: nn.RNN(bias=1) is a valid module)
        bidirectional=bool(module.bidirectional),
        bias=bool(module.bias),
        T=T,
        B=B,
        I=module.input_size,
        H=module.hidden_size,
        batch_first=bool(module.batch_first),
    )


def check(
    module_or_config: nn.Module | Config,
    *,
    checks: Sequence[str] = CHECKS,
    device: str | torch.device | None = None,
    seed: int = 0,
    T: int | None = None,
    B: int | None = None,
    packed: bool | None = None,
    h0: bool | None = None,
    max_fd_elements: int = 256,
    autograd_fast_above: int = 150,
) -> Report:
    """Check every gradient of a fusedrnn.RNN (or torch.nn.RNN, converted) or a Config.

    A module is copied in float64 (its weights kept, dropout off) and run on random inputs
    of ``T`` steps (default 5) and batch ``B`` (default 3); ``packed`` (default False):
    random lengths; ``h0`` (default True): a random initial state. A :class:`Config`
    carries its own sizes and layout (passing ``T``, ``B``, ``packed`` or ``h0`` with one
    is an error) and gets fresh weights from ``seed`` (an int >= 0). ``checks`` picks from
    ``CHECKS``. Finite differences sample at most ``max_fd_elements`` per tensor;
    ``torch.autograd.gradcheck`` uses its fast mode above ``autograd_fast_above`` input
    elements. Returns a :class:`Report`; ``report.passed``. The caller's random state is
    left as it was.

    The copy computes every gradient, also of parameters the module has frozen, and keeps
    the hooks registered on its parameters and on the module (forward, forward pre- and
    full backward hooks; so a hook that changes an output or a gradient fails the check;
    the hooks run, on the copy's float64 tensors). Hooks that run after a gradient is
    accumulated into ``.grad`` (``register_post_accumulate_grad_hook``) are not part of
    the gradient autograd computes and are not checked. Parametrized weights are refused.
    A torch.nn.RNN subclass with its own ``forward`` is refused: the conversion would check
    fusedrnn's forward, not that one. Runs with gradients on whatever mode the caller is in
    (``no_grad``, ``inference_mode``). The meta device has no values to check: refused.
    """
    if isinstance(checks, str):
        checks = (checks,)
    if not isinstance(checks, Sequence) or not all(isinstance(c, str) for c in checks):
        raise ValueError(f"checks: expected a name or a sequence of names of {CHECKS}, "
                         f"got {checks!r}")  # fmt: skip
    if not checks:  # a report with nothing compared would pass
        raise ValueError(f"checks: expected at least one of {CHECKS}, got none")
    for name in checks:
        if name not in CHECKS:
            raise ValueError(f"checks: unknown check {name!r}, expected some of {CHECKS}")
    number = _int_or_none(max_fd_elements)
    if number is None or number < 1:  # 0 would pass the finite differences with nothing compared
        raise ValueError(f"max_fd_elements must be an int of at least 1, got {max_fd_elements!r}")
    max_fd_elements = number
    number = _int_or_none(autograd_fast_above)
    if number is None or number < 0:
        raise ValueError(f"autograd_fast_above must be an int >= 0, got {autograd_fast_above!r}")
    autograd_fast_above = number
    layout = {"T": T, "B": B, "packed": packed, "h0": h0}
    if isinstance(module_or_config, Config):
        given = [name for name, value in layout.items() if value is not None]
        if given:  # they would be ignored: the Config's own are checked
            raise ValueError(
                f"{', '.join(given)}: a Config carries its own; set them in it "
                f"(dataclasses.replace(config, {given[0]}=...))"
            )
    else:
        T = _positive_int("T", 5 if T is None else T)
        B = _positive_int("B", 3 if B is None else B)
        packed = False if packed is None else _bool("packed", packed)
        h0 = True if h0 is None else _bool("h0", h0)
    seed = _seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        return _check(module_or_config, checks, device, seed, T, B, packed, h0, max_fd_elements,
                      autograd_fast_above)  # fmt: skip


# Where nn.Module keeps the hooks registered on a module (torch 2.10 and on).
_MODULE_HOOK_ATTRIBUTES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
)


def _copy_with_hooks(module: nn.Module, hooks_of: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that holds the hooks registered on ``hooks_of`` (the
    caller's module: ``module`` itself, or the torch.nn.RNN it was converted from) as they
    are, not copies of them: a hook may hold what deepcopy cannot copy (a lock), and
    should run as registered."""
    memo = {}
    for name in _MODULE_HOOK_ATTRIBUTES:
        own, theirs = getattr(module, name, None), getattr(hooks_of, name, None)
        if isinstance(own, dict) and isinstance(theirs, dict):
            memo[id(own)] = copy.copy(theirs)  # deepcopy takes it as the copy of `own`
    copied = copy.deepcopy(module, memo)
    if hasattr(hooks_of, "_is_full_backward_hook"):
        copied._is_full_backward_hook = hooks_of._is_full_backward_hook
    return copied


def _checkable_device(device) -> torch.device:
    """``device`` if values can be computed there, else a ValueError that says why."""
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"device: the checks run on cpu or cuda, got {str(device)!r}")
    if device.type == "meta":
        raise ValueError("device: the meta device holds no values to check; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} requested but CUDA is not available")
    return device


def _check(module_or_config, checks, device, seed, T, B, packed, h0, max_fd_elements,
           autograd_fast_above) -> Report:  # fmt: skip
    if isinstance(module_or_config, Config):
        config = module_or_config
        device = _checkable_device("cpu" if device is None else device)
        module = config.module(device, seed)
        label = config.label
    elif isinstance(module_or_config, (RNN, nn.RNN)):
        source = module_or_config
        if torch.nn.utils.parametrize.is_parametrized(source):
            raise TypeError(
                "module_or_config: parametrized weights (torch.nn.utils.parametrize, e.g. "
                "weight_norm) are not supported: the reference composes the layers from the "
                "plain weight names; check the module without the parametrization"
            )
        if isinstance(source, nn.RNN):
            if type(source).forward is not nn.RNN.forward:
                raise TypeError(
                    f"module_or_config: a {type(source).__name__} (a torch.nn.RNN subclass with "
                    "its own forward) would be checked as the fusedrnn.RNN it converts to, "
                    "without that forward: pass a fusedrnn.RNN (or a subclass of it)"
                )
            source = RNN.from_torch(source)  # (a new module: no hooks)
        weight = source.weight_ih_l0
        _checkable_device(weight.device)  # (a meta module has no values to copy either)
        if weight.is_complex():  # (its float64 copy would drop the imaginary parts)
            raise TypeError(
                f"module_or_config: a module of dtype {weight.dtype}: fusedrnn.RNN runs real "
                "dtypes only (float32, float64, bfloat16, float16), so there is nothing to check"
            )
        device = _checkable_device(weight.device if device is None else device)
        for name, t in source.named_parameters():  # (the copy would read them, unchecked)
            if t.layout == torch.strided and _cuda.freed(t):
                raise ValueError(f"module_or_config: parameter {name}{_cuda.memory_problem(t)}")
        module = _copy_with_hooks(source, module_or_config).to(device=device, dtype=torch.float64)
        module.dropout = 0.0
        # The caller's parameters (a torch.nn.RNN's too: from_torch made new ones), in the
        # same order as the copy's.
        originals = module_or_config.parameters()
        for original, copied in zip(originals, module.parameters(), strict=True):
            copied.requires_grad_(True)  # frozen ones too: their gradients are checked
            for hook in (original._backward_hooks or {}).values():
                copied.register_hook(hook)  # (deepcopy and from_torch leave tensor hooks behind)
        config = _config_of(module, T, B, packed, h0)
        label = "module " + config.label
    else:
        raise TypeError(
            "module_or_config must be a fusedrnn.RNN, a torch.nn.RNN or a "
            f"fusedrnn.gradcheck.Config, got {type(module_or_config).__name__}"
        )

    problem = _Problem(module, config, seed, device)
    fused, out, hn = problem.fused_gradients()
    report = Report()
    found: list[tuple[str, list]] = []
    if "reference" in checks:
        found.append(("reference", _check_reference(problem, fused, out, hn)))
    if "finite-diff" in checks:
        rng = np.random.default_rng(seed + 1)
        found.append(
            ("finite-diff", _check_finite_differences(problem, fused, rng, max_fd_elements))
        )
    if "autograd" in checks:
        found.append(("autograd", _check_autograd(problem, autograd_fast_above)))
    if "forward-mode" in checks:
        rng = np.random.default_rng(seed + 2)
        found.append(("forward-mode", _check_forward_mode(problem, rng)))
    for check_name, rows in found:
        for name, max_abs, max_rel, passed, *note in rows:
            report.rows.append(
                Row(label, check_name, name, max_abs, max_rel, passed, note[0] if note else "")
            )
    return report


# ---- gradient flow ----------------------------------------------------------------------


def _flow_weights(nonlinearity: str, radius: float, I: int, H: int, rng: np.random.Generator):
    if nonlinearity == "tanh":
        q, r = np.linalg.qr(rng.standard_normal((H, H)))
        w_hh = radius * q * np.sign(np.diag(r))  # orthogonal: every singular value is radius
        # Weak inputs keep the states in tanh's near-linear range, so rho shows; for rho > 1
        # the states grow until tanh saturates, and saturation then caps the growth.
        w_ih = 0.01 * rng.uniform(-1, 1, (H, I)) / np.sqrt(I)
        return w_ih, w_hh, np.zeros(H)
    a = rng.uniform(0, 1, (H, H))
    w_hh = radius * a / np.max(np.abs(np.linalg.eigvals(a)))  # Perron root scaled to radius
    w_ih = rng.uniform(0, 1, (H, I)) / np.sqrt(I)
    return w_ih, w_hh, np.full(H, 0.1)


def gradient_flow(
    nonlinearity: str,
    radius: float,
    T: int = 200,
    H: int = 64,
    I: int = 8,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> np.ndarray:
    """``||dL/dh_t||`` for t = 0..T (``h_0`` the initial state), loss ``L = g . h_T``.

    One sequence through one layer; the BPTT runs in the fused kernel
    (``ops.rnn_layer_backward``). See the module docstring for the weights of each
    nonlinearity. ``dL/dh_t = dL/dP_{t+1} W_hh`` for t < T, where ``P`` is the
    pre-activation.
    """
    _check_nonlinearity(nonlinearity)
    number = radius if not isinstance(radius, bool) else None
    if not isinstance(number, (int, float, np.floating, np.integer)) or not 0 < number <= 10:
        # (as the command line's --radii: above 10 the norms leave float64 within steps)
        raise ValueError(f"radius must be a number in (0, 10], got {radius!r}")
    T, H, I = (_positive_int(name, v) for name, v in (("T", T), ("H", H), ("I", I)))
    seed = _seed(seed)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    device = _checkable_device(device)
    rng = np.random.default_rng(seed)
    w_ih, w_hh, b = _flow_weights(nonlinearity, float(radius), I, H, rng)
    x = rng.standard_normal((T, I)) if nonlinearity == "tanh" else rng.uniform(0, 1, (T, I))
    # relu: g >= 0 too, so that no step cancels in W_hh >= 0 (a g of mixed signs cut the
    # first step back by 4-16x whatever rho, and --seq 20 reported 1.0008 per step at
    # rho = 1.2); tanh's orthogonal W_hh keeps any g's norm.
    g = rng.standard_normal(H) if nonlinearity == "tanh" else rng.uniform(0, 1, H)
    g /= np.linalg.norm(g)

    def tensor(a: np.ndarray) -> Tensor:
        return torch.tensor(a, dtype=dtype, device=device)

    w_hh_t = tensor(w_hh)
    no_batch_sizes = torch.empty(0, dtype=torch.int64)
    h0 = tensor(np.zeros((1, H)))
    with torch.no_grad():
        h, _ = ops.rnn_layer_forward(
            tensor(x), tensor(w_ih), w_hh_t, tensor(b), None, h0, no_batch_sizes, False,
            nonlinearity,
        )  # fmt: skip
        grad_h = torch.zeros_like(h)
        grad_h[-1] = tensor(g)
        dP, dh0 = ops.rnn_layer_backward(
            w_hh_t, h, grad_h, torch.zeros_like(h0), no_batch_sizes, False, nonlinearity
        )
        dh = torch.cat([dh0, dP[1:] @ w_hh_t, grad_h[-1:]])  # [T + 1, H]: t = 0..T
    return _row_norms(dh.double())


def _row_norms(a: Tensor) -> np.ndarray:
    """The 2-norm of each row, scaled by the row's largest magnitude first: a plain norm
    squares the entries, so it gave 0 below ~1e-162 and inf above ~1e154, long before
    float64's limits (--seq 2000 at rho = 0.8 printed 0 for t = 0 and a factor of 0)."""
    scale = a.abs().amax(dim=1, keepdim=True)
    finite = torch.isfinite(scale) & (scale > 0)
    scale = torch.where(finite, scale, 1.0)
    norms = (a / scale).norm(dim=1) * scale[:, 0]
    # A row with an infinity (or NaN) keeps what the plain norm gives it: inf (or NaN).
    return torch.where(finite[:, 0], norms, a.norm(dim=1)).cpu().numpy()


def _flow_table(flows: dict[tuple[str, float], np.ndarray], T: int) -> str:
    offsets = [k for k in (0, 10, 50, 100) if k < T] + [T]
    headers = ["nonlinearity", "radius"] + [f"t={T - k}" for k in offsets] + ["factor/step"]
    rows = []
    for (nl, radius), norms in flows.items():
        with np.errstate(divide="ignore"):
            factor = (norms[0] / norms[T]) ** (1.0 / T) if norms[T] > 0 else math.nan
        rows.append(
            [nl, f"{radius:g}"] + [f"{norms[T - k]:.2e}" for k in offsets] + [f"{factor:.4f}"]
        )
    return _cli.format_table(headers, rows)


def _flow_plot(path: str, flows: dict[tuple[str, float], np.ndarray], T: int, H: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nonlinearities = list(dict.fromkeys(nl for nl, _ in flows))
    radii = sorted(dict.fromkeys(r for _, r in flows))
    cmap = plt.get_cmap("coolwarm")
    span = max(max(abs(r - 1.0) for r in radii), 1e-9)
    fig, axes = plt.subplots(
        1, len(nonlinearities), figsize=(6 * len(nonlinearities), 4.5), layout="constrained"
    )
    axes = np.atleast_1d(axes)
    titles = {
        "tanh": "tanh: $W_{hh} = \\rho\\,Q$, Q orthogonal; weak inputs",
        "relu": "relu: $W_{hh} \\geq 0$ with spectral radius $\\rho$, all units active",
    }
    for ax, nl in zip(axes, nonlinearities, strict=True):
        steps = np.arange(T + 1)
        for radius in radii:
            norms = flows[(nl, radius)]
            color = "black" if radius == 1.0 else cmap(0.5 + 0.5 * (radius - 1.0) / span)
            ax.semilogy(
                steps, np.maximum(norms, 1e-300), color=color, label=f"$\\rho$ = {radius:g}"
            )
        ax.set_title(titles.get(nl, nl), fontsize=10)
        ax.set_xlabel(f"step t (loss on the last step, t = {T})")
        ax.set_ylabel("$\\|\\partial L / \\partial h_t\\|$")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, title="spectral radius of $W_{hh}$", title_fontsize=8)
    fig.suptitle(
        f"fusedrnn gradient flow through BPTT (H = {H}): vanishing for $\\rho$ < 1, "
        "growing for $\\rho$ > 1 (tanh: until it saturates)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("grid", "each option takes one value or a list a,b")
    grid.add_argument(
        "--nonlinearity",
        type=_cli.choice_list(("tanh", "relu")),
        default=["tanh", "relu"],
        help="default: tanh,relu",
    )
    grid.add_argument(
        "--layout",
        type=_cli.choice_list(("padded", "packed")),
        default=["padded", "packed"],
        help="padded tensors or PackedSequence; default: padded,packed",
    )
    grid.add_argument(
        "--h0",
        type=_cli.choice_list(("yes", "no")),
        default=["yes", "no"],
        help="with an initial state h0 or without; default: yes,no",
    )
    grid.add_argument(
        "--layers",
        type=_cli.positive_int_list(8),
        help="layers; default: 1 layer one direction and 2 layers bidirectional",
    )
    grid.add_argument(
        "--directions",
        type=_cli.choice_list(("1", "2")),
        help="1, 2 (bidirectional) or 1,2; default: see --layers",
    )
    grid.add_argument(
        "--bias", type=_cli.choice_list(("yes", "no")), default=["yes"], help="default: yes"
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument(
        "--seq", type=_cli.positive_int(100_000), help="T (default 5; 200 with --flow)"
    )
    sizes.add_argument("--batch", type=_cli.positive_int(64), default=3, help="B (default 3)")
    sizes.add_argument("--input", type=_cli.positive_int(64), default=3, help="I (default 3)")
    sizes.add_argument(
        "--hidden", type=_cli.positive_int(4096), help="H (default 4; 64 with --flow)"
    )
    parser.add_argument(
        "--checks",
        type=_cli.choice_list(CHECKS),
        default=list(CHECKS),
        help="default: reference,finite-diff,autograd,forward-mode",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--seed", type=_cli.seed, default=0)
    _cli.add_max_hours(
        parser, _MAX_HOURS, "the estimate counts the checks' steps, or the flows' flops and weights"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print every row")
    parser.add_argument(
        "--json",
        type=_cli.output_file,
        metavar="FILE",
        help="write the report (or flow norms) as JSON",
    )
    flow = parser.add_argument_group("gradient flow")
    flow.add_argument(
        "--flow", action="store_true", help="measure ||dL/dh_t|| over a long sequence instead"
    )
    flow.add_argument(
        "--radii",
        type=_radii,
        default=[0.8, 0.9, 1.0, 1.1, 1.2],
        help="spectral radii of W_hh (default 0.8,0.9,1.0,1.1,1.2)",
    )
    flow.add_argument(
        "--plot",
        type=_cli.output_file,
        metavar="FILE.png",
        help="plot the norms (needs matplotlib)",
    )


def _radii(text: str) -> list[float]:
    values = [_cli.positive_float(part.strip()) for part in text.split(",")]
    for value in values:
        if value > 10:
            raise argparse.ArgumentTypeError(f"spectral radius {value} is too large (at most 10)")
    return list(dict.fromkeys(values))


def _device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    # bench's checks: a CPU index other than 0 and a GPU that is not there are refused too.
    return _cli.device(parser, name)


def _grid(args: argparse.Namespace) -> list[Config]:
    if args.layers is None and args.directions is None:
        shapes = [(1, False), (2, True)]
    else:
        shapes = [
            (layers, directions == "2")
            for layers in (args.layers or [1, 2])
            for directions in (args.directions or ["1", "2"])
        ]
    return [
        Config(
            nonlinearity=nl,
            packed=layout == "packed",
            h0=h0 == "yes",
            layers=layers,
            bidirectional=bi,
            bias=bias == "yes",
            T=args.seq or 5,
            B=args.batch,
            I=args.input,
            H=args.hidden or 4,
        )
        for nl, layout, h0, (layers, bi), bias in itertools.product(
            args.nonlinearity, args.layout, args.h0, shapes, args.bias
        )
    ]


# What the command line may ask of one run: about this many float64 flops (at the kernels'
# float64 rates, 10-200 GFLOP/s here, a few seconds to a quarter of an hour; a flow is one
# sequence, matrix-vector steps that stream W_hh from L3 once past L2, ~1-10 GFLOP/s, so
# it gets a tenth), and at most half of the machine's memory (as ``fusedrnn bench``).
_MAX_FLOPS = 1e13
_MAX_FLOW_FLOPS = 1e12


def _forward_flops(config: Config) -> float:
    """Multiply-adds x 2 of one forward pass of ``config``'s module (every layer-direction)."""
    D = 2 if config.bidirectional else 1
    total = 0.0
    for layer in range(config.layers):
        I = config.I if layer == 0 else D * config.H
        total += D * 2.0 * config.T * config.B * (I * config.H + config.H * config.H)
    return total


def _check_cost(config: Config, checks: Sequence[str]) -> tuple[float, float]:
    """``(flops, bytes)``, generous estimates of ``check(config, checks=...)``: the finite
    differences take 2 forward passes per sampled element (256 per tensor: the input, h0
    and each weight and bias), the other checks a few dozen passes between them; NumPy and
    torch each hold the input, the outputs, the states and their gradients a few times."""
    D = 2 if config.bidirectional else 1
    tensors = 2 + config.layers * D * (4 if config.bias else 2)
    passes = 40.0 + (2.0 * 256 * tensors if "finite-diff" in checks else 0.0)
    elements = config.T * config.B * (config.I + 2 * D * config.H * config.layers)
    elements += config.layers * D * config.H * (config.I + D * config.H + config.H + 2)
    return passes * _forward_flops(config), 8.0 * 8 * elements


# Time the flop count does not see, in seconds (measured on the 2-core hosts, session 28):
# the NumPy reference loops over each sequence's steps in Python (~47 us a step of one
# sequence of one layer-direction, forward and back, at H = 1), and a pass of the kernels
# takes ~0.3-2.5 us a step of a layer-direction at small sizes, however few its flops.
_REFERENCE_STEP_S = 5e-5
_KERNEL_STEP_S = 1e-6
_MAX_HOURS = 1.0  # --max-hours' default, for the whole grid (or all the flows)


def _check_seconds(config: Config, checks: Sequence[str]) -> float:
    """A rough estimate of the seconds ``check(config, checks=...)`` spends stepping (see
    _REFERENCE_STEP_S): what a long sequence of small layers costs where its flops are
    few. The finite differences take 2 passes per sampled element (at most 256 a tensor)."""
    D = 2 if config.bidirectional else 1
    steps = config.layers * D * config.T  # of one pass
    seconds = 0.0
    if "reference" in checks:
        seconds += steps * config.B * _REFERENCE_STEP_S
    passes = 40.0
    if "finite-diff" in checks:
        sizes = [config.T * config.B * config.I, config.layers * D * config.B * config.H]
        for layer in range(config.layers):
            I = config.I if layer == 0 else D * config.H
            per = [config.H * I, config.H * config.H] + [config.H] * (2 if config.bias else 0)
            sizes += per * D
        passes += 2.0 * sum(min(n, 256) for n in sizes)
    return seconds + passes * steps * _KERNEL_STEP_S


# A flow's time (--flow, under --max-hours as the grid's steps are): its flops at 1 GFLOP/s
# (measured here, float64 on 2 busy cores: 5.7-17 GFLOP/s at H = 256-1024), 3 passes of
# _KERNEL_STEP_S a step (0.3-0.8 us measured at H = 1), and its weights, made in NumPy
# before it runs, ~H^3 flops whatever T: relu's eigenvalues took 1.2 ns x H^3 (80 s at
# H = 4096), tanh's QR 0.3-0.5 ns x H^3 (31 s). The 1-TFLOP rule does not see them: 40
# flows at H = 4096 and T = 10 passed it (37 min by these times; estimated 1.5 h).
_FLOW_FLOPS_PER_S = 1e9
_FLOW_WEIGHTS_S_PER_H3 = 2e-9


def _flow_seconds(T: int, H: int, I: int) -> float:
    """A generous estimate of one :func:`gradient_flow`'s seconds (see _FLOW_FLOPS_PER_S)."""
    flops = 3 * 2.0 * T * (I * H + H * H)
    return flops / _FLOW_FLOPS_PER_S + 3 * T * _KERNEL_STEP_S + H**3 * _FLOW_WEIGHTS_S_PER_H3


def _refuse_costly(
    parser: argparse.ArgumentParser, what: str, flops: float, nbytes: float, lower: str,
    max_flops: float = _MAX_FLOPS,
) -> None:  # fmt: skip
    """A parser error where ``what`` would take more than half the memory or max_flops."""
    _cli.check_memory(parser, what, nbytes, lower)
    if flops > max_flops:
        parser.error(
            f"{what} needs about {flops / 1e12:.1f} TFLOP in float64, more than this command "
            f"runs ({max_flops / 1e12:.0f}): lower {lower}"
        )


def _run_flow(args: argparse.Namespace, parser: argparse.ArgumentParser, device) -> int:
    T, H = args.seq or 200, args.hidden or 64
    # Each flow: one sequence forward and back through the kernels, then dh = dP W_hh.
    nflows = len(args.nonlinearity) * len(args.radii)
    flops = nflows * 3 * 2.0 * T * (args.input * H + H * H)
    what = f"--flow ({nflows} flows of T = {T}, H = {H})"
    _refuse_costly(parser, what, flops, 8.0 * 8 * T * H, "--seq or --hidden", _MAX_FLOW_FLOPS)
    _cli.check_time(
        parser,
        f"{what} would take",
        nflows * _flow_seconds(T, H, args.input),
        args.max_hours * 3600,
        "estimated generously, as their flops at 1 GFLOP/s and their weights' eigenvalues "
        "or QR in NumPy, ~H^3 each",
        f"--max-hours {args.max_hours:g}",
        "--seq or --hidden, or fewer --radii or --nonlinearity, or raise --max-hours",
    )
    flows = {
        (nl, radius): gradient_flow(nl, radius, T, H, args.input, device=device, seed=args.seed)
        for nl in args.nonlinearity
        for radius in args.radii
    }
    saved = True  # the files first (see bench.run)
    if args.json:  # strict JSON: a norm that overflowed is null
        saved = _cli.save(
            "fusedrnn gradcheck",
            args.json,
            _cli.write_json,
            {
                "T": T,
                "H": H,
                "flows": [
                    {"nonlinearity": nl, "radius": r, "norms": norms.tolist()}
                    for (nl, r), norms in flows.items()
                ],
            },
            indent=None,
        )
    plotted = False
    if args.plot:
        plotted = _cli.save("fusedrnn gradcheck", args.plot, _flow_plot, flows, T, H)
        saved = saved and plotted
    print(f"||dL/dh_t|| with the loss on the last step t = T = {T}, H = {H}, fused BPTT kernel")
    print(_flow_table(flows, T))
    print("factor/step: (||dL/dh_0|| / ||dL/dh_T||)^(1/T), the mean shrink or growth per step")
    if plotted:
        print(f"plot written to {args.plot}")
    return 0 if saved else 1


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv=None) -> int:
    """Run the gradient checks (or ``--flow``) for parsed ``args``; return the exit status."""
    device = _device(parser, args.device)
    if args.plot:
        if not args.flow:
            parser.error("argument --plot: only with --flow")
        _cli.check_plot_file(parser, args.plot)
    _cli.check_distinct_outputs(parser, json=args.json, plot=args.plot)
    # An option the chosen mode does not use is an error, not silently ignored.
    if args.flow:
        for option in (
            "layout",
            "h0",
            "layers",
            "directions",
            "bias",
            "batch",
            "checks",
            "verbose",
        ):
            if getattr(args, option) != parser.get_default(option):
                parser.error(
                    f"argument --{option}: not used with --flow (it sets the gradient checks)"
                )
        return _run_flow(args, parser, device)
    if args.radii != parser.get_default("radii"):
        parser.error("argument --radii: only with --flow")

    configs = _grid(args)
    for config in configs:
        sizes = f"T = {config.T}, B = {config.B}, I = {config.I}, H = {config.H}"
        _refuse_costly(
            parser, f"configuration {config.label} ({sizes})", *_check_cost(config, args.checks),
            "--seq, --batch or --hidden (or leave finite-diff out of --checks)",
        )  # fmt: skip
    count = f"{len(configs)} configuration" + ("" if len(configs) == 1 else "s")
    _cli.check_time(
        parser,
        f"the {count} would step for",
        sum(_check_seconds(config, args.checks) for config in configs),
        args.max_hours * 3600,
        "long sequences: the NumPy reference steps each sequence in Python, the finite "
        "differences run the kernels some 1000 times",
        f"--max-hours {args.max_hours:g}",
        "--seq or --batch, or choose fewer configurations or --checks, or raise --max-hours",
    )
    print(
        f"fusedrnn gradcheck: {len(configs)} configurations on {device}, float64, "
        f"checks {', '.join(args.checks)}",
        flush=True,
    )
    report = Report()
    for config in configs:
        part = check(config, checks=args.checks, device=device, seed=args.seed)
        report.extend(part)
        if args.verbose:
            print(f"  {config.label}: {'pass' if part.passed else 'FAIL'}", flush=True)
    # The file first (see bench.run).
    saved = not args.json or _cli.save(
        "fusedrnn gradcheck", args.json, _cli.write_json, report.to_dict()
    )
    print(report.format(verbose=args.verbose))
    return 0 if report.passed and saved else 1
