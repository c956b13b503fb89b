"""Property-based fuzzing of the public API, run as a subprocess by test_fuzz.py.

Random valid and invalid arguments go through ``fusedrnn.ops.rnn_layer`` and
``fusedrnn.RNN``. Every call must either return a finite-shaped result or raise a Python
exception of an expected type; a crash (segfault, abort) kills this process, which the
parent test reports as a failure. Valid module calls must also match ``torch.nn.RNN``, and
so must their derivatives (torch.func.grad, double backward, forward mode) on random
configurations.
"""

from __future__ import annotations

import sys

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops

EXPECTED = (ValueError, TypeError, RuntimeError)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int32, torch.complex64]
SETTINGS = settings(
    max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _tensor(draw, shape, dtype):
    t = (
        torch.randn(shape, dtype=torch.float64).to(dtype)
        if dtype.is_floating_point or dtype.is_complex
        else torch.randint(-3, 3, shape, dtype=dtype)
    )
    layout = draw(st.sampled_from(["contiguous", "transposed", "expanded"]))
    if layout == "transposed" and t.dim() == 2:
        t = t.t().contiguous().t()
    elif layout == "expanded" and t.dim() >= 1 and t.shape[0] == 1:
        t = t.expand(draw(st.integers(1, 3)), *t.shape[1:])
    return t


@st.composite
def layer_calls(draw):
    small = st.integers(0, 5)
    T, B, I, H = draw(small), draw(small), draw(small), draw(small)
    dtype = draw(st.sampled_from(DTYPES))

    def shape(*dims):
        # Mostly right, sometimes off by one in one dimension, sometimes the wrong rank.
        kind = draw(st.sampled_from(["ok"] * 6 + ["off", "rank"]))
        dims = list(dims)
        if kind == "off" and dims:
            i = draw(st.integers(0, len(dims) - 1))
            dims[i] = max(0, dims[i] + draw(st.sampled_from([-1, 1])))
        elif kind == "rank":
            dims = [*dims, 1] if draw(st.booleans()) else dims[:-1]
        return dims

    packed = draw(st.booleans())
    if packed:
        sizes = draw(st.lists(st.integers(-1, 6), min_size=0, max_size=6))
        if draw(st.booleans()):
            sizes = sorted((max(1, s) for s in sizes), reverse=True)
        batch_sizes = torch.tensor(sizes, dtype=draw(st.sampled_from([torch.int64, torch.int32])))
        N = max(0, sum(sizes)) if draw(st.booleans()) else draw(small)
    else:
        batch_sizes = torch.empty(0, dtype=torch.int64)
        N = T * B
    other = draw(st.sampled_from([dtype] * 5 + DTYPES))
    args = dict(
        x=_tensor(draw, shape(N, I), dtype),
        w_ih=_tensor(draw, shape(H, I), other),
        w_hh=_tensor(draw, shape(H, H), dtype),
        b_ih=draw(st.none() | st.just(1)),
        b_hh=draw(st.none() | st.just(1)),
        h0=_tensor(
            draw, shape(max(0, int(batch_sizes[0])) if packed and len(batch_sizes) else B, H), dtype
        ),
        batch_sizes=batch_sizes,
        reverse=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu", "gelu"])),
    )
    for name in ("b_ih", "b_hh"):
        if args[name] is not None:
            args[name] = _tensor(draw, shape(H), dtype)
    if draw(st.integers(0, 20)) == 0:
        args[draw(st.sampled_from(["x", "w_hh", "h0"]))] = [1.0, 2.0]
    return args


@SETTINGS
@given(layer_calls())
def test_layer_op_never_crashes(args):
    try:
        h, hn = ops.rnn_layer(**args)
    except EXPECTED as exc:
        assert str(exc).startswith("fusedrnn:"), f"unnamed error: {exc!r}"
        return
    assert h.shape == (args["x"].shape[0], args["w_hh"].shape[0])
    assert hn.shape == args["h0"].shape


def _module_config(draw, max_input: int, max_layers: int) -> dict:
    """Random valid ``torch.nn.RNN`` constructor arguments."""
    return dict(
        input_size=draw(st.integers(1, max_input)),
        hidden_size=draw(st.integers(1, 4)),
        num_layers=draw(st.integers(1, max_layers)),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )


@st.composite
def module_calls(draw):
    config = _module_config(draw, max_input=4, max_layers=3)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    input_dtype = draw(st.sampled_from([dtype] * 6 + DTYPES))
    T, B = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    I = config["input_size"] + draw(st.sampled_from([0] * 6 + [-1, 1]))
    rank = draw(st.sampled_from([3] * 6 + [2, 4]))
    dims = {2: (T, I), 3: (B, T, I) if config["batch_first"] else (T, B, I), 4: (1, T, B, I)}
    x = torch.randn(dims[rank], dtype=torch.float64).to(input_dtype)
    D = 2 if config["bidirectional"] else 1
    hx = None
    if draw(st.booleans()):
        L = config["num_layers"] * D + draw(st.sampled_from([0] * 6 + [1]))
        hdims = (L, config["hidden_size"]) if rank == 2 else (L, B, config["hidden_size"])
        hx = torch.randn(hdims, dtype=dtype)
    lengths = None
    if rank == 3 and draw(st.booleans()):
        lengths = torch.tensor(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    return config, dtype, x, hx, lengths


@SETTINGS
@given(module_calls())
def test_module_matches_nn_rnn_or_both_raise(case):
    config, dtype, x, hx, lengths = case
    torch.manual_seed(0)
    ref = torch.nn.RNN(**config, dtype=dtype)
    ours = fusedrnn.RNN(**config, dtype=dtype)
    ours.load_state_dict(ref.state_dict())

    def run(module):
        inp = x
        if lengths is not None:
            inp = pack_padded_sequence(x, lengths, config["batch_first"], enforce_sorted=False)
        out, hn = module(inp) if hx is None else module(inp, hx)
        return (out.data if lengths is not None else out), hn

    try:
        want = run(ref)
    except Exception as exc:  # nn.RNN's verdict decides what ours must do
        want = exc
    try:
        got = run(ours)
    except EXPECTED as exc:
        assert isinstance(want, Exception), f"fusedrnn raised {exc!r}, nn.RNN did not"
        return
    assert not isinstance(want, Exception), f"nn.RNN raised {want!r}, fusedrnn did not"
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


@st.composite
def derivative_cases(draw):
    config = _module_config(draw, max_input=3, max_layers=2)
    T, B = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    I, H = config["input_size"], config["hidden_size"]
    x = torch.randn((B, T, I) if config["batch_first"] else (T, B, I), dtype=torch.float64)
    L = config["num_layers"] * (2 if config["bidirectional"] else 1)
    hx = torch.randn(L, B, H, dtype=torch.float64) if draw(st.booleans()) else None
    lengths = None
    if draw(st.booleans()):
        lengths = torch.tensor(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    return config, x, hx, lengths


@settings(SETTINGS, max_examples=max(10, SETTINGS.max_examples // 4))
@given(derivative_cases())
def test_derivatives_match_nn_rnn(case):
    """First and second derivatives through torch.func and create_graph, against nn.RNN in
    float64 (forward mode on padded input only: nn.RNN has none for packed input)."""
    from torch.func import functional_call, grad, jvp

    config, x, hx, lengths = case
    torch.manual_seed(0)
    ref = torch.nn.RNN(**config, dtype=torch.float64)
    ours = fusedrnn.RNN(**config, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    params = {k: v.detach() for k, v in ref.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}

    def outputs(module, p, a):
        if lengths is not None:
            a = pack_padded_sequence(a, lengths, config["batch_first"], enforce_sorted=False)
        args = (a,) if hx is None else (a, hx)
        out, hn = functional_call(module, p, args)
        return (out.data if lengths is not None else out), hn

    def loss(module, p, a):
        out, hn = outputs(module, p, a)
        return out.square().sum() + hn.sum()

    results = []
    for module in (ref, ours):
        if module is ours:
            got = [*grad(lambda p, m=module: loss(m, p, x))(params).values()]
        else:  # nn.RNN under torch.func fails on packed input: plain autograd for it
            leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
            got = [*torch.autograd.grad(loss(module, leaves, x), list(leaves.values()))]
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(loss(module, params, xr), xr, create_graph=True)
        got += torch.autograd.grad(gx.square().sum(), xr)
        if lengths is None:
            got += jvp(lambda p, m=module: outputs(m, p, x), (params,), (tangents,))[1]
        results.append(got)
    for a, b in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


if __name__ == "__main__":
    test_layer_op_never_crashes()
    test_module_matches_nn_rnn_or_both_raise()
    test_derivatives_match_nn_rnn()
    print("fuzz ok")
