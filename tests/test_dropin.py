"""fusedrnn.RNN and fusedrnn.RNNCell as drop-ins for torch.nn.RNN and torch.nn.RNNCell.

Every comparison runs torch's module and ours side by side on the same weights and
inputs and compares outputs, h_n and the gradients of a random projection of both with
respect to the input, hx and every parameter.
"""

from __future__ import annotations

import copy
import gc
import io
import itertools
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import weakref
import zlib
from contextlib import nullcontext
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import fusedrnn

f32, f64 = torch.float32, torch.float64
_META = torch.device("meta")
# float64 is the exact check. float32 compares two float32 implementations whose sums run
# in different orders: over 200 random 3-layer models (test_float32_accuracy_* below) each
# one's gradients are up to ~1e-5 from the float64 truth, so they may differ by twice that.
TOL = {f32: dict(rtol=1e-5, atol=2e-5), f64: dict(rtol=1e-12, atol=1e-13)}


def _rnn_pair(dtype=f64, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.RNN(dtype=dtype, **kwargs)
    return ref, fusedrnn.RNN.from_torch(ref)


def _cell_pair(dtype=f64, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.RNNCell(dtype=dtype, **kwargs)
    return ref, fusedrnn.RNNCell.from_torch(ref)


def _data(out):
    return out.data if isinstance(out, PackedSequence) else out


def _loss(outputs, seed=7):
    """A random projection of every output: each element gets its own gradient."""
    g = torch.Generator().manual_seed(seed)
    return sum(
        (_data(o).double() * torch.randn(_data(o).shape, generator=g, dtype=f64)).sum()
        for o in outputs
    )


def _run(module, make_args, inputs):
    """Outputs of ``module(*make_args())`` and the gradients w.r.t. inputs and parameters."""
    outputs = module(*make_args())
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    wrt = [*inputs, *module.parameters()]
    return outputs, torch.autograd.grad(_loss(outputs), wrt)


def assert_same_results(ref, ours, make_args, inputs, tol):
    """torch's module and ours give the same outputs and gradients."""
    (want, want_grads), (got, got_grads) = (_run(m, make_args, inputs) for m in (ref, ours))
    for w, g in zip(want, got, strict=True):
        assert type(g) is type(w)
        if isinstance(w, PackedSequence):
            for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
                a, b = getattr(g, field), getattr(w, field)
                assert (a is None and b is None) or torch.equal(a, b), field
        assert _data(g).dtype == _data(w).dtype
        torch.testing.assert_close(_data(g), _data(w), **tol)
    names = [f"input{i}" for i in range(len(inputs))] + [n for n, _ in ref.named_parameters()]
    for name, w, g in zip(names, want_grads, got_grads, strict=True):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


# The acceptance suite: 3 x 2^5 x 3 x 2 = 576 tiny cases.
LENGTHS = {"padded": None, "packed_sorted": [5, 3, 3, 1], "packed_unsorted": [3, 1, 5, 3]}


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", list(LENGTHS))
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["TB", "BT"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"L{n}")
def test_rnn_matches_nn_rnn(
    num_layers, bidirectional, batch_first, bias, nonlinearity, with_hx, layout, dtype
):
    T, B, I, H = 5, 4, 3, 4
    key = (num_layers, bidirectional, batch_first, bias, nonlinearity, with_hx, layout)
    seed = zlib.crc32(repr(key).encode())  # fresh data per case, the same every run
    ref, ours = _rnn_pair(
        dtype,
        seed,
        input_size=I,
        hidden_size=H,
        num_layers=num_layers,
        nonlinearity=nonlinearity,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
    )
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, requires_grad=True)
    hx = torch.randn(num_layers * (2 if bidirectional else 1), B, H, dtype=dtype)
    hx.requires_grad_(True)
    lengths = LENGTHS[layout]

    def make_args():
        input = x
        if lengths is not None:
            input = pack_padded_sequence(
                x, torch.tensor(lengths), batch_first, enforce_sorted=layout == "packed_sorted"
            )
        return (input, hx) if with_hx else (input,)

    assert_same_results(ref, ours, make_args, [x, hx] if with_hx else [x], TOL[dtype])


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize(("T", "B"), [(1, 3), (4, 1), (1, 1)], ids=["T1", "B1", "T1_B1"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_rnn_single_step_and_single_sequence(T, B, bidirectional, dtype):
    ref, ours = _rnn_pair(
        dtype, input_size=3, hidden_size=5, num_layers=2, bidirectional=bidirectional
    )
    x = torch.randn(T, B, 3, dtype=dtype, requires_grad=True)
    hx = torch.randn(4 if bidirectional else 2, B, 5, dtype=dtype, requires_grad=True)
    assert_same_results(ref, ours, lambda: (x, hx), [x, hx], TOL[dtype])


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["TB", "BT"])
def test_rnn_unbatched_input(batch_first, with_hx):
    ref, ours = _rnn_pair(
        input_size=2, hidden_size=3, num_layers=2, bidirectional=True, batch_first=batch_first
    )
    x = torch.randn(5, 2, dtype=f64, requires_grad=True)  # batch_first is ignored unbatched
    hx = torch.randn(4, 3, dtype=f64, requires_grad=True)
    args = (x, hx) if with_hx else (x,)
    assert_same_results(ref, ours, lambda: args, list(args), TOL[f64])
    out, hn = ours(*args)
    assert out.shape == (5, 6) and hn.shape == (4, 3)


def test_rnn_long_sequence_matches_nn_rnn():
    """T = 500: float64 equal to nn.RNN; float32 within 1e-5 of it, relative to the largest
    magnitude (elementwise, long float32 sums differ from any other float32 order)."""
    ref, ours = _rnn_pair(f64, input_size=4, hidden_size=8, num_layers=2, bidirectional=True)
    x = torch.randn(500, 2, 4, dtype=f64, requires_grad=True)
    assert_same_results(ref, ours, lambda: (x,), [x], TOL[f64])
    want, want_grads = _run(ref, lambda: (x,), [x])
    ours32 = fusedrnn.RNN.from_torch(ref.float())
    x32 = x.detach().float().requires_grad_(True)
    got, got_grads = _run(ours32, lambda: (x32,), [x32])
    for g, w in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        assert _rel(g, w) <= 1e-5


def _rel(got, want):
    """Largest absolute error relative to the largest reference magnitude."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def test_rnn_long_sequence_float32_error_against_float64():
    """T = 2000: max error of the float32 module relative to the float64 one <= 1e-5."""
    torch.manual_seed(3)
    ours = fusedrnn.RNN(8, 32)
    exact = fusedrnn.RNN(8, 32, dtype=f64)
    exact.load_state_dict(ours.state_dict())
    x = torch.randn(2000, 2, 8)
    for got, want in zip(ours(x), exact(x.double()), strict=True):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("num_layers", [2, 3])
def test_rnn_dropout_between_layers_in_training_only(num_layers):
    ref, ours = _rnn_pair(input_size=3, hidden_size=4, num_layers=num_layers, dropout=0.5)
    x = torch.randn(6, 3, 3, dtype=f64, requires_grad=True)
    for module in (ref, ours):
        module.train()
    # Same seed, same element count, same at::dropout: the masks are the same.
    results = []
    for module in (ref, ours):
        torch.manual_seed(11)
        results.append(_run(module, lambda: (x,), [x]))
    (want, want_grads), (got, got_grads) = results
    for a, b in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        torch.testing.assert_close(a, b, **TOL[f64])
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x)[0], ours(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[f64])
    ours.train()
    assert not torch.equal(ours(x)[0], ours(x)[0])  # a fresh mask each call


def test_rnn_empty_batch_like_nn_rnn():
    ref, ours = _rnn_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=f64, requires_grad=True)
    for args in ((x,), (x, torch.zeros(4, 0, 4, dtype=f64))):
        (want, want_hn), (got, got_hn) = ref(*args), ours(*args)
        assert got.shape == want.shape == (5, 0, 8) and got_hn.shape == want_hn.shape
    grads = torch.autograd.grad(got.sum() + got_hn.sum(), [x, *ours.parameters()])
    assert grads[0].shape == x.shape
    assert all(torch.count_nonzero(g) == 0 for g in grads[1:])


def test_meta_device_gives_nn_rnn_shapes():
    """On the meta device (shapes only) the modules run their ops' fake kernels."""
    x, hx = torch.randn(5, 2, 3, device=_META), torch.randn(4, 2, 4, device=_META)
    for args in ((x,), (x, hx)):
        want = nn.RNN(3, 4, 2, bidirectional=True, device=_META)(*args)
        got = fusedrnn.RNN(3, 4, 2, bidirectional=True, device=_META)(*args)
        for g, w in zip(got, want, strict=True):
            assert g.device == w.device and g.shape == w.shape and g.dtype == w.dtype
    cell_x = torch.randn(2, 3, device=_META)
    assert fusedrnn.RNNCell(3, 4, device=_META)(cell_x).shape == (2, 4)


@pytest.mark.parametrize("kind", ["rnn", "cell"])
def test_fake_tensor_mode_gives_nn_rnn_shapes(kind):
    """Under a (strict) FakeTensorMode, as shape propagation and memory estimators run a
    model, forward and backward give nn.RNN's shapes; the padded input's empty batch_sizes,
    a real tensor made at import, was refused beside the fake ones."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    results = []
    with FakeTensorMode():
        for module_type in (nn, fusedrnn):
            if kind == "cell":
                module, shape = module_type.RNNCell(3, 4), (2, 3)
            else:
                module, shape = module_type.RNN(3, 4, 2, bidirectional=True), (5, 2, 3)
            x = torch.randn(*shape, requires_grad=True)
            out = module(x)
            out = out if kind == "cell" else out[0]
            out.sum().backward()
            assert type(out) is FakeTensor and type(x.grad) is FakeTensor
            w_hh = module.weight_hh if kind == "cell" else module.weight_hh_l0
            results.append((out.shape, x.grad.shape, w_hh.grad.shape))
    assert results[0] == results[1]


# -- constructor, parameters, state and conversions -------------------------------------


def test_same_parameter_names_shapes_order_and_init():
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ref = nn.RNN(**kwargs)
    torch.manual_seed(0)
    ours = fusedrnn.RNN(**kwargs)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)
    for name in ref_sd:
        assert torch.equal(ref_sd[name], our_sd[name]), name
    assert [[p.shape for p in ps] for ps in ours.all_weights] == [
        [p.shape for p in ps] for ps in ref.all_weights
    ]
    assert ours._flat_weights_names == ref._flat_weights_names


def test_repr_and_attributes_match():
    kwargs = dict(
        input_size=3,
        hidden_size=5,
        num_layers=2,
        nonlinearity="relu",
        bias=False,
        batch_first=True,
        dropout=0.25,
        bidirectional=True,
    )
    ref, ours = nn.RNN(**kwargs), fusedrnn.RNN(**kwargs)
    assert repr(ours) == repr(ref)
    for attr in (
        "input_size",
        "hidden_size",
        "num_layers",
        "nonlinearity",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "mode",
    ):
        assert getattr(ours, attr) == getattr(ref, attr), attr


def test_state_dict_loads_both_ways():
    ref = nn.RNN(2, 3, 2, bias=False, dtype=f64)
    ours = fusedrnn.RNN(2, 3, 2, bias=False, dtype=f64)
    ours.load_state_dict(ref.state_dict())
    back = nn.RNN(2, 3, 2, bias=False, dtype=f64)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(back.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_all_weights_flatten_parameters_and_to():
    ref, ours = _rnn_pair(f32, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    for got, want in zip(ours.all_weights, ref.all_weights, strict=True):
        for g, w in zip(got, want, strict=True):
            assert isinstance(g, nn.Parameter) and torch.equal(g, w)
    x = torch.randn(4, 2, 3)
    before = ours(x)[0]
    assert ours.flatten_parameters() is None
    torch.testing.assert_close(ours(x)[0], before, rtol=0, atol=0)
    ours64 = ours.to(f64)
    assert ours64 is ours and all(p.dtype == f64 for p in ours.parameters())
    assert all(w.dtype == f64 for w in ours._flat_weights)
    torch.testing.assert_close(ours(x.double())[0], ref.to(f64)(x.double())[0], **TOL[f64])


def test_deepcopy_and_pickle_are_independent_and_equal():
    ref = nn.RNN(3, 4, 2, nonlinearity="relu", batch_first=True, bidirectional=True)
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(2, 5, 3)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is fusedrnn.RNN and clone.nonlinearity == "relu"
        for a, b in zip(clone(x), ours(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        with torch.no_grad():
            clone.weight_hh_l0.zero_()
        assert not torch.equal(clone(x)[0], ours(x)[0])


def test_whole_module_saved_after_a_call_loads_with_weights_only():
    """torch.save of a whole model after a forward, loaded with torch.load's default
    weights_only=True and only the module class allowed, as for nn.RNN: the lean path's
    plan (an itemgetter and a tag object, which the unpickler refuses) was pickled too."""
    for module in (nn.RNN(3, 4, 2), fusedrnn.RNN(3, 4, 2)):
        x = torch.randn(5, 2, 3)
        expected = module(x)[0]
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        with torch.serialization.safe_globals([type(module)]):
            loaded = torch.load(buffer)
        assert type(loaded) is type(module)
        torch.testing.assert_close(loaded(x)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change",
    [
        "mode",
        "nonlinearity_alone",
        "batch_first",
        "hidden_size",
        "new_weight",
        "train",
        "deepcopy",
        "pickle",
    ],
)
def test_fast_path_follows_the_module_after_a_call(change):
    """The lean path keeps what it reads of the configuration between calls (its plan);
    any attribute assigned afterwards must be seen by the next call, and a copied or
    unpickled module must not reuse a plan made for another."""
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, 2, dropout=0.5).eval()
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3)
    before = ours(x)[0]  # makes the plan
    if change == "mode":  # what nn.RNN runs by
        ref.mode = ours.mode = "RNN_RELU"
    elif change == "nonlinearity_alone":  # read at construction only, in both (was not, here)
        ref.nonlinearity = ours.nonlinearity = "relu"
    elif change == "batch_first":
        ref.batch_first = ours.batch_first = True
    elif change == "hidden_size":  # the weights no longer match: both refuse the call
        ref.hidden_size = ours.hidden_size = 5
        with pytest.raises(RuntimeError):
            ref(x)
        with pytest.raises(RuntimeError):
            ours(x)
        return
    elif change == "new_weight":
        w = nn.Parameter(torch.randn(4, 4))
        ref.weight_hh_l1, ours.weight_hh_l1 = w, nn.Parameter(w.detach().clone())
    elif change == "train":  # dropout between the layers now
        ours.train()
        assert not torch.equal(ours(x)[0], before)
        return
    else:
        ours = copy.deepcopy(ours) if change == "deepcopy" else pickle.loads(pickle.dumps(ours))
    for a, b in zip(ours(x), ref(x), strict=True):
        torch.testing.assert_close(a, b, **TOL[f32])


def test_unknown_mode_raises_like_nn_rnn():
    ref = nn.RNN(3, 4)
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3)
    ref.mode = ours.mode = "LSTM"
    with pytest.raises(AssertionError):  # torch 2.10's has no message
        ref(x)
    with pytest.raises(AssertionError, match="mode must be RNN_TANH or RNN_RELU, got LSTM"):
        ours(x)


@pytest.mark.parametrize(
    "kwargs,attr,value",
    [({"num_layers": 2}, "num_layers", 1), ({"num_layers": 2}, "num_layers", 3),
     ({"num_layers": 2, "bidirectional": True}, "bidirectional", False),
     ({}, "bidirectional", True), ({}, "bias", False), ({"bias": False}, "bias", True)],
)  # fmt: skip
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_configuration_changed_after_construction_raises_like_nn_rnn(kwargs, attr, value, packed):
    """The weights are named at construction: nn.RNN refuses a num_layers, bidirectional or
    bias assigned afterwards (its weight count no longer matches); fusedrnn ran with some
    weights ignored (an input audit found it) and now refuses by name."""
    x = torch.randn(5, 3, 4)
    if packed:
        x = pack_sequence([torch.randn(5, 4), torch.randn(3, 4)])
    ref = nn.RNN(4, 8, **kwargs)
    ours = fusedrnn.RNN.from_torch(ref)
    setattr(ref, attr, value)
    setattr(ours, attr, value)
    with pytest.raises(RuntimeError):
        ref(x)
    with pytest.raises(RuntimeError, match=rf"{attr}={value}.* was changed after construction"):
        ours(x)


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True}])
def test_sparse_output_gradients_give_the_dense_ones_gradients(kwargs):
    """A sparse gradient of the output (or h_n) is read as its dense values (nn.RNN's
    backward has no sparse kernel; ours raised 'Cannot access data pointer')."""
    torch.manual_seed(0)
    ours = fusedrnn.RNN(4, 8, **kwargs)
    x = torch.randn(5, 3, 4, requires_grad=True)
    out, h_n = ours(x)
    g, g_n = torch.randn_like(out), torch.randn_like(h_n)

    def grads(*cotangents):
        out, h_n = ours(x)
        return torch.autograd.grad((out, h_n), [x, *ours.parameters()], cotangents)

    for a, b in zip(grads(g.to_sparse(), g_n.to_sparse()), grads(g, g_n), strict=True):
        assert torch.equal(a, b)


def _expanded_hx(B, H):
    return torch.zeros(1, 1, H, dtype=f64).expand(1, B, H)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m(pack_sequence([torch.randn(5, 3, dtype=f64), torch.randn(2, 3, dtype=f64)])),
        lambda m: m(torch.randn(5, 2, 3, dtype=f64), _expanded_hx(2, 4)),
        lambda m: m(torch.randn(5, 2, 3, dtype=f64)),
        lambda m: m(torch.randn(2, 5, 3, dtype=f64).transpose(0, 1)),
    ],
    ids=["packed", "expanded_hx", "padded", "strided_input"],
)
def test_h_n_takes_in_place_changes_like_nn_rnn(call):
    """h_n of one layer is a tensor of its own, as nn.RNN's (it was a view of the layer's
    [B, H] on the general path: h_n.detach_() raised, and so did an in-place change of a
    no_grad h_n by a tensor that requires grad)."""
    ref, ours = _rnn_pair(input_size=3, hidden_size=4)
    w = torch.ones(4, dtype=f64, requires_grad=True)
    for m in (ref, ours):
        torch.manual_seed(1)
        _, h_n = call(m)
        assert not h_n._is_view()
        h_n.detach_()  # truncated BPTT, in place
        assert not h_n.requires_grad
        with torch.no_grad():
            torch.manual_seed(1)
            _, h_n = call(m)
        h_n.mul_(w)
        assert h_n.requires_grad


def test_conversion_keeps_the_activation_the_source_runs():
    """nn.RNN runs by mode: a converted module takes its activation from there, not from a
    nonlinearity assigned after construction (which the source ignores)."""
    ref = nn.RNN(3, 4)
    ref.nonlinearity = "relu"  # ignored by nn.RNN
    x = torch.randn(5, 2, 3)
    ours = fusedrnn.RNN.from_torch(ref)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[f32])
    back = ours.to_torch()
    torch.testing.assert_close(back(x)[0], ref(x)[0], **TOL[f32])


def test_conversion_both_ways():
    ref = nn.RNN(3, 4, 2, nonlinearity="relu", batch_first=True).eval()
    ours = fusedrnn.RNN.from_torch(ref)
    assert isinstance(ours, fusedrnn.RNN) and ours.nonlinearity == "relu" and ours.batch_first
    assert not ours.training
    back = ours.to_torch()
    assert type(back) is nn.RNN and not back.training
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[f32])
    torch.testing.assert_close(back(x)[0], ref(x)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.RNN, got LSTM"):
        fusedrnn.RNN.from_torch(nn.LSTM(3, 4))


def test_conversion_keeps_frozen_weights_frozen():
    """A partly frozen model (fine-tuning some layers) converted either way stays partly
    frozen: the weights went through the state dict, which drops requires_grad, so every
    converted weight required grad."""
    ref = nn.RNN(3, 4, 2, bidirectional=True)
    frozen = {"weight_ih_l0", "bias_hh_l0_reverse", "weight_hh_l1"}
    for name in frozen:
        ref.get_parameter(name).requires_grad_(False)
    ref.weight_hh_l1_reverse = ref.weight_hh_l1  # tied: frozen under both names
    frozen.add("weight_hh_l1_reverse")
    ours = fusedrnn.RNN.from_torch(ref)
    for module in (ours, ours.to_torch()):
        assert {n for n, p in module.named_parameters() if not p.requires_grad} == frozen
    cell = nn.RNNCell(3, 4)
    cell.bias_ih.requires_grad_(False)
    for module in (fusedrnn.RNNCell.from_torch(cell), fusedrnn.RNNCell.from_torch(cell).to_torch()):
        assert [n for n, p in module.named_parameters() if not p.requires_grad] == ["bias_ih"]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((3, 4), dict(nonlinearity="gelu")),
        ((3, 4), dict(proj_size=2)),
        ((3, 0), {}),
        ((0, 4), {}),
        ((3, 4, 0), {}),
        ((3, 4, 2), dict(dropout=1.5)),
        ((3, 4, 2), dict(dropout=True)),
        ((3.0, 4), {}),
        ((3, 4), dict(bias="yes")),
        ((3, 4), dict(batch_first=1)),
        ((3, 4, 1, "relu", True, False, 0.0, False, "extra"), {}),
    ],
)
def test_constructor_errors_match_nn_rnn(args, kwargs):
    """The installed torch's nn.RNN decides: the same exception and message, or none (torch
    2.10 accepts sizes of 0 and non-bool flags, which 2.11 refuses)."""

    def outcome(cls):
        try:
            cls(*args, **kwargs)
        except Exception as e:  # any: compared below
            return type(e), str(e)
        return None

    assert outcome(fusedrnn.RNN) == outcome(nn.RNN)


def test_dropout_warning_matches_nn_rnn():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fusedrnn.RNN(3, 4, dropout=0.5)


# -- errors in forward: the exception type nn.RNN raises, with a message naming the fault --

RNN_BAD_CALLS = {
    "input_size": ((torch.randn(5, 2, 2),), "input.size\\(-1\\) must be equal to input_size"),
    "hx_shape": (
        (torch.randn(5, 2, 3), torch.randn(4, 3, 4)),
        r"Expected hidden size \(4, 2, 4\), got \[4, 3, 4\]",
    ),
    "hx_2d_batched": ((torch.randn(5, 2, 3), torch.randn(4, 4)), "hx should also be 3-D"),
    "hx_3d_unbatched": ((torch.randn(5, 3), torch.randn(4, 1, 4)), "hx should also be 2-D"),
    "input_4d": ((torch.randn(5, 2, 3, 1),), "Expected input to be 2D or 3D, got 4D"),
    "input_1d": ((torch.randn(5),), "Expected input to be 2D or 3D, got 1D"),
    "input_dtype": ((torch.randn(5, 2, 3, dtype=f64),), r"torch\.float64"),
    "input_int": ((torch.ones(5, 2, 3, dtype=torch.int64),), r"torch\.int64"),
    "hx_dtype": (
        (torch.randn(5, 2, 3), torch.randn(4, 2, 4, dtype=f64)),
        r"hx dtype \(torch.float64\) does not match input dtype \(torch.float32\)",
    ),
    "hx_device": (
        (torch.randn(5, 2, 3), torch.randn(4, 2, 4, device=_META)),
        "Input and hidden tensors are not at the same device",
    ),
    "input_device": (  # the weights on the CPU: ValueError from the ops before session 10
        (torch.randn(5, 2, 3, device=_META),),
        "Input and parameter tensors are not at the same device, found input tensor at meta",
    ),
    "empty_sequence": ((torch.randn(0, 2, 3),), "sequence length to be larger than 0"),
    "empty_sequence_unbatched": ((torch.randn(0, 3),), "sequence length to be larger than 0"),
    "empty_packed_sequence": (
        (PackedSequence(torch.randn(0, 3), torch.zeros(0, dtype=torch.int64)),),
        "out of bounds",
    ),
}


# Checks left to nn.RNN's own check_input: its message, which torch 2.11 reworded.
TORCH_MESSAGES = {"input_dtype", "input_int"}


@pytest.mark.parametrize("case", list(RNN_BAD_CALLS))
def test_rnn_bad_input_raises_like_nn_rnn(case):
    args, pattern = RNN_BAD_CALLS[case]
    ref, ours = nn.RNN(3, 4, 2, bidirectional=True), fusedrnn.RNN(3, 4, 2, bidirectional=True)
    with pytest.raises(Exception) as want:
        ref(*args)
    with pytest.raises(type(want.value), match=pattern) as got:
        ours(*args)
    assert type(got.value) is type(want.value)
    if case in TORCH_MESSAGES:
        assert str(got.value) == str(want.value)


# -- RNNCell ---------------------------------------------------------------------------


def test_cell_parameters_init_and_repr_match():
    torch.manual_seed(0)
    ref = nn.RNNCell(3, 5, bias=False, nonlinearity="relu")
    torch.manual_seed(0)
    ours = fusedrnn.RNNCell(3, 5, bias=False, nonlinearity="relu")
    assert isinstance(ours, nn.RNNCell)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    assert ours.bias_ih is None and ours.bias_hh is None


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cell_matches_nn_rnncell(bias, nonlinearity, with_hx, batched, dtype):
    ref, ours = _cell_pair(dtype, input_size=3, hidden_size=4, bias=bias, nonlinearity=nonlinearity)
    x = torch.randn((5, 3) if batched else (3,), dtype=dtype, requires_grad=True)
    hx = torch.randn((5, 4) if batched else (4,), dtype=dtype, requires_grad=True)
    args = (x, hx) if with_hx else (x,)
    assert_same_results(ref, ours, lambda: args, list(args), TOL[dtype])


def test_cell_runs_weights_of_other_sizes_like_nn_rnncell():
    """nn.RNNCell takes its sizes from the weights (input_size and hidden_size only make a
    zero state): a weight resized after construction, or functional_call with weights of
    other sizes, runs there, and ran into fusedrnn's shape check against the module's sizes
    up to session 29."""
    torch.manual_seed(0)
    ref = nn.RNNCell(3, 4)
    ours = fusedrnn.RNNCell.from_torch(ref)
    w = torch.randn(4, 5)
    ref.weight_ih, ours.weight_ih = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    x, h = torch.randn(2, 5), torch.randn(2, 4)
    torch.testing.assert_close(ours(x, h), ref(x, h), **TOL[f32])
    params = {"weight_ih": torch.randn(6, 5), "weight_hh": torch.randn(6, 6) * 0.3,
              "bias_ih": torch.randn(6), "bias_hh": torch.randn(6)}  # fmt: skip
    h6 = torch.randn(2, 6)
    got = torch.func.functional_call(fusedrnn.RNNCell(3, 4), params, (x, h6))
    want = torch.func.functional_call(nn.RNNCell(3, 4), params, (x, h6))
    torch.testing.assert_close(got, want, **TOL[f32])


def test_cell_unrolled_matches_rnn_layer():
    """The cell applied step by step gives the layer's outputs and gradients."""
    ref, layer = _rnn_pair(input_size=3, hidden_size=4)
    cell = fusedrnn.RNNCell(3, 4, dtype=f64)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=f64)
    h = torch.zeros(2, 4, dtype=f64)
    steps = []
    for x_t in x:
        h = cell(x_t, h)
        steps.append(h)
    out, hn = layer(x)
    torch.testing.assert_close(torch.stack(steps), out, **TOL[f64])
    torch.testing.assert_close(h, hn[0], **TOL[f64])


