"""Wrong arguments under torch.func.vmap: the error an unvmapped call gets.

The ops' vmap rules fold the vmapped problems into one batch (``[V, N, I]`` rows as
``[V*N, I]``, states as ``[V*B, H]``, batch_sizes times V). Each wrong argument must still
be refused as the same call on one problem alone refuses it: the same exception type and
message, naming the argument with the problem's own sizes (not V times them, and not
torch's unnamed error from a reshape of the folding). Valid calls: the results of a loop.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

import fusedrnn
from fusedrnn import ops

f64 = torch.float64
H, I, V = 4, 6, 3
PADDED = torch.empty(0, dtype=torch.int64)
STEPS = torch.tensor([2] * 5)  # per problem: 10 rows of x, B = 2


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=f64) for s in ((H, I), (H, H), (H,), (H,))]


W_IH, W_HH, B_IH, B_HH = _weights()


def _randn(*shape, seed=1, dtype=f64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _layer(x, h0, batch_sizes, reverse=False, nonlinearity="tanh"):
    return ops.rnn_layer(x, W_IH, W_HH, B_IH, B_HH, h0, batch_sizes, reverse, nonlinearity)


def _forward_op(x, h0, batch_sizes):
    return ops.rnn_layer_forward(x, W_IH, W_HH, B_IH, B_HH, h0, batch_sizes, False, "tanh")


def _backward_op(h, grad_h, grad_hn, batch_sizes):
    return ops.rnn_layer_backward(W_HH, h, grad_h, grad_hn, batch_sizes, False, "tanh")


def _sample(args, in_dims, i=0):
    """The arguments of problem ``i`` alone (an unbatched argument as it is)."""
    return [a if d is None else a.select(d, i) for a, d in zip(args, in_dims, strict=True)]


def _raised(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


def _assert_refused_as_unvmapped(fn, args, in_dims, nested=False):
    """vmap(fn) over ``args`` raises what ``fn`` on the first problem alone raises: a
    fusedrnn message, not chained to the folded call's error (whose sizes are V times the
    caller's)."""
    if nested:  # two vmap levels over the two leading dimensions of the batched arguments
        mapped = vmap(vmap(fn, in_dims=in_dims), in_dims=in_dims)
        alone = _sample(_sample(args, in_dims), in_dims)
    else:
        mapped = vmap(fn, in_dims=in_dims)
        alone = _sample(args, in_dims)
    want = _raised(lambda: fn(*alone))
    assert str(want).startswith("fusedrnn: "), want
    got = _raised(lambda: mapped(*args))
    assert type(got) is type(want)
    assert str(got) == str(want)
    assert got.__cause__ is None and (got.__context__ is None or got.__suppress_context__)


def _steps(*sizes):
    return torch.tensor(sizes, dtype=torch.int64)


# Arguments, per problem: x of 10 rows (X: V of them), states of B = 2 and 3 rows.
X, G = _randn(V, 10, I), _randn(V, 10, H, seed=2)
S2, S3 = torch.zeros(2, H, dtype=f64), torch.zeros(3, H, dtype=f64)
ON_X = (0, None, None)  # in_dims: x batched
ON_H = (0, 0, None, None)  # the backward op's: h and grad_h batched

