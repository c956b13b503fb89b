"""``fusedrnn.gradcheck``: the four checks, the report, deliberate failures, gradient flow."""

from __future__ import annotations

import ctypes
import json
import threading

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import gradcheck, ops
from fusedrnn.__main__ import main
from fusedrnn.gradcheck import Config, check, gradient_flow, reference_gradients

# One layer-direction of each kind with every gradient, and the layer/direction composition.
SMALL = ["--layers", "1", "--directions", "1", "--nonlinearity", "tanh", "--layout", "padded"]


def _gradient_names(module) -> set[str]:
    return {"input", "h0", *(name for name, _ in module.named_parameters())}


@pytest.mark.parametrize(
    "config",
    [
        Config(nonlinearity="relu", packed=True, h0=True, layers=2, bidirectional=True),
        Config(nonlinearity="tanh", packed=False, h0=False, bias=False, T=6, B=2, I=2, H=5),
    ],
    ids=lambda c: c.label,
)
def test_check_config_passes_and_covers_every_gradient(config):
    report = check(config)
    assert report.passed, report.format(verbose=True)
    names = _gradient_names(config.module()) - ({"h0"} if not config.h0 else set())
    for name in gradcheck.CHECKS:
        rows = {r.gradient for r in report.rows if r.check == name}
        expected = names | ({"output", "h_n"} if name == "reference" else set())
        assert rows == expected, name
    as_dict = report.to_dict()
    assert as_dict["passed"] and len(as_dict["rows"]) == len(report.rows)


def test_check_user_modules():
    """A user's fusedrnn.RNN (batch_first, dropout) or torch.nn.RNN, checked as it is."""
    torch.manual_seed(1)
    module = fusedrnn.RNN(3, 4, num_layers=2, dropout=0.5, batch_first=True)
    report = check(module, packed=True, T=4, B=2)
    assert report.passed, report.format(verbose=True)
    assert {r.config for r in report.rows} == {"module tanh packed h0 L2 uni batch-first"}
    assert module.weight_ih_l0.dtype == torch.float32  # the user's module is left alone
    assert check(torch.nn.RNN(2, 3, nonlinearity="relu"), checks=["reference"]).passed
    # A parameter that is not contiguous (a transposed W_hh): the finite differences
    # perturbed a flat view of it, which such a tensor has none of (a raw RuntimeError).
    module = fusedrnn.RNN(4, 4)
    module.weight_hh_l0 = torch.nn.Parameter(module.weight_hh_l0.detach().clone().t())
    assert not module.weight_hh_l0.is_contiguous()
    report = check(module, checks=["finite-diff"])
    assert report.passed, report.format(verbose=True)


