"""CPU-kernel properties: bitwise identity across thread counts, the GEMM entry point,
the whole-backward op, and the instruction-set fallbacks."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fusedrnn
from fusedrnn import _C, ops

DTYPES = [torch.float32, torch.float64]


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run_child(code: str, env: dict[str, str]) -> str:
    """Runs code in a fresh Python process with env added to this one's (the kernels read
    their knobs once, at load); fails on a non-zero exit; returns its stripped stdout."""
    r = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _run_module(module, x, hx, threads):
    torch.set_num_threads(threads)
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    hx = hx.detach().clone().requires_grad_(True)
    out, hn = module(x, hx)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    g = torch.Generator().manual_seed(1)
    (data * torch.randn(data.shape, generator=g, dtype=data.dtype)).sum().backward(
        retain_graph=True
    )
    (hn * 0.5).sum().backward()
    grads = [x.grad, hx.grad] + [p.grad for p in module.parameters()]
    return [data.detach(), hn.detach(), *grads]


# Sizes large enough that the recurrence and the GEMMs really use two threads; at H <= 64
# (one chunk of columns) two threads split the rows (since session 23; one thread before).
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "B,H,T,layers,bidir,packed",
    [(32, 256, 7, 1, False, False), (17, 200, 5, 2, True, False), (24, 384, 6, 1, True, True),
     (64, 48, 9, 2, True, False), (96, 64, 8, 1, False, True)],
)  # fmt: skip
def test_bitwise_identical_for_1_and_2_threads(
    restore_threads, dtype, B, H, T, layers, bidir, packed
):
    torch.manual_seed(0)
    module = fusedrnn.RNN(96, H, num_layers=layers, bidirectional=bidir, dtype=dtype)
    hx = torch.randn(layers * (2 if bidir else 1), B, H, dtype=dtype)
    if packed:
        lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True)
        lengths[0] = T
        x = pack_sequence([torch.randn(n, 96, dtype=dtype) for n in lengths])
        run = lambda n: _run_module_packed(module, x, hx, n)  # noqa: E731
    else:
        x = torch.randn(T, B, 96, dtype=dtype)
        run = lambda n: _run_module(module, x, hx, n)  # noqa: E731
    one, two = run(1), run(2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b), "results differ between 1 and 2 threads"


# Input size about H and more than 1024 rows (T * B): the weight gradients run as one pair of
# products that share the threads (gemm_cpu_pair), padded and packed (dW_hh by rows). At
# I = 6, H = 8 every product of the layer is narrow (B one vector wide or less on every
# instruction set: KernelTable::gemm_narrow), the weight gradients a pair of them.
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("I,H", [(64, 64), (6, 8)], ids=["I64-H64", "narrow-I6-H8"])
def test_weight_gradient_pair_bitwise_for_1_and_2_threads_and_right(
    restore_threads, dtype, packed, I, H
):
    torch.manual_seed(0)
    B, T = 40, 48  # packed: ~1440 rows
    module = fusedrnn.RNN(I, H, dtype=dtype)
    ref = torch.nn.RNN(I, H, dtype=dtype)  # the same dtype: the same random output gradient
    ref.load_state_dict(module.state_dict())
    hx = torch.randn(1, B, H, dtype=dtype)
    if packed:
        lengths = sorted(torch.randint(T // 2, T + 1, (B,)).tolist(), reverse=True)
        lengths[0] = T
        seqs = [torch.randn(n, I, dtype=dtype) for n in lengths]
        x = pack_sequence(seqs)
        one, two = _run_module_packed(module, x, hx, 1), _run_module_packed(module, x, hx, 2)
        want = _run_module_packed(ref, x, hx, 2)
    else:
        x = torch.randn(T, B, I, dtype=dtype)
        one, two = _run_module(module, x, hx, 1), _run_module(module, x, hx, 2)
        want = _run_module(ref, x, hx, 2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b), "results differ between 1 and 2 threads"
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    for got, exp in zip(one, want, strict=True):
        assert torch.allclose(got, exp, rtol=tol, atol=tol), (got - exp).abs().max()


def _run_module_packed(module, x, hx, threads):
    torch.set_num_threads(threads)
    module.zero_grad()
    hx = hx.detach().clone().requires_grad_(True)
    out, hn = module(x, hx)
    g = torch.Generator().manual_seed(1)
    (out.data * torch.randn(out.data.shape, generator=g, dtype=out.data.dtype)).sum().backward(
        retain_graph=True
    )
    (hn * 0.5).sum().backward()
    return [out.data.detach(), hn.detach(), hx.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("a_t", [False, True])
@pytest.mark.parametrize("b_t", [False, True])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (37, 70, 19), (300, 33, 1500), (64, 257, 128)])
def test_gemm_matches_torch_and_is_thread_invariant(restore_threads, dtype, a_t, b_t, M, N, K):
    g = torch.Generator().manual_seed(M * 1000 + N)
    A = torch.randn((K, M) if a_t else (M, K), generator=g, dtype=dtype)
    Bm = torch.randn((N, K) if b_t else (K, N), generator=g, dtype=dtype)
    bias = torch.randn(N, generator=g, dtype=dtype)
    want = (A.t() if a_t else A).double() @ (Bm.t() if b_t else Bm).double() + bias.double()
    results = []
    for threads in (1, 2):
        C = torch.full((M, N), float("nan"), dtype=dtype)
        _C.gemm(
            ops.KERNEL_DTYPES[dtype], M, N, K, A.data_ptr(), A.shape[1], a_t, Bm.data_ptr(),
            Bm.shape[1], b_t, C.data_ptr(), N, bias.data_ptr(), False, threads,
        )  # fmt: skip
        results.append(C)
    tol = {torch.float32: 1e-5, torch.float64: 1e-13}[dtype]
    scale = want.abs().max().item()
    assert (results[0].double() - want).abs().max().item() <= tol * scale * K**0.5
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(
    "change,match",
    [
        ({"M": -1}, "M: expected a size >= 0, got -1"),
        ({"K": -7}, "K: expected a size >= 0, got -7"),
        ({"lda": 6}, "lda: expected a row stride of at least K = 7, got 6"),
        ({"lda": 4, "a_trans": True}, "lda: expected a row stride of at least M = 5, got 4"),
        ({"ldb": -3}, "ldb: expected a row stride of at least N = 3, got -3"),
        ({"ldb": 6, "b_trans": True}, "ldb: expected a row stride of at least K = 7, got 6"),
        ({"ldc": 2}, "ldc: expected a row stride of at least N = 3, got 2"),
    ],
)
def test_raw_bindings_refuse_negative_sizes_and_short_rows(change, match):
    """A negative size or a row stride shorter than its row, which the kernels would read
    as an offset (memory before the operand), is refused by name; C is left as it was."""
    A, Bm, C = torch.randn(5, 7), torch.randn(7, 7), torch.randn(5, 3)
    before = C.clone()
    args = dict(dtype="float32", M=5, N=3, K=7, A=A.data_ptr(), lda=7, a_trans=False,
                B=Bm.data_ptr(), ldb=3, b_trans=False, C=C.data_ptr(), ldc=3, bias=0,
                accumulate=False, num_threads=1)  # fmt: skip
    args.update(change)
    with pytest.raises(ValueError, match=match):
        _C.gemm(*args.values())
    assert torch.equal(C, before)
    P, W, h = torch.randn(6, 3), torch.randn(3, 3), torch.empty(6, 3)
    with pytest.raises(ValueError, match="T: expected a size >= 0, got -2"):
        _C.rnn_forward("float32", -2, 3, 3, 0, False, "tanh", P.data_ptr(), W.data_ptr(), 0,
                       h.data_ptr(), 0, 1)  # fmt: skip
    with pytest.raises(ValueError, match="B: expected a size >= 0, got -3"):
        _C.rnn_backward("float32", 2, -3, 3, 0, False, "tanh", W.data_ptr(), h.data_ptr(), 0, 0,
                        P.data_ptr(), 0, 1)  # fmt: skip


def test_gemm_accumulates():
    A, Bm = torch.randn(5, 7), torch.randn(7, 3)
    C = torch.randn(5, 3)
    want = C + A @ Bm
    _C.gemm("float32", 5, 3, 7, A.data_ptr(), 7, False, Bm.data_ptr(), 3, False, C.data_ptr(),
            3, 0, True, 1)  # fmt: skip
    torch.testing.assert_close(C, want)


def test_opcheck_grads():
    g = torch.Generator().manual_seed(0)
    x = pack_sequence([torch.randn(n, 2, generator=g, dtype=torch.float64) for n in (3, 2, 2)])
    w_ih, w_hh = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    h0 = torch.randn(3, 3, dtype=torch.float64)
    h, hn = ops.rnn_layer(x.data, w_ih, w_hh, None, None, h0, x.batch_sizes, True, "tanh")
    args = (x.data, w_ih, w_hh, h0, h, torch.randn_like(h), torch.randn_like(hn), x.batch_sizes,
            True, "tanh")  # fmt: skip
    for needs in [(True, True, True, True), (False, True, False, True), (False,) * 4]:
        torch.library.opcheck(torch.ops.fusedrnn.rnn_layer_grads.default, (*args, *needs))


@pytest.mark.parametrize(
    "env",
    [
        {"FUSEDRNN_CPU_ISA": "avx2"},
        {"FUSEDRNN_CPU_ISA": "generic"},
        {"FUSEDRNN_CPU_THREADS": "own"},
    ],
    ids=["avx2", "generic", "own-team"],
)
def test_fallback_configurations_agree_with_nn_rnn(env):
    # Lower instruction sets (FUSEDRNN_CPU_ISA) and our own thread team instead of torch's
    # OpenMP workers (FUSEDRNN_CPU_THREADS=own), chosen at load time: a fresh process each.
    # Both dtypes: each table has its own vector code per dtype (the packs' register
    # transposes among it); sizes that are no multiple of any vector width. In float32 the
    # absolute tolerance scales with each tensor's largest value: a weight gradient sums
    # 54 rows of terms up to ~30, and an element that cancels to ~1e-2 differs by ~1.5e-5
    # between two correct float32 orders (session 20: both within 2e-5 of the float64
    # truth, where the gradient reaches ~90; a fixed atol of 1e-5 failed on one input).
    code = (
        "import torch, fusedrnn; from fusedrnn import _C\n"
        "for dtype, scale in ((torch.float64, 0.0), (torch.float32, 1e-6)):\n"
        "    torch.manual_seed(0)\n"
        "    ref = torch.nn.RNN(20, 300, num_layers=2, bidirectional=True, dtype=dtype)\n"
        "    m = fusedrnn.RNN.from_torch(ref)\n"
        "    x = torch.randn(6, 9, 20, dtype=dtype)\n"
        "    def run(mod, n):\n"
        "        torch.set_num_threads(n); mod.zero_grad()\n"
        "        o, h = mod(x); (o.sum() + h.sum()).backward()\n"
        "        return [o, h] + [p.grad.clone() for p in mod.parameters()]\n"
        "    want = run(ref, 2); one = run(m, 1); two = run(m, 2)\n"
        "    for a, b, c in zip(want, one, two):\n"
        "        tol = dict(rtol=1e-4, atol=scale * a.abs().max().item()) if scale else {}\n"
        "        torch.testing.assert_close(b, a, **tol); assert torch.equal(b, c)\n"
        "print(_C.cpu_isa())\n"
    )
    out = _run_child(code, env)
    isa = env.get("FUSEDRNN_CPU_ISA")
    assert isa is None or out in (isa, "generic")


# A digest of every output and gradient of a few models (padded, packed, bidirectional;
# float32, float64 and bfloat16), one per thread count in {threads}: run in a child process, since
# the kernels read their knobs once.
_DIGEST_CHILD = """
import hashlib, torch
from torch.nn.utils.rnn import pack_sequence
import fusedrnn
digests = []
for n in {threads}:
    torch.set_num_threads(n)
    digest = hashlib.sha256()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for B, H, bidir, packed in ((16, 96, True, False), (40, 64, False, True),
                                    (9, 160, True, True), (64, 300, False, True)):
            torch.manual_seed(B)
            module = fusedrnn.RNN(24, H, num_layers=2, bidirectional=bidir, dtype=dtype)
            hx = torch.randn(4 if bidir else 2, B, H, dtype=dtype, requires_grad=True)
            if packed:
                lengths = sorted(torch.randint(1, 9, (B,)).tolist(), reverse=True)
                x = pack_sequence([torch.randn(k, 24, dtype=dtype) for k in lengths])
            else:
                x = torch.randn(6, B, 24, dtype=dtype, requires_grad=True)
            out, hn = module(x, hx)
            data = out.data if packed else out
            (data.sum() + (hn * hn).sum()).backward()
            for t in (data, hn, hx.grad, *(p.grad for p in module.parameters())):
                digest.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    digests.append(digest.hexdigest())
