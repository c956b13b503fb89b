"""The custom ops: gradcheck, gradgradcheck, opcheck, argument validation."""

import typing
import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fusedrnn
from fusedrnn import _C, _cuda, ops

f64 = torch.float64
PADDED = torch.empty(0, dtype=torch.int64)


def _layer_inputs(T=4, B=3, I=2, H=3, lengths=None, dtype=f64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        x = torch.randn(T * B, I, generator=g, dtype=dtype)
        batch_sizes = PADDED
    else:
        packed = pack_sequence([torch.randn(n, I, generator=g, dtype=dtype) for n in lengths])
        x, batch_sizes = packed.data, packed.batch_sizes
        B = int(batch_sizes[0])
    w = [torch.rand(*s, generator=g, dtype=dtype) - 0.5 for s in ((H, I), (H, H), (H,), (H,))]
    if not bias:
        w[2] = w[3] = None
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return x, *w, h0, batch_sizes


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("h0_grad", [True, False], ids=["h0", "no_h0_grad"])
def test_gradcheck(nonlinearity, reverse, lengths, h0_grad):
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(lengths=lengths)
    for t in (x, w_ih, w_hh, b_ih, b_hh):
        t.requires_grad_(True)
    h0.requires_grad_(h0_grad)

    def fn(x, w_ih, w_hh, b_ih, b_hh, h0):
        return ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs, reverse, nonlinearity)

    assert torch.autograd.gradcheck(fn, (x, w_ih, w_hh, b_ih, b_hh, h0))


def test_gradcheck_without_bias():
    x, w_ih, w_hh, _, _, h0, bs = _layer_inputs(lengths=[3, 3, 2])
    for t in (x, w_ih, w_hh, h0):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w_ih, w_hh, h0: ops.rnn_layer(x, w_ih, w_hh, None, None, h0, bs),
        (x, w_ih, w_hh, h0),
    )


# torch 2.15's opcheck reads .grad of a non-leaf tensor of its own making (a torch warning).
@pytest.mark.parametrize("lengths", [None, [3, 2, 2]], ids=["padded", "packed"])
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_opcheck_forward(lengths):
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(lengths=lengths, dtype=torch.float32)
    for t in (x, w_ih, w_hh, b_ih, b_hh, h0):
        t.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.fusedrnn.rnn_layer_forward.default,
        (x, w_ih, w_hh, b_ih, b_hh, h0, bs, False, "tanh"),
    )


def test_opcheck_backward():
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(lengths=[3, 2, 2])
    h, hn = ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs, True, "relu")
    torch.library.opcheck(
        torch.ops.fusedrnn.rnn_layer_backward.default,
        (w_hh, h, torch.randn_like(h), torch.randn_like(hn), bs, True, "relu"),
    )


def test_fake_kernels_give_the_real_kernels_strides():
    """The fakes (what torch.compile and export plan with) allocated outputs like a
    transposed h0 / grad_hn / h, where the real ops write contiguous ones: Inductor then
    asserted on h_n's strides, or without its size asserts read h_n wrongly (session 20's
    review). opcheck's fake-tensor test compares strides, on each op with transposed
    operands."""
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(T=3, B=2, I=2, H=4)
    h0_t = h0.t().contiguous().t()  # [B, H] with strides (1, B)
    torch.library.opcheck(
        torch.ops.fusedrnn.rnn_layer_forward.default,
        (x, w_ih, w_hh, b_ih, b_hh, h0_t, bs, False, "tanh"),
        test_utils=("test_faketensor",),
    )
    h, _ = ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs, False, "tanh")
    h_t, g_hn_t = h.t().contiguous().t(), torch.randn(4, 2, dtype=f64).t()
    torch.library.opcheck(
        torch.ops.fusedrnn.rnn_layer_backward.default,
        (w_hh, h_t, torch.randn_like(h), g_hn_t, bs, False, "tanh"),
        test_utils=("test_faketensor",),
    )
    torch.library.opcheck(
        torch.ops.fusedrnn.rnn_layer_grads.default,
        (x, w_ih, w_hh, h0, h, torch.randn_like(h), g_hn_t, bs, False, "tanh", True, True,
         True, True),
        test_utils=("test_faketensor",),
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_opcheck_output_copy():  # (the filter: torch 2.15's opcheck, as test_opcheck_forward)
    """The fourth registered op: the copy of the output that compiled and exported training
    graphs return (ops.private_when_compiled). A copy, not an alias, and its gradient is
    the incoming one."""
    x = torch.randn(5, 3, dtype=f64, requires_grad=True)
    torch.library.opcheck(torch.ops.fusedrnn.output_copy.default, (x,))
    y = torch.ops.fusedrnn.output_copy(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], g)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
def test_gradgradcheck(nonlinearity, reverse, lengths):
    """Second derivatives, reverse over reverse and forward over reverse, against finite
    differences of the first (the backward records the differentiable BPTT, _BPTT)."""
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(lengths=lengths)
    inputs = tuple(t.requires_grad_(True) for t in (x, w_ih, w_hh, b_ih, b_hh, h0))

    def fn(*tensors):
        return ops.rnn_layer(*tensors, bs, reverse, nonlinearity)

    assert torch.autograd.gradgradcheck(fn, inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
def test_backward_op_gradcheck_and_gradgradcheck(nonlinearity, reverse, lengths):
    """The BPTT op is differentiable to any order in reverse mode (its rule calls it again);
    _BPTT, which the layers' recorded backward and forward-mode rule call, in forward mode
    too (the op's torch.library registration has no forward-mode rule)."""
    _, _, w_hh, _, _, h0, bs = _layer_inputs(lengths=lengths)
    N, H = (12 if lengths is None else sum(lengths)), w_hh.shape[0]
    g = torch.Generator().manual_seed(1)
    # States away from 0, where relu's phi' jumps (finite differences would see the step).
    r = torch.rand(N, H, generator=g, dtype=f64) * 2 - 1
    h = r.sign() * (0.1 + 0.8 * r.abs())
    inputs = (w_hh, h, torch.randn(N, H, generator=g, dtype=f64),
              torch.randn(h0.shape, generator=g, dtype=f64))  # fmt: skip
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)

    def fn(*tensors):
        return ops.rnn_layer_backward(*tensors, bs, reverse, nonlinearity)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)

    def fn_forward_mode(*tensors):
        return ops._BPTT.apply(*tensors, bs, reverse, nonlinearity)

    assert torch.autograd.gradcheck(fn_forward_mode, inputs, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn_forward_mode, inputs, check_fwd_over_rev=True)


