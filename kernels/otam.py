"""Fused, batched OTAM distance (forward and backward) in Triton.

Semantics: :func:`hr2g.reference.otam_distance_ref` -- cosine frame distance
``D = 1 - a.b / (|a||b| + 0.01)`` and the summed two-direction OTAM soft-DTW over it.

Layout.  One program per (episode, query, support) pair; grid ``(E*Q*P,)``.  A program computes
the pair's ``[T, T']`` dot products with ``tl.dot`` over chunks of C (both sequence axes padded to
``BT = max(16, next_pow2(max(T, T')))`` because ``tl.dot`` needs every dim >= 16), turns them into
D, and runs both OTAM directions on D and ``D^T`` while D stays in registers: the two directions
share the distance matrix, so it is computed once.

The DP, in the spec's padded coordinates ``R[l, m]`` (``m = 0 .. Lb+1``), is run as three sweeps
over register vectors indexed by the row ``l``:

* column 1 (spec ``softmin(R[l-1,0], R[l-1,1], R[l,0])`` with ``R[., 0] = 0``) is a recurrence
  down the rows: ``La`` scalar steps;
* columns 2..Lb depend only on the previous column (up-left and left), so each column is one
  vector step over all rows (row 0 is the plain cumulative sum): ``Lb - 1`` steps;
* the zero padding column ``Lb+1`` is again a recurrence down the rows: ``La`` scalar steps.

Padding rows (``l >= La``) sit below the real ones and the DP only flows downwards, so they never
feed a real cell; padded D entries are 1 (zero vectors), which keeps them finite.

Backward (the soft-DTW E-recursion): the backward program recomputes D and the DP table (a
``[BT, BT]`` register tile per direction), then walks the three sweeps in reverse, spreading each
cell's adjoint over its soft-min arguments with weights ``exp((softmin - x_k) / lam)`` -- the
soft-min is <= every argument, so every exponent is <= 0 and nothing overflows at any lam.  The
adjoint of D is chained through the cosine distance inside the kernel; the program writes
``dL/d(a_i.b_j)`` ``[T, T']`` and the norm terms ``[T]``, ``[T']``.  The final contraction with
the features (``dq = W @ s`` summed over supports, ``ds = W^T @ q`` summed over queries) is a
batched GEMM in PyTorch (fp32): it is deterministic (no atomics across the P programs that share
a query, nor the Q that share a support) and cuBLAS's batched GEMM is hard to beat for it.

Limits: ``T, T' <= 32`` (the DP tables live in registers), fp32 / bf16 / fp16 inputs with fp32
accumulation, fewer than 2**31 pairs.  ``unsupported_reason`` reports each.
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from hr2g._dispatch import interpret_requested, refuse_double_backward
from hr2g.reference import OTAM_COS_EPS

MAX_FRAMES = 32
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Read once, as triton.jit itself does (it picks the interpreter when the kernel is decorated).
_INTERPRET = interpret_requested()


def _configs():
    # The interpreter runs every config it is given: one is enough there (its timing means
    # nothing).  On a GPU the pair's tile is tiny ([BT, BLOCK_C], BT = 16 for T = 8) and the DP is
    # latency-bound -- about 80 dependent steps per pair, each a masked reduction over a [BT] or
    # [BT, BT] register tile, which crosses warps (shared memory + a barrier) unless one warp holds
    # the whole tile -- so the knobs are the C chunk and how many warps share it, down to one.
    # Registers on sm_90 (cuobjdump, Triton 3.8 / 3.6): the fp32 IEEE dot at BLOCK_C = 64 needs
    # 255 and spills, BLOCK_C = 32 with 4 warps 56 (fwd) / 72 (bwd); one warp at BT = 16 96-128,
    # no spills; one warp at BT = 32 spills (16-370 B) -- _prune_configs drops those.
    if _INTERPRET:
        return [triton.Config({"BLOCK_C": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_C": bc}, num_warps=w)
            for bc, w in ((16, 1), (32, 1), (16, 4), (32, 2), (32, 4), (32, 8), (64, 4), (64, 8))]


def _prune_configs(configs, named_args, **kwargs):
    """The configs worth timing: no fp32 IEEE dot at BLOCK_C = 64 (all 255 registers, spills 650 B
    at BT = 32), no single warp at BT = 32 (spills); bf16/fp16 dots stay <= 236 registers otherwise."""
    kept = [c for c in configs
            if not (kwargs.get("DOT_FP32") and c.kwargs["BLOCK_C"] >= 64) and not (kwargs.get("BT", 0) >= 32 and c.num_warps < 2)]
    return kept or configs[-1:]


def _pairs_class(pairs: int) -> int:
    """Autotune key for the grid size.  The best config for 25 pairs (one training episode: a
    fraction of one wave, so one program's latency is the time) need not be the best for 250,000
    (10,000 test episodes: ~100 waves, throughput), and the autotuner keeps one winner per key."""
    return 0 if pairs <= 1024 else (1 if pairs <= 32768 else 2)


def _inv_lam_log2(lam: float) -> float:
    """``il2 = log2(e) / lam``, in fp64 on the host.  The kernels take every exp as
    ``exp2(x * il2)``: on a GPU ``tl.exp(x / lam)`` is a division (2 ulp), a multiply by log2(e) and
    ``ex2.approx``, and at lam = 0.1 the backward multiplies dozens of such soft-min weights, so the
    extra roundings showed as a gradient error above twice the fp32 reference's in a GPU-maths
    emulation of the interpreter (the divisions and square roots of the cosine distance are
    ``div_rn`` / ``sqrt_rn`` for the same reason: fp32 ``/`` compiles to ``div.full``, 2 ulp)."""
    return math.log2(math.e) / float(lam)


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _softmin2(a, b, lam, il2):
    m = tl.minimum(a, b)
    return m - lam * tl.log(tl.exp2((m - a) * il2) + tl.exp2((m - b) * il2))


@triton.jit
def _softmin3(a, b, c, lam, il2):
    m = tl.minimum(tl.minimum(a, b), c)
    return m - lam * tl.log(tl.exp2((m - a) * il2) + tl.exp2((m - b) * il2) + tl.exp2((m - c) * il2))


@triton.jit
def _softmin_0x0(x, lam, il2):
    # softmin(0, x, 0): column 1's (up-left, up, left) where up-left and left are the zero pad.
    m = tl.minimum(x, 0.0)
    return m - lam * tl.log(2.0 * tl.exp2(m * il2) + tl.exp2((m - x) * il2))


@triton.jit
def _at(vec, idx, i):
    # vec[i] as a scalar (registers cannot be indexed by a runtime value: mask and reduce).
    return tl.sum(tl.where(idx == i, vec, 0.0), axis=0)


@triton.jit
def _column(tile, cols, j):
    return tl.sum(tl.where(cols[None, :] == j, tile, 0.0), axis=1)


@triton.jit
def _shift_down(vec, rows):
    # out[l] = vec[l - 1], out[0] = 0
    return tl.sum(tl.where(rows[:, None] == rows[None, :] + 1, vec[None, :], 0.0), axis=1)


@triton.jit
def _shift_up(vec, rows):
    # out[l] = vec[l + 1], last row = 0
    return tl.sum(tl.where(rows[:, None] + 1 == rows[None, :], vec[None, :], 0.0), axis=1)


@triton.jit
def _pair_distance(q_ptr, s_ptr, e, qi, pi, s_qe, s_qn, s_qt, s_qc, s_se, s_sn, s_st, s_sc, T, TP, C, eps,
                   BT: tl.constexpr, BLOCK_C: tl.constexpr, DOT_FP32: tl.constexpr):
    """Cosine distance of one (query, support) pair: D, dots, |a_i|, |b_j| (all fp32, [BT, BT] / [BT])."""
    rows = tl.arange(0, BT)
    rows64 = rows.to(tl.int64)  # a strided view's frame stride times 32 can pass 2**31
    offs_c = tl.arange(0, BLOCK_C)
    q_base = q_ptr + e * s_qe + qi * s_qn
    s_base = s_ptr + e * s_se + pi * s_sn
    dots = tl.zeros((BT, BT), dtype=tl.float32)
    nq2 = tl.zeros((BT,), dtype=tl.float32)
    ns2 = tl.zeros((BT,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        qa = tl.load(q_base + rows64[:, None] * s_qt + cc[None, :].to(tl.int64) * s_qc, mask=(rows[:, None] < T) & (cc[None, :] < C), other=0.0)
        sa = tl.load(s_base + rows64[:, None] * s_st + cc[None, :].to(tl.int64) * s_sc, mask=(rows[:, None] < TP) & (cc[None, :] < C), other=0.0)
        qf = qa.to(tl.float32)
        sf = sa.to(tl.float32)
        nq2 += tl.sum(qf * qf, axis=1)
        ns2 += tl.sum(sf * sf, axis=1)
        if DOT_FP32:
            # fp32 inputs: IEEE fp32 (TF32's 10-bit mantissa would cost ~1e-3 on D); the
            # interpreter also lands here because its bf16 dot is wrong.
            dots = tl.dot(qf, tl.trans(sf), dots, input_precision="ieee")
        else:
            # bf16/fp16: exact products on the tensor cores, fp32 accumulation
            dots = tl.dot(qa, tl.trans(sa), dots)
    nq = tl.sqrt_rn(nq2)
    ns = tl.sqrt_rn(ns2)
    den = nq[:, None] * ns[None, :] + eps
    return 1.0 - tl.div_rn(dots, den), dots, nq, ns, den


@triton.jit
def _first_column(D, LA, lam, il2, rows):
    """Spec column 1 of the DP, ``[BT]``: R[l,1] = D[l,0] + softmin(0, R[l-1,1], 0); row 0 is D[0,0]."""
    d0 = _column(D, rows, 0)
    s = _at(d0, rows, 0)
    col = tl.where(rows == 0, s, 0.0)
    for l in range(1, LA):
        s = _at(d0, rows, l) + _softmin_0x0(s, lam, il2)
        col = tl.where(rows == l, s, col)
    return col


@triton.jit
def _otam_dir_fwd(D, LA, LB, lam, il2, BT: tl.constexpr):
    """One-direction OTAM of the top-left ``[LA, LB]`` block of D (rows = DP rows)."""
    rows = tl.arange(0, BT)
    col = _first_column(D, LA, lam, il2, rows)
    # spec columns 2..Lb: softmin(up-left, left), every row at once; row 0 is the cumulative sum
    for j in range(1, LB):
        dj = _column(D, rows, j)
        new = dj + _softmin2(_shift_down(col, rows), col, lam, il2)
        col = tl.where(rows == 0, col + dj, new)
    # spec column Lb+1 (zero padding): Z[0] = R[0,Lb], Z[l] = softmin(R[l-1,Lb], Z[l-1], R[l,Lb])
    z = _at(col, rows, 0)
    prev = z
    for l in range(1, LA):
        cur = _at(col, rows, l)
        z = _softmin3(prev, z, cur, lam, il2)
        prev = cur
    return z


@triton.jit
def _otam_dir_grad(D, LA, LB, lam, il2, BT: tl.constexpr):
    """d OTAM / d D for one direction, ``[BT, BT]`` (zero outside the ``[LA, LB]`` block)."""
    rows = tl.arange(0, BT)
    cols = tl.arange(0, BT)
    # ---- forward, keeping the table S[l, j] = R[l, j+1] and the padding column Z
    col = _first_column(D, LA, lam, il2, rows)
    table = tl.where(cols[None, :] == 0, col[:, None], tl.zeros((BT, BT), dtype=tl.float32))
    for j in range(1, LB):
        dj = _column(D, cols, j)
        new = dj + _softmin2(_shift_down(col, rows), col, lam, il2)
        col = tl.where(rows == 0, col + dj, new)
        table = tl.where(cols[None, :] == j, col[:, None], table)
    z = _at(col, rows, 0)
    zvec = tl.where(rows == 0, z, 0.0)
    prev = z
    for l in range(1, LA):
        cur = _at(col, rows, l)
        z = _softmin3(prev, z, cur, lam, il2)
        zvec = tl.where(rows == l, z, zvec)
        prev = cur
    # ---- backward.  Padding column, bottom-up: Z[l] spreads its adjoint over
    # (R[l-1,Lb], Z[l-1], R[l,Lb]) with weights exp((Z[l] - x) / lam).
    ez = tl.sum(tl.zeros((BT,), dtype=tl.float32), axis=0) + 1.0  # dZ[LA-1] / dZ[LA-1]
    e = tl.zeros((BT,), dtype=tl.float32)  # adjoint of the current column S[:, j]
    for k in range(0, LA - 1):
        l = LA - 1 - k
        zl = _at(zvec, rows, l)
        e += tl.where(rows == l - 1, ez * tl.exp2((zl - _at(col, rows, l - 1)) * il2), 0.0)
        e += tl.where(rows == l, ez * tl.exp2((zl - _at(col, rows, l)) * il2), 0.0)
        ez = ez * tl.exp2((zl - _at(zvec, rows, l - 1)) * il2)
    e += tl.where(rows == 0, ez, 0.0)  # Z[0] = S[0, LB-1]
    # Columns LB-1 .. 1, right to left: D[:, j] enters S[:, j] additively, so dD[:, j] = e; then
    # e moves to column j-1 through (left, up-left); row 0 (cumulative sum) passes it on whole.
    grad = tl.zeros((BT, BT), dtype=tl.float32)
    for k in range(0, LB - 1):
        j = LB - 1 - k
        grad = tl.where(cols[None, :] == j, e[:, None], grad)
        left = _column(table, cols, j - 1)
        upleft = _shift_down(left, rows)
        v = _softmin2(upleft, left, lam, il2)
        w_left = tl.where(rows == 0, 1.0, tl.exp2((v - left) * il2))
        w_up = tl.where((rows == 0) | (rows >= LA), 0.0, tl.exp2((v - upleft) * il2))
        e = tl.where(rows < LA, e * w_left, 0.0) + _shift_up(e * w_up, rows)
    # Column 0, bottom-up: S[l,0] = D[l,0] + softmin(0, S[l-1,0], 0) hands S[l-1,0] the share
    # exp((softmin - S[l-1,0]) / lam) of its adjoint.
    col0 = _column(table, cols, 0)
    carry = ez * 0.0
    g0 = tl.zeros((BT,), dtype=tl.float32)
    for k in range(0, LA):
        l = LA - 1 - k
        el = _at(e, rows, l) + carry
        g0 = tl.where(rows == l, el, g0)
        above = _at(col0, rows, l - 1)
        carry = el * tl.exp2((_softmin_0x0(above, lam, il2) - above) * il2)
    return tl.where(cols[None, :] == 0, g0[:, None], grad)


# --------------------------------------------------------------------------- kernels
@triton.autotune(configs=_configs(), key=["BT", "C", "DOT_FP32", "PAIRS_CLASS"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit(do_not_specialize=["PAIRS_CLASS"])  # a tuning key only: one compiled kernel for every class
def _otam_fwd_kernel(q_ptr, s_ptr, out_ptr, Q, P, T, TP, C, PAIRS_CLASS,
                     s_qe, s_qn, s_qt, s_qc, s_se, s_sn, s_st, s_sc, lam, il2, eps,
                     BT: tl.constexpr, BLOCK_C: tl.constexpr, DOT_FP32: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    pi = pid % P
    qi = (pid // P) % Q
    e = pid // (P * Q)
    D, _, _, _, _ = _pair_distance(q_ptr, s_ptr, e, qi, pi, s_qe, s_qn, s_qt, s_qc, s_se, s_sn, s_st, s_sc,
                                   T, TP, C, eps, BT, BLOCK_C, DOT_FP32)
    dist = _otam_dir_fwd(D, T, TP, lam, il2, BT) + _otam_dir_fwd(tl.trans(D), TP, T, lam, il2, BT)
    tl.store(out_ptr + pid, dist.to(out_ptr.dtype.element_ty))


@triton.autotune(configs=_configs(), key=["BT", "C", "DOT_FP32", "PAIRS_CLASS"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit(do_not_specialize=["PAIRS_CLASS"])
def _otam_bwd_kernel(q_ptr, s_ptr, g_ptr, w_ptr, rq_ptr, rs_ptr, Q, P, T, TP, C, PAIRS_CLASS,
                     s_qe, s_qn, s_qt, s_qc, s_se, s_sn, s_st, s_sc, s_g, lam, il2, eps,
                     BT: tl.constexpr, BLOCK_C: tl.constexpr, DOT_FP32: tl.constexpr):
    """Per pair: ``w = dL/d(a_i.b_j)`` [T, T'], ``rq = (dL/d|a_i|) / |a_i|`` [T],
    ``rs = (dL/d|b_j|) / |b_j|`` [T'], so that ``dL/da_i = sum_j w_ij b_j + rq_i a_i``."""
    pid = tl.program_id(0).to(tl.int64)
    pi = pid % P
    qi = (pid // P) % Q
    e = pid // (P * Q)
    D, dots, nq, ns, den = _pair_distance(q_ptr, s_ptr, e, qi, pi, s_qe, s_qn, s_qt, s_qc, s_se, s_sn, s_st, s_sc,
                                          T, TP, C, eps, BT, BLOCK_C, DOT_FP32)
    g = tl.load(g_ptr + pid * s_g).to(tl.float32)
    gd = _otam_dir_grad(D, T, TP, lam, il2, BT) + tl.trans(_otam_dir_grad(tl.trans(D), TP, T, lam, il2, BT))
    gd = gd * g  # dL/dD, [BT, BT]
    # D = 1 - dot / (|a||b| + eps):  dD/d dot = -1/den,  dD/d|a_i| = dot |b_j| / den^2
    w = -tl.div_rn(gd, den)
    k = -w * tl.div_rn(dots, den)  # not gd * dots / den^2: den^2 overflows fp32 from feature norms of ~4e9 on
    # |a| = 0 means a = 0: d|a|/da is a subgradient there; take 0 like torch.linalg.norm
    rq = tl.where(nq > 0, tl.div_rn(tl.sum(k * ns[None, :], axis=1), tl.where(nq > 0, nq, 1.0)), 0.0)
    rs = tl.where(ns > 0, tl.div_rn(tl.sum(k * nq[:, None], axis=0), tl.where(ns > 0, ns, 1.0)), 0.0)
    rows = tl.arange(0, BT)
    w_base = w_ptr + pid * T * TP
    tl.store(w_base + rows[:, None] * TP + rows[None, :], w, mask=(rows[:, None] < T) & (rows[None, :] < TP))
    tl.store(rq_ptr + pid * T + rows, rq, mask=rows < T)
    tl.store(rs_ptr + pid * TP + rows, rs, mask=rows < TP)


# --------------------------------------------------------------------------- host side
def _block_t(t: int, tp: int) -> int:
    return max(16, triton.next_power_of_2(max(t, tp)))


def _dot_fp32(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 or _INTERPRET


def _on_device(x: torch.Tensor):
    # launch on the tensor's GPU, not the current one; a no-op for CPU tensors (interpreter)
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _launch_args(query: torch.Tensor, support: torch.Tensor):
    e, q, t, c = query.shape
    p, tp = support.shape[1], support.shape[2]
    return (q, p, t, tp, c, _pairs_class(e * q * p), *query.stride(), *support.stride())


def _forward(query: torch.Tensor, support: torch.Tensor, lam: float) -> torch.Tensor:
    """query ``[E, Q, T, C]``, support ``[E, P, T', C]`` -> ``[E, Q, P]`` in fp32 (any input dtype:
    distances of 16-30 would keep only steps of 0.125 in bf16, too coarse for logits)."""
    e, q, t, _ = query.shape
    p, tp = support.shape[1], support.shape[2]
    out = torch.empty((e, q, p), device=query.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    with _on_device(query):
        _otam_fwd_kernel[(e * q * p,)](query, support, out, *_launch_args(query, support), float(lam), _inv_lam_log2(lam), OTAM_COS_EPS,
                                       BT=_block_t(t, tp), DOT_FP32=_dot_fp32(query))
    return out


def _backward(grad: torch.Tensor, query: torch.Tensor, support: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    e, q, t, c = query.shape
    p, tp = support.shape[1], support.shape[2]
    if e * q * p == 0:
        return (torch.zeros_like(query, memory_format=torch.contiguous_format),
                torch.zeros_like(support, memory_format=torch.contiguous_format))
    grad = grad.reshape(-1)  # [E*Q*P]; a view where possible (.sum()'s expanded grad keeps stride 0)
    f32 = dict(device=query.device, dtype=torch.float32)
    w = torch.empty((e, q, p, t, tp), **f32)
    rq = torch.empty((e, q, p, t), **f32)
    rs = torch.empty((e, q, p, tp), **f32)
    with _on_device(query):
        _otam_bwd_kernel[(e * q * p,)](query, support, grad, w, rq, rs, *_launch_args(query, support), grad.stride(0),
                                       float(lam), _inv_lam_log2(lam), OTAM_COS_EPS, BT=_block_t(t, tp), DOT_FP32=_dot_fp32(query))
    qf, sf = query.float(), support.float()
    dq = torch.einsum("eqpij,epjc->eqic", w, sf) + qf * rq.sum(2)[..., None]  # [E, Q, T, C]
    ds = torch.einsum("eqpij,eqic->epjc", w, qf) + sf * rs.sum(1)[..., None]  # [E, P, T', C]
    return dq.to(query.dtype), ds.to(support.dtype)


# --------------------------------------------------------------------------- custom ops (torch.compile, opcheck)
@torch.library.custom_op("hr2g::otam_distance", mutates_args=())
def _otam_op(query: torch.Tensor, support: torch.Tensor, lam: float) -> torch.Tensor:
    """query ``[E, Q, T, C]``, support ``[E, P, T', C]`` -> ``[E, Q, P]`` in fp32."""
    return _forward(query, support, lam)


@_otam_op.register_fake
def _(query, support, lam):
    return query.new_empty((query.shape[0], query.shape[1], support.shape[1]), dtype=torch.float32)


@torch.library.custom_op("hr2g::otam_distance_backward", mutates_args=())
def _otam_bwd_op(grad: torch.Tensor, query: torch.Tensor, support: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(grad, query, support, lam)


@_otam_bwd_op.register_fake
def _(grad, query, support, lam):
    # _backward's gradients are contiguous whatever the inputs' strides (einsum results)
    return (torch.empty_like(query, memory_format=torch.contiguous_format),
            torch.empty_like(support, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    query, support, lam = inputs
    ctx.save_for_backward(query, support)
    ctx.lam = lam


def _grads(ctx, grad, bwd):
    refuse_double_backward("hr2g.ops.otam_distance (triton)")
    query, support = ctx.saved_tensors
    dq, ds = bwd(grad, query, support, ctx.lam)
    return dq, ds, None


_otam_op.register_autograd(lambda ctx, grad: _grads(ctx, grad, _otam_bwd_op), setup_context=_setup_context)


class _EagerOtam(torch.autograd.Function):
    """The custom op's forward and backward without its dispatch (~10 us of host time per call
    each way in eager mode; a training episode's 25 pairs take a few us on the GPU)."""

    @staticmethod
    def forward(ctx, query, support, lam):
        out = _forward(query, support, lam)
        _setup_context(ctx, (query, support, lam), out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _grads(ctx, grad, _backward)


def otam_distance(query: torch.Tensor, support: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Fused two-direction OTAM: query ``[..., Q, T, C]``, support ``[..., P, T', C]`` -> ``[..., Q, P]``.

    Same semantics as :func:`hr2g.reference.otam_distance_ref`; differentiable w.r.t. both inputs.
    Under ``torch.compile`` this is the custom op ``hr2g::otam_distance``; in eager mode the same
    launches without the custom op's dispatch.
    """
    lead = query.shape[:-3]
    e = math.prod(lead)  # not reshape(-1): that is ambiguous when Q, P or C is 0
    q3 = query.reshape(e, *query.shape[-3:])  # [E, Q, T, C]
    s3 = support.reshape(e, *support.shape[-3:])  # [E, P, T', C]
    op = _otam_op if torch.compiler.is_compiling() else _EagerOtam.apply
    out = op(q3, s3, float(lam))  # [E, Q, P]
    return out.reshape(*lead, query.shape[-3], support.shape[-3])


def unsupported_reason(op: str, query: torch.Tensor, support: torch.Tensor, lam: float = 0.5) -> str | None:
    """Why this kernel cannot run ``op`` on these arguments, or ``None``."""
    if op != "otam_distance":
        return f"hr2g.kernels.otam implements otam_distance, not {op}"
    if support.dtype != query.dtype:
        return f"query and support dtypes differ ({query.dtype} vs {support.dtype})"
    if query.dtype not in _DTYPES:
        return f"dtype {query.dtype} is not supported by the Triton OTAM kernel (fp32, bf16, fp16); use backend='torch'"
    t, tp = query.shape[-2], support.shape[-2]
    if max(t, tp) > MAX_FRAMES:
        return f"sequence lengths T={t}, T'={tp} exceed the Triton OTAM kernel's limit of {MAX_FRAMES} frames (its DP tables live in registers)"
    pairs = math.prod(query.shape[:-2]) * support.shape[-3]
    if pairs >= 2**31:
        return f"{pairs} (episode, query, support) pairs exceed the launch grid's 2**31 - 1 programs"
    return None