def test_check_rejects_what_it_cannot_check():
    with pytest.raises(TypeError, match=r"module_or_config must be a fusedrnn\.RNN"):
        check(torch.nn.GRU(2, 3))
    with pytest.raises(ValueError, match="unknown check 'vibes'"):
        check(Config(), checks=["vibes"])
    with pytest.raises(ValueError, match="max_fd_elements must be an int of at least 1, got 0"):
        check(Config(), max_fd_elements=0)  # passed with nothing compared
    with pytest.raises(ValueError, match="checks: expected at least one"):
        check(Config(), checks=[])  # passed with nothing compared
    with pytest.raises(ValueError, match="B must be a positive int, got 0"):
        check(fusedrnn.RNN(2, 3), B=0)  # was a NumPy reshape error

    class ShiftedRNN(torch.nn.RNN):  # its own forward: the conversion would drop it
        def forward(self, x, hx=None):
            out, hn = super().forward(x, hx)
            return out + 1e-3, hn

    with pytest.raises(TypeError, match=r"ShiftedRNN .* its own forward"):
        check(ShiftedRNN(2, 3))
    # Found by a review of the harness (session 20): each was ignored or failed unclearly.
    with pytest.raises(ValueError, match=r"T, packed: a Config carries its own"):
        check(Config(), T=9, packed=True)  # were silently ignored
    with pytest.raises(ValueError, match="B must be a positive int, got 0"):
        Config(B=0)  # was a NumPy reshape error in the reference
    with pytest.raises(ValueError, match="T must be a positive int, got True"):
        check(fusedrnn.RNN(2, 3), T=True)
    with pytest.raises(ValueError, match=r"seed must be an int in 0\.\.2\*\*63-1, got -1"):
        check(Config(), seed=-1)  # was NumPy's message, naming no argument
    # Yes/no settings take bools only (session 29: 'no' was True, so packed='no' checked
    # the packed layout, and Config(bidirectional='False') a bidirectional module).
    with pytest.raises(TypeError, match="packed must be a bool, got 'no'"):
        check(fusedrnn.RNN(2, 3), packed="no")
    for name in ("packed", "h0", "bidirectional", "bias", "batch_first"):
        with pytest.raises(TypeError, match=f"{name} must be a bool, got 'False'"):
            Config(**{name: "False"})
    # ... and the other arguments by name (torch's, NumPy's or Python's errors before).
    for kwargs, match in [
        (dict(device="gpu"), "device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        (dict(device=[0]), r"device: expected 'cpu', 'cuda' or 'cuda:N', got \[0\]"),
        (dict(device="mps"), "device: the checks run on cpu or cuda, got 'mps'"),
        (dict(max_fd_elements="10"), "max_fd_elements must be an int of at least 1, got '10'"),
        (dict(max_fd_elements=True), "max_fd_elements must be an int of at least 1, got True"),
        (dict(autograd_fast_above=None), "autograd_fast_above must be an int >= 0, got None"),
        (dict(checks=5), "checks: expected a name or a sequence of names"),
    ]:
        with pytest.raises(ValueError, match=match):
            check(Config(T=2, B=1), **kwargs)
    for meta in (fusedrnn.RNN(2, 3, device="meta"), torch.nn.RNN(2, 3, device="meta")):
        with pytest.raises(ValueError, match="the meta device holds no values"):
            check(meta)  # was "Cannot copy out of meta tensor" after the passes
    with pytest.raises(ValueError, match="the meta device holds no values"):
        check(fusedrnn.RNN(2, 3), device="meta")
    with pytest.raises(ValueError, match="the meta device holds no values"):
        check(fusedrnn.RNN(2, 3, device="meta"), device="cpu")
    for complex_module in (
        fusedrnn.RNN(2, 3, dtype=torch.complex64),
        torch.nn.RNN(2, 3, dtype=torch.complex128),
    ):  # a pass, on a float64 copy without the imaginary parts, before session 25
        with pytest.raises(TypeError, match=r"a module of dtype torch.complex.*real dtypes only"):
            check(complex_module)


def test_check_names_a_parameter_whose_storage_was_shrunk():
    """The check copies the module it is given: a parameter whose storage was shrunk was
    read past its end by that copy, and the check failed on the garbage instead of naming
    it (a helper's review, session 32)."""
    m = fusedrnn.RNN(8, 64)
    m.weight_hh_l0.data.untyped_storage().resize_(4)
    with pytest.raises(ValueError, match="parameter weight_hh_l0's storage holds 4 bytes"):
        check(m)


def test_check_sees_frozen_weights_hooks_and_any_grad_mode():
    """Found by an audit: a frozen parameter failed a correct module (its float64 copy had
    no gradient to compare); a hook on a parameter that changes its gradient passed (deepcopy
    drops tensor hooks); under no_grad the check raised. And a Config leaves the caller's
    random state alone."""
    frozen = fusedrnn.RNN(3, 4, num_layers=2)
    frozen.weight_ih_l0.requires_grad_(False)
    frozen.bias_hh_l1.requires_grad_(False)
    assert check(frozen, checks="reference").passed  # one name for one check
    for hooked in (fusedrnn.RNN(3, 4), torch.nn.RNN(3, 4)):  # (from_torch makes new ones)
        hooked.weight_hh_l0.register_hook(lambda g: g * 1.01)
        report = check(hooked, checks=["reference"], T=np.int64(3))  # NumPy sizes are taken
        assert not report.passed
        assert {r.gradient for r in report.rows if not r.passed} == {"weight_hh_l0"}
    normed = fusedrnn.RNN(3, 4)
    torch.nn.utils.parametrizations.weight_norm(normed, "weight_hh_l0")
    with pytest.raises(TypeError, match=r"parametrized weights .* are not supported"):
        check(normed)  # (was an IndexError from the reference)
    with torch.no_grad():
        assert check(fusedrnn.RNN(3, 4), checks=["reference"]).passed
    for checked in (Config(), torch.nn.RNN(3, 4)):  # (a torch.nn.RNN's conversion drew)
        torch.manual_seed(5)
        want = torch.rand(3)
        torch.manual_seed(5)
        check(checked, checks=["reference"])
        assert torch.equal(torch.rand(3), want)


def test_check_keeps_the_module_hooks_of_a_torch_rnn_too():
    """A hook on the module that changes its output, input or gradients fails the check,
    for a torch.nn.RNN as for a fusedrnn.RNN (its conversion dropped them up to session
    19, so such a module passed)."""

    def twice(x):
        return None if x is None else 2 * x

    hooks = {
        "forward": lambda m: m.register_forward_hook(lambda mod, i, out: (twice(out[0]), out[1])),
        "forward_pre": lambda m: m.register_forward_pre_hook(lambda mod, i: (twice(i[0]), *i[1:])),
        "full_backward": lambda m: m.register_full_backward_hook(
            lambda mod, grad_in, grad_out: tuple(twice(g) for g in grad_in)
        ),
    }
    for kind, register in hooks.items():
        for cls in (torch.nn.RNN, fusedrnn.RNN):
            module = cls(3, 4)
            register(module)
            assert not check(module, checks=["reference"]).passed, (kind, cls)
            assert check(cls(3, 4), checks=["reference"]).passed

    class Counter:  # a hook that deepcopy cannot copy: it is kept as it is, and runs
        def __init__(self):
            self.lock, self.calls = threading.Lock(), 0

        def hook(self, module, inputs, output):
            with self.lock:
                self.calls += 1

    for cls in (torch.nn.RNN, fusedrnn.RNN):
        counter = Counter()
        module = cls(3, 4)
        module.register_forward_hook(counter.hook)
        assert check(module, checks=["reference"]).passed and counter.calls > 0


def test_reference_composition_matches_nn_rnn():
    """The NumPy composition over layers, directions and packed sequences is itself right."""
    config = Config(nonlinearity="tanh", packed=True, layers=2, bidirectional=True, T=5, B=3)
    torch.manual_seed(0)
    module = torch.nn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64)
    rng = np.random.default_rng(0)
    lengths = np.array([3, 5, 1])
    x = torch.tensor(rng.standard_normal((5, 3, 3)), requires_grad=True)
    h0 = torch.tensor(rng.standard_normal((4, 3, 4)), requires_grad=True)
    g_out = rng.standard_normal((5, 3, 8)) * (np.arange(5)[:, None] < lengths)[..., None]
    g_hn = rng.standard_normal((4, 3, 4))
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out, hn = module(packed, h0)
    out, _ = pad_packed_sequence(out, total_length=5)
    ((out * torch.tensor(g_out)).sum() + (hn * torch.tensor(g_hn)).sum()).backward()

    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    grads, ref_out, ref_hn = reference_gradients(
        params, config, x.detach().numpy(), h0.detach().numpy(), lengths, g_out, g_hn
    )
    np.testing.assert_allclose(ref_out, out.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref_hn, hn.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["input"], x.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["h0"], h0.grad.numpy(), rtol=0, atol=1e-12)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=0, atol=1e-12)


