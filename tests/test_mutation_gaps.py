"""Behaviours that mutation testing of the Python layer found no test pinning down.

Each test compares fusedrnn with torch.nn.RNN (or the NumPy reference) on a case the other
tests leave out; the docstring names the bug it catches.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

f64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-13)


def _pair(seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.RNN(dtype=f64, **kwargs)
    return ref, fusedrnn.RNN.from_torch(ref)


def _data(out):
    return out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_eval_mode_applies_no_dropout_on_any_path(bidirectional, layout, grad):
    """A model with dropout in eval mode runs without it: inference on the lean path
    (no_grad) and the general path (packed input) included. (Dropout applied in eval mode
    on either path survived the suite: its dropout test only ran eval calls that record a
    graph on padded input.)"""
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=3, dropout=0.5,
                      bidirectional=bidirectional)  # fmt: skip
    ref.eval()
    ours.eval()
    x = torch.randn(6, 3, 3, dtype=f64)
    if layout == "packed":
        x = pack_padded_sequence(x, [6, 4, 2], enforce_sorted=False)
    with torch.set_grad_enabled(grad):
        want = ref(x)
        for _ in range(2):  # (a dropout mask would differ between calls too)
            got = ours(x)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(_data(a), _data(b), **TOL)


@pytest.mark.parametrize("kind", ["rnn", "rnn_bi", "rnn_packed", "cell"])
def test_bias_gradients_are_separate_tensors(kind):
    """The two biases get the same gradient values, but in two tensors, as nn.RNN's: with
    one tensor for both, torch.autograd.grad returned it twice, and changing one gradient
    in place (clipping, scaling) changed the other. (The suite only read .grad, where
    AccumulateGrad happens to copy a shared tensor.)"""
    torch.manual_seed(0)
    if kind == "cell":
        module = fusedrnn.RNNCell(3, 4, dtype=f64)
        out = module(torch.randn(2, 3, dtype=f64))
        biases = [module.bias_ih, module.bias_hh]
    else:
        module = fusedrnn.RNN(3, 4, bidirectional=kind == "rnn_bi", dtype=f64)
        x = torch.randn(5, 2, 3, dtype=f64)
        if kind == "rnn_packed":
            x = pack_padded_sequence(x, [5, 3])
        out = _data(module(x)[0])
        biases = [module.bias_ih_l0, module.bias_hh_l0]
        if kind == "rnn_bi":
            biases += [module.bias_ih_l0_reverse, module.bias_hh_l0_reverse]
    grads = torch.autograd.grad(out.pow(2).sum(), biases)
    for g_ih, g_hh in zip(grads[::2], grads[1::2], strict=True):
        torch.testing.assert_close(g_ih, g_hh, rtol=0, atol=0)
        before = g_hh.clone()
        g_ih.zero_()
        assert torch.equal(g_hh, before), "the two bias gradients share memory"


@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen_weights"])
@pytest.mark.parametrize(
    ("layout", "bidirectional"),
    [("padded", False), ("packed", False), ("cell", False), ("padded", True), ("packed", True)],
    ids=["padded-uni", "packed-uni", "cell", "padded-bi", "packed-bi"],
)
def test_state_gradient_when_the_input_needs_none(layout, bidirectional, frozen):
    """An encoder's h_n into a decoder fed plain data: only hx (and maybe the weights)
    requires grad, x does not. Each gradient asked for is nn.RNN's. (The suite's
    comparisons always made x require grad: a backward that returned dh0 only when dx
    was asked for, and None for hx otherwise, passed it.)"""
    if layout == "cell":
        torch.manual_seed(0)
        ref = nn.RNNCell(3, 4, dtype=f64)
        ours = fusedrnn.RNNCell.from_torch(ref)
        x, hx = torch.randn(2, 3, dtype=f64), torch.randn(2, 4, dtype=f64)
    else:
        ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
        D = 2 if bidirectional else 1
        x, hx = torch.randn(5, 3, 3, dtype=f64), torch.randn(2 * D, 3, 4, dtype=f64)
        if layout == "packed":
            x = pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False)
    results = []
    for module in (ref, ours):
        for p in module.parameters():
            p.requires_grad_(not frozen)
        h = hx.clone().requires_grad_(True)
        outputs = module(x, h)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        g = torch.Generator().manual_seed(3)
        loss = sum((_data(o) * torch.randn(_data(o).shape, generator=g, dtype=f64)).sum()
                   for o in outputs)  # fmt: skip
        wrt = [h] + [p for p in module.parameters() if p.requires_grad]
        results.append(torch.autograd.grad(loss, wrt, allow_unused=True))
    for got, want in zip(results[1], results[0], strict=True):
        assert got is not None
        torch.testing.assert_close(got, want, **TOL)


_LAYER0 = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


@pytest.mark.parametrize("x_grad", [True, False], ids=["x_grad", "x_data"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize(
    ("bidirectional", "frozen"),
    [(False, n) for n in _LAYER0]
    + [(True, n) for n in _LAYER0 + [n + "_reverse" for n in _LAYER0]],
    ids=lambda v: {False: "uni", True: "bi"}.get(v, v),
)
def test_one_frozen_weight_leaves_every_other_gradient_nn_rnns(bidirectional, frozen, layout,
                                                               x_grad):  # fmt: skip
    """Fine-tuning with one weight of one direction frozen: every other gradient is
    nn.RNN's. A layer saves x, h0 and w_ih only for the gradients that read them; saving
    them by the wrong flag (the other direction's, or dx's for dW_ih) computed dW_ih or
    dW_hh from absent tensors, read as zeros, and the suite (every weight trained, or all
    frozen) passed it."""
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(5, 3, 3, dtype=f64)
    hx = torch.randn(2 * D, 3, 4, dtype=f64)
    results = []
    for module in (ref, ours):
        module.get_parameter(frozen).requires_grad_(False)
        xx = x.clone().requires_grad_(x_grad)
        h = hx.clone().requires_grad_(True)
        inp = xx if layout == "padded" else pack_padded_sequence(xx, [5, 2, 4], False, False)
        out, hn = module(inp, h)
        g = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=f64)).sum()
                   for o in (_data(out), hn))  # fmt: skip
        wrt = [t for t in (xx, h) if t.requires_grad]
        wrt += [p for p in module.parameters() if p.requires_grad]
        results.append(torch.autograd.grad(loss, wrt))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("change", ["add_", "relu_"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_output_changed_in_place_with_a_given_state(bidirectional, layout, change):
    """The output changed in place before the backward, with an initial state given: the
    states computed again start from each direction's own h0, and every gradient is
    nn.RNN's. (The suite's in-place tests pass no hx: a recomputation from zeros, or from
    the forward direction's h0 for the reverse one, passed them.)"""
    ref, ours = _pair(input_size=3, hidden_size=4, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(5, 3, 3, dtype=f64)
    hx = torch.randn(D, 3, 4, dtype=f64)
    results = []
    for module in (ref, ours):
        xx, h = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
        inp = xx if layout == "padded" else pack_padded_sequence(xx, [5, 2, 4], False, False)
        out, hn = module(inp, h)
        o = _data(out)
        if change == "add_":
            o.add_(o.detach() * 0.5 + 1.0)
        else:
            o.relu_()
        g = torch.Generator().manual_seed(3)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=f64)).sum() for t in (o, hn))
        results.append(torch.autograd.grad(loss, [xx, h, *module.parameters()]))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_cuda_lean_inference_in_eval_mode_applies_no_dropout(monkeypatch):
    """_infer_cuda (the CUDA lean path's inference) in eval mode: no dropout between the
    layers, as nn.RNN. Run on the CPU with the CUDA recurrence stood in for by the CPU
    kernel, as test_dropin's test_cuda_lean_path_logic_on_the_cpu does, which checks
    dropout in training mode only."""
    from fusedrnn import _cuda, ops

    def recurrence(T, B, H, batch_sizes, reverse, nonlinearity, P, w_hh, h0, h, hn):
        ops._C.rnn_forward(ops.KERNEL_DTYPES[P.dtype], T, B, H, 0, reverse, nonlinearity,
                           P.data_ptr(), w_hh.data_ptr(), ops._addr(h0), h.data_ptr(),
                           hn.data_ptr(), 1)  # fmt: skip

    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=3, dropout=0.5)
    ref.eval()
    ours.eval()
    served = []
    lean = fusedrnn.RNN._forward_fast

    def spied(self, *args):
        result = lean(self, *args)
        served.append(result is not None)
        return result

    monkeypatch.setattr(fusedrnn.RNN, "_forward_fast", spied)
    monkeypatch.setattr(ops, "fast_input_cpu", lambda x: False)
    monkeypatch.setattr(ops, "fast_input_cuda", lambda x: True)
    monkeypatch.setattr(_cuda, "rnn_forward", recurrence)
    x = torch.randn(5, 2, 3, dtype=f64)
    with torch.no_grad():
        want = ref(x)
        got = ours(x)
    assert served == [True]  # the lean path's CUDA inference served it
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_gradcheck_finite_differences_on_sampled_elements_pass():
    """fusedrnn.gradcheck's finite differences on a sample of each tensor's elements
    (``max_fd_elements`` below its size): a right backward passes, each sampled numeric
    derivative compared with the analytic one at the same element. (Every other check
    runs tensors small enough to take all their elements: analytic values taken at other
    elements than the sampled ones passed the suite.)"""
    from fusedrnn.gradcheck import Config, check

    config = Config(nonlinearity="tanh", packed=False, h0=True, layers=1, T=4, B=2, I=3, H=4)
    report = check(config, checks=["finite-diff"], max_fd_elements=5)
    assert report.passed, report.format(verbose=True)
    sampled = [r for r in report.rows if "5 of" in (r.note or "")]
    assert len(sampled) >= 4  # input, h0, weight_ih_l0, weight_hh_l0 were sampled