print(" ".join(digests))
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_absent_h0_is_bitwise_a_zero_h0_nan_of_w_hh_included(dtype, threads):
    """Without h0 the first step adds 0 W_hh^T (NaN where a row of W_hh holds a NaN or an
    infinity), as a zero h0 gives: the same bits and NaNs for padded and packed input,
    both directions, the unpacked few-row path (H = 5, B = 1) and the packed panels."""
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    for reverse, packed, H, B in itertools.product((False, True), (False, True), (5, 300), (1, 37)):
        lengths = sorted(torch.randint(1, 7, (B,)).tolist(), reverse=True) if packed else [6] * B
        T, N, I = max(lengths), sum(lengths), 4
        bs = torch.tensor([sum(n > t for n in lengths) for t in range(T)], dtype=torch.int64)
        x, w_ih, b = (
            torch.randn(N, I, dtype=dt),
            torch.randn(H, I, dtype=dt),
            torch.randn(H, dtype=dt),
        )
        w_hh = torch.randn(H, H, dtype=dt) / H**0.5
        w_hh[1, 2], w_hh[H - 1, 0] = float("nan"), float("inf")
        zeros = torch.zeros(B, H, dtype=dt)
        results = []
        for h0 in (0, zeros.data_ptr()):
            h, hn = torch.empty(N, H, dtype=dt), torch.empty(B, H, dtype=dt)
            steps = bs.data_ptr() if packed else 0
            weights = (w_ih.data_ptr(), b.data_ptr(), b.data_ptr(), w_hh.data_ptr())
            _C.layer_forward(dtype, T, B, H, I, steps, reverse, "tanh", x.data_ptr(), *weights,
                             h0, h.data_ptr(), H, hn.data_ptr(), threads)  # fmt: skip
            results.append(torch.cat((h, hn)))
        absent, zero = results
        assert absent.isnan().any()
        assert torch.equal(absent.isnan(), zero.isnan())
        bits = torch.int32 if dt == torch.float32 else torch.int64  # the sign of zero too
        assert torch.equal(absent.nan_to_num().view(bits), zero.nan_to_num().view(bits))


