"""The CUDA kernels (fusedrnn._C_cuda) and the ops on CUDA tensors.

Every test is marked ``cuda`` and skipped without a GPU (tests/conftest.py). Kernel tests
drive the binding directly with torch tensors, force each recurrence kernel (the
persistent one and the per-step fallback), poison every output and the workspace with
NaN first, and compare with the float64 NumPy reference run on the same (rounded) inputs.
"""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import fusedrnn
from fusedrnn import _cuda, ops, reference
from helpers import lengths_to_batch_sizes, rel_error, rng_for

pytestmark = pytest.mark.cuda

# The cluster kernel needs thread-block clusters (compute capability 9.0).
_CLUSTERS = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
_NEEDS_CLUSTERS = pytest.mark.skipif(
    torch.cuda.is_available() and not _CLUSTERS,
    reason="the cluster kernel needs compute capability 9.0 (thread-block clusters)",
)
PATHS = ["persistent", "stepwise", pytest.param("cluster", marks=_NEEDS_CLUSTERS)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# max |got - want| / max |want| against float64 on the same rounded inputs. Half types
# round every stored output (h, dP) and BPTT reads the rounded h.
FORWARD_RTOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-12,
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
}
BACKWARD_RTOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-11,
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
}
# (T, B, H, lengths); lengths=None is padded input.
SHAPES = [
    (1, 1, 1, None),
    (7, 1, 5, None),
    (5, 3, 17, None),
    (13, 9, 33, None),
    (4, 17, 151, None),
    (3, 2, 300, None),
    (6, 5, 9, [2, 6, 1, 6, 3]),
    (11, 12, 19, [3, 11, 7, 1, 11, 2, 9, 9, 4, 5, 6, 10]),
    (1, 3, 4, [1, 1, 1]),
]


def _addr(t):
    return 0 if t is None else t.data_ptr()


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _workspace(name, B, H, device):
    # 0xFF bytes are NaN in every float type: a read of unwritten state shows.
    return torch.full(
        (_cuda._C_cuda.workspace_bytes(name, B, H),), 255, dtype=torch.uint8, device=device
    )


def _launch_args(x, bs, B):
    """The leading and trailing binding arguments for device tensor x [N,H]:
    (dtype, T, B, H, batch_sizes, batch_sizes_dev) and (workspace, bytes, device, stream),
    and the tensors behind those addresses (bs_host, bs_dev, ws).

    The binding takes raw addresses, so the caller must hold the returned tensors until the
    kernels are enqueued: a tensor freed before the call goes back to the caching
    allocator, the next allocation (the poisoned outputs) reuses its memory, and the
    kernel then writes its workspace over its own output and reads batch sizes from it
    (seen on the first GPU run, 2026-11-26: wrong outputs at some shapes and illegal
    addresses for packed input). Freed after the call they are safe: the allocator reuses
    them only for work ordered after the kernels on this stream."""
    N, H = x.shape
    T = len(bs) if bs is not None else N // B
    name = _cuda.KERNEL_DTYPES[x.dtype]
    bs_host = None if bs is None else torch.as_tensor(np.asarray(bs, dtype=np.int64))
    bs_dev = None if bs is None else bs_host.to(x.device)
    ws = _workspace(name, B, H, x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    head = (name, T, B, H, _addr(bs_host), _addr(bs_dev))
    return head, (_addr(ws), ws.numel(), x.device.index, stream), (bs_host, bs_dev, ws)


def cuda_forward(P, W, h0, bs, B, reverse, nl, path, in_place=False):
    """Run _C_cuda.rnn_forward on device tensors; P [N,H]; bs a NumPy array or None."""
    head, tail, keep = _launch_args(P, bs, B)
    h = P.clone() if in_place else _poisoned(P.shape, P.dtype, P.device)
    hn = _poisoned((B, P.shape[1]), P.dtype, P.device)
    src = h if in_place else P
    ptrs = (_addr(src), _addr(W), _addr(h0), _addr(h), _addr(hn))
    _cuda._C_cuda.rnn_forward(*head, reverse, nl, *ptrs, *tail, path)
    del keep  # enqueued: see _launch_args
    return h, hn


def cuda_backward(W, h, G, dhn, bs, B, reverse, nl, path, in_place=False, want_dh0=True):
    """Run _C_cuda.rnn_backward; dP aliases G when in_place; dh0 is None unless wanted."""
    head, tail, keep = _launch_args(h, bs, B)
    dP = G.clone() if in_place else _poisoned(h.shape, h.dtype, h.device)
    dh0 = _poisoned((B, h.shape[1]), h.dtype, h.device) if want_dh0 else None
    src = dP if in_place else G
    ptrs = (_addr(W), _addr(h), _addr(src), _addr(dhn), _addr(dP), _addr(dh0))
    _cuda._C_cuda.rnn_backward(*head, reverse, nl, *ptrs, *tail, path)
    del keep  # enqueued: see _launch_args
    return dP, dh0


def _np(t):
    return None if t is None else t.detach().double().cpu().numpy()


def _problem(T, B, H, lengths, dtype, key):
    """P, W_hh, h0, G, Gn on the GPU in dtype, at the scale of nn.RNN's init."""
    rng = rng_for(key)
    bs = None if lengths is None else lengths_to_batch_sizes(lengths)
    N = T * B if bs is None else int(bs.sum())
    k = 1.0 / np.sqrt(H)

    def dev(a):
        return torch.from_numpy(a).to("cuda", dtype)

    return dict(
        P=dev(rng.standard_normal((N, H))),
        W=dev(rng.uniform(-k, k, (H, H))),
        h0=dev(0.5 * rng.standard_normal((B, H))),
        G=dev(rng.standard_normal((N, H))),
        Gn=dev(rng.standard_normal((B, H))),
        bs=bs,
        T=T,
        B=B,
        H=H,
    )


def _reference(p, reverse, nl, with_h0=True, with_grads=True, h_stored=None):
    """float64 reference on the rounded inputs: x = P with W_ih = I and no bias. The
    backward differentiates at ``h_stored`` (the kernel's own stored states, [N, H]) when
    given, as the kernel's BPTT does: in half precision the rounding of h near |h| = 1 is
    magnified by 1 - h^2 (bfloat16 at T = B = H = 1: 6% in dP), which is not an error of
    the BPTT."""
    T, B, H, bs = p["T"], p["B"], p["H"], p["bs"]
    x = _np(p["P"]) if bs is not None else _np(p["P"]).reshape(T, B, H)
    eye = np.eye(H)
    h0 = _np(p["h0"]) if with_h0 else None
    G = _np(p["G"]) if with_grads else None
    Gn = _np(p["Gn"]) if with_grads else None
    h, hn = reference.rnn_forward(x, eye, _np(p["W"]), None, None, h0, bs, reverse, nl)
    grads = reference.rnn_backward(x, eye, _np(p["W"]), None, None, h0, G, Gn, bs, reverse, nl,
                                   h=h_stored)  # fmt: skip
    return h.reshape(-1, H), hn, grads["dpre"].reshape(-1, H), grads["h0"]


def _check(p, dtype, reverse, nl, path, with_h0=True, with_grads=True, in_place=False):
    B = p["B"]
    h0 = p["h0"] if with_h0 else None
    h, hn = cuda_forward(p["P"], p["W"], h0, p["bs"], B, reverse, nl, path, in_place)
    want_h, want_hn, want_dP, want_dh0 = _reference(p, reverse, nl, with_h0, with_grads, _np(h))
    G, Gn = (p["G"], p["Gn"]) if with_grads else (None, None)
    if in_place and G is None:
        G = torch.zeros_like(p["P"])
    dP, dh0 = cuda_backward(p["W"], h, G, Gn, p["bs"], B, reverse, nl, path, in_place)
    torch.cuda.synchronize()
    assert rel_error(_np(h), want_h) <= FORWARD_RTOL[dtype]
    assert rel_error(_np(hn), want_hn) <= FORWARD_RTOL[dtype]
    assert rel_error(_np(dP), want_dP) <= BACKWARD_RTOL[dtype]
    assert rel_error(_np(dh0), want_dh0) <= BACKWARD_RTOL[dtype]


def test_cuda_kernels_were_built():
    """On a GPU machine the CUDA module must be there: a silent CPU fallback is a failure."""
    info = fusedrnn.info()
    assert info["cuda_kernels_built"], "fusedrnn._C_cuda is missing"
    assert info["cuda_archs"]
    assert info["cuda_runtime_built"] and info["cuda_driver_supports"], info
    runtime, driver = _cuda._C_cuda.runtime_version(), _cuda._C_cuda.driver_version()
    assert _cuda._driver_problem(runtime, driver) is None
    _cuda.check_driver()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernels_match_reference(shape, nl, reverse, dtype, path):
    p = _problem(*shape, dtype, (shape, nl, reverse, str(dtype)))
    _check(p, dtype, reverse, nl, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[7]], ids=str)
