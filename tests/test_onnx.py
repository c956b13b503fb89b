"""ONNX export: fusedrnn.RNN and fusedrnn.RNNCell export as torch.nn.RNN / nn.RNNCell do
(ONNX has no fusedrnn op, so under export the modules run torch.nn's forward), with both
of torch's exporters, and onnxruntime gives nn.RNN's outputs."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter's translations

EXPORTERS = {"dynamo": True, "torchscript": False}


def _export(module, args, path, dynamo, **kwargs):
    with warnings.catch_warnings():  # the exporters' own deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=dynamo, **kwargs)
    return onnx.load(str(path))


def _run(path, args):
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})


def _assert_close(got, want):
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), w.detach(), rtol=1e-5, atol=1e-5)


CONFIGS = [  # (num_layers, bidirectional, batch_first, nonlinearity, bias, with h0)
    (1, False, False, "tanh", True, False),
    (2, True, True, "relu", False, True),
    (1, True, False, "tanh", True, True),
    (2, False, True, "relu", True, False),
]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_rnn_exports_like_nn_rnn(tmp_path, exporter, config):
    layers, bidirectional, batch_first, nonlinearity, bias, with_h0 = config
    torch.manual_seed(0)
    ref = nn.RNN(4, 8, layers, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                 bidirectional=bidirectional).eval()  # fmt: skip
    model = fusedrnn.RNN.from_torch(ref)
    x = torch.randn((2, 5, 4) if batch_first else (5, 2, 4))
    args = (x, torch.randn(layers * (1 + bidirectional), 2, 8)) if with_h0 else (x,)
    graph = _export(model, args, tmp_path / "m.onnx", EXPORTERS[exporter])
    assert all("fusedrnn" not in node.domain for node in graph.graph.node)
    _assert_close(_run(tmp_path / "m.onnx", args), ref(*args))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unbatched_input_and_cell(tmp_path, exporter):
    torch.manual_seed(0)
    ref = nn.RNN(4, 8, num_layers=2).eval()
    x = torch.randn(5, 4)
    _export(fusedrnn.RNN.from_torch(ref), (x,), tmp_path / "u.onnx", EXPORTERS[exporter])
    _assert_close(_run(tmp_path / "u.onnx", (x,)), ref(x))
    cell = nn.RNNCell(4, 8, nonlinearity="relu")
    for args in ((torch.randn(3, 4), torch.randn(3, 8)), (torch.randn(4),)):
        path = tmp_path / f"c{len(args)}.onnx"
        _export(fusedrnn.RNNCell.from_torch(cell), args, path, EXPORTERS[exporter])
        _assert_close(_run(path, args), cell(*args))


def test_torchscript_exporter_dynamic_length_and_packed(tmp_path):
    """The exported RNN node takes any sequence length (dynamic_axes), and packed input
    exports, as with nn.RNN's torchscript export (torch's dynamo exporter refuses
    pack_padded_sequence for nn.RNN and fusedrnn alike)."""
    torch.manual_seed(0)
    ref = nn.RNN(4, 8, num_layers=2, bidirectional=True).eval()
    model = fusedrnn.RNN.from_torch(ref)
    path = tmp_path / "d.onnx"
    _export(model, (torch.randn(5, 2, 4),), path, False, input_names=["x"],
            dynamic_axes={"x": {0: "T"}})  # fmt: skip
    longer = torch.randn(9, 2, 4)
    _assert_close(_run(path, (longer,)), ref(longer))

    class Packed(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, lengths):
            return self.rnn(pack_padded_sequence(x, lengths))[1]

    x, lengths = torch.randn(5, 3, 4), torch.tensor([5, 3, 2])
    _export(Packed(model), (x, lengths), tmp_path / "p.onnx", False)
    _assert_close(_run(tmp_path / "p.onnx", (x, lengths)), Packed(ref)(x, lengths))


def test_export_is_the_only_mode_that_runs_torch_nn():
    """Outside ONNX export the modules run the fused op: torch.export keeps it."""
    model = fusedrnn.RNN(4, 8)
    program = torch.export.export(model, (torch.randn(5, 2, 4),))
    targets = {str(node.target) for node in program.graph.nodes}
    assert any("fusedrnn" in t for t in targets)
    assert not any("rnn_tanh" in t for t in targets)
