"""fusedrnn.RNN against torch.nn.RNN: parameters, state dicts, outputs and gradients."""

import pickle

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


def _pair(dtype=torch.float64, **kwargs):
    ref = torch.nn.RNN(dtype=dtype, **kwargs)
    ours = fusedrnn.RNN(dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _grads(module, inputs, out, hn):
    g = torch.Generator().manual_seed(7)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    loss = (data * torch.randn(data.shape, generator=g, dtype=data.dtype)).sum() + (
        hn * torch.randn(hn.shape, generator=g, dtype=hn.dtype)
    ).sum()
    return torch.autograd.grad(loss, [*inputs, *module.parameters()])


def test_same_parameter_names_shapes_and_init():
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ref = torch.nn.RNN(**kwargs)
    torch.manual_seed(0)
    ours = fusedrnn.RNN(**kwargs)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)
    for name in ref_sd:
        assert torch.equal(ref_sd[name], our_sd[name]), name


def test_state_dict_loads_both_ways():
    ref, ours = _pair(input_size=2, hidden_size=3, num_layers=2, bias=False)
    back = torch.nn.RNN(2, 3, 2, bias=False, dtype=torch.float64)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(back.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_single_layer_matches_nn_rnn(dtype, nonlinearity, batch_first, with_hx):
    torch.manual_seed(1)
    ref, ours = _pair(
        dtype, input_size=4, hidden_size=6, nonlinearity=nonlinearity, batch_first=batch_first
    )
    x = torch.randn(3, 5, 4, dtype=dtype, requires_grad=True)  # B=3, T=5 with batch_first
    hx = torch.randn(1, 3 if batch_first else 5, 6, dtype=dtype, requires_grad=True)
    args = (x, hx) if with_hx else (x,)
    out_r, hn_r = ref(*args)
    out_o, hn_o = ours(*args)
    torch.testing.assert_close(out_o, out_r, **TOL[dtype])
    torch.testing.assert_close(hn_o, hn_r, **TOL[dtype])
    inputs = [x, hx] if with_hx else [x]
    for a, b in zip(
        _grads(ours, inputs, out_o, hn_o), _grads(ref, inputs, out_r, hn_r), strict=True
    ):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_multilayer_matches_nn_rnn(bidirectional, enforce_sorted):
    torch.manual_seed(2)
    ref, ours = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([2, 6, 1, 5])
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(4 if bidirectional else 2, 4, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (ref, ours):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        out, hn = module(packed, hx)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        results.append((out.data, hn, _grads(module, [x, hx], out, hn)))
    (o_r, h_r, g_r), (o_o, h_o, g_o) = results
    torch.testing.assert_close(o_o, o_r, **TOL[torch.float64])
    torch.testing.assert_close(h_o, h_r, **TOL[torch.float64])
    for a, b in zip(g_o, g_r, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_unbatched_input():
    ref, ours = _pair(input_size=2, hidden_size=3, bidirectional=True)
    x = torch.randn(5, 2, dtype=torch.float64)
    hx = torch.randn(2, 3, dtype=torch.float64)
    for args in ((x,), (x, hx)):
        for a, b in zip(ours(*args), ref(*args), strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_long_sequence_float32_forward_error():
    """T = 2000 through the module: max relative error vs the float64 model <= 1e-5."""
    torch.manual_seed(3)
    ours = fusedrnn.RNN(8, 32)
    exact = fusedrnn.RNN(8, 32, dtype=torch.float64)
    exact.load_state_dict(ours.state_dict())
    x = torch.randn(2000, 2, 8)
    out, hn = ours(x)
    out64, hn64 = exact(x.double())
    assert ((out.double() - out64).abs().max() / out64.abs().max()).item() <= 1e-5
    assert ((hn.double() - hn64).abs().max() / hn64.abs().max()).item() <= 1e-5


def test_conversion_and_pickle():
    ref = torch.nn.RNN(3, 4, 2, nonlinearity="relu", batch_first=True)
    ours = fusedrnn.RNN.from_torch(ref)
    assert isinstance(ours, fusedrnn.RNN) and ours.nonlinearity == "relu" and ours.batch_first
    back = pickle.loads(pickle.dumps(ours)).to_torch()
    assert isinstance(back, torch.nn.RNN)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[torch.float32])
    torch.testing.assert_close(back(x)[0], ref(x)[0], **TOL[torch.float32])


def test_constructor_errors_match_nn_rnn():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fusedrnn.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.RNN(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        fusedrnn.RNN(3, 0)