CELL_BAD_CALLS = {
    "input_size": ((torch.randn(2, 2),), "input has inconsistent input_size: got 2 expected 3"),
    "hx_batch": (
        (torch.randn(2, 3), torch.randn(3, 4)),
        "Input batch size 2 doesn't match hidden0 batch size 3",
    ),
    "hx_size": (
        (torch.randn(2, 3), torch.randn(2, 5)),
        "hidden0 has inconsistent hidden_size: got 5, expected 4",
    ),
    "input_3d": ((torch.randn(2, 3, 1),), "Expected input to be 1D or 2D, got 3D"),
    "hx_3d": ((torch.randn(2, 3), torch.randn(1, 2, 4)), "Expected hidden to be 1D or 2D"),
    "hx_2d_unbatched": ((torch.randn(3), torch.randn(1, 4)), "inconsistent hidden_size"),
    "hx_1d_batched": ((torch.randn(2, 3), torch.randn(4)), "doesn't match hidden0 batch size"),
    "input_dtype": ((torch.randn(2, 3, dtype=f64),), "input dtype .* does not match weight"),
    "hx_dtype": ((torch.randn(2, 3), torch.randn(2, 4, dtype=f64)), "hx dtype"),
    "hx_device": ((torch.randn(2, 3), torch.randn(2, 4, device=_META)), "same device"),
    "input_device": ((torch.randn(2, 3, device=_META),), "not at the same device"),
}