def test_kernels_without_optional_inputs(shape, reverse, path):
    """h0, G and dhn absent mean zeros; dh0 absent is not written."""
    p = _problem(*shape, torch.float64, (shape, "absent", reverse))
    _check(p, torch.float64, reverse, "tanh", path, with_h0=False, with_grads=False)
    h, _ = cuda_forward(p["P"], p["W"], p["h0"], p["bs"], p["B"], reverse, "tanh", path)
    dP, dh0 = cuda_backward(
        p["W"], h, p["G"], p["Gn"], p["bs"], p["B"], reverse, "tanh", path, want_dh0=False
    )
    assert dh0 is None and bool(torch.isfinite(dP).all())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", [SHAPES[4], SHAPES[7]], ids=str)
def test_kernels_in_place(shape, reverse, path):
    """h may alias P and dP may alias G."""
    p = _problem(*shape, torch.float32, (shape, "in place", reverse))
    _check(p, torch.float32, reverse, "relu", path, in_place=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernels_long_sequence(dtype, path):
    p = _problem(2000, 3, 16, None, dtype, ("long", str(dtype)))
    _check(p, dtype, False, "tanh", path)


@pytest.mark.parametrize("path", PATHS)
def test_kernels_are_deterministic(path):
    p = _problem(50, 16, 256, None, torch.float32, "determinism")
    runs = []
    for _ in range(3):
        h, hn = cuda_forward(p["P"], p["W"], p["h0"], None, 16, False, "tanh", path)
        dP, dh0 = cuda_backward(p["W"], h, p["G"], p["Gn"], None, 16, False, "tanh", path)
        runs.append(torch.cat([h, hn, dP, dh0]))
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def _plan(H, B=16, dtype="float32", backward=False, path="auto"):
    return _cuda._C_cuda.plan(dtype, B, H, "tanh", backward, torch.cuda.current_device(), path)


def test_boundary_between_persistent_and_stepwise():
    """auto takes the persistent kernel at small H and falls back at large H; both right."""
    small = _plan(256)
    assert small["path"] == "persistent", small
    large_H = next(
        (H for H in (2048, 3072, 4096, 6144, 8192) if _plan(H)["path"] == "stepwise"), None
    )
    assert large_H is not None, "no size up to H=8192 falls back to the per-step kernel"
    assert _plan(large_H)["reason"]
    assert _plan(large_H)["transient"] is False  # refused for its size, not a failed call
    last_fit = max(H for H in range(256, large_H, 256) if _plan(H)["path"] == "persistent")
    for H in (last_fit, large_H):
        p = _problem(3, 4, H, None, torch.float32, ("boundary", H))
        _check(p, torch.float32, False, "tanh", "auto")
    # The batch limit (kAutoPersistentMaxRows and ...LargeH, rnn_launch.cuh): persistent up
    # to 256 rows, and to 512 from H = 1024, forward and BPTT; above it auto says why it took
    # the per-step kernel.
    for backward in (False, True):
        for H, limit in ((256, 256), (1023, 256), (1024, 512)):
            assert _plan(H, B=limit, backward=backward)["path"] == "persistent"
            above = _plan(H, B=limit + 1, backward=backward)
            assert above["path"] == "stepwise", above
            assert f"above {limit} rows at H = {H}" in above["reason"], above
            forced = _plan(H, B=limit + 1, backward=backward, path="persistent")
            assert forced["path"] == "persistent"


# Shapes whose persistent plan stages the batch in several passes per step (rows_per_pass <
# B). With plan_for_kernel's arithmetic on an H100 (132 SMs, 227 KiB opt-in shared memory):
# H=2048 float32 -> 16 units per CTA, a 128 KiB W_hh slice, one 8-row tile fits: B=20 takes
# passes of 8, 8, 4 rows. H=1024 float64 -> 8 units, a 64 KiB slice, two tiles: B=40 takes
# passes of 16, 16, 8. (A100: 2048 float32 does not fit at all, 1024 float64 takes 8 rows.)
MULTIPASS = [(2048, torch.float32, 20), (1024, torch.float64, 40)]


def _multipass_batch(H, dtype, B):
    """B, or a larger batch where this GPU stages rows in several passes; None when the
    persistent kernel does not fit at this H on this GPU."""
    name = _cuda.KERNEL_DTYPES[dtype]
    plans = [_plan(H, B=B, dtype=name, backward=bwd, path="persistent") for bwd in (False, True)]
    if any(p["path"] != "persistent" for p in plans):
        return None
    if all(p["rows_per_pass"] < B for p in plans):
        return B
    cap = max(
        _plan(H, B=1 << 14, dtype=name, backward=bwd, path="persistent")["rows_per_pass"]
        for bwd in (False, True)
    )
    return cap + cap // 2 + 3  # several passes, the last one a partial row tile


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", MULTIPASS, ids=lambda c: f"H{c[0]}-{c[1]}-B{c[2]}")
def test_persistent_kernel_multipass(case, packed, reverse):
    """Batches larger than the rows one pass stages: forward and BPTT against the reference."""
    H, dtype, B0 = case
    B = _multipass_batch(H, dtype, B0)
    if B is None:
        pytest.skip(f"the persistent kernel does not fit H={H} {dtype} on this GPU")
    for bwd in (False, True):
        plan = _plan(H, B=B, dtype=_cuda.KERNEL_DTYPES[dtype], backward=bwd, path="persistent")
        assert plan["path"] == "persistent" and 0 < plan["rows_per_pass"] < B, plan
    T = 7
    # Packed: lengths 1..T, so the active rows shrink through and below one pass.
    lengths = [T] + [1 + (5 * i) % T for i in range(1, B)] if packed else None
    p = _problem(T, B, H, lengths, dtype, ("multipass", H, B, packed, reverse))
    _check(p, dtype, reverse, "tanh", "persistent")


# The persistent kernel's staging copy of h_{t-1} (stage_rows in rnn_persistent.cuh: quads
# of a row, 16-byte loads). Shapes that cover one and several row tiles, a partial last tile
# and batch, several passes per step, packed input (rows joining from h0 and leaving),
# reverse, BPTT with dh0, each storage type, and the row-wise layouts: many rows at once
# (H = 5, 33), one row at a time with idle threads (H = 514 in float64, 1000), more quads
# than threads (H = 1102), a part quad at the end (H = 5, 33, 151, 9, 19, 514, 1102). Against
# the reference, and bitwise equal from one run to the next.
STAGING_CASES = [
    ((7, 1, 5, None), torch.float32, False),
    ((13, 9, 33, None), torch.float64, True),
    ((4, 17, 151, None), torch.bfloat16, False),
    ((6, 5, 9, [2, 6, 1, 6, 3]), torch.float16, True),
    ((11, 12, 19, [3, 11, 7, 1, 11, 2, 9, 9, 4, 5, 6, 10]), torch.float32, False),
    ((5, 70, 1000, None), torch.float32, True),  # B = 70: several passes at H = 1000
    ((4, 3, 1102, [4, 2, 3]), torch.float32, True),
    ((3, 11, 1102, None), torch.float32, False),
    ((5, 10, 514, None), torch.float64, False),
    ((6, 5, 9, [2, 6, 1, 6, 3]), torch.float64, True),
    ((4, 3, 1102, [4, 2, 3]), torch.float64, True),
    ((3, 260, 4, None), torch.float32, False),  # 256 row groups, more rows than groups
    ((4, 40, 151, [4, 3, 2, 1] * 10), torch.float64, True),
    ((5, 70, 1000, [5] + [1 + (3 * i) % 5 for i in range(1, 70)]), torch.float32, True),
]


@pytest.mark.parametrize("case", STAGING_CASES, ids=str)
def test_persistent_staging_copy(case):
    shape, dtype, reverse = case
    p = _problem(*shape, dtype, ("staging", shape, str(dtype), reverse))
    _check(p, dtype, reverse, "tanh", "persistent")
    B = p["B"]
    runs = []
    for _ in range(2):
        h, hn = cuda_forward(p["P"], p["W"], p["h0"], p["bs"], B, reverse, "tanh", "persistent")
        dP, dh0 = cuda_backward(
            p["W"], h, p["G"], p["Gn"], p["bs"], B, reverse, "tanh", "persistent"
        )
        runs.append((h, hn, dP, dh0))
    torch.cuda.synchronize()
    for a, b in zip(*runs, strict=True):
        assert torch.isfinite(b).all()
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "path", ["auto", "persistent", pytest.param("cluster", marks=_NEEDS_CLUSTERS)]
)
def test_packed_without_device_batch_sizes(path):
    """Packed input with no device copy of batch_sizes: auto runs the per-step kernel (which
    does not need it), a forced persistent or cluster kernel is refused."""
    T, B, H, lengths = SHAPES[7]
    p = _problem(T, B, H, lengths, torch.float32, "no device batch sizes")
    assert _plan(H, B=B)["path"] in ("persistent", "cluster")  # cluster: on Hopper
    bs_host = torch.as_tensor(p["bs"])
    ws = _workspace("float32", B, H, p["P"].device)
    stream = torch.cuda.current_stream().cuda_stream
    h = _poisoned(p["P"].shape, torch.float32, p["P"].device)
    hn = _poisoned((B, H), torch.float32, p["P"].device)
    head = ("float32", T, B, H, bs_host.data_ptr(), 0, False, "tanh")
    ptrs = (p["P"].data_ptr(), p["W"].data_ptr(), p["h0"].data_ptr(), h.data_ptr(), hn.data_ptr())
    tail = (ws.data_ptr(), ws.numel(), p["P"].device.index, stream, path)
    if path != "auto":
        with pytest.raises(ValueError, match="needs packed batch_sizes in device memory"):
            _cuda._C_cuda.rnn_forward(*head, *ptrs, *tail)
        return
    _cuda._C_cuda.rnn_forward(*head, *ptrs, *tail)
    want_h, want_hn, _, _ = _reference(p, False, "tanh")
    torch.cuda.synchronize()
    assert rel_error(_np(h), want_h) <= 1e-5 and rel_error(_np(hn), want_hn) <= 1e-5