# (fn, batched arguments, in_dims): each wrong in one argument, per problem.
WRONG = {
    # The three cases of the report: sizes quoted folded, or torch's unnamed error.
    "h0_width_batched": (_layer, (X, _randn(V, 2, H + 1), STEPS), (0, 0, None)),
    "h0_rows_unbatched": (_layer, (X, S3, STEPS), ON_X),
    "steps_sum": (_layer, (X, S2, _steps(2, 2, 2, 2)), ON_X),
    # The other checks of batch_sizes' values, which the folding multiplies by V.
    "steps_increasing": (_layer, (X, S2[:1], _steps(1, 2, 2, 2, 3)), ON_X),
    "steps_negative": (_layer, (X, S2, _steps(2, 2, 2, 2, 4, -2)), ON_X),
    "steps_zero": (_layer, (X, S2, _steps(2, 2, 2, 2, 2, 0)), ON_X),
    "steps_2d": (_layer, (X, S2, STEPS[None]), ON_X),
    "steps_int32": (_layer, (X, S2, STEPS.int()), ON_X),
    # batch_sizes that batch_sizes * V would make acceptable: the folded call took them.
    "steps_bool": (_layer, (X, S2[:1], torch.ones(10, dtype=torch.bool)), ON_X),
    "steps_strided": (_layer, (X, S2, _steps(*[2] * 10)[::2]), ON_X),
    # Padded input: the folding's reshape failed, or the folded sizes were quoted.
    "padded_rows": (_layer, (X, S3, PADDED), ON_X),
    "padded_no_rows": (_layer, (X[:, :0], S2, PADDED), ON_X),
    # Tensors of the wrong number of dimensions: Python's unpacking errors, an IndexError.
    "x_1d": (_layer, (X[..., 0], S2, STEPS), ON_X),
    "x_3d": (_layer, (X[:, :, None], S2, STEPS), ON_X),
    "h0_1d": (_layer, (X, _randn(V, H), STEPS), (0, 0, None)),
    "h0_0d": (_layer, (X, _randn(V), STEPS), (0, 0, None)),
    "x_columns": (_layer, (_randn(V, 10, I + 1), S2, STEPS), ON_X),
    "x_dtype": (_layer, (X.float(), S2, STEPS), ON_X),
    # A batched state with an unbatched x, and vmapped dimensions other than the first.
    "state_batched_only": (_layer, (X[0], _randn(V, 3, H), STEPS), (None, 0, None)),
    "in_dims_1": (_layer, (X.transpose(0, 1), _randn(2, V, H + 1), STEPS), (1, 1, None)),
    # batch_sizes batched: one call per problem, the first problem's values wrong.
    "steps_batched": (
        _layer,
        (X, S2, torch.stack([_steps(2, 1, 2, 2, 3), STEPS, STEPS])),
        (0, None, 0),
    ),
    # The ops themselves.
    "forward_op_h0_rows": (_forward_op, (X, S3, STEPS), ON_X),
    "backward_op_grad_hn_rows": (_backward_op, (G, G, S3, STEPS), ON_H),
    "backward_op_grad_h_rows": (_backward_op, (G, G[:, 1:], S2, STEPS), ON_H),
    "backward_op_steps_sum": (_backward_op, (G, G, S2, _steps(2, 2, 2, 2)), ON_H),
    "backward_op_padded": (_backward_op, (G, G, S3, PADDED), ON_H),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_argument_is_refused_as_unvmapped(case):
    fn, args, in_dims = WRONG[case]
    _assert_refused_as_unvmapped(fn, args, in_dims)


def test_the_reported_messages_quote_one_problem():
    """The three cases of the report, their messages in full (they quoted (6, 5), B = 9
    and torch's "The size of tensor a (30) must match the size of tensor b (24)")."""
    with pytest.raises(ValueError, match=r"^fusedrnn: h0 must have shape \[B, H\] with H = 4, "
                       r"got \(2, 5\)$"):  # fmt: skip
        vmap(lambda u, h: _layer(u, h, STEPS))(X, _randn(V, 2, H + 1))
    with pytest.raises(ValueError, match=r"^fusedrnn: batch_sizes\[0\] must equal B = 3 "
                       r"\(from h0\), got 2$"):  # fmt: skip
        vmap(lambda u: _layer(u, S3, STEPS))(X)
    with pytest.raises(ValueError, match=r"^fusedrnn: batch_sizes must sum to the rows of x "
                       r"\(10\), got sum 8$"):  # fmt: skip
        vmap(lambda u: _layer(u, S2, _steps(2, 2, 2, 2)))(X)


@pytest.mark.parametrize("case", ["h0_width_batched", "h0_rows_unbatched", "steps_sum",
                                  "padded_rows", "backward_op_grad_hn_rows"])  # fmt: skip
def test_wrong_argument_under_nested_vmap(case):
    """vmap of vmap: each level folds its problems; the message is still one problem's."""
    fn, args, in_dims = WRONG[case]
    args = [a if d is None else torch.stack([a, a]) for a, d in zip(args, in_dims, strict=True)]
    _assert_refused_as_unvmapped(fn, args, in_dims, nested=True)


def test_batch_sizes_differing_between_problems():
    """A batched batch_sizes with valid values that differ between the problems: each
    problem computed with its own; a wrong one in a later problem refused by name."""
    x, h0 = _randn(V, 10, I), _randn(V, 3, H, seed=2)
    steps = torch.stack([_steps(3, 3, 2, 1, 1), _steps(3, 2, 2, 2, 1), _steps(3, 3, 2, 1, 1)])
    got = vmap(_layer)(x, h0, steps)
    want = [_layer(*_sample((x, h0, steps), (0, 0, 0), i)) for i in range(V)]
    torch.testing.assert_close(got, tuple(torch.stack(w) for w in zip(*want, strict=True)))
    steps[2] = _steps(3, 3, 3, 1, 1)
    want = _raised(lambda: _layer(x[2], h0[2], steps[2]))
    assert str(want) == "fusedrnn: batch_sizes must sum to the rows of x (10), got sum 11"
    with pytest.raises(ValueError) as info:
        vmap(_layer)(x, h0, steps)
    assert str(info.value) == str(want)
    # Which problem, in a note (the traceback shows it; the message stays one problem's,
    # as before session 32, when nothing said which).
    assert info.value.__notes__ == ["fusedrnn: in vmapped problem 2 of 3"]


# (fn, batched arguments, in_dims): valid calls, 9 rows a problem when packed.
PACKED = _steps(3, 3, 2, 1)
VALID = {
    "packed": (_layer, (X, _randn(V, 2, H), STEPS), (0, 0, None)),
    "padded": (_layer, (X, _randn(V, 2, H), PADDED), (0, 0, None)),
    "packed_state_unbatched": (_layer, (X[:, 1:], _randn(3, H), PACKED), ON_X),
    "packed_x_unbatched": (_layer, (X[0, 1:], _randn(V, 3, H), PACKED), (None, 0, None)),
    "padded_in_dims_1": (_layer, (X.transpose(0, 1), _randn(2, V, H), PADDED), (1, 1, None)),
    "steps_batched": (_layer, (X[:, 1:], _randn(V, 3, H), PACKED.expand(V, 4)), (0, 0, 0)),
    "backward_op": (
        _backward_op,
        (G[:, 1:].tanh(), G[:, 1:], _randn(V, 3, H), PACKED),
        (0, 0, 0, None),
    ),
}


@pytest.mark.parametrize("case", list(VALID))
def test_valid_call_matches_a_loop(case):
    fn, args, in_dims = VALID[case]
    got = vmap(fn, in_dims=in_dims)(*args)
    want = [fn(*_sample(args, in_dims, i)) for i in range(V)]
    torch.testing.assert_close(got, tuple(torch.stack(w) for w in zip(*want, strict=True)))


def test_nested_vmap_with_batch_sizes_batched_outside():
    """batch_sizes batched by the outer vmap only: the inner level cannot fold with it
    (torch's per-problem fallback ran the folding's index arithmetic, and warned); the
    results of a loop, each outer problem with its own batch_sizes."""
    x, h0 = _randn(2, V, 9, I), _randn(2, V, 3, H)
    steps = torch.stack([_steps(3, 3, 2, 1), _steps(3, 2, 2, 2)])
    got = vmap(vmap(_layer, in_dims=(0, 0, None)))(x, h0, steps)
    want = [[_layer(x[j, i], h0[j, i], steps[j]) for i in range(V)] for j in range(2)]
    for k in range(2):
        torch.testing.assert_close(got[k], torch.stack([torch.stack([w[k] for w in row])
                                                        for row in want]))  # fmt: skip


def test_vmap_over_no_problem():
    """vmap over a dimension of size 0 returns outputs of no problem in one problem's
    shapes, as torch's own ops do (torch's "incompatible (output, out_dims)" error before,
    for valid calls too: the rule returned no outputs), through the ops, the module and a
    gradient; a wrong argument is still refused as on one problem."""
    x = _randn(0, 10, I)
    h0 = torch.zeros(2, H, dtype=f64)
    steps = torch.zeros(0, 5, dtype=torch.int64)
    for fn, args, in_dims in (
        (_layer, (x, h0, STEPS), (0, None, None)),
        (_layer, (x, torch.zeros(0, 2, H, dtype=f64), STEPS), (0, 0, None)),
        (_layer, (x, h0, steps), (0, None, 0)),  # (batch_sizes batched: no values)
        (
            _backward_op,
            (x[..., :H], x[..., :H], torch.zeros(0, 2, H, dtype=f64), STEPS),
            (0, 0, 0, None),
        ),
    ):
        h, hn = vmap(fn, in_dims=in_dims)(*args)
        assert h.shape == (0, 10, H) and hn.shape == (0, 2, H), (h.shape, hn.shape)
        assert h.dtype == hn.dtype == f64
    m = fusedrnn.RNN(I, H, num_layers=2, bidirectional=True, dtype=f64)
    out, hn = vmap(m)(_randn(0, 5, 2, I))
    assert out.shape == (0, 5, 2, 2 * H) and hn.shape == (0, 4, 2, H)
    dx = vmap(torch.func.grad(lambda x: m(x)[0].sum()))(_randn(0, 5, 2, I))
    assert dx.shape == (0, 5, 2, I)
    with pytest.raises(ValueError, match=r"batch_sizes\[0\] must equal B = 3 \(from h0\), got 2"):
        vmap(lambda x: _layer(x, torch.zeros(3, H, dtype=f64), STEPS))(x)


def test_vmap_over_no_problem_checks_without_computing():
    """Over no problem the op's checks still run, with a batched batch_sizes too (whose
    values none gives: the checks that do not read them), and nothing is computed (one
    problem of zeros ran before: a review, session 31)."""
    x, h0 = _randn(0, 10, I), torch.zeros(2, H, dtype=f64)
    steps = torch.zeros(0, 5, dtype=torch.int64)
    for args, in_dims, error, match in (
        ((x, torch.zeros(2, H + 1, dtype=f64), steps), (0, None, 0), ValueError, "h0 must"),
        ((_randn(0, 10, I + 1), h0, steps), (0, None, 0), ValueError, "w_ih must have shape"),
        ((x.float(), h0, steps), (0, None, 0), TypeError, "dtype"),
        ((x, h0, steps.int()), (0, None, 0), TypeError, "batch_sizes"),
    ):
        with pytest.raises(error, match=match):
            vmap(_layer, in_dims=in_dims)(*args)
    calls = []
    real = ops.forward_into_cpu  # (every CPU forward's kernel call)

    def counted(*a):
        calls.append(a)
        return real(*a)

    try:
        ops.forward_into_cpu = counted
        h, hn = vmap(_layer, in_dims=(0, None, None))(x, h0, STEPS)
        assert h.shape == (0, 10, H) and hn.shape == (0, 2, H) and not calls
        _layer(_randn(10, I), h0, STEPS)
        assert calls  # (the counter sees a real call)
    finally:
        ops.forward_into_cpu = real