def _torch_layer(x, w_ih, w_hh, b_ih, b_hh, h0, T, reverse):
    """One padded tanh layer-direction in plain torch ops: the second-derivative reference."""
    xs, h, outs = x.view(T, -1, x.shape[1]), h0, [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        h = torch.tanh(xs[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh)
        outs[t] = h
    return torch.cat(outs), h


def test_bidirectional_layer_first_and_second_derivatives_match_torch():
    """The fused bidirectional node: its gradients with and without create_graph=True, and
    the derivatives of those gradients, against the same layer in plain torch ops."""
    torch.manual_seed(0)
    x = torch.randn(12, 3, dtype=f64, requires_grad=True)  # T = 4, B = 3
    w_fwd = [torch.randn(s, dtype=f64, requires_grad=True) for s in ((5, 3), (5, 5), (5,), (5,))]
    w_rev = [torch.randn(s, dtype=f64, requires_grad=True) for s in ((5, 3), (5, 5), (5,), (5,))]
    h0 = [torch.randn(3, 5, dtype=f64, requires_grad=True) for _ in range(2)]
    leaves = [x, *w_fwd, *w_rev, *h0]
    weight = torch.randn(12, 10, dtype=f64)

    def fused():
        return ops.rnn_bidirectional_layer(x, w_fwd, w_rev, *h0, PADDED)

    def plain():
        hf, hnf = _torch_layer(x, *w_fwd, h0[0], 4, False)
        hb, hnb = _torch_layer(x, *w_rev, h0[1], 4, True)
        return torch.cat((hf, hb), 1), hnf, hnb

    results = []
    for layer in (fused, plain):
        out, hnf, _ = layer()  # no gradient for hn of the reverse direction
        loss = (out * weight).sum() + hnf.square().sum()
        first = torch.autograd.grad(loss, leaves, retain_graph=True)
        first_graph = torch.autograd.grad(loss, leaves, create_graph=True)
        second = torch.autograd.grad(first_graph[0].square().sum() + first_graph[2].sum(), leaves)
        results.append((first, first_graph, second))
    for got, want in zip(*results, strict=True):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_double_backward_through_the_fused_grads_op_raises_clear_error():
    """The fused gradients op has no second derivative (nothing differentiates through it:
    a recorded backward takes the differentiable path); called directly, it says so."""
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs()
    h, hn = ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs)
    w_hh.requires_grad_(True)
    grads = ops.rnn_layer_grads(x, w_ih, w_hh, h0, h, torch.ones_like(h), torch.zeros_like(hn),
                                bs, False, "tanh", True, True, True, True)  # fmt: skip
    with pytest.raises(RuntimeError, match="double backward through the fused rnn_layer_grads"):
        grads[2].sum().backward()


def _call(**changes):
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(dtype=torch.float32)
    args = dict(
        x=x,
        w_ih=w_ih,
        w_hh=w_hh,
        b_ih=b_ih,
        b_hh=b_hh,
        h0=h0,
        batch_sizes=bs,
        reverse=False,
        nonlinearity="tanh",
    )
    args.update(changes)
    return ops.rnn_layer(**args)


x32, wih32, whh32, bih32, bhh32, h032, _ = _layer_inputs(dtype=torch.float32)


@pytest.mark.parametrize(
    ("changes", "exc", "pattern"),
    [
        (dict(x=x32.double()), TypeError, r"w_ih must have the dtype of x \(torch.float64\)"),
        (
            dict(x=x32.int()),
            TypeError,
            "x must have dtype float32, float64, bfloat16 or float16, got torch.int32",
        ),
        (dict(x=x32[None]), ValueError, r"x must be 2-D \[N, I\], got shape \(1, 12, 2\)"),
        (
            dict(w_ih=wih32.t()),
            ValueError,
            r"w_ih must have shape \[H, I\] = \(3, 2\) \(H from w_hh \(3, 3\), I from x\), "
            r"got \(2, 3\)",
        ),
        (dict(w_hh=whh32[:2]), ValueError, r"w_hh must be a square 2-D tensor"),
        (dict(b_ih=bih32[:2]), ValueError, r"b_ih must have shape \[H\] = \(3,\), got \(2,\)"),
        (dict(h0=h032[:, :2]), ValueError, r"h0 must have shape \[B, H\]"),
        (dict(h0=h032[:0]), ValueError, r"padded x must have no rows when B = 0"),
        (dict(x=x32[:11]), ValueError, r"padded x must have T\*B rows"),
        (dict(nonlinearity="gelu"), ValueError, "nonlinearity must be one of"),
        (dict(x="not a tensor"), TypeError, "x must be a torch.Tensor, got str"),
        (
            dict(batch_sizes=torch.tensor([3, 3, 3, 3], dtype=torch.int32)),
            TypeError,
            "batch_sizes must have dtype int64",
        ),
        (dict(batch_sizes=torch.tensor([[3, 3], [3, 3]])), ValueError, "batch_sizes must be 1-D"),
        (
            dict(batch_sizes=torch.tensor([4, 3, 3, 2])),
            ValueError,
            r"batch_sizes\[0\] must equal B = 3",
        ),
        (
            dict(batch_sizes=torch.tensor([3, 2, 3, 4])),
            ValueError,
            "batch_sizes must be non-increasing",
        ),
        (dict(batch_sizes=torch.tensor([3, 3, 3, 0])), ValueError, "batch_sizes must be >= 1"),
        (
            dict(batch_sizes=torch.tensor([3, 3, 3, 2])),
            ValueError,
            r"batch_sizes must sum to the rows of x \(12\), got sum 11",
        ),
        (dict(h0=torch.zeros(3, 3, device="meta")), ValueError, "h0 must be on the device of x"),
        # reverse was read as a truth value: None ran forward, 1 reversed.
        (dict(reverse=None), TypeError, r"reverse must be a bool \(True or False\), got NoneType"),
        (dict(reverse=1), TypeError, r"reverse must be a bool \(True or False\), got int"),
        # A NumPy bool or a one-element tensor too, as torch.sort refuses them for descending
        # (a tensor's value is data, which a compiled graph cannot branch on).
        (dict(reverse=np.True_), TypeError, r"reverse must be a bool .*got numpy\.bool"),
        (dict(reverse=torch.tensor(True)), TypeError, "reverse must be a bool .*got torch.Tensor"),
    ],
)
def test_bad_arguments_raise_named_errors(changes, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _call(**changes)


def _small_padded_layer(T=3, B=2, H=5, I=4):
    """x [T*B, I], w_ih, w_hh, h0 and an empty batch_sizes (padded) of a small layer."""
    x, w_ih, w_hh, h0 = (
        torch.randn(T * B, I),
        torch.randn(H, I),
        torch.randn(H, H),
        torch.randn(B, H),
    )
    return x, w_ih, w_hh, h0, torch.empty(0, dtype=torch.int64)


def test_backward_ops_name_a_sparse_grad_h_and_a_narrow_h():
    """The backward ops check grad_h's layout (a sparse one raised a raw 'Cannot access data
    pointer' before) and h's width against w_hh (the shared checks named w_ih's shape [H, I]
    for w_hh); an input audit found both."""
    x, w_ih, w_hh, h0, none = _small_padded_layer()
    B, H = h0.shape
    h, _ = ops.rnn_layer_forward(x, w_ih, w_hh, None, None, h0, none, False, "tanh")
    g, g_n = torch.randn_like(h), torch.randn(B, H)
    dense = r"grad_h must be a dense \(strided\) tensor, got layout torch.sparse_coo"
    with pytest.raises(TypeError, match=dense):
        ops.rnn_layer_backward(w_hh, h, g.to_sparse(), g_n, none, False, "tanh")
    with pytest.raises(TypeError, match=dense):
        ops.rnn_layer_grads(x, w_ih, w_hh, h0, h, g.to_sparse(), g_n, none, False, "tanh",
                            True, True, True, True)  # fmt: skip
    with pytest.raises(ValueError, match=r"h must have shape \[N, H\] with H = 4 \(w_hh is"):
        ops.rnn_layer_backward(w_hh[:4, :4], h, g, g_n, none, False, "tanh")
    # A missing tensor by its own name, h's rank as [N, H] (session 29: they were named as
    # the forward's x, w_ih, h0 and [N, I]; a helper's review).
    for i, name in ((0, "w_hh"), (1, "h"), (3, "grad_hn")):
        args = [w_hh, h, g, g_n]
        args[i] = None
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor, got NoneType"):
            ops.rnn_layer_backward(*args, none, False, "tanh")
    with pytest.raises(ValueError, match=r"h must be 2-D \[N, H\], got shape \(3, 2, 5\)"):
        ops.rnn_layer_backward(w_hh, h.view(3, 2, 5), g, g_n, none, False, "tanh")
    with pytest.raises(ValueError, match=r"h0 must have the shape of grad_hn \(2, 5\), got"):
        ops.rnn_layer_grads(x, w_ih, w_hh, None, h, g, g_n, none, False, "tanh", True, True,
                            True, True)  # fmt: skip


def test_a_flag_that_is_not_a_bool_is_refused_on_every_path():
    """reverse (and rnn_layer_grads' need_* flags) must be bools wherever a call comes in: the
    eager path (with and without a graph), the registered op (autocast sends rnn_layer there),
    torch.func and the op objects called directly. torch's dispatcher reads a schema's bool
    as the value's truth (None as False, 2.0 as True), so the op's body never sees it: the
    op objects check before it. (torch.ops.fusedrnn.* itself keeps that reading, as
    torch.ops.aten.* does.)"""
    x, w_ih, w_hh, h0, none = _small_padded_layer()
    B, H = h0.shape
    h, _ = ops.rnn_layer_forward(x, w_ih, w_hh, None, None, h0, none, False, "tanh")
    g, g_n = torch.randn_like(h), torch.randn(B, H)
    needs = [True, True, True, True]

    def layer(rev, x=x):
        return ops.rnn_layer(x, w_ih, w_hh, None, None, h0, none, rev)[0]

    def autocast(rev):
        with torch.autocast("cpu"):
            return layer(rev)

    calls = {
        "eager": layer,
        "graph": lambda rev: layer(rev, x.clone().requires_grad_()),
        "autocast": autocast,
        "func.grad": lambda rev: torch.func.grad(lambda x: layer(rev, x).sum())(x),
        "vmap": lambda rev: torch.vmap(lambda x: layer(rev, x))(x[None]),
        "forward op": lambda rev: ops.rnn_layer_forward(
            x, w_ih, w_hh, None, None, h0, none, rev, "tanh"
        ),
        "backward op": lambda rev: ops.rnn_layer_backward(w_hh, h, g, g_n, none, rev, "tanh"),
        "grads op": lambda rev: ops.rnn_layer_grads(
            x, w_ih, w_hh, h0, h, g, g_n, none, rev, "tanh", *needs
        ),
        "by keyword": lambda rev: ops.rnn_layer_backward(
            w_hh, h, g, g_n, none, nonlinearity="tanh", reverse=rev
        ),
    }
    for name, call in calls.items():
        for value in (None, 0, 2.0, "yes"):
            with pytest.raises(TypeError, match=r"reverse must be a bool \(True or False\)"):
                call(value)
                pytest.fail(f"{name}: reverse={value!r} was taken")
        call(True)
    for i in range(4):
        flags = list(needs)
        flags[i] = None
        name = ("need_dx", "need_dw_ih", "need_dw_hh", "need_db")[i]
        with pytest.raises(TypeError, match=f"{name} must be a bool"):
            ops.rnn_layer_grads(x, w_ih, w_hh, h0, h, g, g_n, none, False, "tanh", *flags)


def test_bidirectional_layer_names_the_direction_of_a_wrong_tensor():
    """Each direction's tensors by the names rnn_bidirectional_layer gives them (session 29:
    a wrong reverse weight was named as "w_ih" or "h0", with no direction; a helper's
    review)."""
    x, w_ih, w_hh, h0, none = _small_padded_layer()
    b = torch.randn(5)
    w = (w_ih, w_hh, b, b)
    cases = [
        ((w, (torch.randn(5, 3), w_hh, b, b), h0, h0), ValueError, r"w_rev\[0\] \(w_ih\) must"),
        (((w_ih, torch.randn(5, 4), b, b), w, h0, h0), ValueError, r"w_fwd\[1\] \(w_hh\) must"),
        ((w, (w_ih, w_hh, torch.randn(4), b), h0, h0), ValueError, r"w_rev\[2\] \(b_ih\) must"),
        ((w, (w_ih, w_hh, b, b.double()), h0, h0), TypeError, r"w_rev\[3\] \(b_hh\) must"),
        ((w, w, h0, None), TypeError, "h0_rev must be a torch.Tensor, got NoneType"),
    ]
    for (wf, wr, h0f, h0r), exc, match in cases:
        with pytest.raises(exc, match=match):
            ops.rnn_bidirectional_layer(x, wf, wr, h0f, h0r, none)


def test_one_meta_argument_among_cpu_ones_raises_for_every_op():
    """A tensor on the meta device among CPU ones sends a call to the op's fake kernel:
    each op must refuse it by name there, never return uninitialized CPU tensors (the
    backward op's fake skipped grad_h's checks and did; a helper's review, session 28)."""
    x, w_ih, w_hh, h0, none = _small_padded_layer()
    B, H = h0.shape
    b = torch.randn(H)
    h, _ = ops.rnn_layer_forward(x, w_ih, w_hh, b, b, h0, none, False, "tanh")
    g, g_n = torch.randn_like(h), torch.randn(B, H)
    calls = {
        "forward": (ops.rnn_layer_forward, [x, w_ih, w_hh, b, b.clone(), h0, none, False, "tanh"]),
        "backward": (ops.rnn_layer_backward, [w_hh, h, g, g_n, none, False, "tanh"]),
        "grads": (
            ops.rnn_layer_grads,
            [x, w_ih, w_hh, h0, h, g, g_n, none, False, "tanh", True, True, True, True],
        ),
    }
    for name, (op, args) in calls.items():
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor) or a is none:
                continue
            moved = list(args)
            moved[i] = a.to("meta")
            with pytest.raises((TypeError, ValueError), match="device"):
                op(*moved)
                pytest.fail(f"{name}: argument {i} on meta was accepted")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_backward_walks_the_batch_sizes_of_its_forward(bidirectional):
    """batch_sizes changed after the forward without a version bump (through NumPy): the
    backward uses the sizes the forward used (the kernels trust them: such a change gave
    wrong gradients, or rows past the buffers and an abort; a helper's review, session 28).
    """
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 4, 5
    x = torch.randn(T * B, I, dtype=f64)
    w = [torch.randn(H, I, dtype=f64), torch.randn(H, H, dtype=f64) * 0.3, None, None]
    w_rev = [t.clone() if t is not None else None for t in w]
    for t in (*w, *w_rev):
        if t is not None:
            t.requires_grad_()
    h0 = torch.randn(B, H, dtype=f64, requires_grad=True)

    def grads(change):
        bs = torch.tensor([2, 2, 2])
        if bidirectional:
            out, hn_f, hn_r = ops.rnn_bidirectional_layer(x, w, w_rev, h0, h0, bs)
            loss = out.sin().sum() + hn_f.sum() + hn_r.sum()
        else:
            out, hn = ops.rnn_layer(x, *w, h0, bs)
            loss = out.sin().sum() + hn.sum()
        bs.numpy()[:] = change
        params = [t for t in (*w, *w_rev, h0) if t is not None]
        return torch.autograd.grad(loss, params, allow_unused=True)

    want = grads([2, 2, 2])
    for change in ([2, 1, 3], [2, -5, 2]):
        for g, wg in zip(grads(change), want, strict=True):
            assert (g is None and wg is None) or torch.equal(g, wg)


def test_a_tensor_whose_storage_was_freed_is_refused():
    """Address 0 is what the kernels read as an absent bias, state or gradient: a tensor
    whose storage was freed (resize_(0), as FSDP does) was taken as zeros, silently (a
    helper's review, session 28). Refused, as torch's own ops refuse it."""
    torch.manual_seed(0)
    x, w_ih, w_hh = torch.randn(6, 4), torch.randn(5, 4), torch.randn(5, 5) * 0.3
    b, h0 = torch.randn(5), torch.randn(2, 5)
    none = torch.empty(0, dtype=torch.int64)

    def freed(t):
        t = t.clone()
        t.untyped_storage().resize_(0)
        return t

    h, _ = ops.rnn_layer(x, w_ih, w_hh, b, None, h0, none)
    g, g_n = torch.randn_like(h), torch.randn(2, 5)
    calls = [
        lambda: ops.rnn_layer(x, w_ih, w_hh, freed(b), None, h0, none),
        lambda: ops.rnn_layer(x, w_ih, w_hh, b, None, freed(h0), none),
        lambda: ops.rnn_layer_backward(w_hh, h, freed(g), g_n, none, False, "tanh"),
        lambda: ops.rnn_layer_backward(w_hh, h, g, freed(g_n), none, False, "tanh"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="has no memory"):
            call()
    for i in range(6):  # a nested tensor in any place: named (torch's internal error before)
        args = [x, w_ih, w_hh, b, b.clone(), h0]
        with warnings.catch_warnings():  # (the strided layout's "prototype stage" warning)
            warnings.simplefilter("ignore", UserWarning)
            args[i] = torch.nested.nested_tensor([args[i], args[i]])
        with pytest.raises(TypeError, match="must be a plain tensor, got a nested tensor"):
            ops.rnn_layer(*args, none)
    # batch_sizes whose values are not those in its memory, a bidirectional layer's weights
    # that are not 4-tuples: named (garbage and internal errors before; same review).
    with pytest.raises(ValueError, match="batch_sizes must not be a negative view"):
        ops.rnn_layer(x, w_ih, w_hh, b, None, h0, torch._neg_view(-torch.tensor([2, 2, 2])))
    with pytest.raises(TypeError, match=r"w_rev must be a tuple \(w_ih, w_hh, b_ih, b_hh\), got"):
        ops.rnn_bidirectional_layer(x, (w_ih, w_hh, b, b), (w_ih, w_hh, b), h0, h0, none)
    m = fusedrnn.RNN(4, 5)
    m.bias_ih_l0.data.untyped_storage().resize_(0)
    with pytest.raises(RuntimeError, match="has no memory"):
        m(x.view(3, 2, 4))
    # The CUDA launchers take every address through the same check (session 29: w_hh, h and
    # the outputs went by data_ptr() unchecked, read at address 0 on the GPU).
    assert _cuda._addr(None) == 0 and _cuda._addr(b) == b.data_ptr()
    with pytest.raises(RuntimeError, match="has no memory"):
        _cuda._addr(freed(w_hh))


@pytest.mark.parametrize("how", ["freed", "shrunk"])
def test_a_tensor_whose_storage_was_freed_is_named(how):
    """Each op names a freed tensor as it names its other errors: by its argument (it was
    "a tensor argument of shape (5, 5)", and a freed strided view, which the op copies
    before the kernel reads it, got torch's "its data is not allocated yet"; a helper's
    review of session 29's gaps). A storage shrunk below what the tensor spans
    (``resize_(n)``), which the kernels read past its end (garbage, or a segfault for a
    large one), likewise (session 32; ``torch.nn.RNN`` refuses a shrunk weight or state)."""
    x, w_ih, w_hh, h0, none = _small_padded_layer()
    B, H = h0.shape
    b = torch.randn(H)
    h, _ = ops.rnn_layer(x, w_ih, w_hh, b, b, h0, none)
    g, g_n = torch.randn_like(h), torch.randn(B, H)

    def freed(t, strided):
        if strided:  # the same shape in memory that is not contiguous
            t = torch.empty(t.shape[::-1]).t() if t.dim() == 2 else torch.empty(2 * len(t))[::2]
        else:
            t = t.clone()
        t.untyped_storage().resize_(0 if how == "freed" else t.untyped_storage().nbytes() // 2)
        return t

    def error(call) -> str:
        """``call``'s error as text: a failure's traceback would hold the freed tensors,
        and their repr (pytest prints each frame's arguments) crashes torch."""
        try:
            call()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return "no error"

    # Each op's tensor arguments by name, in order.
    layer = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b, "b_hh": b, "h0": h0}
    backward = {"w_hh": w_hh, "h": h, "grad_h": g, "grad_hn": g_n}
    grads = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "h0": h0, "h": h, "grad_h": g, "grad_hn": g_n}
    bidirectional = {"x": x}
    for d in ("fwd", "rev"):
        for i, name in enumerate(("w_ih", "w_hh", "b_ih", "b_hh")):
            bidirectional[f"w_{d}[{i}] ({name})"] = layer[name]
        bidirectional[f"h0_{d}"] = h0
    calls = [
        (layer, lambda *t: ops.rnn_layer(*t, none)),
        (layer, lambda *t: ops.rnn_layer_forward(*t, none, False, "tanh")),  # the registered op
        (backward, lambda *t: ops.rnn_layer_backward(*t, none, False, "tanh")),
        (grads, lambda *t: ops.rnn_layer_grads(*t, none, False, "tanh", True, True, True, True)),
        (
            bidirectional,
            lambda x, *t: ops.rnn_bidirectional_layer(x, t[:4], t[5:9], t[4], t[9], none),
        ),
    ]
    for named, call in calls:
        for i, name in enumerate(named):
            for strided in (False, True):
                args = list(named.values())
                args[i] = freed(args[i], strided)
                got = error(lambda: call(*args))  # noqa: B023 (called here, at once)
                problem = "was freed" if how == "freed" else "holds"
                want = f"RuntimeError: fusedrnn: {name}'s storage {problem}"
                assert got.startswith(want), (name, got)


def _error_text(call) -> str:
    """``call``'s error as text, "no error" if none: a failure's traceback would hold the
    freed tensors, and their repr (pytest prints each frame's arguments) crashes torch."""
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


@pytest.mark.parametrize("how", ["freed", "shrunk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_a_weight_freed_between_forward_and_backward_is_named(bidirectional, dtype, how):
    """A parameter's storage freed after the forward (as FSDP frees what it gathered) is
    named when the backward would read it, not by its shape ("a tensor argument of shape
    (4, 4) has no memory", or for w_hh the binding's "expected a tensor"): by the layer's
    argument on the ops' own calls, by the module's name through a module (session 31; it
    was the op's "w_fwd[1] (w_hh)" there). Its meta (shape, dtype, device) is unchanged, so
    the saved-tensor check passes it on. float16 (computed in float32; a bidirectional
    layer as two one-direction ops) names it the same (torch's unnamed "data is not
    allocated yet", then "w_hh" for either direction, before session 31). A storage shrunk
    (``resize_(n)``) instead: the same, with what it holds (the kernels read past its end
    before session 32)."""
    size = 0 if how == "freed" else 8  # bytes: two float32 or four float16 elements
    problem = "was freed" if how == "freed" else "holds 8 bytes"
    prefix = "w_fwd[{}] ({})" if bidirectional else "{1}"
    suffix = "_reverse" if bidirectional else ""
    for index, kind in enumerate(("w_ih", "w_hh")):
        torch.manual_seed(0)
        x = torch.randn(5, 2, 3, dtype=dtype, requires_grad=True)
        m = fusedrnn.RNN(3, 4, bidirectional=bidirectional, dtype=dtype)
        # (Copied first: torch's clone of a freed tensor crashes.)
        w = [getattr(m, n).detach().clone().requires_grad_() for n in m._flat_weights_names]
        out, hn = m(x)
        getattr(m, f"weight_{kind[2:]}_l0{suffix}").untyped_storage().resize_(size)
        got = _error_text(lambda: (out.sum() + hn.sum()).backward())  # noqa: B023
        want = f"RuntimeError: fusedrnn: parameter weight_{kind[2:]}_l0{suffix}'s storage {problem}"
        assert got.startswith(want), got
        # The op itself, called with such tensors: the op's names.
        none = torch.empty(0, dtype=torch.int64)
        rows, h0 = x.reshape(10, 3), torch.zeros(2, 4, dtype=dtype)
        if bidirectional:
            out, *hn = ops.rnn_bidirectional_layer(rows, w[:4], w[4:], h0, h0, none)
        else:
            out, *hn = ops.rnn_layer(rows, *w, h0, none)
        w[index].untyped_storage().resize_(size)
        got = _error_text(lambda: (out.sum() + sum(h.sum() for h in hn)).backward())  # noqa: B023
        want = f"RuntimeError: fusedrnn: {prefix.format(index, kind)}'s storage {problem}"
        assert got.startswith(want), got


@pytest.mark.parametrize("how", ["freed", "shrunk"])
@pytest.mark.parametrize("path", ["lean", "packed", "no_grad", "cell"])
def test_a_module_names_its_freed_parameter(path, how):
    """Through a module, a parameter or a state whose storage was freed is named as the
    module knows it (``weight_hh_l1_reverse``, ``hx``), in the forward and in a backward
    after it (session 31: the ops' role, "w_rev[1] (w_hh)" or "w_hh", which does not say
    which layer), on the lean path, the general one (packed input) and the cell's. A float16
    layer's backward, which copies its tensors to float32 first, names it too (torch's
    unnamed "its data is not allocated yet" before). A failure of another kind keeps its
    own message. A storage shrunk (``resize_(n)``) below what the tensor spans: named the
    same way, with what it holds (read past its end before session 32, where
    ``torch.nn.RNN`` refuses a shrunk weight or state)."""
    torch.manual_seed(0)
    cell = path == "cell"
    size = 0 if how == "freed" else 8  # bytes: two float32 or four float16 elements
    problem = "was freed" if how == "freed" else "holds 8 bytes"

    def make(dtype=torch.float32):
        if cell:
            return fusedrnn.RNNCell(3, 4, dtype=dtype)
        return fusedrnn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=dtype)

    def run(m, hx=None, dtype=torch.float32):
        x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
        x = x.to(dtype).requires_grad_(path != "no_grad")
        if path == "packed":
            x = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3])
        with torch.set_grad_enabled(path != "no_grad"):
            result = m(x, hx)
        out, hn = (result, None) if cell else result
        out = out.data if path == "packed" else out
        return lambda: (out.sum() + (0 if hn is None else hn.sum())).backward()

    weight = "weight_hh" if cell else "weight_hh_l1_reverse"
    want = f"RuntimeError: fusedrnn: parameter {weight}'s storage {problem}"
    for dtype in (torch.float32, torch.float16):
        m = make(dtype)
        backward = run(m, dtype=dtype)
        getattr(m, weight).untyped_storage().resize_(size)
        if path != "no_grad":
            got = _error_text(backward)
            assert got.startswith(want), (dtype, got)
        got = _error_text(lambda: run(m, dtype=dtype))  # noqa: B023
        assert got.startswith(want), (dtype, got)
    hx = torch.zeros(2, 4) if cell else torch.zeros(4, 2, 4)
    hx.untyped_storage().resize_(size)
    got = _error_text(lambda: run(make(), hx))
    assert got.startswith(f"RuntimeError: fusedrnn: hx's storage {problem}"), got
    # Not freed: the error of the failure itself.
    m = make()
    with torch.no_grad():
        getattr(m, weight).set_(torch.zeros(5, 5))
    got = _error_text(lambda: run(m))
    assert "storage was freed" not in got and got.startswith("RuntimeError"), got


