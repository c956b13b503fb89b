"""torch.func transforms and forward-mode AD: the same derivatives as torch.nn.RNN.

jvp / jacfwd / ``torch.autograd.forward_ad`` run fusedrnn's own forward-mode rule (a
BPTT-shaped recurrence walked forwards); grad / vjp / jacrev / vmap run the registered ops
through an autograd.Function that torch.func accepts. Every check is against torch.nn.RNN
in float64 (for packed input, against torch.nn.RNN on each sequence alone, since torch.nn.RNN
has no forward-mode rule for packed input). Second derivatives match torch.nn.RNN's: on the
kernels with at most one forward level (hessian, jacrev of jacrev or of jacfwd); as torch ops
for forward over forward, which torch gets wrong through any autograd.Function.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

f64 = torch.float64
TOL = dict(rtol=1e-11, atol=1e-12)

# torch's per-sample vmap fallback warns "There is a performance drop": the ops have vmap
# rules, so that warning (an error under pyproject.toml's pytest settings) fails these tests.


def _pair(seed=0, cell=False, **kwargs):
    torch.manual_seed(seed)
    if cell:
        ref = nn.RNNCell(dtype=f64, **kwargs)
        return ref, fusedrnn.RNNCell.from_torch(ref)
    ref = nn.RNN(dtype=f64, **kwargs)
    return ref, fusedrnn.RNN.from_torch(ref)


def _randn_like(tensors, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in tensors.items()}


def _assert_close(got, want):
    if isinstance(want, tuple | list):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_close(g, w)
    else:
        torch.testing.assert_close(got, want, **TOL)


CONFIGS = {
    "L1_tanh": dict(num_layers=1),
    "L2_relu_no_bias": dict(num_layers=2, nonlinearity="relu", bias=False),
    "L2_bi": dict(num_layers=2, bidirectional=True),
    "L1_bi_relu_batch_first": dict(
        num_layers=1, bidirectional=True, nonlinearity="relu", batch_first=True
    ),
}


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_jvp_in_every_input_and_parameter_matches_nn_rnn(config, with_hx):
    kwargs = CONFIGS[config]
    ref, ours = _pair(input_size=3, hidden_size=5, **kwargs)
    D = 2 if kwargs.get("bidirectional") else 1
    shape = (2, 4, 3) if kwargs.get("batch_first") else (4, 2, 3)  # B = 2, T = 4
    x = torch.randn(shape, dtype=f64)
    hx = torch.randn(D * kwargs["num_layers"], 2, 5, dtype=f64)
    params = {n: p.detach() for n, p in ref.named_parameters()}
    primals = {"x": x, "hx": hx, **params} if with_hx else {"x": x, **params}
    tangents = _randn_like(primals, seed=1)

    def run(module):
        def f(p):
            rest = {k: v for k, v in p.items() if k not in ("x", "hx")}
            args = (p["x"], p["hx"]) if with_hx else (p["x"],)
            return functional_call(module, rest, args)

        return jvp(f, (primals,), (tangents,))

    (want, want_t), (got, got_t) = run(ref), run(ours)
    _assert_close(got, want)
    _assert_close(got_t, want_t)


def test_jvp_on_packed_input_of_many_sequences_and_steps():
    """Memory linear in the packed rows, not in sequences x steps: one sequence of 200,000
    steps packed with 199,999 of one step (400,000 rows). Each sequence's last row was found
    by a [B, T] comparison until session 23 (here a 40 GB allocation, which raised); the
    tangents are those of the long sequence and the short ones run alone."""
    torch.manual_seed(0)
    n = 200_000
    m = fusedrnn.RNN(1, 2, dtype=f64)
    long, short = torch.randn(n, 1, dtype=f64), torch.randn(n - 1, 1, dtype=f64)
    data = torch.cat([long[:1], short, long[1:]])  # step 0: every sequence; then the long one
    batch_sizes = torch.ones(n, dtype=torch.int64)
    batch_sizes[0] = n
    t = torch.randn_like(data)

    def f(d):
        out, hn = m(PackedSequence(d, batch_sizes))
        return out.data, hn

    (_, hn), (t_out, t_hn) = jvp(f, (data,), (t,))
    (_, want_l), (want_t_out, want_t_l) = jvp(
        lambda d: m(d[:, None]), (long,), (torch.cat([t[:1], t[n:]]),)
    )
    (_, want_s), (_, want_t_s) = jvp(lambda d: m(d[None]), (short,), (t[1:n],))
    _assert_close((hn[:, :1], hn[:, 1:]), (want_l, want_s))
    _assert_close((t_hn[:, :1], t_hn[:, 1:]), (want_t_l, want_t_s))
    _assert_close(torch.cat([t_out[:1], t_out[n:]]), want_t_out[:, 0])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_jvp_on_packed_input_matches_each_sequence_alone(bidirectional, enforce_sorted):
    """torch.nn.RNN has no forward-mode rule for packed input: each sequence alone is the
    reference (a packed sequence's results are those of the sequence run by itself)."""
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([5, 3, 3, 1]) if enforce_sorted else torch.tensor([3, 1, 5, 3])
    x = torch.randn(5, 4, 3, dtype=f64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    g = torch.Generator().manual_seed(2)
    t_data = torch.randn(packed.data.shape, generator=g, dtype=f64)
    t_w = {n: torch.randn(p.shape, generator=g, dtype=f64) for n, p in ref.named_parameters()}
    w = {n: p.detach() for n, p in ref.named_parameters()}

    def ours_f(data, weights):
        seq = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)  # fmt: skip
        out, hn = functional_call(ours, weights, (seq,))
        return out.data, hn

    (out, hn), (t_out, t_hn) = jvp(ours_f, (packed.data, w), (t_data, t_w))
    # The tangent of the input, laid out as x: pack it the same way to read it per sequence.
    t_x = torch.zeros_like(x)
    index = pack_padded_sequence(
        torch.arange(x.shape[0] * x.shape[1]).view(x.shape[0], x.shape[1], 1).double(),
        lengths, enforce_sorted=enforce_sorted,
    ).data.long().flatten()  # fmt: skip
    t_x.view(-1, 3)[index] = t_data
    out_pad = torch.zeros(5, 4, out.shape[1], dtype=f64)
    t_out_pad = torch.zeros_like(out_pad)
    out_pad.view(-1, out.shape[1])[index] = out
    t_out_pad.view(-1, out.shape[1])[index] = t_out
    for b, n in enumerate(lengths.tolist()):

        def ref_f(xb, weights):
            return functional_call(ref, weights, (xb,))

        (want, want_hn), (want_t, want_t_hn) = jvp(ref_f, (x[:n, b], w), (t_x[:n, b], t_w))
        _assert_close((out_pad[:n, b], hn[:, b]), (want, want_hn))
        _assert_close((t_out_pad[:n, b], t_hn[:, b]), (want_t, want_t_hn))


def test_forward_ad_dual_tensors_match_nn_rnn():
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, hx = torch.randn(6, 2, 3, dtype=f64), torch.randn(4, 2, 4, dtype=f64)
    tx, thx = torch.randn_like(x), torch.randn_like(hx)
    results = []
    for module in (ref, ours):
        with fwAD.dual_level():
            out, hn = module(fwAD.make_dual(x, tx), fwAD.make_dual(hx, thx))
            results.append([t for o in (out, hn) for t in fwAD.unpack_dual(o)[:2]])
    _assert_close(results[1], results[0])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_grad_vjp_and_jacrev_match_nn_rnn(config):
    kwargs = CONFIGS[config]
    ref, ours = _pair(input_size=3, hidden_size=4, **kwargs)
    x = torch.randn(5, 2, 3, dtype=f64)
    params = {n: p.detach() for n, p in ref.named_parameters()}
    cotangent = torch.randn_like(ref(x)[0])
    results = []
    for module in (ref, ours):

        def loss(p, a, module=module):
            out, hn = functional_call(module, p, (a,))
            return out.square().sum() + hn.sum()

        def outputs(a, module=module):
            return module(a)[0]

        _, pullback = vjp(outputs, x)
        results.append(
            (
                grad(loss, argnums=(0, 1))(params, x),
                pullback(cotangent),
                jacrev(lambda a, module=module: module(a)[1])(x),
            )
        )
    _assert_close(results[1], results[0])


def test_per_sample_gradients_with_vmap_match_a_loop_over_nn_rnn():
    """The usual torch.func recipe: vmap(grad(loss)) over a batch of single sequences."""
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2)
    params = {n: p.detach() for n, p in ours.named_parameters()}
    xs = torch.randn(6, 5, 3, dtype=f64)  # 6 samples of [T = 5, I = 3], unbatched each
    targets = torch.randn(6, 4, dtype=f64)

    def loss(p, x, y, module=ours):
        out, _ = functional_call(module, p, (x,))
        return (out[-1] - y).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, targets)
    for i in range(xs.shape[0]):
        want = grad(loss)(params, xs[i], targets[i], module=ref)
        _assert_close([got[n][i] for n in params], [want[n] for n in params])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_vmap_runs_the_problems_as_one_batch(packed, bidirectional, monkeypatch):
    """vmap over the input (and h0): one kernel call per layer-direction for all the
    problems (their sequences folded into one batch), the results of a loop."""
    from fusedrnn import ops

    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    V, D = 5, 2 if bidirectional else 1
    xs, h0s = torch.randn(V, 6, 3, 3, dtype=f64), torch.randn(V, 2 * D, 3, 4, dtype=f64)
    lengths = torch.tensor([6, 2, 4])
    packed_0 = pack_padded_sequence(xs[0], lengths, enforce_sorted=False)
    fields = (packed_0.batch_sizes, packed_0.sorted_indices, packed_0.unsorted_indices)
    data = torch.stack([pack_padded_sequence(x, lengths, enforce_sorted=False).data for x in xs])

    def run(module, x, h0):
        out, hn = module(PackedSequence(x, *fields) if packed else x, h0)
        return (out.data if packed else out), hn

    calls = []
    forward_impl = ops._forward_impl
    monkeypatch.setattr(ops, "_forward_impl", lambda *a: calls.append(1) or forward_impl(*a))
    got = vmap(lambda x, h0: run(ours, x, h0))(data if packed else xs, h0s)
    assert len(calls) == 2 * D  # layers x directions, not V times that
    want = [run(ref, x, h0) for x, h0 in zip(data if packed else xs, h0s, strict=True)]
    _assert_close(got, tuple(torch.stack(w) for w in zip(*want, strict=True)))


