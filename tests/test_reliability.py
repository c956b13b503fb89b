"""Reliability: determinism, thread safety, no leaks, Ctrl-C, NaN/Inf like nn.RNN."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops


def _model_and_input(seed=0):
    torch.manual_seed(seed)
    model = fusedrnn.RNN(5, 24, num_layers=2, bidirectional=True)
    x = torch.randn(30, 6, 5)
    lengths = torch.tensor([30, 7, 19, 1, 30, 12])
    return model, x, lengths


def _outputs_and_grads(model, x, lengths):
    x = x.clone().requires_grad_(True)
    out, hn = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    loss = out.data.square().sum() + hn.sum()
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return [out.data.detach(), hn.detach(), *grads]


def test_repeated_runs_are_bitwise_identical():
    model, x, lengths = _model_and_input()
    first = _outputs_and_grads(model, x, lengths)
    for _ in range(3):
        for a, b in zip(_outputs_and_grads(model, x, lengths), first, strict=True):
            assert torch.equal(a, b)


def test_concurrent_python_threads_match_serial_results():
    """The kernels release the GIL; concurrent calls on one module must not interfere."""
    model, x, lengths = _model_and_input(1)
    inputs = [(x * (1 + 0.1 * i), lengths) for i in range(8)]
    serial = [_outputs_and_grads(model, *args) for args in inputs]
    results: list = [None] * len(inputs)
    errors: list = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = _outputs_and_grads(model, *inputs[i])
        except Exception as exc:  # surfaced below with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for got, want in zip(results, serial, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""), reason="ASan's quarantine holds freed memory"
)
def test_resident_memory_stays_flat_over_many_calls():
    torch.manual_seed(2)
    model = fusedrnn.RNN(5, 16, bidirectional=True)
    x = torch.randn(8, 6, 5)
    lengths = torch.tensor([8, 3, 5, 1, 8, 2])
    for _ in range(200):  # warm up allocator caches
        _outputs_and_grads(model, x, lengths)
    before = _rss_bytes()
    for _ in range(3000):
        _outputs_and_grads(model, x, lengths)
    growth = _rss_bytes() - before
    # Each call allocates ~10 KB of tensors and saves ~5 KB for backward: leaking any of it
    # would grow RSS by tens of MiB over 3000 calls.
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


def _outputs_and_all_grads(module, x, hx=None, lengths=None, poison_grad=False):
    """The outputs of ``module`` on ``x`` (packed with ``lengths`` when given) and the
    gradients of every input and parameter for a weighted sum of its first output (with
    ``poison_grad``, weights with an infinity and a NaN at the first and the last step: the
    steps where each direction starts from its initial state)."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out = module(inp, hx)
    outs = out if isinstance(out, tuple) else (out,)
    if lengths is not None:
        outs = (outs[0].data, *outs[1:])
    o = outs[0]
    weights = torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o)
    if poison_grad:  # the cell's output is one step
        first, last = (weights[0], weights[-1]) if o.dim() == 3 else (weights, weights)
        first[1, 2], last[3, -1] = float("inf"), float("nan")
    (outs[0] * weights).sum().backward()
    return [*outs, x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize(
    "cell, poison",
    [(False, p) for p in ("input", "w_hh", "w_hh-hx", "w_hh-packed", "grad")]
    + [(True, p) for p in ("input", "w_hh", "w_hh-hx", "grad")],
    ids=lambda v: v if isinstance(v, str) else ("cell" if v else "rnn"),
)
def test_nan_and_inf_propagate_like_nn_rnn(nonlinearity, cell, poison, device):
    """Outputs and every gradient have NaN and infinities where torch.nn's have them, with
    them in the input or in W_hh (no state given, or zeros given). The cases that once
    differed: torch multiplies its zero state by W_hh (a NaN there shows at the first
    step), and its relu backward selects (0 where h <= 0, else the gradient: a NaN state
    passes the gradient on, and a zero stops an infinite or NaN one) where a product would
    not; and a sequence's gradient at its last step is the output's alone, with no product of
    W_hh (packed: sequences end at different steps, and both directions' W_hh are poisoned so
    the reverse one's last step is seen too; relu and the cell tell this rule apart, in a
    tanh RNN the NaN reaches every gradient either way); and, without a state given, a
    pre-activation gradient that is not finite at the step that starts from the zero state
    (t = 0 forward, t = T - 1 reverse: the last the BPTT walks) times torch's zero state
    makes a NaN row of dW_hh (the padded fused backward skipped that product, session 24).
    On CUDA the reference is torch's own
    implementation with cuDNN off, the one nn.RNNCell always runs and nn.RNN runs on the CPU,
    so both devices are held to one rule. float64 (no TF32)."""
    torch.manual_seed(3)
    f64 = dict(nonlinearity=nonlinearity, dtype=torch.float64)
    if cell:
        ref, w_hh = torch.nn.RNNCell(3, 4, **f64), "weight_hh"
        ours_cls, x, state = fusedrnn.RNNCell, torch.randn(5, 3, dtype=torch.float64), (5, 4)
    else:
        ref, w_hh = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True, **f64), "weight_hh_l0"
        ours_cls, x, state = fusedrnn.RNN, torch.randn(4, 5, 3, dtype=torch.float64), (4, 5, 4)
    if poison == "input":
        x[..., 1, 0], x[..., 3, 2], x[..., 4, 1] = float("nan"), float("inf"), -float("inf")
    elif poison != "grad":
        with torch.no_grad():
            for name in (w_hh, w_hh + "_reverse") if poison == "w_hh-packed" else (w_hh,):
                getattr(ref, name)[1, 2] = float("nan")
                getattr(ref, name)[3, 0] = float("inf")
    hx = torch.zeros(state, dtype=torch.float64, device=device) if poison == "w_hh-hx" else None
    lengths = torch.tensor([2, 4, 1, 3, 4]) if poison == "w_hh-packed" else None
    ours = ours_cls.from_torch(ref)
    ref, ours, x = ref.to(device), ours.to(device), x.to(device)
    poison_grad = poison == "grad"
    got = _outputs_and_all_grads(ours, x, hx, lengths, poison_grad)
    with torch.backends.cudnn.flags(enabled=False):
        want = _outputs_and_all_grads(ref, x, hx, lengths, poison_grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-9, atol=1e-11)