# (T, B, H, lengths): the cluster kernel's sizes, from one CTA of 4 units to a cluster of 15
# CTAs each with 32 of H = 480 units, 32 rows (4 row tiles) in every CTA, and packed rows
# leaving at every step; at H = 200 a CTA has fewer work items than warps, so each item's sum
# along H is split between 2 warps (ks = 2 in rnn_cluster.cuh, as scripts/emulate_cluster.py
# reports: 13 CTAs of 16 units), padded and packed (all of these fit float64 too).
CLUSTER_SHAPES = [
    (5, 2, 3, None),
    (9, 3, 64, None),
    (20, 32, 256, None),
    (6, 3, 480, None),
    (8, 40, 128, list(range(8, 0, -1)) * 5),
    (5, 1, 200, None),
    (8, 10, 200, [8, 8, 7, 5, 3, 3, 2, 1, 1, 1]),
]


@_NEEDS_CLUSTERS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", CLUSTER_SHAPES, ids=str)
def test_cluster_kernel_sizes(shape, reverse, dtype):
    _, B, H, _ = shape
    plans = [_plan(H, B=B, dtype=_cuda.KERNEL_DTYPES[dtype], backward=bwd, path="cluster")
             for bwd in (False, True)]  # fmt: skip
    for plan in plans:
        if "cannot be scheduled" in plan["reason"]:  # e.g. 15 free SMs in one GPC: the device's
            pytest.skip(f"cluster not schedulable here: {plan['reason']}")
        assert plan["path"] == "cluster", plan
        assert 1 <= plan["grid"] <= 16 and plan["grid"] * plan["units_per_cta"] >= H, plan
        assert plan["rows_per_pass"] >= B, plan
    p = _problem(*shape, dtype, (shape, "cluster", reverse, str(dtype)))
    _check(p, dtype, reverse, "tanh", "cluster")