def test_row_and_column_splits_give_the_same_bits():
    """The recurrence shares a sequence between threads by batch rows or by hidden columns
    (rnn_cpu.cpp); which one must never change a bit of the results."""
    digests = {}
    for split in ("rows", "cols"):
        env = {"FUSEDRNN_CPU_SPLIT": split, "FUSEDRNN_CPU_MIN_WORK": "1"}
        digests[split] = _run_child(_DIGEST_CHILD.format(threads=(2,)), env)
    assert digests["rows"] == digests["cols"]


@pytest.mark.parametrize("split", ["rows", "cols"])
def test_teams_of_3_and_4_threads_give_the_bits_of_1(split):
    """Teams larger than this 2-core machine (FUSEDRNN_CPU_CORES lifts the cap; every
    kernel forced into a team with FUSEDRNN_CPU_MIN_WORK=1): the partitions a 3- or 4-core
    machine makes, packed sequences' balanced row ranges included, change no bit."""
    env = {"FUSEDRNN_CPU_CORES": "4", "FUSEDRNN_CPU_MIN_WORK": "1", "FUSEDRNN_CPU_SPLIT": split}
    one, three, four = _run_child(_DIGEST_CHILD.format(threads=(1, 3, 4)), env).split()
    assert one == three == four


def _layer_forward_args(**changes):
    """Valid arguments of _C.layer_forward for T=2, B=1, H=3, I=2 (tensors kept alive)."""
    x, w_ih, w_hh = torch.randn(2, 2), torch.randn(3, 2), torch.randn(3, 3)
    h, hn = torch.empty(2, 3), torch.empty(1, 3)
    args = dict(dtype="float32", T=2, B=1, H=3, I=2, batch_sizes=0, reverse=False,
                nonlinearity="tanh", x=x.data_ptr(), w_ih=w_ih.data_ptr(), b_ih=0, b_hh=0,
                w_hh=w_hh.data_ptr(), h0=0, h=h.data_ptr(), ldh=3, hn=hn.data_ptr(),
                num_threads=1)  # fmt: skip
    args.update(changes)
    return (x, w_ih, w_hh, h, hn), list(args.values())


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"T": "2"}, TypeError, "T: expected an int, got str"),
        ({"x": -1}, TypeError, "x: expected an address"),
        ({"reverse": "yes"}, TypeError, "reverse: expected a bool, got str"),
        ({"nonlinearity": 1}, TypeError, "nonlinearity: expected a str, got int"),
        ({"dtype": "float16"}, ValueError, "dtype: expected 'float32', 'float64' or 'bfloat16'"),
        ({"nonlinearity": "gelu"}, ValueError, "nonlinearity: expected 'tanh' or 'relu'"),
        ({"ldh": 2}, ValueError, "ldh: expected a row stride of at least H = 3, got 2"),
        ({"w_hh": 0}, ValueError, "w_hh: expected the address of a tensor's data, got 0"),
        ({"num_threads": 2**32 + 1}, TypeError, "num_threads: expected an int of 32 bits"),
        ({"T": -1}, ValueError, "T: expected a size >= 0, got -1"),
        ({"B": -1}, ValueError, "B: expected a size >= 0, got -1"),
        ({"H": -3}, ValueError, "H: expected a size >= 0, got -3"),
        ({"I": -2}, ValueError, "I: expected a size >= 0, got -2"),
    ],
)
def test_layer_forward_binding_names_a_bad_argument(change, error, match):
    """The per-call bindings parse their arguments by hand (METH_FASTCALL): each bad one
    is refused by name with a Python exception, never read."""
    _alive, args = _layer_forward_args(**change)
    with pytest.raises(error, match=match):
        _C.layer_forward(*args)