def test_gradcheck_errors_fail_on_a_shape_mismatch():
    """A gradient of another shape than the reference's fails its row, whatever the
    values: a harness that passed it would hide a wrong-shaped gradient."""
    import numpy as np

    from fusedrnn import gradcheck

    for check_name in gradcheck.TOLERANCES:
        *_, passed = gradcheck._errors(np.zeros((2, 3)), np.zeros((3, 2)), check_name)
        assert not passed
        *_, passed = gradcheck._errors(np.zeros(4), np.zeros((4, 1)), check_name)
        assert not passed
        *_, passed = gradcheck._errors(np.ones((2, 3)), np.ones((2, 3)), check_name)
        assert passed


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["TB", "BT"])
def test_lean_path_backward_of_a_sum_of_the_output(batch_first, num_layers, reduce):
    """``out.sum().backward()`` on the lean path: the output gradient is one value
    expanded over [T, B, H] (every stride 0), which the backward reads in place as that
    one value. The gradients are nn.RNN's. (The suite's losses are random projections,
    with contiguous gradients: reading the expanded one as [T B, H] rows, past its one
    element, passed it.)"""
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=num_layers,
                      batch_first=batch_first)  # fmt: skip
    x = torch.randn(5, 3, 3, dtype=f64)
    results = []
    for module in (ref, ours):
        xx = x.clone().requires_grad_(True)
        out, hn = module(xx)
        loss = getattr(out, reduce)() + getattr(hn, reduce)()
        results.append(torch.autograd.grad(loss, [xx, *module.parameters()]))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("which", ["h0_fwd", "h0_rev"])