@_NEEDS_CLUSTERS
def test_cluster_kernel_matches_persistent_kernel_closely():
    """The cluster kernel against the persistent and per-step kernels in float32: the same
    product and epilogue code, but other units per CTA and so another split of the sums along
    H (here 16 units and no split, against 4 units split over 2 warps): equal to rounding."""
    p = _problem(30, 16, 256, None, torch.float32, "cluster vs persistent")
    runs = {}
    for path in ("cluster", "persistent", "stepwise"):
        h, hn = cuda_forward(p["P"], p["W"], p["h0"], None, 16, False, "tanh", path)
        dP, dh0 = cuda_backward(p["W"], h, p["G"], p["Gn"], None, 16, False, "tanh", path)
        runs[path] = torch.cat([h, hn, dP, dh0])
    torch.cuda.synchronize()
    assert torch.isfinite(runs["cluster"]).all()
    for other in ("persistent", "stepwise"):
        assert (runs["cluster"] - runs[other]).abs().max().item() <= 1e-4


@_NEEDS_CLUSTERS
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_cluster_kernel_at_its_largest_slice(reverse):
    """float32 H = 832, B = 1: 16 CTAs of 52 units, each with about 225 KiB of shared memory,
    just under the 227 KiB a Hopper CTA may have (H = 848 needs more): the largest shared
    memory opt-in the plan accepts."""
    for bwd in (False, True):
        plan = _plan(832, B=1, backward=bwd, path="cluster")
        if "cannot be scheduled" in plan["reason"]:
            pytest.skip(f"cluster not schedulable here: {plan['reason']}")
        assert plan["path"] == "cluster" and plan["grid"] == 16, plan
        assert plan["smem_bytes"] > 220 * 1024, plan
    p = _problem(5, 1, 832, None, torch.float32, ("largest slice", reverse))
    _check(p, torch.float32, reverse, "tanh", "cluster")