@pytest.mark.parametrize("case", list(CELL_BAD_CALLS))
def test_cell_bad_input_raises_like_nn_rnncell(case):
    args, pattern = CELL_BAD_CALLS[case]
    with pytest.raises(Exception) as want:
        nn.RNNCell(3, 4)(*args)
    with pytest.raises(type(want.value), match=pattern):
        fusedrnn.RNNCell(3, 4)(*args)


def test_cell_unknown_nonlinearity_raises_at_call_like_nn_rnncell():
    cell = fusedrnn.RNNCell(3, 4, nonlinearity="gelu")  # nn.RNNCell accepts it here too
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        cell(torch.randn(2, 3))


def test_cell_empty_sizes_and_conversion():
    ref = nn.RNNCell(3, 4, nonlinearity="relu")
    ours = fusedrnn.RNNCell.from_torch(ref)
    assert ours(torch.randn(0, 3)).shape == ref(torch.randn(0, 3)).shape == (0, 4)
    x = torch.randn(2, 3)
    assert fusedrnn.RNNCell(3, 0)(x).shape == nn.RNNCell(3, 0)(x).shape == (2, 0)
    back = ours.to_torch()
    assert type(back) is nn.RNNCell and back.nonlinearity == "relu"
    x = torch.randn(2, 3)
    torch.testing.assert_close(back(x), ref(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.RNNCell"):
        fusedrnn.RNNCell.from_torch(nn.GRUCell(3, 4))


# -- autograd policy, functional_call, autocast ---------------------------------------------


# The common eager CPU call takes RNN._forward_fast (checks in one pass, each layer written
# in place); every other call, and any call the fast path declines, takes the general
# path. Both run the same kernels and must give the same bits.
FAST_CONFIGS = {
    "L1": dict(num_layers=1),
    "L2_bi": dict(num_layers=2, bidirectional=True),
    "L3_BT": dict(num_layers=3, batch_first=True),
    "L2_relu_no_bias": dict(num_layers=2, bias=False, nonlinearity="relu"),
    "bi_BT": dict(bidirectional=True, batch_first=True),
    "L2_bi_dropout": dict(num_layers=2, bidirectional=True, dropout=0.5),
}


def _fast_and_general(monkeypatch, module, make_inputs, grad):
    """(results, fast-path calls) of the fast path, then of the general path. A fast-path
    call is a ``_forward_fast`` that served the call (returned results) or one of the
    layer entries only it uses."""
    from fusedrnn import ops

    calls = []
    for name in ("rnn_layer_checked", "rnn_bidirectional_layer_checked"):
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    serve = type(module)._forward_fast

    def spied(self, *args):
        result = serve(self, *args)
        if result is not None:
            calls.append("_forward_fast")
        return result

    monkeypatch.setattr(type(module), "_forward_fast", spied)
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(ops, "fast_input_cpu", lambda x: False)
        inputs = make_inputs()
        torch.manual_seed(5)  # the same dropout masks
        with torch.set_grad_enabled(grad):
            outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        grads = []
        if grad:
            wrt = [t for t in inputs if t is not None] + list(module.parameters())
            grads = torch.autograd.grad(_loss(outputs), wrt)
        results.append((*outputs, *grads))
        if fast:
            fast_calls, calls[:] = list(calls), []
    return results, fast_calls, calls


# The lean path's dtypes: float32, float64, and bfloat16 where its CPU kernels run.
_FAST_DTYPES = [f32, f64] + ([torch.bfloat16] if fusedrnn._C.cpu_has_bf16() else [])
_FAST_DTYPE_IDS = ["f32", "f64", "bf16"][: len(_FAST_DTYPES)]


@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("dtype", _FAST_DTYPES, ids=_FAST_DTYPE_IDS)
@pytest.mark.parametrize("config", list(FAST_CONFIGS))
def test_fast_path_matches_general_path_bitwise(monkeypatch, config, dtype, with_hx, batched, grad):
    kwargs = FAST_CONFIGS[config]
    torch.manual_seed(0)
    module = fusedrnn.RNN(3, 4, dtype=dtype, **kwargs)
    D = 2 if module.bidirectional else 1
    B, T = 2, 5
    x = torch.randn((B, T, 3) if module.batch_first else (T, B, 3), dtype=dtype)
    hx = torch.randn(module.num_layers * D, B, 4, dtype=dtype)
    if not batched:
        x, hx = x[0] if module.batch_first else x[:, 0], hx[:, 0]

    def make_inputs():
        xx = x.clone().requires_grad_(grad)
        return xx, (hx.clone().requires_grad_(grad) if with_hx else None)

    (fast, general), fast_calls, general_calls = _fast_and_general(
        monkeypatch, module, make_inputs, grad
    )
    assert fast_calls and not general_calls  # each path was the one taken
    for a, b in zip(fast, general, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("dtype", _FAST_DTYPES, ids=_FAST_DTYPE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cell_fast_path_matches_general_path_bitwise(monkeypatch, bias, dtype, with_hx, batched,
                                                     grad):  # fmt: skip
    torch.manual_seed(0)
    cell = fusedrnn.RNNCell(3, 4, bias=bias, nonlinearity="relu" if bias else "tanh", dtype=dtype)
    x, hx = torch.randn(2, 3, dtype=dtype), torch.randn(2, 4, dtype=dtype)
    if not batched:
        x, hx = x[0], hx[0]

    def make_inputs():
        xx = x.clone().requires_grad_(grad)
        return xx, (hx.clone().requires_grad_(grad) if with_hx else None)

    (fast, general), fast_calls, general_calls = _fast_and_general(
        monkeypatch, cell, make_inputs, grad
    )
    assert fast_calls and not general_calls
    for a, b in zip(fast, general, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("config", ["L1", "L3_BT", "L2_relu_no_bias", "L2_dropout"])
def test_cuda_lean_path_logic_on_the_cpu(monkeypatch, config, with_hx, batched, grad):
    """RNN._forward_fast's logic for CUDA tensors, _infer_cuda's included (the layer loop,
    the states, the absent biases, dropout, the returned shapes and strides), run here
    with the CUDA recurrence stood in for by the CPU kernel (the same contract: P in place,
    h0 None for zeros): it must give the general path's results. tests/test_cuda.py runs it
    on a GPU."""
    from fusedrnn import _cuda, ops

    def recurrence(T, B, H, batch_sizes, reverse, nonlinearity, P, w_hh, h0, h, hn):
        ops._C.rnn_forward(ops.KERNEL_DTYPES[P.dtype], T, B, H, 0, reverse, nonlinearity,
                           P.data_ptr(), w_hh.data_ptr(), ops._addr(h0), h.data_ptr(),
                           hn.data_ptr(), 1)  # fmt: skip

    kwargs = {**FAST_CONFIGS, "L2_dropout": dict(num_layers=2, dropout=0.5)}[config]
    torch.manual_seed(0)
    module = fusedrnn.RNN(3, 4, dtype=f64, **kwargs).train(config == "L2_dropout")
    L = module.num_layers
    x = torch.randn((2, 5, 3) if module.batch_first else (5, 2, 3), dtype=f64)
    hx = torch.randn(L, 2, 4, dtype=f64)
    if not batched:
        x, hx = x[0] if module.batch_first else x[:, 0], hx[:, 0]
    served = []
    lean = fusedrnn.RNN._forward_fast

    def spied(self, *args):  # a lean call that served (returned results)
        result = lean(self, *args)
        if result is not None:
            served.append(1)
        return result

    monkeypatch.setattr(fusedrnn.RNN, "_forward_fast", spied)
    results = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            m.setattr(ops, "fast_input_cpu", lambda x: False)
            m.setattr(ops, "fast_input_cuda", lambda x, _fast=fast: _fast)
            m.setattr(_cuda, "rnn_forward", recurrence)
            xx = x.clone().requires_grad_(grad)
            h = hx.clone().requires_grad_(grad) if with_hx else None
            torch.manual_seed(5)
            with torch.set_grad_enabled(grad):
                out, hn = module(xx, h)
        got = [out, hn]
        if grad:
            wrt = [t for t in (xx, h) if t is not None] + list(module.parameters())
            got += torch.autograd.grad(_loss((out, hn)), wrt)
        results.append(got)
        assert bool(served) == fast
        served.clear()
    for a, b in zip(results[0][:2], results[1][:2], strict=True):
        assert a.stride() == b.stride()
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_functional_call_with_parameters_of_another_dtype_runs_like_nn_rnn(packed):
    """torch.func.functional_call with float64 parameters on a float32 module and float64
    input: nn.RNN runs it (its forward refreshes its weight cache first); fusedrnn's general
    path refused it against the stale cache (ValueError) up to session 29."""
    from torch.func import functional_call

    torch.manual_seed(0)
    ref = nn.RNN(3, 4, 2)
    ours = fusedrnn.RNN.from_torch(ref)
    params = {k: v.double() for k, v in ref.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=f64)
    if packed:
        x = pack_sequence([x[:, 0], x[:3, 1]])
    want = functional_call(ref, params, (x,))
    got = functional_call(ours, params, (x,))
    for a, b in zip(got, want, strict=True):
        a, b = (a.data, b.data) if packed and isinstance(a, PackedSequence) else (a, b)
        assert a.dtype == f64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"input dtype \(torch.float32\) does not match weight"):
        functional_call(ours, params, (torch.randn(5, 2, 3),))


class _Sub(torch.Tensor):
    pass


def test_cuda_lean_path_checks_each_tensor():
    """ops.fast_addresses_cpu with a device, the CUDA lean path's check of the weights and
    the state, on any device: each property it requires refuses a tensor that lacks it."""
    from fusedrnn import ops

    cpu = torch.device("cpu")
    good = torch.zeros(2, 3)
    assert ops.fast_addresses_cpu((good, torch.zeros(3)), ((2, 3), (3,)), f32, cpu) is not None
    freed = torch.zeros(2, 3)
    freed.untyped_storage().resize_(0)
    bad = {
        "device": (good, torch.device("meta")),
        "dtype": (good.double(), cpu),
        "shape": (torch.zeros(3, 2), cpu),
        "not contiguous": (torch.zeros(3, 2).t(), cpu),
        "negative bit": (torch.zeros(2, 3, dtype=torch.complex64).conj().imag, cpu),
        "freed storage": (freed, cpu),
        "subclass": (good.as_subclass(_Sub), cpu),
        "not a tensor": ([[0.0] * 3] * 2, cpu),
    }
    for what, (t, device) in bad.items():
        assert ops.fast_addresses_cpu((good, t), ((2, 3), (2, 3)), f32, device) is None, what


@pytest.mark.parametrize(
    "change",
    ["parametrized", "non_contiguous_weight", "subclass_input", "float32_hx", "packed", "meta"],
)
def test_fast_path_declines_what_it_does_not_serve(monkeypatch, change):
    """Such calls take the general path (which converts, serves or reports them)."""
    from torch.nn.utils import parametrize

    ref, ours = _rnn_pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=f64)
    hx = None
    if change == "parametrized":
        for module in (ref, ours):
            parametrize.register_parametrization(module, "weight_hh_l0", _Halve())
    elif change == "non_contiguous_weight":
        for module in (ref, ours):
            module.weight_hh_l1 = nn.Parameter(module.weight_hh_l1.detach().t().contiguous().t())
    elif change == "subclass_input":
        x = x.as_subclass(_PlainSubclass)
    elif change == "float32_hx":
        hx = torch.zeros(2, 2, 4)  # nn.RNN: a dtype error
    elif change == "packed":
        x = pack_padded_sequence(x, [5, 3], enforce_sorted=False)
    elif change == "meta":
        ref, ours, x = ref.to(_META), ours.to(_META), x.to(_META)

    lean = fusedrnn.RNN._forward_fast

    def must_decline(self, *args):
        result = lean(self, *args)
        assert result is None, "the fast path took a call it should decline"
        return result

    monkeypatch.setattr(fusedrnn.RNN, "_forward_fast", must_decline)
    try:
        want = ref(x, hx)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            ours(x, hx)
        return
    for a, b in zip(ours(x, hx), want, strict=True):
        a, b = _data(a).as_subclass(torch.Tensor), _data(b).as_subclass(torch.Tensor)
        assert a.shape == b.shape
        if a.device != _META:
            torch.testing.assert_close(a, b, **TOL[f64])


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_cell_with_zero_input_size_matches_nn_rnncell(batched, dtype):
    """nn.RNNCell(0, H) runs (h' = act(b_ih + h W_hh^T + b_hh)); nn.RNN refuses input_size
    0 at construction, as fusedrnn.RNN does. The lean path leaves I = 0 to the general one,
    whose projection is then the bias alone (it used to refuse the call)."""
    ref, ours = _cell_pair(dtype, input_size=0, hidden_size=4)
    x = torch.randn((3, 0) if batched else (0,), dtype=dtype, requires_grad=True)
    hx = torch.randn((3, 4) if batched else (4,), dtype=dtype, requires_grad=True)
    assert_same_results(ref, ours, lambda: (x, hx), [x, hx], TOL[dtype])


class _Halve(nn.Module):
    def forward(self, w):
        return w / 2


class _PlainSubclass(torch.Tensor):
    pass


# Saved-tensor hooks a test runs its graph under, by name.
_HOOKS = {
    "none": nullcontext,
    "save_on_cpu": torch.autograd.graph.save_on_cpu,
    "hooks": lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
    "clone_hooks": lambda: torch.autograd.graph.saved_tensors_hooks(
        lambda t: t.clone(), lambda t: t
    ),
}


@pytest.mark.parametrize("hooks", ["none", "save_on_cpu", "hooks"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_double_backward_matches_nn_rnn(packed, hooks):
    """Gradients of gradients (create_graph=True), as torch.nn.RNN on the CPU gives them,
    also with saved_tensors_hooks active throughout (save_on_cpu): the derivative of the
    fused gradients went through torch.func.vjp, which refuses such hooks (it raised until
    session 22)."""
    ref, ours = _rnn_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=f64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    results = []
    for module in (ref, ours):
        with _HOOKS[hooks]():
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
            out, hn = module(inp)
            wrt = [x, *module.parameters()]
            grads = torch.autograd.grad(_loss((out, hn)), wrt, create_graph=True)
            second = torch.autograd.grad(sum(g.square().sum() for g in grads), wrt)
        results.append((*grads, *second))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **TOL[f64])


@pytest.mark.parametrize("hooks", ["none", "save_on_cpu"])
def test_third_derivatives_match_nn_rnn(hooks):
    """Third order (a graph of the second backward recorded too), with and without
    saved_tensors_hooks, for the module and the cell."""
    ref, ours = _rnn_pair(input_size=2, hidden_size=3)
    ref_cell, cell = _cell_pair(input_size=2, hidden_size=3)
    x = torch.randn(4, 2, 2, dtype=f64, requires_grad=True)
    results = []
    for module, c in ((ref, ref_cell), (ours, cell)):
        with _HOOKS[hooks]():
            out, _ = module(x)
            y = out.square().sum() + c(x[0]).square().sum()
            (g1,) = torch.autograd.grad(y, x, create_graph=True)
            (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True)
            (g3,) = torch.autograd.grad(g2.square().sum(), x)
        results.append((g1, g2, g3))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **TOL[f64])


def test_functional_call_uses_the_given_parameters():
    ref, ours = _rnn_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    params = {n: torch.randn_like(p, requires_grad=True) for n, p in ours.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=f64)
    out, hn = torch.func.functional_call(ours, params, (x,))
    ref.load_state_dict(params)
    want_out, want_hn = ref(x)
    torch.testing.assert_close(out, want_out, **TOL[f64])
    torch.testing.assert_close(hn, want_hn, **TOL[f64])
    grads = torch.autograd.grad(out.sum() + hn.sum(), list(params.values()))
    want_grads = torch.autograd.grad(want_out.sum() + want_hn.sum(), list(ref.parameters()))
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **TOL[f64])
    # The module's own parameters are back in place and used again.
    torch.testing.assert_close(ours(x)[0], fusedrnn.RNN.from_torch(ours.to_torch())(x)[0])
    assert not torch.allclose(ours(x)[0], out)


def test_cpu_bf16_autocast_matches_nn_rnn_and_is_more_accurate():
    """CPU autocast to bfloat16: on the bfloat16 kernels where the CPU has them (a
    bfloat16 state, one rounding per stored value), else in float32 (the float32 result
    rounded once; test_cpu_bf16_autocast_without_bf16_kernels_keeps_float32_state).
    Either way within bfloat16 tolerance of nn.RNN under the same autocast and closer to
    the float32 result than nn.RNN is."""
    ref, ours = _rnn_pair(f32, input_size=8, hidden_size=16, num_layers=2, bidirectional=True)
    x = torch.randn(20, 4, 8, requires_grad=True)
    lengths = torch.tensor([20, 7, 13, 1])
    exact = _run(ref, lambda: (x,), [x])  # float32, no autocast
    for make_args in (lambda: (x,), lambda: (pack_padded_sequence(x, lengths, False, False),)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (want, want_hn), want_grads = _run(ref, make_args, [x])
            (got, got_hn), got_grads = _run(ours, make_args, [x])
        assert _data(got).dtype == _data(want).dtype == torch.bfloat16
        assert got_hn.dtype == want_hn.dtype == torch.bfloat16
        assert all(g.dtype == f32 for g in got_grads)
        # Within bfloat16 tolerance of nn.RNN under the same autocast ...
        torch.testing.assert_close(_data(got).float(), _data(want).float(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(got_hn.float(), want_hn.float(), rtol=2e-2, atol=2e-2)
        for g, w in zip(got_grads, want_grads, strict=True):
            assert _rel(g, w) < 5e-2
    # ... and more accurate. In float32 (no bfloat16 kernels) the outputs are the float32
    # ones rounded once to bfloat16; the gradients only see bfloat16-rounded output
    # gradients.
    (want, want_hn), want_grads = exact
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (got, got_hn), got_grads = _run(ours, lambda: (x,), [x])
        (low, low_hn), low_grads = _run(ref, lambda: (x,), [x])
    if not fusedrnn._C.cpu_has_bf16():
        assert _rel(got, want) <= 2**-8 and _rel(got_hn, want_hn) <= 2**-8
    assert _rel(got, want) < _rel(low, want) and _rel(got_hn, want_hn) < _rel(low_hn, want_hn)
    errors = [_rel(g, w) for g, w in zip(got_grads, want_grads, strict=True)]
    low_errors = [_rel(g, w) for g, w in zip(low_grads, want_grads, strict=True)]
    assert max(errors) <= 2e-2 and max(errors) < max(low_errors)


def test_backward_inside_cpu_autocast_computes_in_the_forward_dtypes():
    """A float32 forward whose backward runs inside CPU autocast (plain, create_graph,
    compiled): the backward ops take the saved float32 tensors as they are, so the
    gradients are the float32 ones."""
    _, ours = _rnn_pair(f32, input_size=8, hidden_size=16)
    x = torch.randn(5, 2, 8, requires_grad=True)
    out, _ = ours(x)
    want = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    torch._dynamo.reset()
    # (A compiled backward cannot create a graph: torch's donated buffers forbid it.)
    for model, create_graph in ((ours, False), (ours, True),
                                (torch.compile(ours, fullgraph=True), False)):  # fmt: skip
        out, _ = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = torch.autograd.grad(out.sum(), [x, *ours.parameters()],
                                      create_graph=create_graph)  # fmt: skip
        for g, w in zip(got, want, strict=True):
            assert g.dtype == f32
            torch.testing.assert_close(g, w)


def test_torch_func_grad_with_cpu_autocast_inside_matches_nn_rnn():
    """torch.func.grad of a loss that enters CPU autocast itself, or is called inside it:
    nn.RNN's gradients within bfloat16 tolerance (the layer's autograd.Function sees the
    tensors the op computes with)."""
    ref, ours = _rnn_pair(f32, input_size=8, hidden_size=16, num_layers=2)
    x = torch.randn(5, 2, 8)

    def grads(model, inside):
        def loss(p):
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if inside else nullcontext()
            with amp:
                out, _ = torch.func.functional_call(model, p, (x,))
            return out.float().square().sum()

        params = dict(model.named_parameters())
        if inside:
            return torch.func.grad(loss)(params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.func.grad(loss)(params)

    for inside in (True, False):
        got, want = grads(ours, inside), grads(ref, inside)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == f32
            assert _rel(got[name], want[name]) < 5e-2, name


def test_cpu_bf16_autocast_without_bf16_kernels_keeps_float32_state():
    """Without the bfloat16 kernels (FUSEDRNN_CPU_ISA=avx2, read at load: a fresh
    process) CPU autocast runs the layers in float32: the outputs are the float32 ones
    rounded once."""
    code = (
        "import torch, fusedrnn\n"
        "torch.manual_seed(0)\n"
        "m = fusedrnn.RNN(8, 16, 2, bidirectional=True)\n"
        "x = torch.randn(20, 4, 8)\n"
        "want, want_hn = m(x)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    got, got_hn = m(x)\n"
        "assert got.dtype == torch.bfloat16 and not fusedrnn._C.cpu_has_bf16()\n"
        "assert torch.equal(got, want.to(torch.bfloat16))\n"
        "assert torch.equal(got_hn, want_hn.to(torch.bfloat16))\n"
    )
    env = dict(os.environ, FUSEDRNN_CPU_ISA="avx2")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cpu_bf16_autocast_cell_and_float64_untouched():
    ref, ours = _cell_pair(f32, input_size=3, hidden_size=4)
    x = torch.randn(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    rnn64 = fusedrnn.RNN(3, 4, dtype=f64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, hn = rnn64(torch.randn(5, 2, 3, dtype=f64))
    assert out.dtype == hn.dtype == f64


@pytest.mark.parametrize("hx_dtype", [f64, torch.int64, torch.float16], ids=str)
@pytest.mark.parametrize("cell", [False, True], ids=["rnn", "cell"])
def test_cpu_autocast_hx_dtype_like_nn_rnn(cell, hx_dtype):
    """Under CPU autocast a float32 input with a float64 (or integer) hx raises nn.RNN's
    RuntimeError (autocast casts neither; the op's own TypeError came through before); a
    float16 hx is cast with the input and runs, as in nn.RNN."""
    ref, ours = (_cell_pair if cell else _rnn_pair)(f32, input_size=3, hidden_size=4)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    hx = torch.zeros((2, 4) if cell else (1, 2, 4), dtype=hx_dtype)
    for m in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if hx_dtype == torch.float16:
                out = m(x, hx)
                assert (out if cell else out[0]).dtype == torch.bfloat16
            else:
                with pytest.raises(RuntimeError):
                    m(x, hx)


@pytest.mark.parametrize("x_dtype", [f32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell", [False, True], ids=["rnn", "cell"])
def test_cpu_autocast_float64_weights_raise_like_nn_rnn(cell, x_dtype):
    """Under CPU autocast a float64 module (or one float64 weight) with float32 or bfloat16
    input raises nn.RNN's RuntimeError, autocast casting no float64 weight (the op's own
    TypeError came through before, saying x was float32; a helper's review, session 29);
    float64 input runs."""
    ref, ours = (_cell_pair if cell else _rnn_pair)(f64, input_size=3, hidden_size=4)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    for m in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.raises(RuntimeError):
                m(x.to(x_dtype))
            m(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match=r"has dtype torch\.float64, which autocast does"):
            ours(x.to(x_dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_model_matches_nn_rnn_in_that_dtype(dtype):
    """A bfloat16/float16 model, no autocast: results in that dtype, float32 inside."""
    torch.manual_seed(0)
    ref = nn.RNN(8, 16, 2, bidirectional=True, dtype=dtype)
    ours = fusedrnn.RNN.from_torch(ref)
    exact = fusedrnn.RNN.from_torch(copy.deepcopy(ref).float())  # the same weights, float32
    x = torch.randn(20, 4, 8).to(dtype).requires_grad_(True)
    (got, got_hn), got_grads = _run(ours, lambda: (x,), [x])
    (want, want_hn), want_grads = _run(ref, lambda: (x,), [x])
    want32, want32_hn = exact(x.detach().float())
    assert got.dtype == got_hn.dtype == dtype and all(g.dtype == dtype for g in got_grads)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_hn.float(), want_hn.float(), rtol=2e-2, atol=2e-2)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert _rel(g, w) < 5e-2

    # Closer to the float32 result than nn.RNN in that dtype, by the norm of the error: the
    # largest error (_rel) is one rounding of that dtype in both, so which one is larger
    # depends on the input (seed 0's draw changed with session 20's from_torch, and h_n's
    # largest errors were 0.00372 against nn.RNN's 0.00368 under torch 2.13). By the norm
    # fusedrnn was closer for 20 seeds out of 20 in both dtypes (session 20).
    def error(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    assert error(got, want32) < error(want, want32)
    assert error(got_hn, want32_hn) < error(want_hn, want32_hn)


# -- the output changed in place before the backward ----------------------------------------

_IN_PLACE = {
    "add_": lambda o: o.add_(o.detach() * 0.5 + 1.0),  # a residual `out += f(...)`
    "relu_": torch.relu_,
    "setitem": lambda o: o.__setitem__(-1, 0.25),
}


def _in_place_grads(module, x, change, packed=False):
    for p in module.parameters():
        p.grad = None
    x.grad = None
    inp = pack_padded_sequence(x, torch.tensor([4, 2, 1])) if packed else x
    out, hn = module(inp)
    change(_data(out))
    _loss((out, hn)).backward()
    return [x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("change", list(_IN_PLACE))
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_layers": 2}, {"bidirectional": True}, {"batch_first": True}, {"packed": True}],
    ids=["L1", "L2", "bi", "BT", "packed"],
)
@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
def test_output_changed_in_place_before_backward(dtype, kwargs, change):
    """nn.RNN's output may be changed in place before the backward (its saved states are
    other tensors); ours is the saved states, and the backward computes them again. The
    gradients are nn.RNN's (and with float64 and the same kernels, our own unchanged run's)."""
    kwargs = dict(kwargs)
    packed = kwargs.pop("packed", False)
    ref, ours = _rnn_pair(dtype, input_size=3, hidden_size=5, **kwargs)
    x = torch.randn(4, 3, 3, dtype=dtype, requires_grad=True)
    want = _in_place_grads(ref, x, _IN_PLACE[change], packed)
    got = _in_place_grads(ours, x, _IN_PLACE[change], packed)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[dtype])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_a_wrong_weight_is_named_as_the_module_names_it(packed):
    """A parameter replaced by one of the wrong shape or dtype: the error names it
    (weight_hh_l1_reverse), not only its role in a layer (w_hh), and is a RuntimeError, as
    torch.nn.RNN's and RNNCell's are (an `except RuntimeError` written for them catches
    it; it was a ValueError or TypeError up to session 19)."""
    x = torch.randn(5, 2, 3)
    if packed:
        x = pack_sequence([torch.randn(3, 3), torch.randn(2, 3)])
    for name, bad, match in (
        ("weight_hh_l1_reverse", torch.randn(4, 5), r"shape \(4, 4\), got \(4, 5\)"),
        ("bias_ih_l1", torch.randn(4, dtype=f64), "dtype .torch.float32., got torch.float64"),
        ("weight_ih_l1", torch.randn(4, 4), r"shape \(4, 8\), got \(4, 4\)"),
        ("weight_hh_l0", torch.randn(4, 4, dtype=f64), "dtype .torch.float32., got torch.float64"),
    ):
        ref = nn.RNN(3, 4, num_layers=2, bidirectional=True)
        module = fusedrnn.RNN.from_torch(ref)
        for m in (ref, module):
            setattr(m, name, torch.nn.Parameter(bad))
        with pytest.raises(RuntimeError):
            ref(x)
        with pytest.raises(RuntimeError, match=f"fusedrnn: {name} must have .*{match}"):
            module(x)
    for name in ("weight_hh", "bias_hh"):
        ref = nn.RNNCell(3, 4)
        cell = fusedrnn.RNNCell.from_torch(ref)
        for m in (ref, cell):
            setattr(m, name, torch.nn.Parameter(getattr(m, name).detach().double()))
        with pytest.raises(RuntimeError):
            ref(torch.randn(2, 3))
        with pytest.raises(RuntimeError, match=f"fusedrnn: {name} must have the input's dtype"):
            cell(torch.randn(2, 3))


def test_packed_batch_sizes_of_another_dtype_raise_nn_rnns_exception_types():
    """A hand-built PackedSequence whose batch_sizes is not int64: torch.nn.RNN raises a
    RuntimeError for other integer dtypes and a TypeError for floating ones; so does
    fusedrnn, with a message that says what it needs."""
    ref, ours = _rnn_pair(input_size=3, hidden_size=4)
    hx = torch.zeros(1, 2, 4, dtype=f64)
    for dtype, state in itertools.product((torch.int32, torch.uint8, torch.int16, f32, f64),
                                          (None, hx)):  # fmt: skip
        packed = PackedSequence(torch.randn(5, 3, dtype=f64), torch.tensor([2, 2, 1], dtype=dtype))
        # (torch's TypeError comes from making the zero state)
        error = TypeError if dtype.is_floating_point and state is None else RuntimeError
        with pytest.raises(error):
            ref(packed, state)
        with pytest.raises(error, match=f"batch_sizes must have dtype torch.int64, got {dtype}"):
            ours(packed, state)


def test_a_subclass_s_own_checks_are_called_as_nn_rnn_calls_them():
    """nn.RNN.forward calls check_forward_args (which calls check_input,
    get_expected_hidden_size and check_hidden_size) and permute_hidden: a subclass that
    overrides one to add or relax a check sees it called by fusedrnn.RNN too, on every
    kind of input (the lean path, which has none of them, declines such a module)."""
    inputs = (
        (torch.randn(5, 2, 3, dtype=f64),),
        (torch.randn(5, 2, 3, dtype=f64), torch.zeros(1, 2, 4, dtype=f64)),
        (pack_sequence([torch.randn(3, 3, dtype=f64), torch.randn(2, 3, dtype=f64)]),),
        (torch.randn(5, 3, dtype=f64, requires_grad=True),),
    )
    for method in ("check_forward_args", "check_input", "get_expected_hidden_size",
                   "check_hidden_size", "permute_hidden"):  # fmt: skip
        calls = {}

        def make(base, method=method, calls=calls):
            def counted(self, *arguments):
                calls[base] = calls.get(base, 0) + 1
                return getattr(base, method)(self, *arguments)

            return type("Checked", (base,), {method: counted})

        ref = make(nn.RNN)(3, 4, dtype=f64)
        ours = make(fusedrnn.RNN)(3, 4, dtype=f64)
        ours.load_state_dict(ref.state_dict())
        for args in inputs:
            for a, b in zip(ours(*args), ref(*args), strict=True):
                torch.testing.assert_close(_data(a), _data(b), **TOL[f64])
        assert calls[fusedrnn.RNN] == calls[nn.RNN] > 0, method

    class Strict(fusedrnn.RNN):  # an added check is enforced
        def check_input(self, input, batch_sizes):
            if input.abs().max() > 10:
                raise ValueError("input out of range")
            super().check_input(input, batch_sizes)

    with pytest.raises(ValueError, match="input out of range"):
        Strict(3, 4)(torch.full((5, 2, 3), 11.0))


def test_a_module_s_own_checks_set_on_the_instance_are_called():
    """The same methods set on one module (``m.permute_hidden = fn``): nn.RNN.forward calls
    them as it calls a subclass's; fusedrnn.RNN called neither (its class was asked only;
    a helper's review, session 32), on the lean path nor on the general one."""
    import types

    inputs = (
        (torch.randn(5, 2, 3, dtype=f64),),
        (torch.randn(5, 2, 3, dtype=f64), torch.zeros(1, 2, 4, dtype=f64)),
        (pack_sequence([torch.randn(3, 3, dtype=f64), torch.randn(2, 3, dtype=f64)]),),
    )
    for method in ("check_forward_args", "check_input", "get_expected_hidden_size",
                   "check_hidden_size", "permute_hidden"):  # fmt: skip
        calls = {}
        ref = nn.RNN(3, 4, dtype=f64)
        ours = fusedrnn.RNN(3, 4, dtype=f64)
        ours.load_state_dict(ref.state_dict())
        for m, base in ((ref, nn.RNN), (ours, fusedrnn.RNN)):

            def counted(self, *arguments, base=base, method=method, calls=calls):
                calls[base] = calls.get(base, 0) + 1
                return getattr(base, method)(self, *arguments)

            ours(*inputs[0])  # (a lean plan made before the assignment is dropped by it)
            setattr(m, method, types.MethodType(counted, m))
        for args in inputs:
            for grad in (False, True):
                with torch.set_grad_enabled(grad):
                    for a, b in zip(ours(*args), ref(*args), strict=True):
                        torch.testing.assert_close(_data(a), _data(b), **TOL[f64])
        assert calls[fusedrnn.RNN] == calls[nn.RNN] > 0, method


@pytest.mark.parametrize("how", ["functional_call", "assign", "parametrization"])
def test_a_parametrized_first_weight_s_dtype_is_read_as_computed(how):
    """With ``weight_ih_l0`` parametrized, the input's dtype was checked against the base
    class's weight cache, which functional_call, ``load_state_dict(assign=True)`` and a
    parametrization that changes the dtype leave stale: refused where nn.RNN (which
    refreshes the cache) runs, and a wrong input got a RuntimeError for nn.RNN's ValueError
    (a helper's review, session 32). Now checked on the weight the forward computes."""
    import torch.nn.utils.parametrize as P
    from torch.func import functional_call

    class Symmetric(nn.Module):
        def forward(self, w):
            return (w + w.T) / 2

    class Double(nn.Module):  # stored in float32, computed in float64
        def forward(self, w):
            return w.double()

        def right_inverse(self, w):
            return w.float()

    torch.manual_seed(0)
    results = []
    for cls in (nn.RNN, fusedrnn.RNN):
        torch.manual_seed(0)
        m = cls(3, 3, dtype=f64 if how != "parametrization" else f32)
        if how == "parametrization":
            P.register_parametrization(m, "weight_ih_l0", Double(), unsafe=True)
            P.register_parametrization(m, "weight_hh_l0", Double(), unsafe=True)
            P.register_parametrization(m, "bias_ih_l0", Double(), unsafe=True)
            P.register_parametrization(m, "bias_hh_l0", Double(), unsafe=True)
            x, wrong = torch.randn(5, 2, 3, dtype=f64), torch.randn(5, 2, 3)
            run = m
        else:
            P.register_parametrization(m, "weight_ih_l0", Symmetric())
            x, wrong = torch.randn(5, 2, 3), torch.randn(5, 2, 3, dtype=f64)
            if how == "functional_call":
                params = {k: v.detach().float() for k, v in m.named_parameters()}

                def run(*args, m=m, params=params):
                    return functional_call(m, params, args)
            else:
                m.load_state_dict({k: v.float() for k, v in m.state_dict().items()}, assign=True)
                run = m
        out, hn = run(x)
        with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float(64|32)\) does not"):
            run(wrong)
        results.append((out, hn))
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype == x.dtype
        torch.testing.assert_close(a, b, **TOL[x.dtype])


def test_a_cell_subclass_s_own_check_forward_args_is_called():
    """fusedrnn.RNNCell.check_forward_args (its nn.RNNCell checks) may be overridden: the
    override runs on every call (the lean path declines such a module), also after session
    20 moved the cell's own checks to a private method that reads each weight once."""
    calls = []

    class Checked(fusedrnn.RNNCell):
        def check_forward_args(self, input, hx):
            calls.append(input.dtype)
            if input.abs().max() > 10:
                raise ValueError("input out of range")
            super().check_forward_args(input, hx)

    cell = Checked(3, 4)
    cell(torch.randn(2, 3))
    cell.half()(torch.randn(2, 3, dtype=torch.float16))
    assert calls == [f32, torch.float16]
    with pytest.raises(ValueError, match="input out of range"):
        cell.float()(torch.full((2, 3), 11.0))


def test_a_parametrized_cell_weight_is_computed_once_per_call_as_in_nn_rnncell():
    """nn.RNNCell reads each weight once per call; fusedrnn.RNNCell read weight_ih three
    times and weight_hh twice up to session 19 (its checks read them too): an expensive
    parametrization (orthogonal) cost twice as much, and a random one (DropConnect) drew
    other numbers than under nn.RNNCell with the same seed."""
    from torch.nn.utils import parametrize

    class DropConnect(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, w):
            self.calls += 1
            return nn.functional.dropout(w, 0.5, self.training)

    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        ref, ours = _cell_pair(f64, input_size=3, hidden_size=4)
        drops = {}
        for m in (ref, ours):
            drops[m] = DropConnect()
            parametrize.register_parametrization(m, name, drops[m])
            drops[m].calls = 0  # (registering computes the weight once)
        x, h = torch.randn(2, 3, dtype=f64), torch.randn(2, 4, dtype=f64)
        for args in ((x, h), (x,), (x[0], h[0])):
            torch.manual_seed(1)
            want = ref(*args)
            torch.manual_seed(1)
            torch.testing.assert_close(ours(*args), want, **TOL[f64])
        assert drops[ours].calls == drops[ref].calls == 3, name


def test_converting_a_parametrized_or_pruned_module_is_refused_by_name():
    """from_torch / to_torch copy weights through the state dict; a parametrization or
    pruning renames a weight there (and keeps its recipe in the source): refused with a
    message that names the keys and the ways out, not load_state_dict's missing keys."""
    from torch.nn.utils import parametrizations, prune

    rnn = nn.RNN(3, 4)
    parametrizations.weight_norm(rnn, "weight_hh_l0")
    with pytest.raises(ValueError, match=r"extra: parametrizations\.weight_hh_l0\.original0.*"
                       r"missing: weight_hh_l0\).*remove_parametrizations"):  # fmt: skip
        fusedrnn.RNN.from_torch(rnn)
    cell = fusedrnn.RNNCell(3, 4)
    prune.l1_unstructured(cell, "weight_ih", 0.5)
    with pytest.raises(ValueError, match=r"extra: weight_ih_mask, weight_ih_orig.*prune\.remove"):
        cell.to_torch()
    prune.remove(cell, "weight_ih")  # the way out it names
    torch.testing.assert_close(cell.to_torch().weight_ih, cell.weight_ih)


def test_argument_forms_nn_rnn_takes_are_taken():
    """Forms torch.nn accepts and fusedrnn once refused (found by a fuzz audit): a packed
    input whose batch_sizes is a strided view, and a sparse state (RNN and RNNCell). A
    batch_sizes of the wrong rank gets a message that says so. The strided view is read by
    its values: nn.RNN (torch 2.13) reads its storage from the start instead, so the
    reference runs on a contiguous copy, and the storage here differs from the view (with
    equal leading elements, as before session 20, the test could not tell)."""
    torch.manual_seed(0)
    ref = torch.nn.RNN(3, 4, dtype=f64)
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(6, 3, dtype=f64)
    strided = torch.tensor([3, 0, 2, 0, 1, 0])[::2]  # the view [3, 2, 1]
    want = ref(PackedSequence(x, strided.contiguous()))
    for a, b in zip(ours(PackedSequence(x, strided)), want, strict=True):
        torch.testing.assert_close(getattr(a, "data", a), getattr(b, "data", b))
    x, h = torch.randn(5, 2, 3, dtype=f64), torch.randn(1, 2, 4, dtype=f64)
    for a, b in zip(ours(x, h.to_sparse()), ref(x, h), strict=True):
        torch.testing.assert_close(a, b)
    cell = torch.nn.RNNCell(3, 4, dtype=f64)
    torch.testing.assert_close(
        fusedrnn.RNNCell.from_torch(cell)(x[0], h[0].to_sparse()), cell(x[0], h[0])
    )
    with pytest.raises(ValueError, match=r"batch_sizes must be a 1-D tensor, got shape \(1, 3\)"):
        ours(PackedSequence(torch.randn(7, 3, dtype=f64), torch.tensor([[3, 2, 2]])))


@pytest.mark.parametrize("kind", ["rnn", "bidirectional", "cell"])
def test_inference_tensor_in_a_recorded_call_is_refused_by_name(kind):
    """An input made under torch.inference_mode, used where a graph is recorded: refused
    as nn.RNN refuses it, with a message that names it and says what to do (it was
    autograd's "Inference tensors do not track version counter")."""
    with torch.inference_mode():
        x = torch.randn(5, 2, 3)
    module = (
        fusedrnn.RNNCell(3, 4)
        if kind == "cell"
        else fusedrnn.RNN(3, 4, bidirectional=kind == "bidirectional")
    )
    x = x[0] if kind == "cell" else x
    with pytest.raises(RuntimeError, match=r"x is an inference tensor .* torch.no_grad"):
        module(x)
    with torch.inference_mode():
        out = module(x)  # where it is meant to be used
    assert out[0].is_inference() if kind != "cell" else out.is_inference()


@pytest.mark.parametrize("kind", ["rnn", "bidirectional", "cell"])
@pytest.mark.parametrize(
    ("frozen", "from_inference", "refused"),
    [
        (("weight_ih",), ("x",), None),  # x unsaved: trains
        (("weight_hh",), ("h",), None),  # h0 unsaved: trains
        (("weight_ih", "weight_hh"), ("x", "h"), None),
        (("weight_ih",), ("x", "h"), "h0"),  # h0 saved for dW_hh: refused by name
        (("weight_hh",), ("x",), "x"),  # x saved for dW_ih
    ],
)
def test_inference_tensor_that_no_gradient_reads_trains_as_in_nn_rnn(
    kind, frozen, from_inference, refused
):
    """An input made under torch.inference_mode that the backward does not read (x with a
    frozen weight_ih, the state with a frozen weight_hh): nn.RNN saves nothing of it and
    trains; so does fusedrnn (it refused every such input by name). One the backward reads
    is refused by name, as autograd refuses it in nn.RNN. Computing the states again after
    the output changed in place is refused: nothing can tell whether such an input changed."""
    f64 = torch.float64
    directions = 2 if kind == "bidirectional" else 1
    made = {"x": torch.randn(5, 2, 3, dtype=f64), "h": torch.randn(directions, 2, 4, dtype=f64)}
    with torch.inference_mode():
        for name in from_inference:
            made[name] = made[name].clone()
    x, h = made["x"], made["h"]
    if kind == "cell":
        ref, ours_type, x, h = torch.nn.RNNCell(3, 4, dtype=f64), fusedrnn.RNNCell, x[0], h[0]
    else:
        ref = torch.nn.RNN(3, 4, bidirectional=kind == "bidirectional", dtype=f64)
        ours_type = fusedrnn.RNN
    ours = ours_type.from_torch(ref)
    for m in (ref, ours):
        for name, p in m.named_parameters():
            p.requires_grad_(not name.startswith(frozen))
    if refused is not None:
        with pytest.raises(RuntimeError, match=r"[Ii]nference tensors? cannot be saved"):
            ref(x, h)
        with pytest.raises(RuntimeError, match=rf"{refused} is an inference tensor"):
            ours(x, h)
        return
    grads = []
    for m in (ref, ours):
        out = m(x, h)
        loss = out.sum() if kind == "cell" else out[0].sum() + out[1].sum()
        grads.append(torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a)
    out = ours(x, h)
    out = out if kind == "cell" else out[0]
    out.mul_(2)  # the states must be computed again, from inputs nothing can check
    with pytest.raises(RuntimeError, match="made under inference mode"):
        out.sum().backward()


def test_output_changed_in_place_keeps_autograds_other_errors():
    """Only the output is computed again: an input or weight changed in place too, or
    replaced through .data (a segfault of the first recompute, which read the weights
    unchecked), is refused by name; a freed graph and a recorded second-order backward over
    a changed output still raise; a retained graph computes the same gradients again,
    also when the output is changed between its two backwards."""
    _, rnn = _rnn_pair(f64, input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3, dtype=f64, requires_grad=True)
    refused = "output was changed in place .* an input or weight was changed in place too"

    for change in ("weight_hh", "bias_ih"):  # saved for the backward, and not
        out, _ = rnn(x)
        out.mul_(2)
        with torch.no_grad():
            getattr(rnn, f"{change}_l0").add_(1e-3)
        with pytest.raises(RuntimeError, match=refused):
            out.sum().backward()

    out, _ = rnn(x)
    out.mul_(2)
    rnn.weight_hh_l0.data = torch.randn(1, 1, dtype=f64)  # no version bump
    with pytest.raises((RuntimeError, ValueError), match=r"w_ih must have shape|changed its"):
        out.sum().backward()

    _, rnn = _rnn_pair(f64, input_size=3, hidden_size=4)
    out, _ = rnn(x)
    out.mul_(2)
    out.sum().backward(retain_graph=True)
    first = rnn.weight_hh_l0.grad.clone()
    rnn.weight_hh_l0.grad = None
    out.sum().backward(retain_graph=True)
    torch.testing.assert_close(rnn.weight_hh_l0.grad, first, rtol=0, atol=0)
    with torch.no_grad():
        out.mul_(0.5)  # changed again between two backwards of the retained graph
    rnn.weight_hh_l0.grad = None
    out.sum().backward()
    torch.testing.assert_close(rnn.weight_hh_l0.grad, first, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="second time"):
        out.sum().backward()

    out, _ = rnn(x)
    out.add_(1)
    with pytest.raises(RuntimeError, match=r"modified in place.*create_graph"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    # Under torch.func.grad the same refusal, before the states are computed again (that
    # ran on wrapped tensors: torch's "Cannot access data pointer", up to session 29).
    cell = fusedrnn.RNNCell(3, 4)
    for f, arg in ((lambda v: rnn(v)[0].add_(1).square().sum(), x.detach()),
                   (lambda v: cell(v).add_(1).square().sum(), torch.randn(2, 3))):  # fmt: skip
        with pytest.raises(RuntimeError, match=r"modified in place.*under a transform"):
            torch.func.grad(f)(arg)


ALLOW_MUTATION_CASES = [
    dict(num_layers=2),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(num_layers=1, packed=True),
    dict(num_layers=1, bidirectional=True, packed=True),
    dict(cell=True),
]


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("case", ALLOW_MUTATION_CASES, ids=str)
def test_everything_changed_in_place_under_allow_mutation_on_saved_tensors(case, T):
    """Under torch.autograd.graph.allow_mutation_on_saved_tensors, saved tensors changed in
    place are cloned first and the backward gets the forward's values: the output, h_n, x
    and every weight of the last layer changed before the backward give nn.RNN's (and
    nn.RNNCell's) gradients. fusedrnn refused it where its states would have been computed
    again from the changed weights (until session 23): it now takes the clone."""
    case = dict(case)
    cell, packed = case.pop("cell", False), case.pop("packed", False)
    if cell:
        ref, ours = _cell_pair(input_size=3, hidden_size=4)
    else:
        ref, ours = _rnn_pair(input_size=3, hidden_size=4, **case)
    results = []
    for m in (ref, ours):
        torch.manual_seed(1)
        x = torch.randn(T, 2, 3, dtype=f64, requires_grad=True)
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            if cell:
                h = None
                for t in range(T):
                    h = m(x[t], h)
                out, hn = h, h  # the cell's output: its saved state
            else:
                xi = x.transpose(0, 1) if case.get("batch_first") else x
                if packed:
                    xi = pack_padded_sequence(xi, torch.tensor([T, max(1, T - 2)]))
                out, hn = m(xi)
                out = out.data if packed else out
            loss = out.square().sum() + hn.sum()
            last = "" if cell else f"_l{m.num_layers - 1}"
            with torch.no_grad():
                out.mul_(2)
                hn.add_(1)
                x.mul_(3)
                for name, p in m.named_parameters():
                    if name.endswith(last):
                        p.mul_(1.5)
            loss.backward()
        results.append([x.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_output_changed_in_place_in_a_function_that_returns_the_loss():
    """The caller's output gone before the backward (a local of a function returning the
    loss; autograd frees the last reference on the way): the layer held it up to its
    backward."""
    ref, ours = _rnn_pair(f64, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=f64)

    def loss_of(m):
        out, _ = m(x)
        out += 1.0
        return out.square().sum()

    grads = []
    for m in (ref, ours):
        loss_of(m).backward()
        grads.append([p.grad for p in m.parameters()])
    for g, w in zip(*reversed(grads), strict=True):
        torch.testing.assert_close(g, w, **TOL[f64])


@pytest.mark.parametrize("batch_first", [False, True], ids=["TB", "BT"])
def test_output_changed_in_place_with_a_frozen_input_weight(batch_first):
    """With weight_ih frozen the layer does not save x; x (here the lean path's time-major
    copy, or an embedding's output) is gone by the backward, and the recomputation needs
    it: the layer holds it up to its first backward (it raised before)."""
    ref, ours = _rnn_pair(f64, input_size=3, hidden_size=4, num_layers=2, batch_first=batch_first)
    for m in (ref, ours):
        m.weight_ih_l0.requires_grad_(False)
        m.weight_ih_l1.requires_grad_(False)
    emb = nn.Embedding(7, 3, dtype=f64)
    tokens = torch.randint(0, 7, (5, 2))
    grads = []
    for m in (ref, ours):
        emb.weight.grad = None

        def loss_of(m=m):
            out, _ = m(emb(tokens))
            out.mul_(2)
            return out.square().sum()

        loss_of().backward()
        grads.append(
            [emb.weight.grad.clone(), *(p.grad for p in m.parameters() if p.requires_grad)]
        )
    for g, w in zip(*reversed(grads), strict=True):
        torch.testing.assert_close(g, w, **TOL[f64])


@pytest.mark.parametrize("when", ["before", "between"])
@pytest.mark.parametrize("case", ["batch_first", "transposed_x", "inner_layer", "bidirectional"])
def test_output_changed_in_place_then_two_backwards_of_a_retained_graph(case, when):
    """The output changed in place before the first or between two backwards of a retained
    graph, with weight_ih frozen: the layer saved no x and computes its states again from
    an x the caller does not hold (the lean path's time-major copy, an inner layer's
    input), and here from an output the caller no longer holds. The second backward needs
    them (it raised: the first had let them go); both give nn.RNN's gradients."""
    kwargs = {"input_size": 3, "hidden_size": 4}
    x = torch.randn(5, 2, 3, dtype=f64)
    frozen = ["weight_ih_l0"]
    if case == "batch_first":
        kwargs["batch_first"] = True
        x = x.transpose(0, 1).contiguous()
    elif case == "transposed_x":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    elif case == "inner_layer":
        kwargs["num_layers"], frozen = 2, ["weight_ih_l1"]
    else:
        kwargs["bidirectional"], kwargs["batch_first"] = True, True
        x = x.transpose(0, 1).contiguous()
        frozen = ["weight_ih_l0", "weight_ih_l0_reverse"]
    grads = []
    for m in _rnn_pair(f64, **kwargs):
        for name in frozen:
            getattr(m, name).requires_grad_(False)
        out, _ = m(x)
        if when == "before":
            out.mul_(2.0)
        # A weighted sum: its backward does not read out (a square's would, and refuse out
        # changed between the backwards, in nn.RNN's graph too).
        loss = (out * torch.linspace(-1.0, 2.0, out.numel(), dtype=f64).view_as(out)).sum()
        params = [p for p in m.parameters() if p.requires_grad]
        first = torch.autograd.grad(loss, params, retain_graph=True)
        if when == "between":
            with torch.no_grad():
                out.mul_(2.0)
        del out  # the caller's reference gone: the layer holds it for the retained graph
        second = torch.autograd.grad(loss, params)
        grads.append((first, second))
    (want1, want2), (got1, got2) = grads
    for g, w in zip((*got1, *got2), (*want1, *want2), strict=True):
        torch.testing.assert_close(g, w, **TOL[f64])


@pytest.mark.parametrize(
    "change",
    ["w_ih_bidirectional", "x_bidirectional", "hx_frozen_w_hh", "hx_frozen_w_hh_bidirectional"],
)
def test_a_tensor_no_requested_gradient_reads_may_change_before_backward(change):
    """nn.RNN's graph saves x only for dW_ih, W_ih only for dx and h0 only for dW_hh (the
    first step's previous state): changing one of them in place between the forward and a
    backward that asks for none of those gradients is allowed. The layers save as much and
    no more (the bidirectional layer saved all three, the others h0 always: autograd's
    "modified by an inplace operation" error), and give nn.RNN's gradients."""
    bidirectional = change.endswith("bidirectional")
    results = []
    for m in _rnn_pair(f64, input_size=3, hidden_size=4, bidirectional=bidirectional):
        torch.manual_seed(1)
        x = torch.randn(5, 2, 3, dtype=f64)
        hx = torch.randn(2 if bidirectional else 1, 2, 4, dtype=f64)
        if change == "x_bidirectional":
            m.weight_ih_l0.requires_grad_(False)
            m.weight_ih_l0_reverse.requires_grad_(False)
        if change.startswith("hx"):
            for name in ("weight_hh_l0", "weight_hh_l0_reverse")[: 1 + bidirectional]:
                getattr(m, name).requires_grad_(False)
        out, hn = m(x, hx)
        loss = out.square().sum() + hn.sum()
        with torch.no_grad():
            if change == "w_ih_bidirectional":
                m.weight_ih_l0.mul_(0.9)  # say, a weight clamp before the backward
            elif change == "x_bidirectional":
                x.zero_()  # say, a reused input buffer
            else:
                hx.zero_()  # say, a reused state buffer
        params = [p for p in m.parameters() if p.requires_grad]
        results.append(torch.autograd.grad(loss, params))
    for g, w in zip(*reversed(results), strict=True):
        torch.testing.assert_close(g, w, **TOL[f64])


def test_compile_packed_with_state_under_checkpoint_logs_no_pickle_failure(caplog):
    """Packed input with a state, under checkpoint, in a fullgraph compile: the same values
    as eager, and no "Failed to pickle cache key" warning (with its traceback) from
    Inductor, whose cache key held the message lambda of a torch._check (session 24, found
    by a compile audit)."""
    from torch.utils.checkpoint import checkpoint

    torch._dynamo.reset()
    rnn = fusedrnn.RNN(3, 4)

    def f(packed, h):
        out, h_n = checkpoint(rnn, packed, h, use_reentrant=False)
        return out.data, h_n

    x = torch.randn(6, 3, 3)
    h = torch.randn(1, 3, 4)
    packed = pack_padded_sequence(x, torch.tensor([2, 6, 4]), enforce_sorted=False)
    with torch._inductor.config.patch(fx_graph_cache=True), caplog.at_level("WARNING"):
        got = torch.compile(f, fullgraph=True)(packed, h)
    for a, b in zip(got, f(packed, h), strict=True):
        torch.testing.assert_close(a, b, **TOL[f32])
    assert not [r for r in caplog.records if "Failed to pickle" in r.getMessage()]


@pytest.mark.skipif(
    not fusedrnn._C.cpu_has_bf16(), reason="the bfloat16 kernels need a CPU with AVX512_BF16"
)
def test_output_changed_in_place_inside_a_model_under_autocast():
    """Under CPU autocast the layers run the registered op, whose setup_context learns from
    rnn_layer that the output goes to the caller: a model that changes it in place and
    returns something else (the output gone before the backward) gets nn.RNN's gradients
    (autograd's error before)."""

    class Model(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn, self.fc = rnn, nn.Linear(4, 2)

        def forward(self, x):
            out, _ = self.rnn(x)
            torch.relu_(out)
            return self.fc(out)

    ref, ours = _rnn_pair(f32, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3)
    grads = []
    for rnn in (ref, ours):
        torch.manual_seed(0)
        model = Model(rnn)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().sum()
        loss.backward()
        grads.append([p.grad.float() for p in rnn.parameters()])
    for g, w in zip(*reversed(grads), strict=True):
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.05)  # bfloat16 roundings


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_checkpointed_layers_hold_no_activations(bidirectional):
    """Under activation checkpointing the layers' inputs and outputs are autograd's to drop:
    nothing the layers keep for a changed output holds them (a strong reference did)."""
    from torch.utils.checkpoint import checkpoint

    _, rnn = _rnn_pair(f32, input_size=8, hidden_size=16, num_layers=3, bidirectional=bidirectional)
    x = torch.randn(20, 4, 8, requires_grad=True)
    out = checkpoint(lambda x: rnn(x)[0], x, use_reentrant=False)
    held = []
    node, seen = out.grad_fn, set()
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for name in ("out_alias", "inputs"):
            value = getattr(node, name, None)
            values = value if isinstance(value, list) else [value]
            held += [
                v
                for v in values
                if isinstance(v, torch.Tensor) and not v.requires_grad and v.numel()
            ]
        stack += [f for f, _ in node.next_functions]
    assert [tuple(t.shape) for t in held] in ([], [tuple(out.shape)])  # the caller's output
    out.sum().backward()


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_backward_lets_go_of_the_layer_inputs(bidirectional):
    """What the backward would need to compute the states again is let go once a backward
    found its saved tensors intact: a caller holding the loss (so the graph) after the
    backward must not keep each layer's input alive (autograd frees the saved tensors)."""
    _, rnn = _rnn_pair(f32, input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    x0 = torch.randn(5, 2, 3, requires_grad=True)
    x = x0 * 2  # a non-leaf input, referenced by nothing of ours after the backward
    alive = weakref.ref(x)
    loss = rnn(x)[0].sum()
    del x
    loss.backward()
    gc.collect()
    assert alive() is None
    assert loss.grad_fn is not None  # the graph itself is still held


def test_what_a_retained_graph_holds_goes_with_its_last_backward():
    """A backward that retains the graph keeps what the layer holds for the next one, which
    may have to compute the states again (the output changed in place): a layer input the
    layer did not save (weight_ih frozen). The backward that frees the graph lets go of it,
    though the caller still holds the output and the loss (a first fix of session 22 kept
    it, and the whole output, until the caller dropped them)."""
    _, rnn = _rnn_pair(f32, input_size=3, hidden_size=4)
    rnn.weight_ih_l0.requires_grad_(False)
    x0 = torch.randn(5, 2, 3, requires_grad=True)
    x = x0 * 2  # referenced by nothing of the caller's after this
    alive = weakref.ref(x)
    out = rnn(x)[0]  # (h_n, held, would hold the graph)
    del x
    out.mul_(2)
    loss = out.sum()
    loss.backward(retain_graph=True)
    gc.collect()
    assert alive() is not None  # the next backward reads it
    loss.backward()
    gc.collect()
    assert alive() is None and out.grad_fn is not None


@pytest.mark.parametrize("kwargs", [{}, {"batch_first": True}], ids=["TB", "BT"])
def test_compiled_output_changed_in_place_before_backward(kwargs):
    """Compiled, the last layer's saved output was the buffer Inductor returned, and a change
    made to it reached the backward silently (wrong gradients, no error): a compiled module
    returns a copy (ops.output_copy)."""
    torch._dynamo.reset()
    ref, ours = _rnn_pair(f32, input_size=3, hidden_size=4, num_layers=2, **kwargs)
    x = torch.randn(5, 3, 3, requires_grad=True)
    want = _in_place_grads(ref, x, _IN_PLACE["add_"])
    got = _in_place_grads(torch.compile(ours, fullgraph=True), x, _IN_PLACE["add_"])
    for g, w in zip(got[:1], want[:1], strict=True):
        torch.testing.assert_close(g, w, **TOL[f32])
    for (_, p), w in zip(ours.named_parameters(), want[1:], strict=True):
        torch.testing.assert_close(p.grad, w, **TOL[f32])


@pytest.mark.parametrize(
    "route",
    ["export", "compiled_export", "compiled_no_grad_export", "compiled_op", "hooks",
     "clone_hooks", "save_on_cpu"],
)  # fmt: skip
def test_output_changed_in_place_on_every_route(route):
    """The other routes to the backward of a changed output, each once silently wrong: an
    exported module compiled later (the export skipped the copy; until session 22 also one
    exported under torch.no_grad, as inference exports are, and trained), the layer op compiled on
    its own (the copy lived in the modules only), and saved_tensors_hooks in eager mode
    (autograd checks no version under hooks, and the hooks handed the changed output back
    as the saved states; hooks that copy drop a second layer's input, which the
    recomputation then takes from the saved tensors)."""
    torch._dynamo.reset()
    layers = 2 if route.endswith("hooks") else 1
    ref, ours = _rnn_pair(f64, input_size=4, hidden_size=6, num_layers=layers)
    x = torch.randn(5, 3, 4, dtype=f64)
    if route == "compiled_op":
        steps = torch.empty(0, dtype=torch.int64)

        def layer(x):
            w = [ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0]
            h0 = x.new_zeros(3, 6)
            h, hn = fusedrnn.ops.rnn_layer(x.reshape(15, 4), *w, h0, steps)
            return h.view(5, 3, 6), hn[None]

        run = torch.compile(layer, fullgraph=True)
    elif route in ("export", "compiled_export", "compiled_no_grad_export"):
        with torch.no_grad() if route == "compiled_no_grad_export" else nullcontext():
            run = torch.export.export(ours, (x,)).module()
        run = torch.compile(run, fullgraph=True) if route.startswith("compiled") else run
    else:
        run = ours
    hooks = _HOOKS.get(route, nullcontext)
    grads = []
    for m in (ref, run):
        for p in (*ref.parameters(), *ours.parameters()):
            p.grad = None
        with hooks():
            out, hn = m(x)
        out.mul_(2)
        (out.square().sum() + hn.sum()).backward()
        grads.append([ref.weight_hh_l0.grad, ref.weight_ih_l0.grad] if m is ref else
                     [ours.weight_hh_l0.grad, ours.weight_ih_l0.grad])  # fmt: skip
    for g, w in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g, w, **TOL[f64])


def test_output_changed_in_place_through_a_frozen_export_compiled_later():
    """A frozen model exported from an input that needs no grad (nothing records a
    gradient while exporting), compiled later and run on an input that does: the input
    gradient of a changed output was silently wrong (off by up to 21 here)."""
    torch._dynamo.reset()
    ref, ours = _rnn_pair(f64, input_size=2, hidden_size=3)
    for m in (ref, ours):
        m.requires_grad_(False)
    x0 = torch.randn(3, 2, 2, dtype=f64)
    run = torch.compile(torch.export.export(ours, (x0,)).module(), fullgraph=True)
    grads = []
    for m in (ref, run):
        x = x0.clone().requires_grad_(True)
        out, _ = m(x)
        out.mul_(3)
        grads.append(torch.autograd.grad(out.sum(), x)[0])
    torch.testing.assert_close(grads[1], grads[0], **TOL[f64])


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_compiled_cell_output_changed_in_place_before_backward(batched):
    """The same for RNNCell (an unbatched compiled cell gave wrong gradients silently;
    nn.RNNCell refuses the change, eager and compiled, fusedrnn's cell computes it)."""
    torch._dynamo.reset()
    _, cell = _cell_pair(f32, input_size=3, hidden_size=4)
    x = torch.randn((2, 3) if batched else (3,), requires_grad=True)
    grads = []
    for f in (cell, torch.compile(cell, fullgraph=True)):
        for p in (x, *cell.parameters()):
            p.grad = None
        h = f(x)
        h.mul_(2)
        h.square().sum().backward()
        grads.append([x.grad, *(p.grad for p in cell.parameters())])
    for g, w in zip(*grads, strict=True):
        torch.testing.assert_close(g, w, **TOL[f32])


# -- torch.compile and torch.export ---------------------------------------------------------


class _Tagger(nn.Module):
    """A small model around the drop-ins: RNN, then a cell over its outputs, then a head."""

    def __init__(self):
        super().__init__()
        self.rnn = fusedrnn.RNN(3, 4, 2, bidirectional=True, batch_first=True)
        self.cell = fusedrnn.RNNCell(8, 5, nonlinearity="relu")
        self.head = nn.Linear(5, 2)

    def forward(self, x, h0):
        out, hn = self.rnn(x, h0)
        return self.head(self.cell(out[:, -1])), hn


def _compare_with_eager(fn, make_args, params, tol):
    results = []
    for f in (fn, torch.compile(fn, fullgraph=True)):
        outputs = f(*make_args())
        results.append((outputs, torch.autograd.grad(_loss(outputs), params)))
    (want, want_grads), (got, got_grads) = results
    for g, w in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        torch.testing.assert_close(g, w, **tol)


# A warning torch itself gives: dynamo reads .grad of any non-leaf input (here the packed
# data) while wrapping it. (Inductor's use of deprecated torch.jit code: pyproject.toml.)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compile_fullgraph_padded_and_packed():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Tagger()
    x = torch.randn(3, 6, 3, requires_grad=True)
    h0 = torch.randn(4, 3, 4, requires_grad=True)
    _compare_with_eager(model, lambda: (x, h0), [x, h0, *model.parameters()], TOL[f32])

    rnn = model.rnn

    def packed(packed_input, h0):
        out, hn = rnn(packed_input, h0)
        return out.data, hn

    lengths = torch.tensor([2, 6, 4])
    _compare_with_eager(
        packed,
        lambda: (pack_padded_sequence(x, lengths, True, enforce_sorted=False), h0),
        [x, h0, *rnn.parameters()],
        TOL[f32],
    )


def test_compile_with_a_transposed_state_and_under_checkpoint():
    """Found by session 20's review of torch.compile. A state whose [B, H] slices are
    transposed views (an h0 computed as (W z^T)^T): Inductor asserted on h_n's strides,
    because the fake kernels gave h_n h0's strides where the kernels write it contiguous
    (without Inductor's size asserts h_n came out wrong). A layer under
    torch.utils.checkpoint in a fullgraph compile: Dynamo could not trace the thread-local
    flag that ops.rnn_layer sets ('Observed exception'; without fullgraph the whole model
    silently ran eagerly)."""
    from torch.utils.checkpoint import checkpoint

    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = nn.RNN(5, 6)
    ours = fusedrnn.RNN.from_torch(ref)
    x, hx = torch.randn(4, 3, 5), torch.randn(1, 6, 3).transpose(1, 2)

    def step(module):
        def run(x, hx):
            out, hn = module(x, hx)
            return out, hn * 2 + 1

        return run

    compiled = torch.compile(step(ours), fullgraph=True)
    # Inductor's graph cache (on disk, keyed by the graph, not by the fake kernels) would
    # serve a graph compiled with other fakes: this compile must run them.
    with torch._inductor.config.patch(fx_graph_cache=False):
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                for got, want in zip(compiled(x, hx), step(ref)(x, hx), strict=True):
                    torch.testing.assert_close(got, want, **TOL[f32])

    for layer, inp in ((ours, x), (fusedrnn.RNNCell(5, 6), x[0])):
        torch._dynamo.reset()
        inp = inp.clone().requires_grad_(True)  # a leaf (Dynamo warns on a view's .grad)

        def checkpointed(inp, layer=layer):
            out = checkpoint(layer, inp, use_reentrant=False)
            return out[0] if isinstance(out, tuple) else out

        params = [inp, *layer.parameters()]
        results = []

        def run(f, inp=inp, params=params, results=results):
            out = f(inp)
            results.append((out, *torch.autograd.grad(out.square().sum(), params)))

        # Compiled first, in a thread of its own: the failure needed a thread whose
        # thread-local flag no eager call had set yet (a user's first call).
        thread = threading.Thread(target=run, args=(torch.compile(checkpointed, fullgraph=True),))
        thread.start()
        thread.join()
        assert len(results) == 1, "the compiled call raised (see the thread's traceback)"
        run(checkpointed)
        for got, want in zip(results[0], results[1], strict=True):
            torch.testing.assert_close(got, want, **TOL[f32])


@pytest.mark.skipif(
    not fusedrnn._C.cpu_has_bf16(), reason="the bfloat16 kernels need a CPU with AVX512_BF16"
)
def test_compile_fullgraph_bfloat16():
    """A bfloat16 model compiled: its layers run the registered ops on the bfloat16 kernels
    (before session 9 the compiled backward raised a TypeError from rnn_layer_grads). Equal
    to eager up to bfloat16 roundings: compiled, a bidirectional layer is two layers whose
    input gradients torch adds (one more rounding), and the head's GEMMs are torch's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Tagger().to(torch.bfloat16)
    x = torch.randn(3, 6, 3, dtype=torch.bfloat16, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    params = [x, h0, *model.parameters()]
    results = []
    for f in (model, torch.compile(model, fullgraph=True)):
        outputs = f(x, h0)
        loss = sum(o.float().sum() for o in outputs)
        results.append((*outputs, *torch.autograd.grad(loss, params)))
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
        scale = want.float().abs().max().clamp_min(1e-3)
        assert (got.float() - want.float()).abs().max() <= 2**-6 * scale


def test_float16_trains_compiled_under_fake_tensors_and_on_meta():
    """A float16 layer's backward (computed in float32 copies) checks its tensors' storage
    before copying them: under torch.compile (fake and functional tensors), FakeTensorMode
    and the meta device that check must leave them alone (it read their data address and
    raised, in session 32's first version; a helper's review)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch._dynamo.reset()
    torch.manual_seed(0)
    f16 = torch.float16
    ref = nn.RNN(3, 8, dtype=f16)
    ours = fusedrnn.RNN(3, 8, dtype=f16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=f16)
    grads = []
    for m in (ours, torch.compile(ours, backend="aot_eager")):
        xx = x.clone().requires_grad_()
        m(xx)[0].float().sum().backward()
        grads.append(xx.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-3, atol=2e-3)
    with FakeTensorMode():
        m = fusedrnn.RNN(3, 8, dtype=f16)
        xx = torch.randn(5, 2, 3, dtype=f16, requires_grad=True)
        m(xx)[0].float().sum().backward()
        assert xx.grad.shape == xx.shape
    m = fusedrnn.RNN(3, 8, dtype=f16, device="meta")
    xx = torch.randn(5, 2, 3, dtype=f16, device="meta", requires_grad=True)
    m(xx)[0].float().sum().backward()
    assert xx.grad.shape == xx.shape and xx.grad.is_meta


# (torch's own warnings while compiled autograd traces: Dynamo reading .grad of non-leaf
# tensors, and not tracing autograd's pybind11 builtins.)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_autograd_over_an_eager_forward_matches_nn_rnn():
    """Compiled autograd traces the eager layers' backward with Dynamo: the storage check of
    the tensors the kernels read (their storage's size, which fake tensors do not have)
    stays out of the trace (a TorchRuntimeError in session 32's first version; a helper's
    review). Gradients are nn.RNN's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=f64)
    ours = fusedrnn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=f64)
    ours.load_state_dict(ref.state_dict())
    results = []
    for m in (ref, ours):
        x = torch.randn(5, 2, 3, dtype=f64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_()
        out, hn = m(x)
        with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
            (out.sin().sum() + hn.square().sum()).backward()
        results.append([x.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL[f64])
    torch._dynamo.reset()


@pytest.mark.parametrize("packed", [False, True])
def test_flop_counter_counts_what_nn_rnn_counts(packed):
    """torch.utils.flop_counter.FlopCounterMode (MFU estimates) counted 0 for fusedrnn: the
    ops' GEMMs run inside them. Each op now has a formula, and the totals are nn.RNN's
    wherever both compute the same products (inference; training with h0 requiring grad:
    the BPTT always carries the gradient into h0, which nn.RNN skips otherwise)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(module, x, h, train):
        counter = FlopCounterMode(display=False)
        with counter:
            lengths = torch.tensor([6, 4, 3])
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
            out, h_n = module(inp, h)
            if train:
                (getattr(out, "data", out).sum() + h_n.sum()).backward()
        return counter.get_total_flops()

    for layers, bidirectional in ((1, False), (2, True)):
        ref = nn.RNN(5, 7, layers, bidirectional=bidirectional)
        ours = fusedrnn.RNN.from_torch(ref)
        h = torch.randn(layers * (1 + bidirectional), 3, 7, requires_grad=True)
        for x_grad in (False, True):
            x = torch.randn(6, 3, 5, requires_grad=x_grad)
            for train in (False, True):
                expected = count(ref, x, h, train)
                assert expected > 0 and count(ours, x, h, train) == expected
            if not packed:  # h0 needs no gradient: 2 B H^2 more a layer-direction here
                extra = 2 * 3 * 7 * 7 * layers * (1 + bidirectional)
                frozen = h.detach()
                assert count(ours, x, frozen, True) == count(ref, x, frozen, True) + extra
    cell = nn.RNNCell(5, 7)
    x, h = torch.randn(3, 5, requires_grad=True), torch.randn(3, 7, requires_grad=True)
    counts = []
    for module in (cell, fusedrnn.RNNCell.from_torch(cell)):
        counter = FlopCounterMode(display=False)
        with counter:
            module(x, h).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts[0] == counts[1]


def test_fx_symbolic_trace_keeps_the_modules_whole_as_for_nn_rnn():
    """torch.fx.symbolic_trace of a model holding the modules: each is one call_module
    node, as FX's default tracer keeps torch.nn.RNN and RNNCell (it traced into fusedrnn's
    forward and stopped at its shape checks, so FX-based tools failed on such a model);
    the traced model runs them, bit for bit. The module traced as the root fails as
    nn.RNN does."""

    class Net(nn.Module):
        def __init__(self, rnn, cell):
            super().__init__()
            self.rnn, self.cell = rnn, cell

        def forward(self, x, h):
            out, h_n = self.rnn(x, h)
            return self.cell(out[:, -1]).sum(-1) + h_n.sum()

    for kind in (nn, fusedrnn):
        net = Net(kind.RNN(3, 4, 2, batch_first=True, bidirectional=True), kind.RNNCell(8, 5))
        traced = torch.fx.symbolic_trace(net)
        modules = [n.target for n in traced.graph.nodes if n.op == "call_module"]
        assert modules == ["rnn", "cell"]
        x, h = torch.randn(2, 6, 3, requires_grad=True), torch.randn(4, 2, 4)
        torch.testing.assert_close(traced(x, h), net(x, h), rtol=0, atol=0)
        traced(x, h).sum().backward()
        assert x.grad is not None and net.rnn.weight_hh_l1.grad is not None
        with pytest.raises(torch.fx.proxy.TraceError, match="control flow"):
            torch.fx.symbolic_trace(net.rnn)

    class StateOnly(nn.Module):  # a concrete input, a traced state
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, h):
            return self.rnn(torch.ones(5, 2, 3), h)[0]

    for kind in (nn, fusedrnn):
        traced = torch.fx.symbolic_trace(StateOnly(kind.RNN(3, 4)))
        assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == ["rnn"]


def test_jit_script_is_refused_clearly():
    """TorchScript cannot compile the Python forward: a clear error that names the ways
    out (before, a "Lambda aren't supported" from deep inside the forward), and the model
    is left as it was (torch swaps in whatever __prepare_scriptable__ returns). The cell's
    way out, scripting ``to_torch()``, works (torch.nn.RNN itself does not script in
    torch 2.13: the scripted module has no forward)."""
    torch.manual_seed(0)
    model = _Tagger()
    for target, pattern in (
        (model, r"fusedrnn\.RNN:.*torch\.compile"),
        (model.rnn, r"fusedrnn\.RNN:.*torch\.compile"),
        (model.cell, r"fusedrnn\.RNNCell:.*to_torch\(\)"),
    ):
        with pytest.raises(RuntimeError, match=pattern):
            torch.jit.script(target)
    assert type(model.rnn) is fusedrnn.RNN and type(model.cell) is fusedrnn.RNNCell
    x, h = torch.randn(3, 8), torch.randn(3, 5)
    torch.testing.assert_close(torch.jit.script(model.cell.to_torch())(x, h), model.cell(x, h))


def test_export_runs_the_custom_op():
    torch.manual_seed(0)
    model = _Tagger().eval()
    x, h0 = torch.randn(3, 6, 3), torch.randn(4, 3, 4)
    exported = torch.export.export(model, (x, h0))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert "fusedrnn.rnn_layer_forward.default" in targets
    x2 = torch.randn(3, 6, 3)
    for got, want in zip(exported.module()(x2, h0), model(x2, h0), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_export_of_packed_input_runs_other_lengths(strict):
    """Packed input exported (nn.RNN cannot be, in either mode): the program runs sequences
    of other lengths as eager does. Non-strict export (torch.export's default) failed on
    int() of the data-dependent batch size before session 32 (a helper's review)."""
    torch.manual_seed(0)
    model = fusedrnn.RNN(3, 4)
    packed = pack_padded_sequence(torch.randn(6, 3, 3), torch.tensor([6, 4, 2]),
                                  enforce_sorted=False)  # fmt: skip
    other = pack_padded_sequence(torch.randn(6, 3, 3), torch.tensor([5, 6, 1]),
                                 enforce_sorted=False)  # fmt: skip
    exported = torch.export.export(model, (packed,), strict=strict)
    got, want = exported.module()(other), model(other)
    torch.testing.assert_close(got[0].data, want[0].data, rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


# -- DistributedDataParallel with gloo -----------------------------------------------------

DDP_STEPS, DDP_BATCH, DDP_WORLD = 3, 8, 2


class _Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fusedrnn.RNN(3, 6, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _ddp_problem():
    torch.manual_seed(0)
    model = _Regressor()
    x = torch.randn(DDP_STEPS, DDP_BATCH, 5, 3)
    y = torch.randn(DDP_STEPS, DDP_BATCH, 1)
    return model, x, y


def _train(model, x, y, parameters):
    """SGD on mean squared error; the gradients of every step, in parameter order."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = []
    for step in range(DDP_STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[step]), y[step]).backward()
        grads.append([p.grad.clone() for p in parameters])
        opt.step()
    return grads


def _ddp_worker(rank, init_method, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=DDP_WORLD,
        timeout=timedelta(seconds=60),
    )
    model, x, y = _ddp_problem()
    shard = slice(rank * DDP_BATCH // DDP_WORLD, (rank + 1) * DDP_BATCH // DDP_WORLD)
    ddp = nn.parallel.DistributedDataParallel(model)
    grads = _train(ddp, x[:, shard], y[:, shard], list(model.parameters()))
    torch.save(grads, f"{out_dir}/grads{rank}.pt")
    dist.barrier()
    # torch 2.13's gloo teardown (destroy_process_group / interpreter exit) aborts now and
    # then with "terminate called without an active exception", with torch.nn.RNN alone
    # too (seen in 2 of 12 runs): the results are saved, so leave without tearing down.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes_matches_full_batch_training(tmp_path):
    """Mean loss over equal shards: DDP's averaged gradients are the full-batch ones."""
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    context = mp.start_processes(
        _ddp_worker,
        args=(init_method, str(tmp_path)),
        nprocs=DDP_WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    try:
        while not context.join(timeout=5):
            assert time.monotonic() < deadline, "DDP workers did not finish in time"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    model, x, y = _ddp_problem()
    want = _train(model, x, y, list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    for rank in range(DDP_WORLD):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        for step, (g_step, w_step) in enumerate(zip(got, want, strict=True)):
            for name, g, w in zip(names, g_step, w_step, strict=True):
                torch.testing.assert_close(
                    g, w, **TOL[f32], msg=lambda m, s=step, n=name: f"step {s} {n}: {m}"
                )


_DTENSOR_SCRIPT = """
import os, tempfile, torch, torch.distributed as dist, fusedrnn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, distribute_module, distribute_tensor
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
x, h = torch.randn(5, 2, 3), torch.randn(1, 2, 4)
dx, dh = (distribute_tensor(t, mesh, [Replicate()]) for t in (x, h))
for model in (fusedrnn.RNN(3, 4), fusedrnn.RNNCell(3, 4)):
    try:
        distribute_module(model, mesh)(dx if type(model).__name__ == "RNN" else dx[0],
                                       dh if type(model).__name__ == "RNN" else dh[0])
    except NotImplementedError as e:
        print("refused:", e, flush=True)
os._exit(0)  # as the DDP workers: torch's gloo teardown aborts now and then
"""


def test_dtensor_input_is_refused_naming_the_op():
    """DTensor arguments reach the registered op (never raw pointers), which has no sharding
    rule: DTensor's own error names it, for both modules. (The padded input's batch_sizes
    was a plain tensor made at import, and DTensor's complaint was about mixing plain
    tensors with DTensors.) One process, gloo, in a subprocess of its own."""
    if not dist.is_available():
        pytest.skip("torch without torch.distributed")
    run = subprocess.run(
        [sys.executable, "-c", _DTENSOR_SCRIPT], capture_output=True, text=True, timeout=240
    )
    refusal = "refused: Operator fusedrnn.rnn_layer_forward.default does not have a sharding"
    assert run.returncode == 0 and run.stdout.count(refusal) == 2, run.stdout + run.stderr


def test_float32_accuracy_is_that_of_nn_rnn():
    """float32 against the float64 truth: fusedrnn's error is at most twice nn.RNN's own, on
    3-layer models with short sequences (the unpacked few-row path) and longer ones."""
    for T, B in ((5, 4), (40, 16)):
        worst = {"nn": 0.0, "fused": 0.0}
        for seed in range(20):
            torch.manual_seed(seed)
            truth_model = torch.nn.RNN(3, 8, num_layers=3, dtype=f64)
            x = torch.randn(T, B, 3, dtype=f64)
            nn32 = torch.nn.RNN(3, 8, num_layers=3)
            nn32.load_state_dict({k: v.float() for k, v in truth_model.state_dict().items()})

            def grads(model, dtype, x=x):
                xx = x.detach().to(dtype).requires_grad_(True)
                out, hn = model(xx)
                (out.sum() + hn.sum()).backward()
                return [out.detach(), *(p.grad for p in model.parameters()), xx.grad]

            truth = grads(truth_model, f64)
            for name, model in (("nn", nn32), ("fused", fusedrnn.RNN.from_torch(nn32))):
                for g, t in zip(grads(model, f32), truth, strict=True):
                    worst[name] = max(worst[name], float((g.double() - t).abs().max()))
        assert worst["fused"] <= 2 * worst["nn"] + 1e-7, (T, B, worst)


def test_converting_leaves_the_random_stream_alone():
    """from_torch / to_torch draw the initialization they overwrite from a forked
    generator: swapping a model's layer for fusedrnn's after seeding leaves the draws that
    follow (dropout masks, data order) as they were. Up to session 19 each conversion drew
    from the global generator. A subclass's own __init__ and buffers are built as usual (a
    first version built the module on the meta device and left a non-persistent buffer
    uninitialized)."""
    torch.manual_seed(3)
    ref = nn.RNN(3, 4, num_layers=2, bidirectional=True)
    cell = nn.RNNCell(3, 4, nonlinearity="relu", dtype=f64)
    want = torch.rand(5)
    torch.manual_seed(3)
    ref = nn.RNN(3, 4, num_layers=2, bidirectional=True)
    cell = nn.RNNCell(3, 4, nonlinearity="relu", dtype=f64)
    ours, ours_cell = fusedrnn.RNN.from_torch(ref), fusedrnn.RNNCell.from_torch(cell)
    back, back_cell = ours.to_torch(), ours_cell.to_torch()
    assert torch.equal(torch.rand(5), want)
    for a, b in ((ref, ours), (ours, back), (cell, ours_cell), (ours_cell, back_cell)):
        for (name, p), (other, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            assert name == other and torch.equal(p, q) and p.dtype == q.dtype
    assert ours_cell.nonlinearity == "relu" and back_cell.weight_ih.dtype == f64

    class Scaled(fusedrnn.RNN):  # a subclass's own state, made in its __init__
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("scale", torch.ones(1), persistent=False)
            self.largest = float(self.weight_hh_l0.detach().abs().max())

    converted = Scaled.from_torch(ref)  # (its buffer was garbage when built on meta)
    assert torch.equal(converted.scale, torch.ones(1)) and converted.largest > 0