def test_jacrev_of_packed_input_matches_row_by_row_gradients():
    """jacrev (vmap over the BPTT's cotangents) on packed input, where torch.nn.RNN's own
    jacrev fails: against one torch.nn.RNN gradient per output element."""
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(5, 3, 3, dtype=f64), torch.tensor([5, 4, 2]))
    got = jacrev(lambda d: ours(PackedSequence(d, packed.batch_sizes))[1])(packed.data)
    data = packed.data.clone().requires_grad_()
    hn = ref(PackedSequence(data, packed.batch_sizes))[1].reshape(-1)
    rows = [torch.autograd.grad(hn[i], data, retain_graph=True)[0] for i in range(hn.numel())]
    _assert_close(got, torch.stack(rows).view(got.shape))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # (nn.RNNCell's fallback)
def test_vmap_outputs_are_contiguous_as_torchs():
    """Under vmap the outputs come back contiguous, as nn.RNNCell's do: the unfolding of
    the folded batch left strided views (session 29: ``vmap(cell)(x).view(...)`` failed)."""
    torch.manual_seed(0)
    ours = fusedrnn.RNNCell(3, 4)
    ref = nn.RNNCell(3, 4)
    ref.load_state_dict(ours.state_dict())
    x, h = torch.randn(5, 2, 3), torch.randn(5, 2, 4)
    for args, dims in (((x,), 0), ((x, h), (0, 0)), ((x, h[0]), (0, None))):
        got, want = vmap(ours, in_dims=dims)(*args), vmap(ref, in_dims=dims)(*args)
        assert got.is_contiguous() and got.stride() == want.stride()
        torch.testing.assert_close(got.view(10, 4), want.view(10, 4))
    rnn = fusedrnn.RNN(3, 4, num_layers=2)
    out, hn = vmap(rnn)(torch.randn(5, 6, 2, 3))
    assert out.is_contiguous() and hn.is_contiguous()