@_NEEDS_CLUSTERS
def test_cluster_kernel_refuses_what_does_not_fit():
    """W_hh's slices must fit the shared memory of 16 CTAs: float32 H = 4096 does not, and
    a forced cluster kernel says so."""
    plan = _plan(4096, B=2, path="cluster")
    assert plan["path"] == "stepwise" and "cluster of 16 CTAs needs" in plan["reason"], plan
    p = _problem(2, 2, 4096, None, torch.float32, "cluster too big")
    with pytest.raises(RuntimeError, match="cluster kernel was requested but cannot run"):
        cuda_forward(p["P"], p["W"], p["h0"], None, 2, False, "tanh", "cluster")


@_NEEDS_CLUSTERS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_auto_takes_cluster_kernel_at_small_sizes(dtype):
    """On Hopper auto takes the cluster kernel where B <= 32, B * H <= 2048 and H <= 512, the
    last two halved for float64 (kAutoCluster*, rnn_launch.cuh: where it measured faster
    than the persistent kernel), the persistent kernel above; and what auto runs there is
    the cluster kernel's result, bit for bit."""
    name = _cuda.KERNEL_DTYPES[dtype]
    if dtype == torch.float64:
        cluster = ((1, 256), (4, 256), (8, 128), (16, 64), (4, 3))
        persistent = ((8, 256), (1, 257), (5, 205), (32, 64), (1, 512), (33, 8))
    else:
        cluster = ((1, 256), (1, 512), (8, 256), (4, 512), (4, 3))
        persistent = ((8, 512), (16, 256), (5, 410), (1, 513), (1, 1024), (33, 8))
    for bwd in (False, True):
        for B, H in cluster:
            plan = _plan(H, B=B, dtype=name, backward=bwd)
            forced = _plan(H, B=B, dtype=name, backward=bwd, path="cluster")
            if "cannot be scheduled" in forced["reason"]:  # e.g. few free SMs in one GPC
                pytest.skip(f"cluster not schedulable here: {forced['reason']}")
            assert plan["path"] == "cluster", (B, H, bwd, plan)
        for B, H in persistent:
            assert _plan(H, B=B, dtype=name, backward=bwd)["path"] == "persistent", (B, H, bwd)
    p = _problem(12, 8, 128, [12, 12, 10, 9, 7, 4, 2, 1], dtype, ("auto cluster", name))
    runs = {}
    for path in ("auto", "cluster"):
        h, hn = cuda_forward(p["P"], p["W"], p["h0"], p["bs"], 8, False, "tanh", path)
        dP, dh0 = cuda_backward(p["W"], h, p["G"], p["Gn"], p["bs"], 8, False, "tanh", path)
        runs[path] = torch.cat([h, hn, dP, dh0])
    torch.cuda.synchronize()
    assert torch.equal(runs["auto"], runs["cluster"])
    _check(p, dtype, False, "tanh", "auto")


@pytest.mark.skipif(
    not torch.cuda.is_available() or _CLUSTERS, reason="needs a GPU without clusters"
)
def test_cluster_kernel_refused_below_compute_capability_9():
    plan = _plan(256, B=1, path="cluster")
    assert plan["path"] == "stepwise" and "compute capability" in plan["reason"], plan
    assert _plan(256, B=1)["path"] == "persistent"  # auto


def test_persistent_kernel_refuses_when_it_cannot_fit():
    p = _problem(2, 2, 4096, None, torch.float64, "too big")
    assert _plan(4096, B=2, dtype="float64")["path"] == "stepwise"
    with pytest.raises(RuntimeError, match="persistent kernel was requested but cannot run"):
        cuda_forward(p["P"], p["W"], p["h0"], None, 2, False, "tanh", "persistent")


@pytest.mark.parametrize("path", PATHS)
def test_non_default_stream(path):
    """The kernels run on the caller's current stream, ordered after its earlier work."""
    side = torch.cuda.Stream()
    p = _problem(40, 8, 96, None, torch.float32, "stream")
    want_h, want_hn, want_dP, want_dh0 = _reference(p, False, "tanh")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        P = p["P"] * 1.0  # produced on the side stream just before the kernel reads it
        h, hn = cuda_forward(P, p["W"], p["h0"], None, 8, False, "tanh", path)
        dP, dh0 = cuda_backward(p["W"], h, p["G"], p["Gn"], None, 8, False, "tanh", path)
    side.synchronize()
    assert rel_error(_np(h), want_h) <= 1e-5 and rel_error(_np(hn), want_hn) <= 1e-5
    assert rel_error(_np(dP), want_dP) <= 1e-5 and rel_error(_np(dh0), want_dh0) <= 1e-5


def test_threads_with_different_shared_memory_sizes():
    """Concurrent calls whose persistent launches need different shared memory (the kernel's
    max-dynamic-shared-memory attribute is set once per device, not per call)."""
    problems = [_problem(20, B, 512, None, torch.float32, ("threads", B)) for B in (1, 64)]
    wants = [_reference(p, False, "tanh")[:2] for p in problems]
    sizes = {_plan(512, B=p["B"], path="persistent")["smem_bytes"] for p in problems}
    assert len(sizes) == 2, sizes
    errors = []
    torch.cuda.synchronize()  # the inputs were made on the default stream

    def work(p, want):
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                for _ in range(20):
                    h, hn = cuda_forward(
                        p["P"], p["W"], p["h0"], None, p["B"], False, "tanh", "persistent"
                    )
                torch.cuda.current_stream().synchronize()
            assert rel_error(_np(h), want[0]) <= 1e-5 and rel_error(_np(hn), want[1]) <= 1e-5
        except Exception as e:  # reported in the main thread
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=pw)
        for pw in zip(problems, wants, strict=True)
        for _ in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