def test_bidirectional_layer_gradient_of_one_directions_state(which):
    """ops.rnn_bidirectional_layer with only one direction's initial state requiring grad:
    that state gets its gradient, the one two single-direction layers give. (The modules
    slice both states from one hx, so both always require grad there; a backward that
    returned the reverse state's gradient by the forward state's flag passed the suite.)"""
    from fusedrnn import ops

    g = torch.Generator().manual_seed(0)
    T, B, I, H = 4, 3, 2, 3
    x = torch.randn(T * B, I, generator=g, dtype=f64)
    wf = [torch.rand(*s, generator=g, dtype=f64) - 0.5 for s in ((H, I), (H, H), (H,), (H,))]
    wb = [torch.rand(*s, generator=g, dtype=f64) - 0.5 for s in ((H, I), (H, H), (H,), (H,))]
    h0f, h0b = torch.randn(B, H, generator=g, dtype=f64), torch.randn(B, H, generator=g, dtype=f64)
    steps = torch.empty(0, dtype=torch.int64)
    grad_out = torch.randn(T * B, 2 * H, generator=g, dtype=f64)
    results = []
    for fused in (True, False):
        s0f, s0b = h0f.clone(), h0b.clone()
        leaf = (s0f if which == "h0_fwd" else s0b).requires_grad_(True)
        if fused:
            out, hnf, hnb = ops.rnn_bidirectional_layer(x, tuple(wf), tuple(wb), s0f, s0b, steps)
        else:
            hf, hnf = ops.rnn_layer(x, *wf, s0f, steps, False, "tanh")
            hb, hnb = ops.rnn_layer(x, *wb, s0b, steps, True, "tanh")
            out = torch.cat((hf, hb), 1)
        loss = (out * grad_out).sum() + hnf.sum() + 2 * hnb.sum()
        (grad,) = torch.autograd.grad(loss, [leaf], allow_unused=True)
        assert grad is not None
        results.append(grad)
    torch.testing.assert_close(results[0], results[1], **TOL)