def test_vmap_over_stacked_weights_matches_each_model():
    """An ensemble: torch.func.stack_module_state and vmap over the weights (one call per
    model: weights differ), without torch's fallback warning."""
    from torch.func import stack_module_state

    models = [_pair(seed=i, input_size=3, hidden_size=4, num_layers=2)[1] for i in range(3)]
    params, _ = stack_module_state(models)
    x = torch.randn(5, 2, 3, dtype=f64)
    got = vmap(lambda p: functional_call(models[0], p, (x,)))(params)
    want = [m(x) for m in models]
    _assert_close(got, tuple(torch.stack(w) for w in zip(*want, strict=True)))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reverse_mode_over_vmap_matches_a_loop(bidirectional):
    """grad of a loss over vmap(model), and the backward of an ensemble over stacked
    weights with x needing no gradient: both raised an internal TypeError (the backward's
    saved None for x re-batched by the generated vmap rule with forward mode's batch dims;
    a helper's review, session 28). Against a loop over the problems."""
    from torch.func import stack_module_state

    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    xs = torch.randn(5, 6, 2, 3, dtype=f64)  # 5 problems of [T = 6, B = 2, I = 3]

    def loss(module, x):
        return module(x)[0].sin().sum()

    got = torch.func.grad(lambda a: vmap(lambda u: loss(ours, u))(a).sum())(xs)
    want = torch.stack([torch.func.grad(lambda u: loss(ref, u))(x) for x in xs])
    _assert_close(got, want)
    # Parameters frozen, x needs its gradient: the backward through vmap.
    frozen = copy.deepcopy(ours).requires_grad_(False)
    leaf = xs.clone().requires_grad_()
    vmap(lambda u: loss(frozen, u))(leaf).sum().backward()
    _assert_close(leaf.grad, want)
    # An ensemble over stacked weights, its loss backward to them (x needs no gradient).
    models = [_pair(seed=i, input_size=3, hidden_size=4, bidirectional=bidirectional)[1]
              for i in range(3)]  # fmt: skip
    params, _ = stack_module_state(models)
    x = xs[0]
    vmap(lambda p: functional_call(models[0], p, (x,))[0].square().sum())(params).sum().backward()
    for i, m in enumerate(models):
        m(x)[0].square().sum().backward()
        _assert_close([params[n].grad[i] for n, _ in m.named_parameters()],
                      [p.grad for _, p in m.named_parameters()])  # fmt: skip