def test_layer_bindings_take_positional_arguments_and_bool_like_flags():
    alive, args = _layer_forward_args()
    with pytest.raises(TypeError, match="takes 18 positional arguments, got 17"):
        _C.layer_forward(*args[:-1])
    with pytest.raises(TypeError):
        _C.layer_forward(*args[:-1], num_threads=1)
    with pytest.raises(TypeError, match="takes 25 positional arguments, got 0"):
        _C.layer_backward()
    x, w_ih, w_hh, h, hn = alive
    _C.layer_forward(*args)
    want = h.clone()
    _, args = _layer_forward_args(x=x.data_ptr(), w_ih=w_ih.data_ptr(), w_hh=w_hh.data_ptr(),
                                  h=h.data_ptr(), hn=hn.data_ptr(), reverse=0)  # fmt: skip
    h.zero_()
    _C.layer_forward(*args)  # 0 for False, as pybind11 converts a bool
    assert torch.equal(h, want)
    h.zero_()
    args[8] = np.int64(x.data_ptr())  # an integer-like address: through __index__
    _C.layer_forward(*args)
    assert torch.equal(h, want)
    ref = torch.tanh(x @ w_ih.t())
    ref[1] = torch.tanh(x[1] @ w_ih.t() + ref[0] @ w_hh.t())
    torch.testing.assert_close(h, ref)