def test_grads_op_with_an_empty_batch_returns_zero_gradients():
    """B = 0 padded (T unknowable: no rows): zero weight gradients and empty dx and dh0,
    as the backward op gives (it was a ZeroDivisionError, found by a fuzz audit)."""
    empty = torch.empty(0, dtype=torch.int64)
    x, w_ih, w_hh = torch.randn(0, 3), torch.randn(4, 3), torch.randn(4, 4)
    zeros4 = torch.randn(0, 4)
    dx, dw_ih, dw_hh, db, dh0 = ops.rnn_layer_grads(
        x, w_ih, w_hh, zeros4, zeros4, zeros4, zeros4, empty, False, "tanh", True, True, True, True
    )
    assert dx.shape == (0, 3) and dh0.shape == (0, 4)
    for g, w in ((dw_ih, w_ih), (dw_hh, w_hh), (db, w_hh[0])):
        assert torch.equal(g, torch.zeros_like(w))


def test_non_contiguous_inputs_are_accepted():
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(dtype=f64)
    want = ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs)
    got = ops.rnn_layer(
        x.t().contiguous().t(),
        w_ih.t().contiguous().t(),
        w_hh.t().contiguous().t(),
        b_ih.expand(2, -1)[0],
        b_hh,
        h0.t().contiguous().t(),
        bs,
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _strided_grads(N, H, dtype):
    """Output gradients as autograd hands them over: expanded, sliced, transposed."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(N, 2 * H + 1, generator=g, dtype=dtype)
    row = torch.randn(1, H, generator=g, dtype=dtype)
    return {
        "sum": torch.ones((), dtype=dtype).expand(N, H),  # d(h.sum())/dh
        "row": row.expand(N, H),
        "column_slice": wide[:, H : 2 * H],  # one direction of a bidirectional output
        "transposed": torch.randn(H, N, generator=g, dtype=dtype).t(),
        "column_of_one": torch.randn(N, generator=g, dtype=dtype)[:, None].expand(N, H),
        "strided_row": wide[:1, ::2][:, :H].expand(N, H),
    }


@pytest.mark.parametrize("kind", list(_strided_grads(2, 3, f64)))
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_non_contiguous_output_gradients_match_contiguous_bitwise(kind, lengths, reverse):
    """The backward reads an expanded or sliced grad_h in place (row stride 0 or > H)."""
    inputs = _layer_inputs(lengths=lengths, dtype=torch.float32, H=5)
    N, H = inputs[0].shape[0], 5
    grad_h = _strided_grads(N, H, torch.float32)[kind]
    grad_hn = torch.randn(inputs[5].shape)
    results = []
    for gh in (grad_h, grad_h.contiguous()):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs[:6]]
        h, hn = ops.rnn_layer(*leaves, inputs[6], reverse, "tanh")
        results.append(torch.autograd.grad((h, hn), leaves, (gh, grad_hn)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
def test_eager_path_matches_registered_op_bitwise(lengths):
    """rnn_layer skips torch.library dispatch in plain eager mode; both paths must agree."""
    inputs = _layer_inputs(lengths=lengths, dtype=torch.float32)
    results = []
    for fn in (ops.rnn_layer, ops.rnn_layer_forward):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs[:6]]
        h, hn = fn(*leaves, inputs[6], True, "relu")
        grads = torch.autograd.grad(h.square().sum() + hn.sum(), leaves)
        results.append([h, hn, *grads])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        h, hn = ops.rnn_layer(*inputs, True, "relu")
    assert h.grad_fn is None and torch.equal(h, results[0][0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_is_stored_in_its_dtype(dtype):
    """float16 is computed by the float32 kernels and rounded once; so is bfloat16 on a
    CPU without AVX512_BF16 (tests/test_cpu_kernels.py checks that case in a child
    process). With it, bfloat16 runs the bfloat16 kernels: within bfloat16 rounding of
    the float32 result."""
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(lengths=[4, 3, 1], dtype=torch.float32)
    low = [t.to(dtype).requires_grad_(True) for t in (x, w_ih, w_hh, b_ih, b_hh, h0)]
    h, hn = ops.rnn_layer(*low, bs, True, "tanh")
    want = ops.rnn_layer(*(t.detach().float() for t in low), bs, True, "tanh")
    for got, w in zip((h, hn), want, strict=True):
        assert got.dtype == dtype
        if dtype is torch.bfloat16 and _C.cpu_has_bf16():
            torch.testing.assert_close(got.float(), w, rtol=0, atol=2e-2)
        else:
            assert torch.equal(got, w.to(dtype))
    grads = torch.autograd.grad(h.float().sum() + hn.float().sum(), low)
    assert all(g.dtype == dtype and g.shape == t.shape for g, t in zip(grads, low, strict=True))
    torch.library.opcheck(
        torch.ops.fusedrnn.rnn_layer_forward.default,
        (*low, bs, True, "tanh"),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lengths", [None, [5, 3, 2]], ids=["padded", "packed"])
def test_low_precision_backward_runs_the_float32_kernels(monkeypatch, dtype, lengths):
    """A layer computed in float32 (float16; bfloat16 without the bfloat16 kernels) has its
    backward on the fused float32 kernels too, and its gradients rounded once: not through
    torch's float16 GEMMs, which have no fast CPU kernel."""
    # bfloat16 as on a CPU without AVX512_BF16
    monkeypatch.delitem(ops.KERNEL_DTYPES, torch.bfloat16, raising=False)
    seen = []
    grads_impl = ops._grads_impl

    def spy(*args, **kwargs):
        seen.append(args[4].dtype)  # h
        return grads_impl(*args, **kwargs)

    monkeypatch.setattr(ops, "_grads_impl", spy)
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs(T=5, B=3, I=4, H=6, lengths=lengths,
                                                      dtype=torch.float32)  # fmt: skip
    low = [t.to(dtype).requires_grad_(True) for t in (x, w_ih, w_hh, b_ih, b_hh, h0)]
    h, hn = ops.rnn_layer(*low, bs, False, "tanh")
    grads = torch.autograd.grad(h.float().square().sum() + hn.float().sum(), low)
    assert seen == [torch.float32]
    # The float32 gradients of the same stored values, rounded once.
    exact = [t.detach().float().requires_grad_(True) for t in low]
    he, hne = ops.rnn_layer(*exact, bs, False, "tanh")
    want = torch.autograd.grad(he.square().sum() + hne.sum(), exact)
    for g, w in zip(grads, want, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, rtol=2e-2, atol=2e-2)


def _bidirectional_inputs(lengths, dtype, H=4, seed=0):
    x, *wf, h0f, bs = _layer_inputs(lengths=lengths, dtype=dtype, H=H, seed=seed)
    _, *wb, h0b, _ = _layer_inputs(lengths=lengths, dtype=dtype, H=H, seed=seed + 1)
    return x, wf, wb, h0f, h0b, bs


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
def test_bidirectional_layer_gradcheck(nonlinearity, lengths):
    x, wf, wb, h0f, h0b, bs = _bidirectional_inputs(lengths, f64)
    leaves = [t.requires_grad_(True) for t in (x, *wf, *wb, h0f, h0b)]

    def fn(x, a, b, c, d, e, f, g, h, h0f, h0b):
        return ops.rnn_bidirectional_layer(x, (a, b, c, d), (e, f, g, h), h0f, h0b, bs,
                                           nonlinearity)  # fmt: skip

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("kind", list(_strided_grads(2, 3, f64)))
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
def test_bidirectional_layer_matches_two_layers_and_cat(kind, lengths):
    """The fused bidirectional step against its definition: the two directions' layers
    and a concatenation (the custom ops' path, as under torch.compile)."""
    x, wf, wb, h0f, h0b, bs = _bidirectional_inputs(lengths, torch.float32, H=5)
    grad_out = _strided_grads(x.shape[0], 10, torch.float32)[kind]
    grad_hn = (torch.randn(h0f.shape), torch.randn(h0b.shape))
    results = []
    for fused in (True, False):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, *wf, *wb, h0f, h0b)]
        x_, wf_, wb_, (h0f_, h0b_) = leaves[0], leaves[1:5], leaves[5:9], leaves[9:]
        if fused:
            out, hnf, hnb = ops.rnn_bidirectional_layer(x_, wf_, wb_, h0f_, h0b_, bs)
        else:
            hf, hnf = ops.rnn_layer_forward(x_, *wf_, h0f_, bs, False, "tanh")
            hb, hnb = ops.rnn_layer_forward(x_, *wb_, h0b_, bs, True, "tanh")
            out = torch.cat((hf, hb), 1)
        grads = torch.autograd.grad((out, hnf, hnb), leaves, (grad_out, *grad_hn))
        results.append((out, hnf, hnb, *grads))
    (fused, reference) = results
    for a, b in zip(fused[:3] + fused[4:], reference[:3] + reference[4:], strict=True):
        assert torch.equal(a, b)  # outputs and every gradient but dx: the same kernels
    # dx: one GEMM continues the other's sums instead of adding two results.
    torch.testing.assert_close(fused[3], reference[3], rtol=1e-6, atol=1e-6)