def test_functionalize_matches_nn_rnn():
    """torch.func.functionalize (alone, under grad, traced by make_fx) runs the layers as
    torch ops: it raised "NYI: Functionalize rule for custom_function_call" before
    (a helper's review, session 28)."""
    from torch.func import functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=f64)
    _assert_close(functionalize(ours)(x), ref(x))
    got = grad(lambda u: functionalize(ours)(u)[0].sin().sum())(x)
    _assert_close(got, grad(lambda u: ref(u)[0].sin().sum())(x))
    _assert_close(make_fx(functionalize(ours))(x)(x), ref(x))
    ref_cell, cell = _pair(cell=True, input_size=3, hidden_size=4)
    _assert_close(functionalize(cell)(x[0]), ref_cell(x[0]))


def test_cell_jvp_and_grad_match_nn_rnncell():
    ref, ours = _pair(cell=True, input_size=3, hidden_size=4)
    x, h = torch.randn(2, 3, dtype=f64), torch.randn(2, 4, dtype=f64)
    tx, th = torch.randn_like(x), torch.randn_like(h)
    results = [
        (
            jvp(lambda a, b, m=module: m(a, b), (x, h), (tx, th)),
            grad(lambda a, b, m=module: m(a, b).square().sum(), argnums=(0, 1))(x, h),
        )
        for module in (ref, ours)
    ]
    _assert_close(results[1], results[0])


def test_zero_hidden_size_cell_under_every_transform():
    """RNNCell(3, 0): empty tangents, gradients and hessians as torch.nn.RNNCell's (found
    by review: the forward-mode rule and the vmap rules reshaped empty tensors)."""
    ref, ours = _pair(cell=True, input_size=3, hidden_size=0)
    x = torch.randn(2, 3, dtype=f64)
    for module in (ref, ours):
        _, tangent = jvp(module, (x,), (torch.ones_like(x),))
        assert tangent.shape == (2, 0)
        with fwAD.dual_level():
            assert fwAD.unpack_dual(module(fwAD.make_dual(x, x))).tangent.shape == (2, 0)
        h = hessian(lambda a, m=module: m(a).sum())(x)
        assert torch.equal(h, torch.zeros(2, 3, 2, 3, dtype=f64))
    # vmap (torch.nn.RNNCell's goes through torch's fallback) and vmap(grad), which
    # torch.nn.RNNCell fails on: empty outputs, a zero input gradient.
    assert vmap(ours)(torch.stack([x, x])).shape == (2, 2, 0)
    g = vmap(grad(lambda a: ours(a).sum()))(torch.stack([x, x]))
    assert torch.equal(g, torch.zeros(2, 2, 3, dtype=f64))