# -- the bfloat16 recurrences (AVX512_BF16) ---------------------------------------------

_needs_bf16 = pytest.mark.skipif(
    not _C.cpu_has_bf16(), reason="the bfloat16 kernels need a CPU with AVX512_BF16"
)


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """Rounded to bfloat16 and back to float64: the value the kernels store."""
    return t.float().to(torch.bfloat16).double()


def _packed_rows(lengths):
    """The first row of each step in the packed layout of sequences of ``lengths``."""
    T = max(lengths)
    bs = [sum(n > t for n in lengths) for t in range(T)]
    return [sum(bs[:t]) for t in range(T)]


def _bf16_forward_model(P, W, h0, lengths, reverse, act):
    """The bfloat16 forward kernel's arithmetic in float64, sequence by sequence:
    bfloat16 operands, exact sums, h rounded once per step. Returns h, hn."""
    off, phi = _packed_rows(lengths), (torch.tanh if act == "tanh" else torch.relu)
    P, W, h0 = P.double(), W.double(), h0.double()
    h, hn = torch.zeros_like(P), torch.zeros_like(h0)
    for b, n in enumerate(lengths):
        state = h0[b]
        for t in range(n - 1, -1, -1) if reverse else range(n):
            state = h[off[t] + b] = _bf16(phi(P[off[t] + b] + W @ state))
        hn[b] = state
    return h, hn