_NO_CONTEXT_ON_DEVICE_0 = """
import threading, torch
from fusedrnn import _cuda
d = torch.device("cuda", 1)
T, B, H = 3, 2, 8
P, W, h, h0, hn = (torch.randn(n, H, device=d) for n in (T * B, H, T * B, B, B))
ws = torch.empty(_cuda._C_cuda.workspace_bytes("float32", B, H), dtype=torch.uint8, device=d)
stream = torch.cuda.current_stream(d).cuda_stream
torch.cuda.synchronize(d)
assert not torch._C._cuda_hasPrimaryContext(0), "the test setup made a context on device 0"
args = ("float32", T, B, H, 0, 0, False, "tanh", P.data_ptr(), W.data_ptr(), h0.data_ptr(),
        h.data_ptr(), hn.data_ptr(), ws.data_ptr(), ws.numel(), 1, stream, "auto")
# A fresh thread: nothing is current, and cudaGetDevice says 0.
t = threading.Thread(target=lambda: _cuda._C_cuda.rnn_forward(*args))
t.start()
t.join()
torch.cuda.synchronize(d)
assert torch.isfinite(hn).all()
assert not torch._C._cuda_hasPrimaryContext(0), "a call on device 1 made a context on device 0"
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_call_on_second_device_from_fresh_thread_makes_no_context_on_device_0():
    """The device guard does not 'restore' device 0 for a thread that had no context."""
    subprocess.run([sys.executable, "-c", _NO_CONTEXT_ON_DEVICE_0], check=True, timeout=300)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device_and_current_device_is_restored():
    torch.cuda.set_device(0)
    with torch.cuda.device(1):
        p = _problem(5, 3, 17, None, torch.float64, "device 1")
    assert p["P"].device.index == 1
    _check(p, torch.float64, False, "tanh", "auto")
    assert torch.cuda.current_device() == 0


# ---- the ops and the module on CUDA ---------------------------------------------------------


def _layer_inputs(device, dtype=torch.float64, lengths=None, T=5, B=3, I=4, H=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        x = torch.randn(T * B, I, generator=g, dtype=dtype)
        bs = torch.empty(0, dtype=torch.int64)
    else:
        packed = pack_sequence([torch.randn(n, I, generator=g, dtype=dtype) for n in lengths])
        x, bs = packed.data, packed.batch_sizes
        B = int(bs[0])
    w = [torch.rand(*s, generator=g, dtype=dtype) - 0.5 for s in ((H, I), (H, H), (H,), (H,))]
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return [t.to(device) for t in (x, *w, h0)] + [bs]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [5, 3, 1]], ids=["padded", "packed"])
def test_gradcheck_float64(lengths, reverse, nl, path, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    *tensors, bs = _layer_inputs("cuda", lengths=lengths)
    for t in tensors:
        t.requires_grad_(True)

    def fn(x, w_ih, w_hh, b_ih, b_hh, h0):
        return ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs, reverse, nl)

    assert torch.autograd.gradcheck(fn, tuple(tensors))


@pytest.mark.parametrize(
    "path", ["auto", "stepwise", pytest.param("cluster", marks=_NEEDS_CLUSTERS)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "lengths", [None, [5, 3, 1], [5, 5, 5]], ids=["padded", "packed", "packed-equal"]
)
def test_cuda_matches_cpu(lengths, dtype, path, monkeypatch):
    """Through the ops: batch_sizes copied to the device only for the persistent and cluster
    kernels, and packed input whose batch never shrinks passed as padded."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    cpu = _layer_inputs("cpu", dtype, lengths)
    gpu = _layer_inputs("cuda", dtype, lengths)
    outs = []
    for *tensors, bs in (cpu, gpu):
        for t in tensors:
            t.requires_grad_(True)
        h, hn = ops.rnn_layer(*tensors, bs, True, "tanh")
        (h.square().sum() + hn.sum()).backward()
        outs.append([h, hn] + [t.grad for t in tensors])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b.cpu(), a, **tol)


# More sequences than the per-step kernel's grid has row tiles (gridDim.y <= 65535 tiles of
# 16 rows): its CTAs stride over the tiles. Before session 23 such a batch raised.
BEYOND_GRID_Y = 65535 * 16 + 37