def test_compiled_grad_of_a_model_runs_and_matches_eager():
    """torch.compile of torch.func.grad over the model: the layers run eagerly inside it (a
    graph break), with the eager results; torch.nn.RNN behaves the same way."""
    _, ours = _pair(input_size=3, hidden_size=4)
    params = {n: p.detach() for n, p in ours.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=f64)

    def loss(p, a):
        return functional_call(ours, p, (a,))[0].square().sum()

    torch._dynamo.reset()
    got = torch.compile(grad(loss))(params, x)
    _assert_close(list(got.values()), list(grad(loss)(params, x).values()))


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda f: hessian(f), id="hessian"),
        pytest.param(lambda f: jacrev(jacrev(f)), id="jacrev_jacrev"),
        pytest.param(lambda f: jacrev(jacfwd(f)), id="jacrev_jacfwd"),
    ],
)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_second_derivatives_match_nn_rnn(transform, nonlinearity):
    ref, ours = _pair(input_size=2, hidden_size=3, num_layers=2, bidirectional=True,
                      nonlinearity=nonlinearity)  # fmt: skip
    x = torch.randn(4, 2, 2, dtype=f64)
    results = [transform(lambda a, m=m: m(a)[0].square().sum())(x) for m in (ref, ours)]
    _assert_close(results[1], results[0])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_nested_reverse_mode_matches_nn_rnn(bidirectional, monkeypatch):
    """grad of grad, jacrev of grad, a MAML-style outer backward through torch.func.grad,
    and a third derivative with create_graph: nn.RNN's values. The recorded backward runs
    the fused gradients op (its derivatives recompute the differentiable path)."""
    from fusedrnn import ops

    calls = []
    fused = ops.rnn_layer_grads
    monkeypatch.setattr(ops, "rnn_layer_grads", lambda *a: calls.append(1) or fused(*a))
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(5, 2, 3, dtype=f64)
    results = []
    for m in (ref, ours):

        def f(a, m=m):
            return m(a)[0].square().sum()

        def inner(p, m=m):
            return functional_call(m, p, (x,))[0].square().sum()

        params = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters()}
        calls.clear()
        g = grad(inner)(params)
        assert bool(calls) == (m is ours)  # the fused op ran under torch.func.grad
        functional_call(m, {k: params[k] - 0.1 * g[k] for k in params}, (x,))[0].sum().backward()
        xr = x.clone().requires_grad_()
        (g1,) = torch.autograd.grad(f(xr), xr, create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), xr, create_graph=True)
        (g3,) = torch.autograd.grad(g2.sum(), xr)
        results.append(
            (
                grad(lambda a, f=f: grad(f)(a).square().sum())(x),
                jacrev(grad(f))(x),
                [params[k].grad for k in params],
                g3,
            )
        )
    _assert_close(results[1], results[0])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_batched_and_dual_gradients_through_the_eager_backward(bidirectional):
    """The eager backward gets gradients batched by torch's legacy vmap (is_grads_batched,
    autograd.functional with vectorize=True) or carrying forward-mode tangents: nn.RNN's
    values, not raw pointers of wrapped tensors (found by review: a RuntimeError, a lost
    tangent, and a missing jvp when a dual level surrounds create_graph)."""
    ref, ours = _pair(input_size=3, hidden_size=4, bidirectional=bidirectional)
    x = torch.randn(4, 2, 3, dtype=f64)
    cotangents = torch.randn(5, 4, 2, 3, dtype=f64)
    results = []
    for m in (ref, ours):
        xr = x.clone().requires_grad_()
        (g1,) = torch.autograd.grad(m(xr)[0].tanh().sum(), xr, create_graph=True)
        (batched,) = torch.autograd.grad(g1, xr, cotangents, is_grads_batched=True)
        hessian = torch.autograd.functional.hessian(
            lambda a, m=m: m(a)[0].tanh().sum(), x, vectorize=True
        )
        with fwAD.dual_level():
            xr = x.clone().requires_grad_()
            out, _ = m(xr)
            v = fwAD.make_dual(torch.ones_like(out), torch.full_like(out, 0.5))
            (gx,) = torch.autograd.grad(out, xr, v, create_graph=True)
            first_tangent = fwAD.unpack_dual(gx).tangent
            (g2,) = torch.autograd.grad(out.tanh().sum(), xr, create_graph=True)
            w = fwAD.make_dual(torch.ones_like(g2), torch.full_like(g2, 0.5))
            (h,) = torch.autograd.grad(g2, xr, w)
            second_tangent = fwAD.unpack_dual(h).tangent
        results.append((batched, hessian, first_tangent, second_tangent))
    _assert_close(results[1], results[0])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_forward_over_forward_matches_nn_rnn(nonlinearity):
    """jacfwd of jacfwd and jvp of jvp: torch drops nested tangents through an
    autograd.Function (pytorch/pytorch#197867), so the layers then run as torch ops; the
    values must be nn.RNN's, which the Function path got wrong for two layers."""
    ref, ours = _pair(input_size=2, hidden_size=3, num_layers=2, bidirectional=True,
                      nonlinearity=nonlinearity)  # fmt: skip
    x = torch.randn(4, 2, 2, dtype=f64)
    t = torch.randn_like(x)
    results = []
    for m in (ref, ours):

        def f(a, m=m):
            return m(a)[0].square().sum()

        results.append(
            (jacfwd(jacfwd(f))(x), jvp(lambda a, f=f: jvp(f, (a,), (t,))[1], (x,), (t,))[1])
        )
    _assert_close(results[1], results[0])


