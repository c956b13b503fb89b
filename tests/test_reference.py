"""The oracle itself: NumPy reference vs central finite differences and vs torch.nn.RNN."""

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from fusedrnn import reference
from helpers import make_problem, rel_error, rng_for

LAYOUTS = {"padded": None, "packed": [4, 1, 3]}  # B = 3 in both


def _loss(p, G, Gn, reverse, nonlinearity):
    h, hn = reference.rnn_forward(
        p["x"],
        p["w_ih"],
        p["w_hh"],
        p["b_ih"],
        p["b_hh"],
        p["h0"],
        p["batch_sizes"],
        reverse,
        nonlinearity,
    )
    return float(np.sum(h * G) + np.sum(hn * Gn))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_backward_matches_finite_differences(nonlinearity, reverse, layout):
    rng = rng_for("fd", nonlinearity, reverse, layout)
    p = make_problem(rng, T=4, B=3, I=2, H=3, dtype=np.float64, lengths=LAYOUTS[layout])
    h, hn = reference.rnn_forward(
        p["x"],
        p["w_ih"],
        p["w_hh"],
        p["b_ih"],
        p["b_hh"],
        p["h0"],
        p["batch_sizes"],
        reverse,
        nonlinearity,
    )
    G, Gn = rng.standard_normal(h.shape), rng.standard_normal(hn.shape)
    grads = reference.rnn_backward(
        p["x"],
        p["w_ih"],
        p["w_hh"],
        p["b_ih"],
        p["b_hh"],
        p["h0"],
        G,
        Gn,
        p["batch_sizes"],
        reverse,
        nonlinearity,
    )
    eps = 1e-6
    for name in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"):
        numeric = np.zeros_like(p[name])
        for idx in np.ndindex(p[name].shape):
            saved = p[name][idx]
            p[name][idx] = saved + eps
            up = _loss(p, G, Gn, reverse, nonlinearity)
            p[name][idx] = saved - eps
            down = _loss(p, G, Gn, reverse, nonlinearity)
            p[name][idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        assert rel_error(grads[name], numeric) < 1e-7, name


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_reference_matches_torch_rnn(nonlinearity):
    """Forward and reverse directions of a packed bidirectional nn.RNN in float64."""
    rng = rng_for("torch", nonlinearity)
    lengths = [5, 3, 2]
    rnn = torch.nn.RNN(3, 4, nonlinearity=nonlinearity, bidirectional=True, dtype=torch.float64)
    seqs = [torch.from_numpy(rng.standard_normal((n, 3))) for n in lengths]
    h0 = torch.from_numpy(rng.standard_normal((2, 3, 4)))
    packed = pack_sequence(seqs)
    out, hn = rnn(packed, h0)
    for direction, suffix in enumerate(["", "_reverse"]):
        weights = [
            getattr(rnn, f"{n}_l0{suffix}").detach().numpy()
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        h, hn_ref = reference.rnn_forward(
            packed.data.numpy(),
            *weights,
            h0[direction].numpy(),
            packed.batch_sizes.numpy(),
            reverse=bool(direction),
            nonlinearity=nonlinearity,
        )
        assert rel_error(h, out.data[:, direction * 4 : (direction + 1) * 4].detach()) < 1e-13
        assert rel_error(hn_ref, hn[direction].detach()) < 1e-13


def test_reference_rejects_unknown_nonlinearity():
    p = make_problem(rng_for("bad"), T=2, B=1, I=1, H=1, dtype=np.float64)
    with pytest.raises(ValueError, match="nonlinearity"):
        reference.rnn_forward(p["x"], p["w_ih"], p["w_hh"], nonlinearity="sigmoid")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"w_hh": np.ones((3, 2))}, r"w_hh: expected a square \[H, H\] matrix, got shape \(3, 2\)"),
        ({"w_ih": np.ones((3, 4))}, r"w_ih: expected shape \[H, I\] = \(3, 2\), got \(3, 4\)"),
        ({"b_ih": np.ones(1)}, r"b_ih: expected shape \[H\] = \(3,\), got \(1,\)"),
        ({"b_hh": np.ones((1, 3))}, r"b_hh: expected shape \[H\] = \(3,\), got \(1, 3\)"),
        ({"h0": np.ones((4, 3))}, r"h0: expected shape \[B, H\] = \(2, 3\), got \(4, 3\)"),
        ({"x": np.ones((8, 2))}, r"x: expected padded input \[T, B, I\]"),
        (
            {"batch_sizes": [2, 1]},
            r"x: expected packed input \[N, I\] with N = sum\(batch_sizes\) = 3",
        ),
        ({"batch_sizes": [1, 2, 2, 2]}, "batch_sizes: expected a non-empty 1-D integer sequence"),
        ({"batch_sizes": [2, 2, 2, 0]}, "positive, non-increasing sizes, got \\[2, 2, 2, 0\\]"),
        ({"batch_sizes": []}, "batch_sizes: expected a non-empty"),
        ({"batch_sizes": [2.0, 2.0, 2.0, 2.0]}, "batch_sizes: expected a non-empty 1-D integer"),
        ({"grad_h": np.ones((4, 2, 2))}, r"grad_h: expected shape \[T, B, H\] = \(4, 2, 3\) or"),
        ({"grad_hn": np.ones(3)}, r"grad_hn: expected shape \[B, H\] = \(2, 3\), got \(3,\)"),
        ({"h": np.ones((4, 1, 3))}, r"h: expected shape \[T, B, H\]"),
    ],
)
def test_reference_names_a_wrong_size(change, match):
    """The oracle checks every size it is given: a wrong one is named (up to session 28 a
    one-element bias was broadcast, a larger h0 or a longer packed x partly read)."""
    rng = rng_for("sizes")
    args = dict(x=rng.standard_normal((4, 2, 2)), w_ih=rng.standard_normal((3, 2)),
                w_hh=rng.standard_normal((3, 3)), b_ih=None, b_hh=None, h0=None,
                batch_sizes=None)  # fmt: skip
    grads = dict(grad_h=None, grad_hn=None, h=None)
    for key, value in change.items():
        (grads if key in grads else args)[key] = value
    with pytest.raises(ValueError, match=match):
        if not any(grads[k] is not None for k in grads):
            reference.rnn_forward(**args)
        reference.rnn_backward(**args, **grads)