def test_ctrl_c_during_long_calls_leaves_process_usable():
    """SIGINT while the kernels run: KeyboardInterrupt is raised (at the latest when the
    kernel call returns) and the process keeps working."""
    script = textwrap.dedent(
        """
        import signal, sys, threading, os, torch, fusedrnn
        torch.manual_seed(0)
        rnn = fusedrnn.RNN(64, 256)
        x = torch.randn(400, 32, 64)
        want = rnn(x[:3])[1]
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        calls = 0
        try:
            while True:
                out, hn = rnn(x)
                out.sum().backward()
                calls += 1
        except KeyboardInterrupt:
            print("interrupted after", calls, "calls", flush=True)
        assert torch.equal(rnn(x[:3])[1], want)
        print("recovered", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "interrupted" in proc.stdout and "recovered" in proc.stdout


def test_model_runs_in_forked_dataloader_workers():
    """A model used (forward and backward, on two threads) in the parent runs in DataLoader
    workers forked after it, with the parent's results bit for bit (any thread count gives
    the same bits). The workers run on one thread, as torch's DataLoader sets them: after a
    fork, the OpenMP pool torch and fusedrnn share cannot run a parallel region (torch's own
    matrix products hang there too, and so does nn.RNN)."""
    script = textwrap.dedent(
        """
        import faulthandler, torch, fusedrnn
        from torch.utils.data import DataLoader, Dataset
        torch.manual_seed(0)
        torch.set_num_threads(2)  # also on a one-core machine
        rnn = fusedrnn.RNN(64, 256, num_layers=2, bidirectional=True)
        xs = torch.randn(4, 30, 64, 64)
        out, hn = rnn(xs[0])
        out.sum().backward()  # the thread team (OpenMP) has run in the parent
        assert torch.get_num_threads() > 1
        with torch.no_grad():
            want = [rnn(x)[1] for x in xs]

        class Encoded(Dataset):
            def __len__(self):
                return len(xs)

            def __getitem__(self, i):
                faulthandler.dump_traceback_later(60, exit=True)  # a hang fails, with a trace
                x = xs[i].clone().requires_grad_()
                out, hn = rnn(x)
                out.sum().backward()
                with torch.no_grad():
                    return rnn(xs[i])[1], torch.get_num_threads()

        loader = DataLoader(Encoded(), batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
        for i, (hn, threads) in enumerate(loader):
            assert threads == 1, threads
            assert torch.equal(hn, want[i]), i
        print("workers ok", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    assert "workers ok" in proc.stdout


# -- regressions found in review: each reached the kernels with memory they must not read --


def _small_layer(dtype=torch.float64, B=3, T=2, I=2, H=3):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(T * B, I, generator=g, dtype=dtype)
    w_ih = torch.randn(H, I, generator=g, dtype=dtype)
    w_hh = 0.5 * torch.randn(H, H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return x, w_ih, w_hh, h0


def test_non_contiguous_biases_are_read_correctly():
    """A .contiguous() copy of a bias must outlive the kernel call that reads it."""
    x, w_ih, w_hh, h0 = _small_layer()
    biases = torch.randn(3, 2, dtype=torch.float64)  # columns are non-contiguous views
    bs = torch.empty(0, dtype=torch.int64)
    for _ in range(3):  # a freed copy gets overwritten by the next allocations
        got = ops.rnn_layer(x, w_ih, w_hh, biases[:, 0], biases[:, 1], h0, bs)
        want = ops.rnn_layer(
            x, w_ih, w_hh, biases[:, 0].contiguous(), biases[:, 1].contiguous(), h0, bs
        )
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_non_contiguous_batch_sizes_are_refused():
    x, w_ih, w_hh, h0 = _small_layer()
    bs = torch.tensor([3, 1, 2, 1, 1, 1])[::2]  # values [3, 2, 1], memory [3, 1, 2, ...]
    with pytest.raises(ValueError, match="batch_sizes must be a contiguous tensor"):
        ops.rnn_layer(x, w_ih, w_hh, None, None, h0, bs)


def test_sparse_inputs_are_refused_by_name():
    x, w_ih, w_hh, h0 = _small_layer()
    bs = torch.empty(0, dtype=torch.int64)
    with pytest.raises(TypeError, match="x must be a dense"):
        ops.rnn_layer(x.to_sparse(), w_ih, w_hh, None, None, h0, bs)
    with pytest.raises(TypeError, match="w_hh must be a dense"):
        ops.rnn_layer(x, w_ih, w_hh.to_sparse(), None, None, h0, bs)


@pytest.mark.parametrize(
    ("change", "exc", "pattern"),
    [
        (dict(h0=torch.zeros(6, 3, dtype=torch.float64)), ValueError, "h0 must have the shape"),
        (dict(h0=torch.zeros(3, 3)), TypeError, "h0 must be a dense tensor with the dtype"),
        (dict(x=torch.zeros(1, 2, dtype=torch.float64)), ValueError, "x must have shape"),
        (dict(w_ih=torch.zeros(3, 5, dtype=torch.float64)), ValueError, "must agree on I"),
    ],
)
def test_grads_op_checks_h0_x_and_w_ih(change, exc, pattern):
    x, w_ih, w_hh, h0 = _small_layer()
    h, hn = ops.rnn_layer(x, w_ih, w_hh, None, None, h0, torch.empty(0, dtype=torch.int64))
    args = dict(x=x, w_ih=w_ih, h0=h0)
    args.update(change)
    with pytest.raises(exc, match=pattern):
        ops.rnn_layer_grads(
            args["x"], args["w_ih"], w_hh, args["h0"], h, torch.ones_like(h), torch.ones_like(hn),
            torch.empty(0, dtype=torch.int64), False, "tanh", True, True, True, True,
        )  # fmt: skip


def test_parameter_data_replaced_before_backward_is_refused():
    model = fusedrnn.RNN(2, 16)
    out, _ = model(torch.randn(3, 2, 2))
    model.weight_hh_l0.data = torch.randn(2, 2)
    with pytest.raises(RuntimeError, match="changed its shape"):
        out.sum().backward()


def test_zero_hidden_size_backward_matches_nn_rnncell():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    ours = fusedrnn.RNNCell(3, 0, dtype=torch.float64)
    ours(x).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


# -- found by the session 3 review of the lean eager path ----------------------------------


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_unbatched_hx_with_create_graph_gives_the_usual_gradients(bidirectional):
    """Unbatched input with hx: each layer's state is [1, H] inside, as for batched input
    (the registered op used under create_graph checks h0 against grad_hn's [B, H])."""
    torch.manual_seed(0)
    rnn = fusedrnn.RNN(3, 4, 2, bidirectional=bidirectional, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    hx = torch.randn(4 if bidirectional else 2, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for create_graph in (False, True):
        out, hn = rnn(x, hx)
        wrt = [hx, *rnn.parameters()]
        grads.append(torch.autograd.grad(out.sum() + hn.sum(), wrt, create_graph=create_graph))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("cls", ["RNN", "RNNCell"])
def test_jit_trace_records_the_registered_op(cls, grad):
    """Under torch.jit.trace the modules take the registered op (raw kernel calls would
    record only the allocations, and the traced module would return uninitialized memory)."""
    torch.manual_seed(0)
    module = getattr(fusedrnn, cls)(3, 4)
    x = torch.randn(5, 2, 3) if cls == "RNN" else torch.randn(2, 3)
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(module, (x,), check_trace=False)
        want, got = module(x), traced(torch.zeros_like(x) + x)
    for a, b in zip(got if cls == "RNN" else [got], want if cls == "RNN" else [want], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bidirectional_backward_reads_saved_output_in_any_layout():
    """A saved_tensors_hooks unpack hook may hand the saved output back with other strides:
    the fused bidirectional backward must read it as a tensor, not as memory."""
    torch.manual_seed(0)
    ref = torch.nn.RNN(3, 4, bidirectional=True, dtype=torch.float64)
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for module, hooks in ((ref, False), (ours, True)):

        def unpack(t):  # the same values, column-major
            return t.t().contiguous().t() if t.dim() == 2 else t

        ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack)
        with ctx if hooks else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            out, hn = module(x)
            grads.append(
                torch.autograd.grad((out * out).sum() + hn.sum(), list(module.parameters()))
            )
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", ["RNN", "RNNCell"])
def test_negative_bit_views_are_read_with_their_sign(cls):
    """A negative-bit view keeps its sign in a flag, not in memory (z.conj().imag; its
    one-element case is contiguous): the kernels, which read memory, must see the resolved
    values of inputs, states and weights, on the lean path and the general one. nn.RNN is
    the reference."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(1, 4)
    ours = getattr(fusedrnn, cls).from_torch(ref)
    shape, hshape = ((1, 1, 1), (1, 1, 4)) if cls == "RNN" else ((1, 1), (1, 4))
    x = torch.randn(shape, dtype=torch.cfloat).conj().imag
    hx = torch._neg_view(torch.randn(hshape))  # contiguous, negative bit set
    assert x.is_neg() and x.is_contiguous() and hx.is_neg() and hx.is_contiguous()
    name = "weight_ih_l0" if cls == "RNN" else "weight_ih"
    for module in (ref, ours):  # the same values, behind a negative-bit view
        w = getattr(module, name).detach()
        setattr(module, name, torch.nn.Parameter(torch._neg_view(-w)))
    assert getattr(ours, name).is_neg()
    for args in ((x,), (x, hx), (x.resolve_neg(), hx), (x.resolve_neg(),)):
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                want, got = ref(*args), ours(*args)
            want = want if cls == "RNN" else [want]
            got = got if cls == "RNN" else [got]
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_tensors_are_refused_or_read_as_zeros_not_dereferenced():
    """ZeroTensors (no memory, address 0): as an input the kernels refuse them by name; as
    an output gradient they are absent gradients, i.e. zeros."""
    zero = torch._efficientzerotensor
    rnn = fusedrnn.RNN(3, 4)
    with pytest.raises(ValueError, match="address of a tensor's data, got 0"):
        with torch.no_grad():
            rnn(zero((5, 2, 3)))
    bi = fusedrnn.RNN(3, 4, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, hn = bi(x)
    (g_zero,) = torch.autograd.grad(out, [bi.weight_hh_l0], zero(out.shape, dtype=out.dtype),
                                    retain_graph=True)  # fmt: skip
    (g_none,) = torch.autograd.grad(hn.sum() * 0, [bi.weight_hh_l0])
    assert torch.equal(g_zero, torch.zeros_like(g_zero)) and torch.equal(g_none, g_zero)


# Freed views (storage offset > 0, storage resized to 0): each case's code, and the name
# its error must give. Their address is the offset in bytes, not 0, and before session 31
# the kernels dereferenced it (a segfault; nn.RNN raises torch's "not allocated yet").
_FREED_VIEWS = {
    "hx freed between forward and backward, 2 layers": (
        "m = fusedrnn.RNN(4, 3, num_layers=2); x = torch.randn(5, 2, 4, requires_grad=True)\n"
        "hx = torch.randn(2, 2, 3, requires_grad=True); out, hn = m(x, hx)\n"
        "hx.untyped_storage().resize_(0); (out.sum() + hn.sum()).backward()",
        "hx[1]",
    ),
    "a parameter viewing a freed flat buffer (FSDP's use_orig_params)": (
        "m = fusedrnn.RNN(4, 3, num_layers=2); flat = torch.randn(100)\n"
        "m.weight_hh_l1 = torch.nn.Parameter(flat[10:19].view(3, 3))\n"
        "flat.untyped_storage().resize_(0); m(torch.randn(5, 2, 4))",
        "parameter weight_hh_l1",
    ),
    "such a parameter freed before the backward, bidirectional": (
        "m = fusedrnn.RNN(4, 3, bidirectional=True); flat = torch.randn(40)\n"
        "m.weight_hh_l0_reverse = torch.nn.Parameter(flat[10:19].view(3, 3))\n"
        "out, hn = m(torch.randn(5, 2, 4, requires_grad=True))\n"
        "flat.untyped_storage().resize_(0); (out.sum() + hn.sum()).backward()",
        "parameter weight_hh_l0_reverse",
    ),
    "the cell's state, a row of a freed buffer": (
        "c = fusedrnn.RNNCell(4, 3); buf = torch.randn(3, 2, 3); hx = buf[1]\n"
        "buf.untyped_storage().resize_(0); c(torch.randn(2, 4), hx)",
        "hx",
    ),
    "the input, batch_first": (
        "m = fusedrnn.RNN(4, 3, batch_first=True); buf = torch.randn(3, 2, 5, 4); x = buf[1]\n"
        "buf.untyped_storage().resize_(0); m(x)",
        "input",
    ),
    "a packed input's batch_sizes": (
        "m = fusedrnn.RNN(4, 3); bs = torch.tensor([9, 2, 2, 2, 1, 1]); b = bs[1:5]\n"
        "bs.untyped_storage().resize_(0)\n"
        "m(torch.nn.utils.rnn.PackedSequence(torch.randn(8, 4), b, None, None))",
        "input.batch_sizes",
    ),
    "the backward op's grad_h": (
        "e = torch.empty(0, dtype=torch.long)\n"
        "h, _ = ops.rnn_layer(torch.randn(10, 4), torch.randn(3, 4), torch.randn(3, 3), None,"
        " None, torch.zeros(2, 3), e)\n"
        "buf = torch.randn(2, 10, 3); g = buf[1]; buf.untyped_storage().resize_(0)\n"
        "ops.rnn_layer_backward(torch.randn(3, 3), h, g, torch.zeros(2, 3), e, False, 'tanh')",
        "grad_h",
    ),
}


def test_freed_views_are_named_not_dereferenced():
    """A view whose storage was freed has the address of its offset, not 0: refused by
    name like a freed tensor (session 31, from a helper's review: each case below was a
    segfault). In a child process, so that a crash fails this test and not the run."""
    _assert_each_case_refused(_FREED_VIEWS, "storage was freed")


def _assert_each_case_refused(cases: dict, words: str) -> None:
    """Run each case's code (``cases``: name -> (code, the name its error gives)) in one
    child process, each in its own try; each must raise a RuntimeError that begins with
    that name and ``words``, and the process must not crash."""
    script = "import torch, fusedrnn\nfrom fusedrnn import ops\n"
    for code, _ in cases.values():
        body = textwrap.indent(code, "    ")
        script += f"try:\n{body}\n    print('no error', flush=True)\n"
        script += "except RuntimeError as e:\n    print(str(e).splitlines()[0], flush=True)\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.returncode, lines, proc.stderr[-2000:])
    for (case, (_, name)), line in zip(cases.items(), lines, strict=True):
        assert line.startswith(f"fusedrnn: {name}'s {words}"), (case, line)


# Storages shrunk (resize_(n), n > 0) below what the tensor spans: each case's code and the
# name its error must give. Before session 32 the kernels read past the storage's end: the
# first case was a segfault, the others silent garbage (torch.nn.RNN refuses a shrunk
# weight or state through its views of them, which check their storage's size).
_SHRUNK = {
    "a large weight, inference": (
        "m = fusedrnn.RNN(1024, 1024); m.weight_hh_l0.data.untyped_storage().resize_(64)\n"
        "with torch.no_grad(): m(torch.randn(3, 1, 1024))",
        "parameter weight_hh_l0",
    ),
    "a weight shrunk before the backward": (
        "m = fusedrnn.RNN(512, 512); out, hn = m(torch.randn(3, 1, 512, requires_grad=True))\n"
        "m.weight_hh_l0.data.untyped_storage().resize_(64); out.sum().backward()",
        "parameter weight_hh_l0",
    ),
    "the input": (
        "m = fusedrnn.RNN(256, 256); x = torch.randn(50, 4, 256)\n"
        "x.untyped_storage().resize_(64); m(x)",
        "input",
    ),
    "the state, a row of a shrunk buffer, 2 layers": (
        "m = fusedrnn.RNN(4, 3, num_layers=2); buf = torch.randn(2, 2, 3); hx = buf[:, :1]\n"
        "buf.untyped_storage().resize_(20); m(torch.randn(5, 1, 4), hx)",
        "hx",
    ),
    "a packed input's batch_sizes": (
        "m = fusedrnn.RNN(4, 3); bs = torch.tensor([2] * 1000); bs.untyped_storage().resize_(16)\n"
        "m(torch.nn.utils.rnn.PackedSequence(torch.randn(2000, 4), bs, None, None))",
        "input.batch_sizes",
    ),
    "the cell's weight": (
        "c = fusedrnn.RNNCell(512, 512); c.weight_ih.data.untyped_storage().resize_(64)\n"
        "c(torch.randn(2, 512))",
        "parameter weight_ih",
    ),
    "an output gradient": (
        "m = fusedrnn.RNN(256, 256); out, hn = m(torch.randn(50, 4, 256, requires_grad=True))\n"
        "g = torch.randn_like(out); g.untyped_storage().resize_(64); out.backward(g)",
        "grad_h",
    ),
    "a bidirectional layer's weight before the backward": (
        "m = fusedrnn.RNN(256, 256, bidirectional=True)\n"
        "out, hn = m(torch.randn(50, 4, 256, requires_grad=True))\n"
        "m.weight_hh_l0_reverse.data.untyped_storage().resize_(64); out.sum().backward()",
        "parameter weight_hh_l0_reverse",
    ),
    # Found by a helper's review of the change (session 32): what still reached the kernels
    # or torch's copies unchecked.
    "a packed layer's saved batch_sizes, shrunk by a saved-tensor hook": (
        "def unpack(t):\n"
        "    if t.dtype == torch.int64 and t.numel() > 1:\n"
        "        t = t.clone(); t.untyped_storage().resize_(8)\n"
        "    return t\n"
        "m = fusedrnn.RNN(4, 3); x = torch.randn(6, 2, 4, requires_grad=True)\n"
        "with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):\n"
        "    out, hn = m(torch.nn.utils.rnn.pack_padded_sequence(x, [6, 4]))\n"
        "out.data.sum().backward()",
        "batch_sizes",
    ),
    "an output gradient viewing a shrunk storage, bidirectional": (
        "m = fusedrnn.RNN(8, 16, bidirectional=True)\n"
        "x = torch.randn(6, 4, 8, requires_grad=True)\n"
        "out, hn = m(x); base = torch.randn(4, 6, 32); g = base.transpose(0, 1)\n"
        "base.untyped_storage().resize_(4); torch.autograd.grad(out, x, g)",
        "grad_out",
    ),
    "an output gradient viewing a shrunk storage, create_graph": (
        "m = fusedrnn.RNN(8, 16); x = torch.randn(6, 4, 8, requires_grad=True)\n"
        "out, hn = m(x); base = torch.randn(4, 6, 16); g = base.transpose(0, 1)\n"
        "base.untyped_storage().resize_(4); torch.autograd.grad(out, x, g, create_graph=True)",
        "grad_h",
    ),
    "w_ih, read by torch's products in a batched backward": (
        "m = fusedrnn.RNN(64, 64); x = torch.randn(5, 3, 64, requires_grad=True)\n"
        "out, hn = m(x); m.weight_ih_l0.data.untyped_storage().resize_(4)\n"
        "torch.autograd.grad(out, x, torch.ones(2, *out.shape), is_grads_batched=True)",
        "w_ih",
    ),
    "a packed input's strided batch_sizes": (
        "m = fusedrnn.RNN(4, 3); bs = torch.tensor([2] * 2000)[::2]\n"
        "bs._base.untyped_storage().resize_(16)\n"
        "m(torch.nn.utils.rnn.PackedSequence(torch.randn(2000, 4), bs, None, None))",
        "input.batch_sizes",
    ),
}


def test_shrunk_storage_is_named_not_read_past_its_end():
    """A tensor whose storage was shrunk below what its elements span is refused by name,
    with the bytes it holds, in the forward and in the backward (session 32: the kernels
    read past the storage's end, a segfault or garbage). In a child process, so that a
    crash fails this test and not the run."""
    _assert_each_case_refused(_SHRUNK, "storage holds ")


def test_zero_tensor_gradients_on_the_unfused_backward():
    """The backward the CUDA layers take (``ops._backward_rows`` unfused: the BPTT op, then
    torch's GEMMs) reads an output gradient given as a ZeroTensor as zeros, as the CPU's
    fused one does; its launchers refused address 0 (session 31). Run here on the CPU
    kernels; ``tests/test_cuda.py`` has it on a GPU."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    f64 = torch.float64
    x, h0 = torch.randn(10, 3, dtype=f64), torch.randn(2, 4, dtype=f64)
    w_ih, w_hh = torch.randn(4, 3, dtype=f64), torch.randn(4, 4, dtype=f64) * 0.5
    h, _ = ops.rnn_layer(x, w_ih, w_hh, None, None, h0, torch.empty(0, dtype=torch.int64))
    ctx = SimpleNamespace(reverse=False, nonlinearity="tanh")
    needs = (True,) * 6
    zero = torch._efficientzerotensor

    def grads(grad_h, grad_hn):
        return ops._backward_rows(ctx, needs, 2, False, True, False, x, w_ih, w_hh, h0, h,
                                  torch.empty(0, dtype=torch.int64), grad_h, grad_hn)  # fmt: skip

    g_hn = torch.randn(2, 4, dtype=f64)
    for got, want in (
        (grads(zero(h.shape, dtype=f64), g_hn), grads(torch.zeros_like(h), g_hn)),
        (grads(torch.ones_like(h), zero((2, 4), dtype=f64)), grads(torch.ones_like(h), None)),
    ):
        for a, b in zip(got, want, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)


def test_attributes_changed_after_construction_take_the_general_path(monkeypatch):
    """The lean path's weight plan follows the module's sizes; when they no longer match its
    parameters it steps aside and the general path reports, as it would without it."""
    rnn = fusedrnn.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    rnn(x)
    rnn.num_layers = 2
    with pytest.raises(Exception) as fast:
        rnn(x)
    monkeypatch.setattr(ops, "fast_input_cpu", lambda x: False)
    with pytest.raises(Exception) as general:
        rnn(x)
    assert type(fast.value) is type(general.value) and str(fast.value) == str(general.value)


def test_an_older_torch_is_refused_at_import_by_name():
    """``import fusedrnn`` under a torch below the floor: an ImportError naming both versions
    (not an AttributeError from deep inside torch.library)."""
    with pytest.raises(ImportError, match=r"needs torch >= 2\.10, found torch 2\.9\.1\+cu128"):
        fusedrnn._check_torch("2.9.1+cu128")
    with pytest.raises(ImportError, match=r"pip install 'torch>=2\.10,<3'"):
        fusedrnn._check_torch("2.4.0")
    for version in ("2.10.0", "2.10.0a0+git1234", "2.13.0+cpu", "2.15.0", "3.0.0"):
        fusedrnn._check_torch(version)
    fusedrnn._check_torch(torch.__version__)


def test_the_torch_floor_is_one_number():
    """The import check, pyproject.toml's requirement and the README state the same floor."""
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    floor = ".".join(map(str, fusedrnn._MIN_TORCH))
    with open(os.path.join(root, "pyproject.toml")) as f:
        assert f'"torch>={floor},<3"' in f.read()
    with open(os.path.join(root, "README.md")) as f:
        assert f"`torch>={floor},<3`" in f.read()