def _bf16_backward_model(h, W, G, dhn, lengths, reverse, act):
    """The bfloat16 BPTT kernel's arithmetic in float64 on the stored h: dP and dh0
    rounded once each. Returns dP, dh0."""
    off = _packed_rows(lengths)
    h, W, G, dhn = h.double(), W.double(), G.double(), dhn.double()
    dP, dh0 = torch.zeros_like(h), torch.zeros_like(dhn)
    for b, n in enumerate(lengths):
        d = None
        for t in range(n) if reverse else range(n - 1, -1, -1):  # opposite to the forward
            hb = h[off[t] + b]
            g = G[off[t] + b] + (dhn[b] if d is None else d @ W)
            d = dP[off[t] + b] = _bf16(g * (1 - hb * hb if act == "tanh" else (hb > 0).double()))
        dh0[b] = _bf16(d @ W)
    return dP, dh0


def _assert_bf16_close(got, want, what):
    """Equal but for float32 accumulation flipping a rounding: within 2 bfloat16 ulps of
    the magnitude, and almost every value bit-exact."""
    got = got.double()
    scale = want.abs().max().clamp_min(1e-3)
    err = (got - want).abs()
    assert err.max() <= 2 * 2**-8 * scale, f"{what}: max error {err.max():.3g} of {scale:.3g}"
    assert (err == 0).double().mean() >= 0.97, f"{what}: too few values bit-exact"