def test_forward_over_forward_on_packed_input_matches_each_sequence_alone():
    """The second directional derivative of a loss that sums over the sequences is the sum
    of each sequence's own, computed by torch.nn.RNN on that sequence unbatched."""
    _, ours = _pair(input_size=2, hidden_size=3, num_layers=2, bidirectional=True)
    ref = ours.to_torch()
    lengths = torch.tensor([4, 3, 1])
    packed = pack_padded_sequence(torch.randn(4, 3, 2, dtype=f64), lengths)
    t = torch.randn_like(packed.data)

    def second(f, d, u):
        return jvp(lambda a: jvp(f, (a,), (u,))[1], (d,), (u,))[1]

    got = second(lambda d: ours(PackedSequence(d, packed.batch_sizes))[1].square().sum(),
                 packed.data, t)  # fmt: skip
    offsets = torch.cumsum(packed.batch_sizes, 0) - packed.batch_sizes
    want = sum(
        second(lambda a: ref(a)[1].square().sum(), packed.data[offsets[:n] + b], t[offsets[:n] + b])
        for b, n in enumerate(lengths.tolist())
    )
    _assert_close(got, want)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_forward_mode_rule_passes_torch_gradcheck(packed, reverse, nonlinearity):
    """The forward-mode rule against finite differences, independently of torch.nn.RNN:
    torch.autograd.gradcheck with check_forward_ad on one layer-direction, every input."""
    from fusedrnn import ops

    g = torch.Generator().manual_seed(3)
    I, H, B = 3, 4, 3
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else torch.empty(0, dtype=torch.int64)
    N = int(batch_sizes.sum()) if packed else 4 * B

    def rand(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=f64)).requires_grad_()

    inputs = (rand(N, I), rand(H, I), rand(H, H), rand(H), rand(H), rand(B, H))

    def f(*tensors):
        return ops.rnn_layer(*tensors, batch_sizes, reverse, nonlinearity)

    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True, check_batched_grad=False)


@pytest.mark.cuda
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_jvp_and_grad_on_cuda_match_cpu(packed):
    """torch.func.grad and the forward-mode rule (the tangent recurrence on the CUDA BPTT
    kernel) on CUDA tensors, against the same calls on the CPU."""
    _, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=f64)
    packed_x = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    data = packed_x.data if packed else x
    tangent = torch.randn_like(data)
    results = []
    for device in ("cpu", "cuda"):
        model = ours.to(device)
        params = {n: p.detach() for n, p in model.named_parameters()}

        # batch_sizes stays on the CPU, as torch requires; the indices follow the data.
        meta = (packed_x.batch_sizes, packed_x.sorted_indices.to(device),
                packed_x.unsorted_indices.to(device))  # fmt: skip

        def f(a, p, model=model, meta=meta):
            if packed:
                out, hn = functional_call(model, p, (PackedSequence(a, *meta),))
                return out.data, hn
            return functional_call(model, p, (a,))

        a, t = data.to(device), tangent.to(device)
        primal, tangent_out = jvp(lambda a, p=params, f=f: f(a, p), (a,), (t,))
        grads = grad(lambda p, a, f=f: sum(o.square().sum() for o in f(a, p)))(params, a)
        results.append([*primal, *tangent_out, *grads.values()])
    _assert_close([r.cpu() for r in results[1]], results[0])