def _beyond_grid_run(device, packed):
    """fusedrnn.RNN (2 layers, bidirectional, float64) forward and backward on
    BEYOND_GRID_Y sequences of lengths 1 to 3: [output data, h_n, dx, parameter grads]."""
    torch.manual_seed(0)
    T, B, I, H = 3, BEYOND_GRID_Y, 2, 3
    module = fusedrnn.RNN(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    module.to(device)
    x = torch.randn(T, B, I, dtype=torch.float64).to(device).requires_grad_()
    lengths = torch.arange(B) % T + 1  # every length, so the packed phases shrink
    out, hn = module(pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x)
    data = out.data if packed else out
    (data.square().sum() + hn.sum()).backward()
    return [t.detach().cpu() for t in [data, hn, x.grad, *(p.grad for p in module.parameters())]]


_BEYOND_GRID_CPU = {}  # packed -> the CPU results (computed once: ~3 s each)


@pytest.mark.parametrize(
    "path",
    ["auto", "stepwise", "persistent", pytest.param("cluster", marks=_NEEDS_CLUSTERS)],
)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_batch_beyond_the_per_step_grid_matches_cpu(packed, path, monkeypatch):
    """B = 1,048,597 sequences on CUDA against the CPU kernels in float64: outputs, h_n and
    every gradient. auto takes the per-step kernel at this B. The cluster kernel, which
    holds a step's rows in shared memory, refuses the batch by name."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    if path == "cluster":
        with pytest.raises(RuntimeError, match="cluster kernel was requested but cannot run"):
            _beyond_grid_run("cuda", packed)
        return
    if packed not in _BEYOND_GRID_CPU:
        _BEYOND_GRID_CPU[packed] = _beyond_grid_run("cpu", packed)
    got = _beyond_grid_run("cuda", packed)
    for a, b in zip(_BEYOND_GRID_CPU[packed], got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


OPTIONS = [
    dict(num_layers=1),
    dict(num_layers=2, nonlinearity="relu"),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=1, batch_first=True, bias=False),
]


@pytest.mark.parametrize("path", ["auto", pytest.param("cluster", marks=_NEEDS_CLUSTERS)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_module_matches_cudnn(options, packed, path, monkeypatch):
    """fusedrnn.RNN on CUDA against torch.nn.RNN (cuDNN) in float64, outputs and gradients."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    torch.manual_seed(0)
    ref = torch.nn.RNN(5, 24, **options).to("cuda", torch.float64)
    ours = fusedrnn.RNN.from_torch(ref)
    batch_first = options.get("batch_first", False)
    lengths = [7, 4, 6, 1]
    seqs = [torch.randn(n, 5, dtype=torch.float64, device="cuda") for n in lengths]
    if packed:
        x = pack_sequence(seqs, enforce_sorted=False)
    else:
        x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=batch_first)
    results = []
    for module in (ref, ours):
        module.zero_grad()
        out, hn = module(x)
        data = out.data if packed else out
        (data.square().sum() + hn.sum()).backward()
        results.append([data, hn] + [p.grad for p in module.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


LEAN_CONFIGS = {
    "L1": dict(num_layers=1),
    "L3_BT": dict(num_layers=3, batch_first=True),
    "L2_relu_no_bias": dict(num_layers=2, bias=False, nonlinearity="relu"),
    "L2_dropout": dict(num_layers=2, dropout=0.5),
}
LEAN_TOL = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float64: dict(rtol=1e-13, atol=1e-13),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", list(LEAN_CONFIGS))
def test_lean_path_on_cuda_matches_general_path(monkeypatch, config, dtype, with_hx, batched,
                                                grad):  # fmt: skip
    """The modules' lean path on CUDA (RNN._forward_fast, inference in RNN._infer_cuda:
    one direction per layer, padded; a zero state passed as no tensor, P written into the
    output) is taken and gives the general path's outputs and gradients (the same
    operations in the same order: equal up to the sign of a zero state and the GEMM's
    choice of kernel for out=)."""
    torch.manual_seed(0)
    module = fusedrnn.RNN(3, 24, device="cuda", dtype=dtype, **LEAN_CONFIGS[config])
    module.train(config == "L2_dropout")
    B, T, L = 2, 5, module.num_layers
    x = torch.randn((B, T, 3) if module.batch_first else (T, B, 3), device="cuda", dtype=dtype)
    hx = torch.randn(L, B, 24, device="cuda", dtype=dtype)
    if not batched:
        x, hx = x[0] if module.batch_first else x[:, 0], hx[:, 0]
    served = []
    lean = type(module)._forward_fast

    def spied(self, *args):  # a lean call that served (returned results)
        result = lean(self, *args)
        if result is not None:
            served.append(1)
        return result

    monkeypatch.setattr(type(module), "_forward_fast", spied)
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(ops, "fast_input_cuda", lambda x: False)
        xx = x.clone().requires_grad_(grad)
        h = hx.clone().requires_grad_(grad) if with_hx else None
        torch.manual_seed(5)  # the same dropout masks
        with torch.set_grad_enabled(grad):
            out, hn = module(xx, h)
        got = [out, hn]
        if grad:
            wrt = [t for t in (xx, h) if t is not None] + list(module.parameters())
            got += torch.autograd.grad(out.float().square().sum() + hn.float().sum(), wrt)
        results.append(got)
        if fast:
            assert served, "the lean path was not taken"
            served.clear()
    assert not served
    for a, b in zip(results[0][:2], results[1][:2], strict=True):  # the outputs' layouts
        assert a.stride() == b.stride()
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **LEAN_TOL[dtype])


def test_lean_path_on_cuda_declines_what_it_does_not_serve():
    """Bidirectional layers, packed input, weights or a state on another device or of
    another dtype take the general path (which serves or reports them)."""
    torch.manual_seed(0)
    cases = []
    bi = fusedrnn.RNN(3, 8, bidirectional=True).cuda()
    cases.append((bi, torch.randn(4, 2, 3, device="cuda"), None))
    uni = fusedrnn.RNN(3, 8).cuda()
    cases.append((uni, torch.randn(4, 2, 3, device="cuda"), torch.zeros(1, 2, 8)))  # CPU hx
    cases.append((uni, torch.randn(4, 2, 3, device="cuda"),
                  torch.zeros(1, 2, 8, device="cuda", dtype=torch.float64)))  # fmt: skip
    # (a transposed [1, 2, 8] state: not contiguous; session 29's first version of this case
    # transposed a size-1 dimension, which leaves it contiguous, and the lean path served it)
    cases.append((uni, torch.randn(4, 2, 3, device="cuda"),
                  torch.zeros(1, 8, 2, device="cuda").transpose(1, 2)))  # fmt: skip
    for module, x, hx in cases:
        assert module._forward_fast(x, hx) is None
    cpu_weights = fusedrnn.RNN(3, 8)
    assert cpu_weights._forward_fast(torch.randn(4, 2, 3, device="cuda"), None) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_module_half_types_track_float32(dtype):
    torch.manual_seed(0)
    ref = torch.nn.RNN(8, 64, num_layers=2).cuda()
    ours = fusedrnn.RNN.from_torch(ref).to(dtype)
    x = torch.randn(20, 4, 8, device="cuda")
    with torch.no_grad():
        want, _ = ref(x)
        got, _ = ours(x.to(dtype))
    assert got.dtype == dtype
    assert rel_error(_np(got), _np(want)) <= FORWARD_RTOL[dtype] * 5


def test_cuda_argument_errors_name_the_argument():
    x, w_ih, w_hh, b_ih, b_hh, h0, bs = _layer_inputs("cuda", lengths=[5, 3, 1])
    with pytest.raises(ValueError, match="batch_sizes must be a CPU tensor"):
        ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, bs.cuda())
    with pytest.raises(ValueError, match="h0 must be on the device of x"):
        ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0.cpu(), bs)
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16 on CUDA"):
        ops.rnn_layer(*(t.int() for t in (x, w_ih, w_hh, b_ih, b_hh, h0)), bs)