@_needs_bf16
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "H,lengths",
    [(7, [5, 5, 5]), (33, [4] * 16), (64, [3]), (257, [6, 6, 4, 4, 3, 1]), (100, [6] * 20)],
    ids=["H7", "H33", "H64-B1", "H257-packed", "H100-B20"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_bfloat16_recurrences_match_their_rounding_model(restore_threads, act, reverse, H,
                                                         lengths, threads):  # fmt: skip
    """The bfloat16 kernels (AVX512_BF16 pair products, k in pairs with an odd last k,
    panels of 32 columns with a masked tail) against their arithmetic in float64."""
    torch.set_num_threads(threads)
    torch.manual_seed(H + len(lengths))
    T, B, N = max(lengths), len(lengths), sum(lengths)
    packed = len(set(lengths)) > 1
    bs = torch.tensor([sum(n > t for n in lengths) for t in range(T)], dtype=torch.int64)
    P = torch.randn(N, H).to(torch.bfloat16)
    W = (torch.randn(H, H) / H**0.5).to(torch.bfloat16)
    h0, dhn = torch.randn(B, H).to(torch.bfloat16), torch.randn(B, H).to(torch.bfloat16)
    G = torch.randn(N, H).to(torch.bfloat16)
    h, hn = torch.empty_like(P), torch.empty_like(h0)
    dP, dh0 = torch.empty_like(P), torch.empty_like(h0)
    steps = bs.data_ptr() if packed else 0
    shape = ("bfloat16", T, B, H, steps, reverse, act)
    _C.rnn_forward(*shape, *(t.data_ptr() for t in (P, W, h0, h, hn)), threads)
    _C.rnn_backward(*shape, *(t.data_ptr() for t in (W, h, G, dhn, dP, dh0)), threads)
    # Each pass against its model; the backward one on the kernel's own h.
    for got, want, what in zip(
        (h, hn, dP, dh0),
        (*_bf16_forward_model(P, W, h0, lengths, reverse, act),
         *_bf16_backward_model(h, W, G, dhn, lengths, reverse, act)),
        ("h", "hn", "dP", "dh0"),
        strict=True,
    ):  # fmt: skip
        _assert_bf16_close(got, want, what)


def _h_prev(h, h0, lengths, reverse):
    """Row r's previous state (h0 where its sequence starts), as float64 rows of h."""
    off = _packed_rows(lengths)
    prev = torch.zeros_like(h, dtype=torch.float64)
    for b, n in enumerate(lengths):
        steps = range(n - 1, -1, -1) if reverse else range(n)
        state = h0[b].double()
        for t in steps:
            prev[off[t] + b] = state
            state = h[off[t] + b].double()
    return prev


@_needs_bf16
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "H,I,lengths",
    [(7, 5, [5, 5, 5]), (33, 70, [4] * 16), (64, 64, [1]), (100, 40, [6, 6, 4, 3, 1]),
     (40, 1100, [30] * 40)],
    ids=["H7", "H33", "H64-T1", "H100-packed", "I1100-N1200"],
)  # fmt: skip
@pytest.mark.parametrize("threads", [1, 2])
def test_bfloat16_layer_passes_match_their_rounding_model(restore_threads, reverse, H, I,
                                                          lengths, threads):  # fmt: skip
    """_C.layer_forward / layer_backward in bfloat16: the GEMMs (fusedrnn's bfloat16 GEMM,
    float32 sums rounded once, K blocks past 1024) around the recurrences. The forward is
    bitwise the recurrence kernel on the projection the model rounds (one rounding of
    x W_ih^T + b, the bias sum rounded once); each gradient within bfloat16 rounding of its
    float64 value from the kernel's own dP."""
    torch.set_num_threads(threads)
    torch.manual_seed(H + I + len(lengths))
    T, B, N = max(lengths), len(lengths), sum(lengths)
    packed = len(set(lengths)) > 1
    bs = torch.tensor([sum(n > t for n in lengths) for t in range(T)], dtype=torch.int64)
    steps = bs.data_ptr() if packed else 0
    bf = torch.bfloat16
    x = torch.randn(N, I).to(bf)
    w_ih = (torch.randn(H, I) / I**0.5).to(bf)
    w_hh = (torch.randn(H, H) / H**0.5).to(bf)
    b_ih, b_hh, h0 = torch.randn(H).to(bf), torch.randn(H).to(bf), torch.randn(B, H).to(bf)
    G, dhn = torch.randn(N, H).to(bf), torch.randn(B, H).to(bf)
    head = ("bfloat16", T, B, H, I, steps, reverse, "tanh")
    h, hn = torch.empty(N, H, dtype=bf), torch.empty(B, H, dtype=bf)
    _C.layer_forward(*head, *(t.data_ptr() for t in (x, w_ih, b_ih, b_hh, w_hh, h0, h)), H,
                     hn.data_ptr(), threads)  # fmt: skip
    bias = (b_ih.float() + b_hh.float()).to(bf)
    P = (x.double() @ w_ih.double().t() + bias.double()).float().to(bf)
    want_h, want_hn = torch.empty_like(h), torch.empty_like(hn)
    _C.rnn_forward("bfloat16", T, B, H, steps, reverse, "tanh",
                   *(t.data_ptr() for t in (P, w_hh, h0, want_h, want_hn)), threads)  # fmt: skip
    # The projection's float32 sums may flip a rounding of P (then h differs downstream):
    # compare bitwise where P is the model's, else within rounding.
    _assert_bf16_close(h, want_h.double(), "h")
    _assert_bf16_close(hn, want_hn.double(), "hn")
    dP, dh0 = torch.empty_like(h), torch.empty_like(hn)
    dx, dw_ih = torch.empty_like(x), torch.empty_like(w_ih)
    dw_hh, db = torch.empty_like(w_hh), torch.empty(H, dtype=bf)
    _C.layer_backward(*head, *(t.data_ptr() for t in (x, w_ih, w_hh, h0, h)), H, G.data_ptr(), H,
                      *(t.data_ptr() for t in (dhn, dP, dh0, dx)), False,
                      *(t.data_ptr() for t in (dw_ih, dw_hh, db)), threads)  # fmt: skip
    want_dP, want_dh0 = torch.empty_like(dP), torch.empty_like(dh0)
    grads_in = (w_hh, h, G, dhn, want_dP, want_dh0)
    _C.rnn_backward("bfloat16", T, B, H, steps, reverse, "tanh",
                    *(t.data_ptr() for t in grads_in), threads)  # fmt: skip
    assert torch.equal(dP, want_dP) and torch.equal(dh0, want_dh0)
    d = dP.double()
    for got, want, what in (
        (dx, d @ w_ih.double(), "dx"),
        (dw_ih, d.t() @ x.double(), "dw_ih"),
        (dw_hh, d.t() @ _h_prev(h, h0, lengths, reverse), "dw_hh"),
        (db, d.sum(0), "db"),
    ):
        _assert_bf16_close(got, _bf16(want), what)


