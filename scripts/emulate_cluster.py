#!/usr/bin/env python
# ruff: noqa: B023 (the closures inside loops run in the iteration that defines them)
"""Sequential NumPy emulation of fusedrnn's `rnn_cluster_kernel` (csrc/cuda/rnn_cluster.cuh).

Faithful to the kernel body, step by step, for every phase and every CTA of the cluster,
with explicit per-CTA shared-memory buffers (Ws, Xs[2][rows_pad][Hp], ys[rows_pad][Hc],
red[red_slots][32]) initialised to NaN except where the kernel writes them, the warp work
split (items, ks, w loop, q loop per lane), the exact butterfly_reduce32 shuffle pattern, the
epilogue's sum_of / epilogue_operands / epilogue_apply, and the push loop of st.shared::cluster
stores into every CTA's nxt buffer.

Arithmetic is float64 (the kernel's double instantiation); the fma of the product is a
multiply then an add (NumPy has no fused multiply-add), so results differ from a real double
run in the last bits only.

Checks, per case:
  * Y (h or dP) and Yfinal (hn or dh0) against python/fusedrnn/reference.py (float64);
  * cluster-barrier / double-buffer hazards: per phase, every (CTA, buffer, row, col) read
    from `cur` by the product, every local init-row write into `cur`, and every remote write
    into `nxt`; asserts no remote write of phase k hits an element any CTA reads or writes
    locally in phase k, and that no element gets two remote writes in one phase;
  * taint: a shared-memory element read by the product is "valid" only if it holds what the
    phase needs (state pushed by the column's owner in phase k-1 for rows < bprev, the init
    row written this phase for rows in [bprev, nrows), zeros for columns >= H); any invalid
    (stale, padding, never-written NaN) element that reaches a stored output is an error.
    ys / red reads must come from writes of the same phase;
  * global memory: every Y element written exactly once, Yfinal likewise (when wanted); with
    Y aliasing X (in place), every aliased element is read and written by one thread, read
    first;
  * the same result, bitwise, when the CTAs of each phase are run in reverse order;
  * shared-memory layout: region offsets and every load4 address aligned (16 bytes for
    float/double, 8 for half types) for every storage type, red indices < red_slots.

Usage:  python scripts/emulate_cluster.py [--quick] [-v] [--only SUBSTRING] [--self-test]
  --quick      4 forward x 4 BPTT option sets per shape (about 2 minutes)
  (default)    every combination of activation, direction, h0 and in-place for the forward,
               and of G, dhn, dh0 wanted and in-place for BPTT, on the small shapes
               (about 8 minutes on one core); the big shapes get the --quick set
  --self-test  runs deliberate bugs (EMU_MUTATE) and checks that each one is reported
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

from fusedrnn import reference

# The tests' own problem helpers (the emulator is run by them, from the repository).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import lengths_to_batch_sizes, rng_for

# Persistent constants (rnn_persistent.cuh)
U, BT, NW, NTHREADS = 4, 8, 8, 256
KPREFETCH = 2

NEVER, ZERO, INIT, PUSH = -2, -1, 1, 2  # Xs tag kinds

# Deliberate bugs, to show that the checks catch them (EMU_MUTATE=name[,name]); empty = the kernel.
MUT = set(filter(None, os.environ.get("EMU_MUTATE", "").split(",")))


def ceil_div(a, b):
    return (a + b - 1) // b


def padded_hidden(H):
    return (H + 3) // 4 * 4


def max_k_splits(Hq):
    return (Hq + 31) // 32


def plan_cluster(B, H, c_max_first=16):
    """plan_cluster's arithmetic (rnn_launch.cuh), assuming the first cluster fits."""
    Hp = padded_hidden(H)
    rows_pad = ceil_div(max(B, 1), BT) * BT
    c_max = c_max_first
    Hc = ceil_div(ceil_div(H, min(c_max, ceil_div(H, U))), U) * U
    C = ceil_div(H, Hc)
    red_slots = max(NW, Hc // U * (rows_pad // BT))
    return dict(C=C, Hc=Hc, Hp=Hp, rows_pad=rows_pad, red_slots=red_slots)


# ---- Walker / Phase (rnn_cuda_common.cuh) ---------------------------------------------------
class Walker:
    def __init__(self, bs, B, T, N, rev):
        self.bs, self.B, self.T, self.rev = bs, B, T, rev
        self.off = N if rev else 0
        self.bprev = 0

    def rows_at_phase(self, k):
        if k < 0 or k >= self.T:
            return 0
        t = self.T - 1 - k if self.rev else k
        return int(self.bs[t]) if self.bs is not None else self.B

    def next(self, k):
        bcur = self.rows_at_phase(k)
        bprev = self.bprev
        bnext = self.rows_at_phase(k + 1)
        if self.rev:
            self.off -= bcur
        off = self.off
        if not self.rev:
            self.off += bcur
        self.bprev = bcur
        return dict(off=off, bcur=bcur, bprev=bprev, bnext=bnext)


def phase_rows(BWD, ph, want_final):
    if not BWD:
        return ph["bcur"]
    extra = ph["bprev"] if want_final else 0
    return max(ph["bcur"], extra)


class EmuError(AssertionError):
    pass


# ---- global memory with access logs ---------------------------------------------------------
class GlobalLog:
    """Per-element logs of the reads of X (aliasable) and the writes of Y and Yfinal."""

    def __init__(self, NH, BH):
        self.x_reads = np.zeros(NH, np.int64)
        self.x_read_thread = np.full(NH, -1, np.int64)
        self.x_read_stamp = np.full(NH, -1, np.int64)
        self.y_writes = np.zeros(NH, np.int64)
        self.y_write_thread = np.full(NH, -1, np.int64)
        self.y_write_stamp = np.full(NH, -1, np.int64)
        self.yf_writes = np.zeros(BH, np.int64)

    def read_x(self, addr, thread, stamp):
        np.add.at(self.x_reads, addr, 1)
        self.x_read_thread[addr] = thread
        self.x_read_stamp[addr] = stamp

    def write_y(self, addr, thread, stamp):
        np.add.at(self.y_writes, addr, 1)
        self.y_write_thread[addr] = thread
        self.y_write_stamp[addr] = stamp


# ---- butterfly_reduce32 (rnn_persistent.cuh), exact shuffle pattern --------------------------
LANE = np.arange(32)


def butterfly_reduce32(v, combine):
    """v: [32 lanes, 32 values]; returns what each lane holds in v[0] afterwards."""
    v = v.copy()
    for HALF in (16, 8, 4, 2, 1):
        upper = ((LANE & HALF) != 0)[:, None]
        i = np.arange(HALF)
        send = np.where(upper, v[:, i], v[:, i + HALF])
        keep = np.where(upper, v[:, i + HALF], v[:, i])
        v[:, i] = combine(keep, send[LANE ^ HALF])  # __shfl_xor_sync(send, HALF)
    return v[:, 0]


def _check_butterfly():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((32, 32))
    out = butterfly_reduce32(v, np.add)
    assert np.allclose(out, v.sum(axis=0), rtol=1e-13, atol=1e-13), (
        "butterfly lane l != sum of value l"
    )


# ---- the kernel -------------------------------------------------------------------------------
class CTA:
    def __init__(self, c, plan, H):
        Hc, Hp, rows_pad, red_slots = plan["Hc"], plan["Hp"], plan["rows_pad"], plan["red_slots"]
        self.rank = c
        self.j0 = c * Hc
        self.nj = min(H - self.j0, Hc)
        assert self.nj >= 1
        self.Ws = np.full(Hc * Hp, np.nan)
        self.Ws_written = np.zeros(Hc * Hp, np.int64)
        self.Xs = np.full((2, rows_pad * Hp), np.nan)
        self.Xs_kind = np.full((2, rows_pad * Hp), NEVER, np.int64)
        self.Xs_phase = np.full((2, rows_pad * Hp), -9, np.int64)
        self.Xs_src = np.full((2, rows_pad * Hp), -1, np.int64)
        self.ys = np.full(rows_pad * Hc, np.nan)
        self.ys_phase = np.full(rows_pad * Hc, -9, np.int64)
        self.ys_taint = np.zeros(rows_pad * Hc, bool)
        self.red = np.full(red_slots * 32, np.nan)
        self.red_phase = np.full(red_slots * 32, -9, np.int64)
        self.red_taint = np.zeros(red_slots * 32, bool)
        # per-phase hazard masks (reset at each phase)
        self.rd = np.zeros((2, rows_pad * Hp), np.int64)  # product reads
        self.lw = np.zeros((2, rows_pad * Hp), np.int64)  # local writes (init fill)
        self.rw = np.zeros((2, rows_pad * Hp), np.int64)  # remote writes received

    def reset_phase_masks(self):
        self.rd[:] = 0
        self.lw[:] = 0
        self.rw[:] = 0


def run_cluster_kernel(p, BWD, act, plan, errors, cta_order="forward"):
    """Emulates one launch. p: dict of RecParams (numpy arrays for pointers, None for nullptr).
    Writes p['Y'], p['Yfinal'] in place. Returns stats."""
    T, B, H, N = p["T"], p["B"], p["H"], p["N"]
    Hp, Hc, rows_pad, C = plan["Hp"], plan["Hc"], plan["rows_pad"], plan["C"]
    red_slots = plan["red_slots"]
    Hq = Hp // 4
    n_g = Hc // U
    W, init, X, hsv, dhn, Y, Yfinal = (p[k] for k in ("W", "init", "X", "h", "dhn", "Y", "Yfinal"))
    glog = p["glog"]
    stats = dict(ks=set(), items=set())

    def err(msg):
        errors.append(msg)

    if act == "tanh":
        act_fwd = np.tanh
        act_bwd = lambda g, h: g * (1.0 - h * h)  # noqa: E731
    else:
        act_fwd = lambda x: np.where(x < 0.0, 0.0, x)  # noqa: E731
        act_bwd = lambda g, h: np.where(h <= 0.0, 0.0, g)  # noqa: E731

    ctas = [CTA(c, plan, H) for c in range(C)]
    order = list(range(C)) if cta_order == "forward" else list(range(C))[::-1]

    # -- prologue: Ws slice, zero both Xs buffers -------------------------------------------------
    for c in order:
        cta = ctas[c]
        j0, nj = cta.j0, cta.nj
        idx = np.arange(Hc * Hp)
        if not BWD:
            u, k = idx // Hp, idx % Hp
        else:
            u, k = idx % Hc, idx // Hc
        w = np.zeros(idx.size)
        m = (u < nj) & (k < H)
        if BWD:
            w[m] = W[k[m] * H + j0 + u[m]]
        else:
            w[m] = W[(j0 + u[m]) * H + k[m]]
        dst = u * Hp + k
        if dst.min() < 0 or dst.max() >= Hc * Hp:
            err("Ws store out of range")
        cta.Ws[dst] = w
        np.add.at(cta.Ws_written, dst, 1)
        if not (cta.Ws_written == 1).all():
            err(f"CTA {c}: Ws elements not written exactly once")
        if "no_zero" not in MUT:
            cta.Xs[:, :] = 0.0
            cta.Xs_kind[:, :] = ZERO
    # cluster_sync(): nothing to check (no remote write yet)

    walker = Walker(p["batch_sizes"], B, T, N, p["walk_reverse"])
    want_final = Yfinal is not None
    for kph in range(p["nphase"]):
        ph = walker.next(kph)
        bcur, bprev, bnext, off = ph["bcur"], ph["bprev"], ph["bnext"], ph["off"]
        nrows = phase_rows(BWD, ph, want_final)
        nrows_pad = ceil_div(nrows, BT) * BT
        cb, nb = kph & 1, (kph + 1) & 1
        if nrows_pad > rows_pad:
            err(f"phase {kph}: nrows_pad {nrows_pad} > rows_pad {rows_pad}")
        for cta in ctas:
            cta.reset_phase_masks()

        for c in order:
            cta = ctas[c]
            j0, nj = cta.j0, cta.nj
            n_out = nrows * nj
            cur = cta.Xs[cb]
            base_stamp = kph * 100000

            # ---- epilogue operands (BWD rows b >= bcur read nothing) ----
            def operands(b, j, thread, stamp):
                xo = np.zeros(b.size)
                ho = np.zeros(b.size)
                gidx = (off + b) * H + j
                if not BWD:
                    xo = X[gidx].copy()
                    glog.read_x(gidx, thread, stamp)
                else:
                    a = b < bcur
                    if X is not None:
                        xo[a] = X[gidx[a]]
                        glog.read_x(gidx[a], thread[a], stamp)
                    jn = a & (b >= bprev)
                    if dhn is not None:
                        xo[jn] += dhn[b[jn] * H + j[jn]]
                    ho[a] = hsv[gidx[a]]
                return xo, ho

            # ---- prefetch: idx = tid + i*256, i < 2 ----
            pre = {}
            for i in range(KPREFETCH):
                tid = np.arange(NTHREADS)
                idx = tid + i * NTHREADS
                m = idx < n_out
                tid, idx = tid[m], idx[m]
                if idx.size:
                    r, uu = idx // nj, idx % nj
                    pre[i] = (idx, operands(r, j0 + uu, c * NTHREADS + tid, base_stamp + i))

            # ---- init-row fill of cur: idx from bprev*H + tid to nrows*H, step 256 ----
            first_join = 0 if "init_from0" in MUT else bprev
            idx = np.arange(first_join * H, nrows * H) if nrows > first_join else np.arange(0)
            if idx.size:
                b, kk = idx // H, idx % H
                a = b * Hp + kk
                if a.max() >= rows_pad * Hp:
                    err("init fill out of range")
                cur[a] = init[b * H + kk] if init is not None else 0.0
                cta.Xs_kind[cb, a] = INIT
                cta.Xs_phase[cb, a] = kph
                np.add.at(cta.lw[cb], a, 1)
            # __syncthreads()

            # ---- validity of cur for this phase (taint) ----
            rowi = np.arange(rows_pad * Hp) // Hp
            coli = np.arange(rows_pad * Hp) % Hp
            kind, phs, src = cta.Xs_kind[cb], cta.Xs_phase[cb], cta.Xs_src[cb]
            owner = coli // Hc
            valid = np.zeros(rows_pad * Hp, bool)
            pad = coli >= H
            valid |= pad & (kind == ZERO)
            st = (~pad) & (rowi < bprev)
            valid |= st & (kind == PUSH) & (phs == kph - 1) & (src == owner)
            jn = (~pad) & (rowi >= bprev) & (rowi < nrows)
            valid |= jn & (kind == INIT) & (phs == kph)
            valid &= ~np.isnan(cur)
            cur_taint = ~valid
            w_taint = (cta.Ws_written != 1) | np.isnan(cta.Ws)

            # ---- product: warp work split ----
            n_bt = nrows_pad // BT
            items = n_g * n_bt
            ks = NW // items if items < NW else 1
            if ks > max_k_splits(Hq):
                ks = max_k_splits(Hq)
            stats["ks"].add(ks)
            stats["items"].add(items)
            if items * ks > red_slots:
                err(f"phase {kph} CTA {c}: red slots {items * ks} > red_slots {red_slots}")
            red_written = np.zeros(red_slots * 32, np.int64)
            # coverage: each (item, q) consumed exactly once
            cover = np.zeros((items, Hq), np.int64)
            for warp in range(NW):
                for w in range(warp, items * ks, NW):
                    item, s = w // ks, w % ks
                    g, bt = item % n_g, item // n_g
                    wrow = (g * U) * Hp
                    xrow = (bt * BT) * Hp
                    acc = np.zeros((32, U, BT))
                    tacc = np.zeros((32, U, BT), bool)
                    q = s * 32 + LANE
                    while True:
                        act_l = q < Hq
                        if not act_l.any():
                            break
                        ql = q[act_l]
                        cover[item, ql] += 1
                        for e in range(4):
                            wa = wrow + np.arange(U)[None, :] * Hp + 4 * ql[:, None] + e  # [L,U]
                            xa = xrow + np.arange(BT)[None, :] * Hp + 4 * ql[:, None] + e  # [L,BT]
                            if wa.max() >= Hc * Hp or xa.max() >= rows_pad * Hp:
                                err("product load out of range")
                            wv = cta.Ws[wa]
                            xv = cur[xa]
                            acc[act_l] = acc[act_l] + wv[:, :, None] * xv[:, None, :]
                            tacc[act_l] |= w_taint[wa][:, :, None] | cur_taint[xa][:, None, :]
                            np.add.at(cta.rd[cb], xa.ravel(), 1)
                        q = q + 32 * ks
                    accf = acc.reshape(32, 32)  # acc[u*BT + b]
                    taccf = tacc.reshape(32, 32)
                    out = butterfly_reduce32(accf, np.add)
                    tout = butterfly_reduce32(taccf, np.logical_or)
                    ri = w * 32 + LANE
                    if ri.max() >= red_slots * 32:
                        err("red store out of range")
                    cta.red[ri] = out
                    cta.red_phase[ri] = kph
                    cta.red_taint[ri] = tout
                    red_written[ri] += 1
            if not (cover == 1).all():
                err(f"phase {kph} CTA {c}: quads not covered exactly once per item")
            if (red_written > 1).any():
                err(f"phase {kph} CTA {c}: red slot written twice")
            # __syncthreads()

            # ---- epilogue ----
            def sum_of(r, uu):
                item = (r // BT) * n_g + uu // U
                l = (uu % U) * BT + r % BT
                if "sumof_l" in MUT:
                    l = (uu % U) + (r % BT) * U
                v = np.zeros(r.size)
                t = np.zeros(r.size, bool)
                for s in range(ks):
                    ri = (item * ks + s) * 32 + l
                    if ri.max() >= red_slots * 32:
                        err("red read out of range")
                    v = v + cta.red[ri]
                    t |= cta.red_taint[ri] | (cta.red_phase[ri] != kph)
                return v, t

            ys_written = np.zeros(rows_pad * Hc, np.int64)

            def apply(idx, v, vt, xo, ho, thread, stamp):
                b = idx // nj
                j = j0 + idx % nj
                gidx = (off + b) * H + j
                if not BWD:
                    if vt.any():
                        err(
                            f"phase {kph} CTA {c}: tainted product reaches h at rows "
                            f"{np.unique(b[vt])}"
                        )
                    y = act_fwd(xo + v)
                    Y[gidx] = y
                    glog.write_y(gidx, thread, stamp)
                    ka = b * Hc + (j - j0)
                    cta.ys[ka] = y
                    cta.ys_phase[ka] = kph
                    cta.ys_taint[ka] = vt
                    np.add.at(ys_written, ka, 1)
                    fm = b >= bnext
                    if Yfinal is not None and fm.any():
                        Yfinal[b[fm] * H + j[fm]] = y[fm]
                        np.add.at(glog.yf_writes, b[fm] * H + j[fm], 1)
                else:
                    a = b < bcur
                    carry = a & (b < bprev)
                    g = np.where(carry, xo + v, xo)
                    if (vt & carry).any():
                        err(f"phase {kph} CTA {c}: tainted product reaches dP")
                    d = act_bwd(g, ho)
                    Y[gidx[a]] = d[a]
                    glog.write_y(gidx[a], thread[a], stamp)
                    ka = b[a] * Hc + (j[a] - j0)
                    cta.ys[ka] = d[a]
                    cta.ys_phase[ka] = kph
                    cta.ys_taint[ka] = (vt & carry)[a]
                    np.add.at(ys_written, ka, 1)
                    fm = ~a
                    if fm.any():
                        if Yfinal is None:
                            err("Yfinal written but not wanted")
                        else:
                            if vt[fm].any():
                                err(f"phase {kph} CTA {c}: tainted product reaches dh0")
                            Yfinal[b[fm] * H + j[fm]] = v[fm]
                            np.add.at(glog.yf_writes, b[fm] * H + j[fm], 1)

            for i in range(KPREFETCH):
                if i in pre:
                    idx, (xo, ho) = pre[i]
                    r, uu = idx // nj, idx % nj
                    v, vt = sum_of(r, uu)
                    apply(
                        idx,
                        v,
                        vt,
                        xo,
                        ho,
                        c * NTHREADS + idx % NTHREADS,
                        base_stamp + 10 + 2 * i + 1,
                    )
            idx_all = (
                np.arange(KPREFETCH * NTHREADS, n_out)
                if n_out > KPREFETCH * NTHREADS
                else np.arange(0)
            )
            for start in range(KPREFETCH * NTHREADS, n_out, NTHREADS):  # one loop trip at a time
                idx = idx_all[(idx_all >= start) & (idx_all < start + NTHREADS)]
                it = start // NTHREADS
                r, uu = idx // nj, idx % nj
                thread = c * NTHREADS + idx % NTHREADS
                xo, ho = operands(r, j0 + uu, thread, base_stamp + 10 + 2 * it)
                v, vt = sum_of(r, uu)
                apply(idx, v, vt, xo, ho, thread, base_stamp + 10 + 2 * it + 1)
            if (ys_written > 1).any():
                err(f"phase {kph} CTA {c}: ys element written twice")

            # ---- push ----
            if kph + 1 < p["nphase"]:
                # __syncthreads()
                n_state = bcur * nj
                if "push_rows_minus1" in MUT:
                    n_state = max(bcur - 1, 0) * nj
                e = np.arange(n_state * C)
                if e.size:
                    dstc = e // n_state
                    o = e % n_state
                    r, uu = o // nj, o % nj
                    ya = r * Hc + uu
                    if (cta.ys_phase[ya] != kph).any():
                        err(f"phase {kph} CTA {c}: push reads ys not written this phase")
                    if (cta.ys_phase[ya] != kph).any() or np.isnan(cta.ys[ya]).any():
                        err(f"phase {kph} CTA {c}: push reads an unwritten (NaN) ys element")
                    if cta.ys_taint[ya].any():
                        err(f"phase {kph} CTA {c}: push forwards a tainted state value")
                    val = cta.ys[ya]
                    for d in np.unique(dstc):
                        m = dstc == d
                        tgt = ctas[d]
                        a = r[m] * Hp + j0 + uu[m]
                        if a.max() >= rows_pad * Hp or (j0 + uu[m]).max() >= H:
                            err("push out of range")
                        pb = cb if "push_cur" in MUT else nb
                        tgt.Xs[pb, a] = val[m]
                        tgt.Xs_kind[pb, a] = PUSH
                        tgt.Xs_phase[pb, a] = kph
                        tgt.Xs_src[pb, a] = c
                        np.add.at(tgt.rw[pb], a, 1)
        # ---- cluster_sync(): hazard checks for this phase ----
        for d, tgt in enumerate(ctas):
            for buf in (0, 1):
                if ((tgt.rw[buf] > 0) & (tgt.rd[buf] > 0)).any():
                    err(
                        f"phase {kph}: CTA {d} buffer {buf}: remote write to an element read "
                        "this phase"
                    )
                if ((tgt.rw[buf] > 0) & (tgt.lw[buf] > 0)).any():
                    err(
                        f"phase {kph}: CTA {d} buffer {buf}: remote write to an element written "
                        "locally this phase"
                    )
                if (tgt.rw[buf] > 1).any():
                    err(f"phase {kph}: CTA {d} buffer {buf}: element written remotely twice")
            if (tgt.rw[cb] > 0).any():
                err(f"phase {kph}: CTA {d}: remote write into the buffer being read (cur)")
    return stats


# ---- problem set-up and comparison ---------------------------------------------------------
def make_problem(T, B, H, lengths, key):
    rng = rng_for(key)
    bs = None if lengths is None else lengths_to_batch_sizes(lengths)
    if bs is not None:
        assert len(bs) == T and bs[0] == B
    N = T * B if bs is None else int(bs.sum())
    k = 1.0 / np.sqrt(H)
    return dict(
        P=rng.standard_normal((N, H)),
        W=rng.uniform(-k, k, (H, H)),
        h0=0.5 * rng.standard_normal((B, H)),
        G=rng.standard_normal((N, H)),
        Gn=rng.standard_normal((B, H)),
        bs=bs,
        T=T,
        B=B,
        H=H,
        N=N,
    )


def rel_error_or_inf(got, want):
    """helpers.rel_error, but a NaN in other places than the reference's is an infinite
    error rather than an assertion: the emulation reports it as a problem."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if np.isnan(got).any() != np.isnan(want).any() or (np.isnan(got) != np.isnan(want)).any():
        return float("inf")
    scale = max(np.abs(want).max(), 1e-300)
    return float(np.abs(got - want).max() / scale)


def emulate(
    prob,
    BWD,
    nl,
    reverse,
    plan,
    *,
    h0=None,
    G=None,
    dhn=None,
    hstored=None,
    want_final=True,
    in_place=False,
    cta_order="forward",
):
    """Builds RecParams as run_for_kernel does and runs the emulation. Returns (Y, Yfinal,
    errors, stats)."""
    T, B, H, N = prob["T"], prob["B"], prob["H"], prob["N"]
    errors = []
    p = dict(
        T=T,
        B=B,
        H=H,
        N=N,
        Hp=padded_hidden(H),
        batch_sizes=prob["bs"],
        walk_reverse=(not reverse) if BWD else reverse,
        nphase=T + (1 if (BWD and want_final) else 0),
        W=prob["W"].ravel().copy(),
    )
    if not BWD:
        p["init"] = None if h0 is None else h0.ravel().copy()
        p["h"] = None
        p["dhn"] = None
        if in_place:
            Y = prob["P"].ravel().copy()
            p["X"] = Y  # the same array: Y aliases X
        else:
            p["X"] = prob["P"].ravel().copy()
            Y = np.full(N * H, np.nan)
    else:
        p["init"] = None  # rnn_backward_cuda never sets call.init
        p["h"] = hstored.ravel().copy()
        p["dhn"] = None if dhn is None else dhn.ravel().copy()
        if in_place:
            Y = (G if G is not None else np.zeros((N, H))).ravel().copy()
            p["X"] = Y
        else:
            p["X"] = None if G is None else G.ravel().copy()
            Y = np.full(N * H, np.nan)
    p["Y"] = Y
    p["Yfinal"] = np.full(B * H, np.nan) if (want_final or not BWD) else None
    p["glog"] = glog = GlobalLog(N * H, B * H)
    stats = run_cluster_kernel(p, BWD, nl, plan, errors, cta_order)

    # global-memory checks
    if not (glog.y_writes == 1).all():
        errors.append(f"Y: {(glog.y_writes != 1).sum()} elements not written exactly once")
    if p["Yfinal"] is not None and not (glog.yf_writes == 1).all():
        errors.append(f"Yfinal: {(glog.yf_writes != 1).sum()} elements not written exactly once")
    if in_place:
        rd = glog.x_reads > 0
        if (glog.x_reads > 1).any():
            errors.append("in place: an X element read twice")
        both = rd & (glog.y_writes > 0)
        if (glog.x_read_thread[both] != glog.y_write_thread[both]).any():
            errors.append("in place: X read and Y written by different threads")
        if (glog.x_read_stamp[both] >= glog.y_write_stamp[both]).any():
            errors.append("in place: Y written before X read")
        if BWD and G is not None and not rd.all():
            pass  # rows are read once each; checked above
    return (
        Y.reshape(N, H),
        (None if p["Yfinal"] is None else p["Yfinal"].reshape(B, H)),
        errors,
        stats,
    )


def reference_results(prob, nl, reverse, h0, G, Gn, hstored):
    T, B, H, bs = prob["T"], prob["B"], prob["H"], prob["bs"]
    x = prob["P"] if bs is not None else prob["P"].reshape(T, B, H)
    eye = np.eye(H)
    h, hn = reference.rnn_forward(x, eye, prob["W"], None, None, h0, bs, reverse, nl)
    if hstored is None:
        return h.reshape(-1, H), hn, None, None
    grads = reference.rnn_backward(
        x, eye, prob["W"], None, None, h0, G, Gn, bs, reverse, nl, h=hstored
    )
    return h.reshape(-1, H), hn, grads["dpre"].reshape(-1, H), grads["h0"]


# ---- shared-memory layout / alignment -------------------------------------------------------
def check_alignment(plan):
    errs = []
    Hc, Hp, rows_pad, red_slots = plan["Hc"], plan["Hp"], plan["rows_pad"], plan["red_slots"]
    for name, ss, accs, _lalign in (
        ("f32", 4, 4, 16),
        ("f64", 8, 8, 16),
        ("bf16", 2, 4, 8),
        ("f16", 2, 4, 8),
    ):
        ws_off = 0
        xs_off = Hc * Hp * ss
        ys_off = xs_off + 2 * rows_pad * Hp * accs
        red_off = ys_off + rows_pad * Hc * accs
        end = red_off + red_slots * 32 * accs
        plan_smem = Hc * Hp * ss + (2 * rows_pad * Hp + rows_pad * Hc + red_slots * 32) * accs
        if end != plan_smem:
            errs.append(f"{name}: kernel layout {end} B != plan smem {plan_smem} B")
        # load4 of Ws: scalar_t rows; 16 B for float (float4), double (double2 x2), 8 for half
        for off, stride, es, al in ((ws_off, Hp, ss, 16 if ss >= 4 else 8), (xs_off, Hp, accs, 16)):
            if off % 16 or (stride * es) % al or (4 * es) % al:
                errs.append(f"{name}: load4 misaligned (region offset {off}, row {stride * es} B)")
        for off in (ys_off, red_off):
            if off % accs:
                errs.append(f"{name}: region misaligned for its type")
    return errs


# ---- the cases -----------------------------------------------------------------------------
SHAPES = [
    (1, 1, 1, None),
    (5, 2, 3, None),
    (7, 1, 5, None),
    (5, 3, 17, None),
    (13, 9, 33, None),
    (9, 3, 64, None),
    (4, 17, 151, None),
    (3, 2, 300, None),
    (6, 3, 480, None),
    (6, 32, 256, None),
    (20, 32, 256, None),
    (6, 5, 9, [2, 6, 1, 6, 3]),
    (11, 12, 19, [3, 11, 7, 1, 11, 2, 9, 9, 4, 5, 6, 10]),
    (8, 40, 128, list(range(8, 0, -1)) * 5),
    # ks > 1 (items < NW and Hq > 32): n_g = 3 or 4, one row tile
    (5, 1, 200, None),
    (4, 3, 250, None),
    (5, 6, 129, None),
    # packed with varying row tiles: ks = 2 at 1 tile, 1 at 2 tiles
    (8, 10, 200, [8, 8, 7, 5, 3, 3, 2, 1, 1, 1]),
    (1, 3, 4, [1, 1, 1]),
]
BIG = {
    (6, 32, 256),
    (20, 32, 256),
    (6, 3, 480),
    (8, 40, 128),
    (4, 17, 151),
    (3, 2, 300),
    (8, 10, 200),
}
# extra (shape, c_max) plans: a smaller cluster, more units per CTA
EXTRA_PLANS = [
    ((5, 2, 3, None), 1),
    ((9, 3, 64, None), 4),
    ((6, 5, 9, [2, 6, 1, 6, 3]), 2),
    ((11, 12, 19, [3, 11, 7, 1, 11, 2, 9, 9, 4, 5, 6, 10]), 8),
    ((4, 17, 151, None), 2),
    ((5, 1, 200, None), 8),
]


MUTATIONS = {
    "push_cur": "push into cur (single buffer): a race with the product's reads",
    "init_from0": "init fill from row 0: overwrites the pushed state",
    "sumof_l": "sum_of reads the wrong lane of red",
    "push_rows_minus1": "push one row too few",
    "no_zero": "Xs never zeroed: NaN padding columns",
}


def self_test():
    import subprocess

    bad = 0
    for m, what in MUTATIONS.items():
        env = dict(os.environ, EMU_MUTATE=m)
        r = subprocess.run(
            [sys.executable, __file__, "--quick", "--only", "(6, 5, 9"],
            env=env,
            capture_output=True,
            text=True,
        )
        caught = r.returncode != 0 and "problems:" in r.stdout
        print(f"{m:18s} {'caught' if caught else 'MISSED'}  ({what})")
        bad += not caught
    return 1 if bad else 0


def long_case():
    prob = make_problem(2000, 3, 16, None, ("emu", "long"))
    plan = plan_cluster(3, 16)
    t0 = time.time()
    h, hn, e1, _ = emulate(prob, False, "tanh", False, plan, h0=prob["h0"])
    dP, dh0, e2, _ = emulate(
        prob, True, "tanh", False, plan, G=prob["G"], dhn=prob["Gn"], hstored=h
    )
    wh, whn, wdP, wdh0 = reference_results(
        prob, "tanh", False, prob["h0"], prob["G"], prob["Gn"], h
    )
    errs = [
        rel_error_or_inf(h, wh),
        rel_error_or_inf(hn, whn),
        rel_error_or_inf(dP, wdP),
        rel_error_or_inf(dh0, wdh0),
    ]
    print(
        f"T=2000 B=3 H=16 C={plan['C']}: h {errs[0]:.2e} hn {errs[1]:.2e} dP {errs[2]:.2e} "
        f"dh0 {errs[3]:.2e}; {len(e1) + len(e2)} problems; {time.time() - t0:.0f} s"
    )
    for e in (e1 + e2)[:20]:
        print("  " + e)
    return 0 if max(errs) <= 1e-12 and not (e1 or e2) else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer option combinations")
    ap.add_argument("-v", action="store_true")
    ap.add_argument("--only", default="", help="run only the shapes whose repr contains this")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--long", action="store_true", help="only T=2000, B=3, H=16 (fwd + BPTT)")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if args.long:
        return long_case()
    _check_butterfly()
    t0 = time.time()
    all_errors = []
    summary = []
    n_runs = 0
    worst = 0.0
    jobs = [(s, 16) for s in SHAPES] + EXTRA_PLANS
    for shape, c_max in jobs:
        if args.only and args.only not in str(shape):
            continue
        T, B, H, lengths = shape
        prob = make_problem(T, B, H, lengths, ("emu", shape))
        plan = plan_cluster(B, H, c_max)
        all_errors += [f"{shape}: {e}" for e in check_alignment(plan)]
        big = (T, B, H) in BIG
        shape_worst = 0.0
        ks_seen, items_seen = set(), set()
        nl_list = ["tanh", "relu"]
        fwd_combos = list(itertools.product(nl_list, [False, True], [True, False], [False, True]))
        if big or args.quick or c_max != 16:
            # every option at least once, both directions and activations
            fwd_combos = [
                ("tanh", False, True, False),
                ("relu", True, False, True),
                ("tanh", True, True, True),
                ("relu", False, False, False),
            ]
        for nl, reverse, with_h0, in_place in fwd_combos:
            h0 = prob["h0"] if with_h0 else None
            orders = ["forward", "reverse"] if not big else ["forward"]
            ys = []
            for order in orders:
                h, hn, errs, st = emulate(
                    prob, False, nl, reverse, plan, h0=h0, in_place=in_place, cta_order=order
                )
                n_runs += 1
                ks_seen |= st["ks"]
                items_seen |= st["items"]
                all_errors += [
                    f"{shape} fwd {nl} rev={reverse} h0={with_h0} ip={in_place}: {e}" for e in errs
                ]
                ys.append((h.copy(), hn.copy()))
            if len(ys) == 2 and not (
                np.array_equal(ys[0][0], ys[1][0], equal_nan=True)
                and np.array_equal(ys[0][1], ys[1][1], equal_nan=True)
            ):
                all_errors.append(f"{shape} fwd: CTA order changes the result")
            want_h, want_hn, _, _ = reference_results(prob, nl, reverse, h0, None, None, None)
            eh, ehn = rel_error_or_inf(h, want_h), rel_error_or_inf(hn, want_hn)
            if args.v:
                print(
                    f"  {shape} fwd {nl} rev={reverse} h0={with_h0} ip={in_place}: "
                    f"h {eh:.2e} hn {ehn:.2e}",
                    flush=True,
                )
            shape_worst = max(shape_worst, eh, ehn)
            # BPTT at the emulated h, as tests/test_cuda.py does (h_stored)
            bwd_combos = list(
                itertools.product([True, False], [True, False], [True, False], [False, True])
            )
            if big or args.quick or c_max != 16:
                bwd_combos = [
                    (True, True, True, in_place),
                    (False, False, False, in_place),
                    (True, False, True, not in_place),
                    (False, True, False, not in_place),
                ]
            for with_G, with_dhn, want_dh0, ip in bwd_combos:
                G = prob["G"] if with_G else None
                Gn = prob["Gn"] if with_dhn else None
                dP, dh0, errs, st = emulate(
                    prob,
                    True,
                    nl,
                    reverse,
                    plan,
                    G=G,
                    dhn=Gn,
                    hstored=h,
                    want_final=want_dh0,
                    in_place=ip,
                )
                n_runs += 1
                ks_seen |= st["ks"]
                items_seen |= st["items"]
                tag = (
                    f"{shape} bwd {nl} rev={reverse} h0={with_h0} G={with_G} dhn={with_dhn} "
                    f"dh0={want_dh0} ip={ip}"
                )
                all_errors += [f"{tag}: {e}" for e in errs]
                Gref = G if G is not None else (np.zeros_like(prob["P"]) if ip else None)
                _, _, ref_dP, ref_dh0 = reference_results(prob, nl, reverse, h0, Gref, Gn, h)
                e1 = rel_error_or_inf(dP, ref_dP)
                e2 = rel_error_or_inf(dh0, ref_dh0) if want_dh0 else 0.0
                if dh0 is not None and not want_dh0:
                    all_errors.append(f"{tag}: dh0 produced though not wanted")
                shape_worst = max(shape_worst, e1, e2)
                if args.v:
                    print(f"  {tag}: dP {e1:.2e} dh0 {e2:.2e}", flush=True)
        worst = max(worst, shape_worst)
        line = (
            f"{shape!s:60s} c_max={c_max:2d} C={plan['C']:2d} Hc={plan['Hc']:3d} "
            f"rows_pad={plan['rows_pad']:2d} ks={sorted(ks_seen)} items={sorted(items_seen)} "
            f"max rel err {shape_worst:.2e}"
        )
        summary.append(line)
        print(line, flush=True)
    print(f"\n{n_runs} kernel emulations in {time.time() - t0:.0f} s; worst rel error {worst:.2e}")
    tol = 1e-12
    if worst > tol:
        all_errors.append(f"worst relative error {worst:.2e} above {tol}")
    if all_errors:
        print(f"{len(all_errors)} problems:")
        for e in all_errors[:60]:
            print("  " + e)
        return 1
    print("no discrepancy, hazard or tainted read found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