def test_reference_names_a_tensor_whose_storage_was_shrunk_or_freed():
    """A torch tensor whose storage holds less than its elements span was read past its
    end by the oracle's copy (garbage; a helper's review, session 32): named instead."""
    rng = rng_for("shrunk")
    x, w_ih, w_hh = rng.standard_normal((4, 2, 2)), rng.standard_normal((3, 2)), np.eye(3)
    for size, words in ((8, "storage holds 8 bytes"), (0, "storage was freed")):
        t = torch.tensor(w_hh)
        t.untyped_storage().resize_(size)
        with pytest.raises(ValueError, match=f"^w_hh's {words}"):
            reference.rnn_forward(x, w_ih, t)
        steps = torch.tensor([2, 1, 1])
        steps.untyped_storage().resize_(size)
        with pytest.raises(ValueError, match=f"^batch_sizes's {words}"):
            reference.rnn_forward(rng.standard_normal((4, 2)), w_ih, w_hh, batch_sizes=steps)


def test_reference_names_a_value_it_cannot_take():
    """Values that are not real numbers, flags that are not bools and sequence_rows' own
    arguments are named (NumPy's or torch's errors, a silently dropped imaginary part, or a
    truncated or ignored size before session 29); tensors that require grad, of a half type
    or of any device are read as their values."""
    rng = rng_for("values")
    x, w_ih, w_hh = rng.standard_normal((4, 2, 2)), rng.standard_normal((3, 2)), np.eye(3)
    want, _ = reference.rnn_forward(x, w_ih, w_hh)
    t = torch.tensor(w_ih, requires_grad=True)
    got, _ = reference.rnn_forward(x, t, w_hh)  # (numpy() of it raised torch's RuntimeError)
    np.testing.assert_array_equal(got, want)
    half = torch.tensor(w_ih).to(torch.bfloat16)
    got, _ = reference.rnn_forward(x, half, w_hh)
    np.testing.assert_array_equal(got, reference.rnn_forward(x, half.double().numpy(), w_hh)[0])
    for args, match in [
        ((x + 1j, w_ih, w_hh), "x: expected real numbers"),
        ((x, torch.tensor(w_ih) * 1j, w_hh), "w_ih: expected real numbers, got a complex"),
        ((x, "abc", w_hh), "w_ih: expected real numbers"),
        ((x, w_ih, [[1.0, 2.0], [3.0]]), "w_hh: expected real numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            reference.rnn_forward(*args)
    with pytest.raises(TypeError, match="reverse: expected a bool, got 'no'"):
        reference.rnn_forward(x, w_ih, w_hh, reverse="no")
    with pytest.raises(TypeError, match="reverse: expected a bool, got None"):
        reference.rnn_backward(x, w_ih, w_hh, reverse=None)
    assert reference.sequence_rows([2, 1]) == [[0, 2], [1]]
    assert reference.sequence_rows(torch.tensor([2, 1])) == [[0, 2], [1]]
    assert reference.sequence_rows(None, B=2, T=2) == [[0, 2], [1, 3]]
    for sizes in ([2, 0], [2, -1], [2.7, 1.2], "21", [], [1, 2], [2, [2], 1]):
        with pytest.raises(ValueError, match="batch_sizes: expected a non-empty 1-D integer"):
            reference.sequence_rows(sizes)
    with pytest.raises(ValueError, match="B: expected an int >= 0 for padded data"):
        reference.sequence_rows(None, B=-1, T=3)
    with pytest.raises(ValueError, match="T: expected an int >= 0 for padded data"):
        reference.sequence_rows(None, B=2)
    with pytest.raises(ValueError, match="B and T: given with batch_sizes"):
        reference.sequence_rows([2, 1], B=2, T=2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_backward_at_given_states(layout):
    """``h=``: BPTT at the states given (a kernel's stored, rounded ones), not recomputed.
    The same states give the same gradients; rounded states give 1 - h_r^2 from those."""
    rng = rng_for("given-h", layout)
    p = make_problem(rng, T=4, B=3, I=2, H=3, dtype=np.float64, lengths=LAYOUTS[layout])
    args = [p[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0")]
    h, hn = reference.rnn_forward(*args, p["batch_sizes"])
    G, Gn = rng.standard_normal(h.shape), rng.standard_normal(hn.shape)
    want = reference.rnn_backward(*args, G, Gn, p["batch_sizes"])
    same = reference.rnn_backward(*args, G, Gn, p["batch_sizes"], h=h)
    for name in want:
        np.testing.assert_array_equal(same[name], want[name])
    rounded = h.astype(np.float16)
    got = reference.rnn_backward(*args, G, Gn, p["batch_sizes"], h=rounded)
    # With no grad_hn and no recurrence the pre-activation gradient is G * (1 - h^2).
    zero_w = np.zeros_like(p["w_hh"])
    d = reference.rnn_backward(p["x"], p["w_ih"], zero_w, None, None, None, G, None,
                               p["batch_sizes"], h=rounded)["dpre"]  # fmt: skip
    np.testing.assert_allclose(d, G * (1 - rounded.astype(np.float64) ** 2), rtol=1e-15)
    assert not np.allclose(got["dpre"], want["dpre"], rtol=1e-6, atol=0)


@pytest.mark.parametrize(("T", "B", "I", "H"), [(5, 0, 3, 4), (5, 2, 3, 0), (5, 2, 0, 4)])
def test_reference_takes_empty_sizes(T, B, I, H):
    """An empty batch (or H = 0, I = 0: RNNCell takes both) gives empty or zero results in
    both directions (rnn_backward raised a NumPy reshape error at B = 0 up to session 19)."""
    rng = np.random.default_rng(0)
    x, w_ih, w_hh = rng.standard_normal((T, B, I)), rng.standard_normal((H, I)), np.eye(H)
    h, hn = reference.rnn_forward(x, w_ih, w_hh)
    assert h.shape == (T, B, H) and hn.shape == (B, H)
    grads = reference.rnn_backward(x, w_ih, w_hh, grad_h=np.ones_like(h), grad_hn=np.ones_like(hn))
    assert grads["x"].shape == x.shape and grads["h0"].shape == (B, H)
    assert grads["w_ih"].shape == (H, I) and grads["dpre"].shape == (T, B, H)
    if B == 0 or H == 0:
        assert not np.any(grads["w_ih"]) and not np.any(grads["b_ih"])