def test_bidirectional_layer_refuses_different_hidden_sizes():
    x, wf, _, h0f, _, bs = _bidirectional_inputs(None, f64, H=4)
    _, wb3, _, _, h0b3, _ = _bidirectional_inputs(None, f64, H=3)
    with pytest.raises(ValueError, match="same hidden size"):
        ops.rnn_bidirectional_layer(x, wf, wb3, h0f, h0b3, bs)


@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["padded", "packed"])
def test_bidirectional_layer_refuses_a_reverse_state_of_another_batch(lengths):
    """The reverse direction's batch_sizes values are not read again (the forward one's
    check did): its state must still match the forward one's, never be read past its end."""
    x, wf, wb, h0f, h0b, bs = _bidirectional_inputs(lengths, f64)
    short = h0b[:-1]
    with pytest.raises(ValueError, match=r"same shape|T\*B rows"):
        ops.rnn_bidirectional_layer(x, wf, wb, h0f, short, bs)


class _Logged(torch.Tensor):
    """A tensor subclass that records the functions called on it."""

    calls: typing.ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("which", ["w_hh", "h0", "b_ih"])
def test_a_subclass_weight_goes_through_the_registered_op(which):
    """Only x's type used to decide the eager shortcut: a subclass weight or state must see
    the registered op (its __torch_function__ runs), and the results are the plain ones."""
    inputs = dict(
        zip(("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "bs"), _layer_inputs(), strict=True)
    )
    want = ops.rnn_layer(*inputs.values())
    inputs[which] = inputs[which].as_subclass(_Logged)
    _Logged.calls = []
    got = ops.rnn_layer(*inputs.values())
    assert any("rnn_layer_forward" in name for name in _Logged.calls), _Logged.calls
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.as_subclass(torch.Tensor), b, rtol=0, atol=0)