def test_cli_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "report.json"
    assert main(["gradcheck", *SMALL, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gradcheck PASSED" in out
    for column in ("reference abs", "reference rel", "finite-diff abs", "autograd", "verdict"):
        assert column in out
    report = json.loads(path.read_text())
    assert report["passed"] and {r["check"] for r in report["rows"]} == set(gradcheck.CHECKS)


def _scaled_weight_hh_grad(monkeypatch):
    """dW_hh off by 1 %: where ops.py collects the CPU kernels' gradients."""
    grads_impl = ops._grads_impl

    def scaled(*args):
        dx, dw_ih, dw_hh, db, dh0 = grads_impl(*args)
        return dx, dw_ih, dw_hh * 1.01, db, dh0

    monkeypatch.setattr(ops, "_grads_impl", scaled)
    return "weight_hh_l0", REVERSE_MODE


def _zeroed_dh0_in_the_kernel(monkeypatch):
    """The BPTT kernel itself returns dL/dh0 = 0: patched at the binding, below ops.py."""
    backward = fusedrnn._C.layer_backward  # the CPU backward: BPTT + gradient GEMMs

    def broken(dtype, T, B, H, *args):
        backward(dtype, T, B, H, *args)
        # The arguments end with (..., dP, dh0, dx, dx_accumulate, dw_ih, dw_hh, db, threads).
        assert isinstance(args[-5], bool)
        dh0_address = args[-7]  # 0 where no dL/dh0 was asked for
        if dh0_address:
            ctypes.memset(dh0_address, 0, B * H * (8 if dtype == "float64" else 4))

    monkeypatch.setattr(fusedrnn._C, "layer_backward", broken)
    return "h0", REVERSE_MODE


def _dropped_weight_hh_tangent(monkeypatch):
    """The forward-mode rule ignores the tangent of W_hh: only forward mode can see it."""
    jvp = ops._FuncLayer.jvp

    def broken(ctx, dx, dw_ih, dw_hh, *rest):
        return jvp(ctx, dx, dw_ih, None, *rest)

    monkeypatch.setattr(ops._FuncLayer, "jvp", staticmethod(broken))
    return "weight_hh_l0", ("forward-mode",)


REVERSE_MODE = ("reference", "finite-diff", "autograd")


@pytest.mark.parametrize(
    "breakage", [_scaled_weight_hh_grad, _zeroed_dh0_in_the_kernel, _dropped_weight_hh_tangent]
)
def test_cli_fails_on_a_broken_backward_and_shows_the_row(breakage, monkeypatch, capsys):
    gradient, checks = breakage(monkeypatch)
    assert main(["gradcheck", *SMALL, "--h0", "yes"]) == 1
    out = capsys.readouterr().out
    assert "gradcheck FAILED" in out
    table = out.split("failing rows:")[1].split("gradcheck FAILED")[0]
    failing = [line for line in table.splitlines() if line.startswith("tanh padded h0")]
    assert failing
    assert {name for name in gradcheck.CHECKS if any(f" {name} " in r for r in failing)} == set(
        checks
    )
    for name in checks:
        row = next(line for line in failing if f" {name} " in line)
        assert row.split()[-1] == "FAIL" or "FAIL (" in row
        assert f" {gradient} " in row
    # Only the broken gradient fails.
    assert all(f" {gradient} " in line for line in failing)


def test_flow_decays_below_and_grows_above_radius_one():
    T = 100
    for radius in (0.8, 0.9):
        relu = gradient_flow("relu", radius, T=T, H=16)
        assert relu[0] < relu[T] * radius ** (T / 2)
        tanh = gradient_flow("tanh", radius, T=T, H=16)
        # Orthogonal W_hh scaled by radius and tanh' <= 1: at least radius per step.
        steps = T - np.arange(T + 1)
        assert np.all(tanh <= tanh[T] * radius**steps * (1 + 1e-9))
    for radius in (1.1, 1.2):
        relu = gradient_flow("relu", radius, T=T, H=16)
        assert relu[0] > relu[T] * radius ** (T / 2)
        assert np.all(np.diff(relu[: T - 5]) < 0)  # grows at every step back from the end
        tanh = gradient_flow("tanh", radius, T=T, H=16)
        assert tanh[0] > tanh[T]
    # In relu's linear regime the mean factor per step is the spectral radius, from the
    # first step on (a start of mixed signs cut the first step by 4-16x: at T = 20, 1.2
    # read 1.0008 per step).
    for radius in (0.9, 1.0, 1.1, 1.2):
        for T in (20, 400):
            relu = gradient_flow("relu", radius, T=T, H=16)
            assert (relu[0] / relu[-1]) ** (1 / T) == pytest.approx(radius, rel=0.01)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_flow_norms_span_float64s_range(nonlinearity):
    """Norms far below 1e-162 (or above 1e154) are not squared to 0 (or inf): at T = 2000
    and rho = 0.8, ||dL/dh_0|| ~ 1e-194 read 0, and the factor per step 0."""
    norms = gradient_flow(nonlinearity, 0.8, T=2000, H=16)
    assert np.all(norms > 0)
    assert (norms[0] / norms[-1]) ** (1 / 2000) == pytest.approx(0.8, rel=1e-3)
    norms = gradient_flow("relu", 1.5, T=1000, H=16)  # ~1e176 at t = 0: still finite
    assert np.all(np.isfinite(norms))
    assert (norms[0] / norms[-1]) ** (1 / 1000) == pytest.approx(1.5, rel=1e-3)


def test_flow_names_a_bad_argument():
    """gradient_flow (public) checks its arguments as the command line's --flow does: a NaN
    or negative radius returned meaningless norms, T = 0 named an internal variable, H = 0
    gave an IndexError (session 29, a helper's review)."""
    for kwargs, match in [
        (dict(radius=float("nan")), r"radius must be a number in \(0, 10\], got nan"),
        (dict(radius=-1.0), r"radius must be a number in \(0, 10\], got -1.0"),
        (dict(T=0), "T must be a positive int, got 0"),
        (dict(H=0), "H must be a positive int, got 0"),
        (dict(I=2.5), "I must be a positive int, got 2.5"),
        (dict(seed=-1), "seed must be an int in 0..2"),
        (dict(nonlinearity="gelu"), "nonlinearity: expected 'tanh' or 'relu', got 'gelu'"),
        (dict(dtype=torch.float16), "dtype must be torch.float32 or torch.float64"),
        (dict(device="meta"), "device: the meta device holds no values"),
    ]:
        args = {"nonlinearity": "tanh", "radius": 0.9, "T": 3, "H": 2, **kwargs}
        with pytest.raises(ValueError, match=match):
            gradient_flow(**args)


def test_cli_flow_prints_norms_and_plots(tmp_path, capsys):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    png, path = tmp_path / "flow.png", tmp_path / "flow.json"
    argv = ["gradcheck", "--flow", "--seq", "60", "--hidden", "8", "--radii", "0.9,1.1"]
    assert main([*argv, "--plot", str(png), "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "factor/step" in out and "t=60" in out and "t=0" in out
    flows = json.loads(path.read_text())["flows"]
    assert {(f["nonlinearity"], f["radius"]) for f in flows} == {
        (nl, r) for nl in ("tanh", "relu") for r in (0.9, 1.1)
    }
    assert all(len(f["norms"]) == 61 for f in flows)
    image = matplotlib_image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.cuda
def test_check_on_cuda():
    pytest.importorskip("fusedrnn._C_cuda", reason="fusedrnn was built without CUDA kernels")
    config = Config(nonlinearity="relu", packed=True, layers=2, bidirectional=True)
    report = check(config, device="cuda")
    assert report.passed, report.format(verbose=True)
    # The flow through the CUDA BPTT is the CPU's, and grows as it does there (T = 100: the
    # growth bound of test_flow_decays_below_and_grows_above_radius_one).
    norms = gradient_flow("relu", 1.1, T=100, H=16, device="cuda")
    np.testing.assert_allclose(norms, gradient_flow("relu", 1.1, T=100, H=16), rtol=1e-9)
    assert norms[0] > norms[-1] * 1.1**50