@_needs_bf16
def test_bfloat16_gemm_refuses_bias_with_accumulate():
    """The bfloat16 GEMM adds a bias or the C it accumulates into to its float32 sums, not
    both: refused by name, for the few-row, few-k and packed paths alike."""
    for M, K in ((3, 16), (40, 4), (40, 64)):
        a, b = torch.ones(M, K, dtype=torch.bfloat16), torch.ones(K, 8, dtype=torch.bfloat16)
        c, bias = torch.zeros(M, 8, dtype=torch.bfloat16), torch.ones(8, dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="bias or accumulate, not both"):
            _C.gemm("bfloat16", M, 8, K, a.data_ptr(), K, False, b.data_ptr(), 8, False,
                    c.data_ptr(), 8, bias.data_ptr(), True, 1)  # fmt: skip
        assert not c.any()


def test_bfloat16_without_avx512_bf16_computes_in_float32():
    """Below AVX-512 (FUSEDRNN_CPU_ISA=avx2, as on a CPU without AVX512_BF16) a bfloat16
    layer takes the float32 kernels and rounds once: bitwise the float32 layer's result
    rounded. A fresh process: the kernels read the knob at load."""
    code = (
        "import torch; from fusedrnn import _C, ops\n"
        "torch.manual_seed(0)\n"
        "args = [torch.randn(*s).to(torch.bfloat16) for s in ((12, 5), (40, 5), (40, 40),\n"
        "        (40,), (40,), (3, 40))]\n"
        "bs = torch.tensor([3, 3, 3, 2, 1])\n"
        "h, hn = ops.rnn_layer(*args, bs, False, 'tanh')\n"
        "want = ops.rnn_layer(*(t.float() for t in args), bs, False, 'tanh')\n"
        "assert torch.equal(h, want[0].to(torch.bfloat16))\n"
        "assert torch.equal(hn, want[1].to(torch.bfloat16))\n"
        "print(_C.cpu_has_bf16())\n"
    )
    assert _run_child(code, {"FUSEDRNN_CPU_ISA": "avx2"}) == "False"