@pytest.mark.parametrize(
    "packed, path",
    [(True, "auto"), (False, "auto"), (False, "persistent"), (False, "stepwise"),
     pytest.param(False, "cluster", marks=_NEEDS_CLUSTERS)],
    ids=["packed", "padded", "padded-persistent", "padded-stepwise", "padded-cluster"],
)  # fmt: skip
def test_training_step_replays_in_a_cuda_graph(packed, path, monkeypatch):
    """A training step captured in a CUDA graph (torch's whole-network recipe) replays to the
    eager gradients, also after torch's pinned allocator has handed its buffers out again.
    Packed: the backward copies row indices from pinned memory, which under capture is kept
    for the process (ops._index_on), and packed input takes the per-step kernel (no copy of
    batch_sizes). Padded: `auto` takes at this size the kernel it takes eagerly, on Hopper
    the cluster kernel (B = 3, H = 16), elsewhere the persistent one; each kernel is also
    forced (FUSEDRNN_CUDA_PATH), so that the persistent kernel's cooperative launch, which
    `auto` does not take here on Hopper, is captured too (a helper's audit, session 30: no
    GPU run had captured it)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    torch.manual_seed(0)
    model = fusedrnn.RNN(8, 16, num_layers=2).cuda()
    seqs = [torch.randn(n, 8, device="cuda") for n in (5, 3, 2)]
    if packed:
        data = pack_sequence(seqs)
        static_x = data.data.clone().requires_grad_()
    else:
        static_x = torch.nn.utils.rnn.pad_sequence(seqs).requires_grad_()

    def step():
        out, hn = model(data._replace(data=static_x) if packed else static_x)
        (out[0] if packed else out).square().sum().add(hn.square().sum()).backward()

    model.zero_grad(set_to_none=True)
    step()
    want = [p.grad.clone() for p in model.parameters()] + [static_x.grad.clone()]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            static_x.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    grads = [p.grad for p in model.parameters()] + [static_x.grad]
    churn = [torch.full((64,), -7, dtype=torch.int64).pin_memory() for _ in range(64)]
    del churn
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for got, expected in zip(grads, want, strict=True):
            assert rel_error(_np(got), _np(expected)) <= 1e-5


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_output_changed_in_place_on_cuda_matches_nn_rnn(bidirectional):
    """The eager backward computes the states again on CUDA too when the caller changed the
    output in place (ops._saved_or_recomputed): nn.RNN's gradients, in float64. The
    reference runs on the CPU: cuDNN's nn.RNN saves its output for the backward and refuses
    the change (seen on an H100, 2026-11-26), the CPU nn.RNN allows it."""
    torch.manual_seed(0)
    ref = torch.nn.RNN(3, 5, 2, bidirectional=bidirectional, dtype=torch.float64)
    ours = fusedrnn.RNN.from_torch(ref).cuda()
    x_cpu = torch.randn(6, 4, 3, dtype=torch.float64)
    grads = []
    for m, device in ((ref, "cpu"), (ours, "cuda")):
        x = x_cpu.to(device, copy=True).requires_grad_()
        out, hn = m(x)
        out.add_(out.detach() * 0.5)
        (out.square().sum() + hn.sum()).backward()
        grads.append([x.grad.cpu(), *(p.grad.cpu() for p in m.parameters())])
    for g, w in zip(*reversed(grads), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_zero_tensor_output_gradients_read_as_zeros(bidirectional):
    """An output gradient given as a ZeroTensor (no memory, address 0) is zeros, as on the
    CPU (tests/test_reliability.py): the CUDA backward's launchers refused its address
    before session 31 (written then without a GPU; first run at the next GPU session)."""
    torch.manual_seed(0)
    rnn = fusedrnn.RNN(3, 4, bidirectional=bidirectional, dtype=torch.float64).cuda()
    x = torch.randn(5, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    out, hn = rnn(x)
    params = [x, *rnn.parameters()]
    zero = torch._efficientzerotensor(out.shape, dtype=out.dtype, device="cuda")
    got = torch.autograd.grad((out, hn), params, (zero, torch.ones_like(hn)), retain_graph=True)
    want = torch.autograd.grad((out, hn), params, (torch.zeros_like(out), torch.ones_like(hn)))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
