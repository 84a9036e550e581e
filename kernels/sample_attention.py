"""Fused masked attention along the sample axis (ISC), forward and backward, in Triton.

Semantics: :func:`hr2g.reference.sample_attention_ref` -- ``softmax(q k^T / sqrt(d)) v`` over
``[B, H, S, d]`` with only the first ``n_kv`` samples (``n_support``, or all S) acting as keys and
values.  In ISC, B = episodes x T frames and S = supports + queries: every (b, h) is a tiny
attention problem (S = 10 for 5-way 1-shot), and there are thousands of them (8 x 512 x 8 heads for
a 512-episode evaluation batch), so all of them go in one launch.

Forward (FlashAttention-style online softmax).  Grid ``(B*H, cdiv(S, BLOCK_M))``: a program holds
``BLOCK_M`` query rows and walks the keys ``[0, n_kv)`` in blocks of ``BLOCK_N`` with a running max
and sum, so S has no register-imposed limit.  The key loop stops at ``n_kv``; the tail of its
last block loads as zeros and gets logits of ``-inf``.  ``n_kv >= 1`` gives every row one real key,
so no row's normaliser is zero.  The scores stay raw (``q.k``) until they are max-shifted,
``p = exp2((s - m) qk_scale)`` with ``qk_scale = log2(e) / sqrt(d)``, so the one rounding at the
scores' magnitude is the dot's own.  Scaled first (FlashAttention folds the scale into the scores
to save a multiply), a logit of ~100 becomes ~144 in log2 units, whose ulp (1.5e-5) is ~1e-5 of
every probability, twice an ulp of the reference's natural-unit logit.  It writes the output, the
log-sum-exp in base 2 (``lse [B, H, S]`` = natural lse x log2(e), fp32, an output of the op) and,
for the backward, the same in two parts (``stats [B, H, 2, S]``: the raw row max ``m`` and
``log2 sum_j exp2((s_ij - m) qk_scale)``), since ``exp2(s qk_scale - lse)`` would bring back the
rounding at ~144 that the shift avoids.

Backward (FlashAttention-2 style), one launch with two kinds of programs.  Grid
``(B*H, cdiv(S, BLOCK_M) + cdiv(S, BLOCK_N))``:

* the first ``cdiv(S, BLOCK_M)`` programs of a head own query rows and accumulate ``dq`` over the
  key blocks;
* the rest own key rows and accumulate ``dk``, ``dv`` over the query blocks; key blocks at or
  beyond ``n_kv`` store zeros without looping (a masked key gets no gradient).

With ``p`` the softmax, ``delta_i = sum_j p_ij dp_ij`` and ``ds = p (dp - delta)``, ``dp =
dO v^T``: ``dv = p^T dO``, ``dq = ds k / sqrt(d)``, ``dk = ds^T q / sqrt(d)``.  When all keys fit in
one block (``ONE_KV_BLOCK``: up to 16-64 keys by dtype and head dim: every bf16 / fp16 episode
with <= 32 supports at d64, but fp32 at d64 only up to 16, so 5-way 5-shot takes several), each
program holds whole rows of scores: it recomputes the softmax from them as the reference does
(max shift, normalised) and takes ``delta`` from the tile as the reference's softmax backward
does, so a lone key (n_support = 1) gets ``ds = 0`` exactly.  With several key blocks it rebuilds
``p = exp2((s - m) qk_scale - log2_sum)`` from the forward's stats, which needs its scores to round
exactly as the forward's did (true of the GPU's fp32 dot, and emulated under the interpreter: see
``_SEQUENTIAL_DOT``), and recomputes ``delta_i = sum_d dO_id O_id`` (equal in exact arithmetic)
for its rows from O and dO (one extra read of O) instead of a separate pre-pass launch: a 5-way
1-shot episode's backward (B*H = 64, S = 10, d = 64, bf16) moves ~0.7 MB, a fraction of a
microsecond at H100 bandwidth, against several microseconds per launch.  No atomics, so the
gradients are deterministic.  The op also returns ``lse`` and is differentiable through it
(``d lse_i / d s_ij = log2(e) p_ij`` folds into ``delta``), so the custom op's autograd is honest
for both of its differentiable outputs.

Blocks are powers of two and at least 16 (``tl.dot`` needs every dim >= 16 on the GPU); the head
dim is padded to ``BLOCK_D = max(16, next_pow2(d))`` and masked.  Accumulation is fp32.  fp32 inputs
multiply in IEEE fp32 unless torch's ``float32_matmul_precision`` allows TF32 (as the reference's
``torch.matmul`` would); bf16/fp16 inputs go to the tensor cores as they are, with the
probabilities rounded to the input dtype for the ``p v`` product, as FlashAttention does.  Under
``TRITON_INTERPRET=1`` every tile is upcast to fp32 first (the interpreter's bf16 ``tl.dot`` is
wrong) and the products are summed over k in order, as the GPU's fp32 dot does (``_mm``).

Limits (``unsupported_reason`` reports each): head dim 1..128, fp32 / bf16 / fp16, S <= 2**18
(the grid's second axis holds at most 65535 blocks), fewer than 2**31 (batch, head) pairs.
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from hr2g._dispatch import interpret_requested, refuse_double_backward

MAX_HEAD_DIM = 128
# the backward's grid axis 1 holds cdiv(S, BLOCK_M) + cdiv(S, BLOCK_N) <= 65535 blocks, 16 rows each at worst
MAX_SAMPLES = 2**18
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Read once, as triton.jit itself does (it picks the interpreter when the kernel is decorated).
_INTERPRET = interpret_requested()
# exp(x) = exp2(x * log2(e)); the kernels spell the constant out (jit code reads no Python globals
# other than constexprs)
_LOG2E = 1.4426950408889634
# Under the interpreter, tl.dot is numpy's BLAS, whose rounding of an entry depends on the tile's
# shape and on which operand comes first: 93 of the 256 entries of a 16 x 16 tile of k q^T differ
# from those of the 32 x 32 tile of q k^T that the forward computed.  On the GPU an fp32 IEEE
# tl.dot is Triton's FMA lowering, one fma chain over k per entry, whatever the tile, so the
# backward's scores equal the forward's bit for bit, which its rebuilt softmax relies on.  The
# BLAS mismatch put the interpreter's dv at 1.8-2.2x the rule at logits ~100 with several key
# blocks; _mm emulates the chain instead (a product, then a sum over k in order).
_SEQUENTIAL_DOT = tl.constexpr(_INTERPRET)


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _mm(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # fp32 tiles take the requested precision ("ieee" or "tf32"); bf16/fp16 tiles go to the tensor
    # cores as they are.  Both accumulate in fp32.
    if _SEQUENTIAL_DOT:  # the interpreter (its tiles are all fp32, see _precision)
        out = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif UPCAST:
        out = tl.dot(a, b, input_precision=PRECISION)
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _load_tile(ptr, base, rows, n_rows, offs_d, D, UPCAST: tl.constexpr):
    """``[len(rows), BLOCK_D]`` tile of a contiguous ``[*, S, D]`` head; zeros outside."""
    offs = base + rows[:, None].to(tl.int64) * D + offs_d[None, :]
    tile = tl.load(ptr + offs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _store_tile(ptr, base, rows, n_rows, offs_d, D, val):
    offs = base + rows[:, None].to(tl.int64) * D + offs_d[None, :]
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D))


@triton.jit
def _minus_lse_grad(delta, glse_ptr, row_base, rows, S, HAS_GLSE: tl.constexpr):
    """``delta - dlse`` (fp32): the lse output is in log2 units, d lse2_i / d s_ij = log2(e) p_ij."""
    if HAS_GLSE:
        delta -= tl.load(glse_ptr + row_base + rows, mask=rows < S, other=0.0).to(tl.float32) * 1.4426950408889634
    return delta


@triton.jit
def _tile_softmax(s, valid, qk_scale, AXIS: tl.constexpr):
    """softmax along ``AXIS`` (the keys' axis) of the raw scores ``s`` (``q.k``; exponent
    ``(s - max) * qk_scale``) where ``valid`` (0 elsewhere): what a program that holds all keys
    computes instead of rebuilding p from the forward's stats.

    A stored normaliser is rounded (the same factor over a row, which ``rowsum(p * dp)`` would
    carry into every ds).  Shifted by the tile's own max and normalised, as the reference's
    softmax, a lone key gets p = exp2(0) / 1 = 1 exactly and ds = dp - dp = 0.
    (``/``, not ``div_rn``: IEEE division is a subroutine call on sm_90, which put 24 B on the
    stack of the 32 x 32 x d32 fp32 backward with Triton 3.6.)"""
    s = tl.where(valid, s, float("-inf"))
    e = tl.exp2((s - tl.expand_dims(tl.max(s, axis=AXIS), AXIS)) * qk_scale)  # each row has a valid key: a finite max
    return e / tl.expand_dims(tl.sum(e, axis=AXIS), AXIS)


@triton.jit
def _row_delta(o_ptr, do, glse_ptr, base, row_base, rows, S, offs_d, D, HAS_GLSE: tl.constexpr):
    """``rowsum(dO * O) - dlse`` for ``rows`` (fp32): the term every ``ds`` of the row subtracts,
    when the keys span several blocks (otherwise the backward sums ``p * dp`` over its tile)."""
    o = _load_tile(o_ptr, base, rows, S, offs_d, D, True)
    return _minus_lse_grad(tl.sum(do.to(tl.float32) * o, axis=1), glse_ptr, row_base, rows, S, HAS_GLSE)


@triton.jit
def _row_stats(stats_ptr, bh, rows, S):
    """The forward's raw row max ``m`` (of ``q.k``) and ``log2 sum_j exp2((s_ij - m) qk_scale)``
    for ``rows``.

    With several key blocks the backward rebuilds ``p = exp2((s - m) qk_scale - log2_sum)``: every
    term stays small where p matters (``s - m <= 0``, ``log2_sum <= log2 n_kv``), whereas
    ``exp2(s qk_scale - lse)`` carries the lse's rounding, an ulp of ~144 at logits ~100 (~1e-5
    of every p, the same factor along a row)."""
    row = 2 * bh * S + rows
    row_max = tl.load(stats_ptr + row, mask=rows < S, other=0.0)
    log2_sum = tl.load(stats_ptr + row + S, mask=rows < S, other=0.0)
    return row_max, log2_sum


# --------------------------------------------------------------------------- kernels
@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, stats_ptr, S, N_KV, D, qk_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    base = bh * S * D  # int64: B*H*S*d passes 2**31 at 3.4M heads of S=10, d=64 (8 frames x 8 heads x 52k episodes)
    q = _load_tile(q_ptr, base, rows, S, offs_d, D, UPCAST)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max of the raw q.k
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2((s - m_i) * qk_scale)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, N_KV, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_ptr, base, cols, N_KV, offs_d, D, UPCAST)
        v = _load_tile(v_ptr, base, cols, N_KV, offs_d, D, UPCAST)
        # raw q.k; scaled only after the max shift (see _tile_softmax), qk_scale = log2(e) / sqrt(d)
        s = _mm(q, tl.trans(k), UPCAST, PRECISION)  # [BLOCK_M, BLOCK_N]
        s = tl.where(cols[None, :] < N_KV, s, float("-inf"))
        # every block starts below N_KV, so each row has a finite max and m_new is finite
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2((m_i - m_new) * qk_scale)  # 0 on the first block (m_i = -inf)
        p = tl.exp2((s - m_new[:, None]) * qk_scale)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, UPCAST, PRECISION)
        m_i = m_new
    _store_tile(o_ptr, base, rows, S, offs_d, D, acc / l_i[:, None])
    log2_l = tl.log2(l_i)
    tl.store(lse_ptr + bh * S + rows, m_i * qk_scale + log2_l, mask=rows < S)
    # the backward's copy, max and log-sum apart (see _row_stats)
    tl.store(stats_ptr + 2 * bh * S + rows, m_i, mask=rows < S)
    tl.store(stats_ptr + (2 * bh + 1) * S + rows, log2_l, mask=rows < S)


@triton.jit
def _bwd_dq(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, stats_ptr, glse_ptr, dq_ptr, bh, blk, S, N_KV, D, sm_scale, qk_scale,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            UPCAST: tl.constexpr, PRECISION: tl.constexpr, HAS_GLSE: tl.constexpr, ONE_KV_BLOCK: tl.constexpr):
    """dq for query rows ``[blk*BLOCK_M, (blk+1)*BLOCK_M)`` of head ``bh``."""
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    base = bh * S * D
    q = _load_tile(q_ptr, base, rows, S, offs_d, D, UPCAST)
    do = _load_tile(do_ptr, base, rows, S, offs_d, D, UPCAST)
    if not ONE_KV_BLOCK:
        delta = _row_delta(o_ptr, do, glse_ptr, base, bh * S, rows, S, offs_d, D, HAS_GLSE)
        row_max, log2_sum = _row_stats(stats_ptr, bh, rows, S)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, N_KV, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_ptr, base, cols, N_KV, offs_d, D, UPCAST)
        v = _load_tile(v_ptr, base, cols, N_KV, offs_d, D, UPCAST)
        s = _mm(q, tl.trans(k), UPCAST, PRECISION)  # raw q.k, as the forward's
        live = (rows[:, None] < S) & (cols[None, :] < N_KV)
        if ONE_KV_BLOCK:
            p = tl.where(live, _tile_softmax(s, cols[None, :] < N_KV, qk_scale, 1), 0.0)
        else:
            p = tl.where(live, tl.exp2((s - row_max[:, None]) * qk_scale - log2_sum[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]
        dp = _mm(do, tl.trans(v), UPCAST, PRECISION)
        if ONE_KV_BLOCK:
            delta = _minus_lse_grad(tl.sum(p * dp, axis=1), glse_ptr, bh * S, rows, S, HAS_GLSE)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds.to(k.dtype), k, UPCAST, PRECISION)
    _store_tile(dq_ptr, base, rows, S, offs_d, D, dq * sm_scale)


@triton.jit
def _bwd_dkdv(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, stats_ptr, glse_ptr, dk_ptr, dv_ptr, bh, blk, S, N_KV, D, sm_scale, qk_scale,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr, HAS_GLSE: tl.constexpr, ONE_KV_BLOCK: tl.constexpr):
    """dk, dv for key rows ``[blk*BLOCK_N, (blk+1)*BLOCK_N)`` of head ``bh`` (zeros at >= N_KV)."""
    start_n = blk * BLOCK_N
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    base = bh * S * D
    k = _load_tile(k_ptr, base, cols, N_KV, offs_d, D, UPCAST)
    v = _load_tile(v_ptr, base, cols, N_KV, offs_d, D, UPCAST)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    # a block wholly past the support keys has zero gradient: skip the query loop, store zeros
    hi = tl.where(start_n < N_KV, S, 0)
    for start_m in range(0, hi, BLOCK_M):
        rows = start_m + offs_m
        q = _load_tile(q_ptr, base, rows, S, offs_d, D, UPCAST)
        do = _load_tile(do_ptr, base, rows, S, offs_d, D, UPCAST)
        if not ONE_KV_BLOCK:
            delta = _row_delta(o_ptr, do, glse_ptr, base, bh * S, rows, S, offs_d, D, HAS_GLSE)
            row_max, log2_sum = _row_stats(stats_ptr, bh, rows, S)
        # transposed scores [BLOCK_N, BLOCK_M], so p^T and ds^T feed the dots without a transpose
        st = _mm(k, tl.trans(q), UPCAST, PRECISION)
        live = (cols[:, None] < N_KV) & (rows[None, :] < S)
        if ONE_KV_BLOCK:
            pt = tl.where(live, _tile_softmax(st, cols[:, None] < N_KV, qk_scale, 0), 0.0)
        else:
            pt = tl.where(live, tl.exp2((st - row_max[None, :]) * qk_scale - log2_sum[None, :]), 0.0)
        dv += _mm(pt.to(do.dtype), do, UPCAST, PRECISION)
        dpt = _mm(v, tl.trans(do), UPCAST, PRECISION)
        if ONE_KV_BLOCK:
            delta = _minus_lse_grad(tl.sum(pt * dpt, axis=0), glse_ptr, bh * S, rows, S, HAS_GLSE)
        dst = pt * (dpt - delta[None, :])
        dk += _mm(dst.to(q.dtype), q, UPCAST, PRECISION)
    # store over all S rows (not N_KV): this is what zeroes dk, dv of the non-support keys
    _store_tile(dk_ptr, base, cols, S, offs_d, D, dk * sm_scale)
    _store_tile(dv_ptr, base, cols, S, offs_d, D, dv)


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, stats_ptr, glse_ptr, dq_ptr, dk_ptr, dv_ptr,
                S, N_KV, D, sm_scale, qk_scale, N_QBLOCKS,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr, HAS_GLSE: tl.constexpr, ONE_KV_BLOCK: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    if blk < N_QBLOCKS:
        _bwd_dq(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, stats_ptr, glse_ptr, dq_ptr, bh, blk, S, N_KV, D, sm_scale, qk_scale,
                BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION, HAS_GLSE, ONE_KV_BLOCK)
    else:
        _bwd_dkdv(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, stats_ptr, glse_ptr, dk_ptr, dv_ptr, bh, blk - N_QBLOCKS,
                  S, N_KV, D, sm_scale, qk_scale, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION, HAS_GLSE, ONE_KV_BLOCK)


# --------------------------------------------------------------------------- host side
def _blocks(s: int, n_kv: int, d: int, dtype: torch.dtype, backward: bool, precision: str = "ieee") -> dict:
    """Block sizes and warps for one shape (no autotuning: the interpreter would run every config,
    and the episode shapes are few and small).

    Query/key blocks are the sample counts rounded up to a power of two, at least 16 (``tl.dot``'s
    minimum), capped so that nothing spills with Triton 3.6 (the GPU image's) nor 3.8 (CI's).
    Compiled ahead of time for sm_90 (``triton.compile``, ``cuobjdump --dump-resource-usage``;
    registers per thread, 3.6 / 3.8, and spill stack): fp32 tiles multiply on the FMA units (IEEE),
    whose dot layouts cost far more registers than the tensor cores' -- forward 64 x 64 x d64
    spills 432 / 416 B even at 8 warps, 32 x 32 x d128 at 8 warps needs 197 / 183; backward
    32 x 32 x d64 spills 128 B on 3.6 at 8 warps (and 48 B at 16), 16 x 16 x d64 at 4 warps needs
    212 / 122 (but 8 warps spill 16 B on 3.8), 16 x 16 x d128 needs 8 warps (198 / 122; 4 spill
    232 B on 3.6).  bf16 / fp16: forward 64 x 64 x d128 at 8 warps needs 254 / 218 (no stack,
    one register short of the cap on 3.6: ISC's heads are d64, where it is 158 / 138); backward
    64 x 64 x d64 spills 24 B on 3.6, 32 x 32 x d128 at 8 warps needs 248 / 235, 64 x 64 x d32
    167 / 166.  fp32 as TF32 (``precision="tf32"``): backward 32 x 32 x d32 takes all 255 registers
    and spills 8 B on both at 8 warps (104 B on 3.6 at 4), 16 x 16 x d32 needs 110 / 110.
    Those are backward figures with several key blocks; with one (``ONE_KV_BLOCK``, no O tile)
    the same tiles need as many registers or fewer (16 x 16 x d64 fp32: 166 / 121).
    tests/test_sample_attention.py compiles every choice made here, in both fp32 precisions.
    """
    block_d = max(16, triton.next_power_of_2(d))
    if not backward:
        cap = 32 if dtype == torch.float32 else 64
    elif dtype == torch.float32:
        cap = 32 if block_d < 32 or (block_d == 32 and precision == "ieee") else 16
    else:
        cap = 64 if block_d <= 32 else 32
    block_m = min(cap, max(16, triton.next_power_of_2(s)))
    block_n = min(cap, max(16, triton.next_power_of_2(n_kv)))  # <= block_m, as n_kv <= s
    wide = block_m > 16 or (backward and block_d >= 128)
    cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=8 if wide else 4)
    if backward:  # all keys in one block (bf16 5-way 5-shot at d64 too; not fp32 there): delta from the tile, O not read
        cfg["ONE_KV_BLOCK"] = n_kv <= block_n
    return cfg


def _precision(x: torch.Tensor) -> tuple[bool, str]:
    """(UPCAST, PRECISION): fp32 tiles everywhere under the interpreter; TF32 only for fp32 CUDA
    inputs, and only where torch's own fp32 matmuls would use it."""
    upcast = x.dtype == torch.float32 or _INTERPRET
    tf32 = x.is_cuda and x.dtype == torch.float32 and _torch_matmul_uses_tf32()
    return upcast, "tf32" if tf32 else "ieee"


def _torch_matmul_uses_tf32() -> bool:
    # torch >= 2.9's fp32_precision ("tf32" | "ieee" | "none" = ieee) follows the old API too
    # (set_float32_matmul_precision("high"), allow_tf32 = True); the old getter raises once a
    # process has used the new API (torch.backends.fp32_precision = ..., by any library)
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is not None:
        return precision == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


def _on_device(x: torch.Tensor):
    # launch on the tensor's GPU, not the current one; a no-op for CPU tensors (interpreter)
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


# ----------------------------------------------------------------------- launches
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_kv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, H, S, d]`` each -> (out ``[B, H, S, d]`` in the input dtype, lse ``[B, H, S]`` fp32 in
    base 2, stats ``[B, H, 2, S]`` fp32: each row's max and log2 sum, which the backward reads)."""
    b, h, s, d = q.shape
    if s > 0 and not 1 <= n_kv <= s:
        raise ValueError(f"hr2g::sample_attention: n_kv must be in [1, S={s}], got {n_kv}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the kernels index [B*H, S, d] densely
    out = torch.empty_like(q)
    lse = torch.empty((b, h, s), device=q.device, dtype=torch.float32)
    stats = torch.empty((b, h, 2, s), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse, stats
    upcast, precision = _precision(q)
    cfg = _blocks(s, n_kv, d, q.dtype, backward=False, precision=precision)
    grid = (b * h, triton.cdiv(s, cfg["BLOCK_M"]))
    with _on_device(q):
        _fwd_kernel[grid](q, k, v, out, lse, stats, s, n_kv, d, _LOG2E / math.sqrt(d), UPCAST=upcast, PRECISION=precision, **cfg)
    return out, lse, stats


def _backward(grad_out, grad_lse, q, k, v, out, stats, n_kv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, s, d = q.shape
    # grad_out arrives strided when the caller transposed the output (e.g. "b h s d -> b s (h d)")
    grad_out, q, k, v, out, stats = (x.contiguous() for x in (grad_out, q, k, v, out, stats))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    has_glse = grad_lse is not None
    glse = grad_lse.contiguous() if has_glse else stats  # never read when has_glse is False
    upcast, precision = _precision(q)
    cfg = _blocks(s, n_kv, d, q.dtype, backward=True, precision=precision)
    n_qblocks = triton.cdiv(s, cfg["BLOCK_M"])
    grid = (b * h, n_qblocks + triton.cdiv(s, cfg["BLOCK_N"]))
    with _on_device(q):
        # qk_scale: the forward's, bit for bit, so the backward rebuilds the forward's exponents
        _bwd_kernel[grid](q, k, v, out, grad_out, stats, glse, dq, dk, dv, s, n_kv, d, 1.0 / math.sqrt(d), _LOG2E / math.sqrt(d), n_qblocks,
                          UPCAST=upcast, PRECISION=precision, HAS_GLSE=has_glse, **cfg)
    return dq, dk, dv


# ----------------------------------------------------------------------- custom ops (torch.compile, opcheck)
@torch.library.custom_op("hr2g::sample_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_kv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, H, S, d]`` each -> (out ``[B, H, S, d]`` in the input dtype, lse ``[B, H, S]`` fp32:
    ``log2 sum_j 2^(log2(e) s_ij)``, the natural log-sum-exp of the scaled scores times log2(e),
    and stats ``[B, H, 2, S]`` fp32, the same in two parts: the raw ``m_i = max_j q_i.k_j`` and
    ``log2 sum_j 2^((q_i.k_j - m_i) log2(e) / sqrt(d))``; not differentiable, for the backward)."""
    return _forward(q, k, v, n_kv)


@_attention_op.register_fake
def _(q, k, v, n_kv):
    b, h, s, _ = q.shape
    return (torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((b, h, s), dtype=torch.float32),
            q.new_empty((b, h, 2, s), dtype=torch.float32))


@torch.library.custom_op("hr2g::sample_attention_backward", mutates_args=())
def _attention_bwd_op(grad_out: torch.Tensor, grad_lse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor, out: torch.Tensor, stats: torch.Tensor, n_kv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_out, grad_lse, q, k, v, out, stats, n_kv)


@_attention_bwd_op.register_fake
def _(grad_out, grad_lse, q, k, v, out, stats, n_kv):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, n_kv = inputs
    out, _, stats = output
    ctx.save_for_backward(q, k, v, out, stats)
    ctx.mark_non_differentiable(stats)
    ctx.n_kv = n_kv
    # an unused lse (the usual case) then arrives as None, not as a zero tensor the kernel would read
    ctx.set_materialize_grads(False)


def _grads(ctx, grad_out, grad_lse, bwd):
    refuse_double_backward("hr2g.ops.sample_attention (triton)")
    q, k, v, out, stats = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = bwd(grad_out, grad_lse, q, k, v, out, stats, ctx.n_kv)
    return dq, dk, dv, None


_attention_op.register_autograd(lambda ctx, g, g_lse, _: _grads(ctx, g, g_lse, _attention_bwd_op), setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward, backward and saved tensors as the custom op, without its dispatch: in
    eager mode the custom op costs ~10 us more host time per call each way (measured on this
    project's 2-core CPU: 22.7 vs 13.7 us for the forward before the launch), and at episode
    shapes the whole GPU kernel takes a few us."""

    @staticmethod
    def forward(ctx, q, k, v, n_kv):
        outputs = _forward(q, k, v, n_kv)
        _setup_context(ctx, (q, k, v, n_kv), outputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_out, grad_lse, _):
        return _grads(ctx, grad_out, grad_lse, _backward)


def sample_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_support: int | None = None) -> torch.Tensor:
    """Fused ``softmax(q k^T / sqrt(d)) v`` along the sample axis, ``[B, H, S, d]`` -> same.

    Same semantics as :func:`hr2g.reference.sample_attention_ref`: only the first ``n_support``
    samples (all S when None) act as keys/values.  Differentiable w.r.t. q, k and v.  Under
    ``torch.compile`` this is the custom op ``hr2g::sample_attention`` (opaque to the compiler);
    in eager mode the same launches without the custom op's dispatch.
    """
    n_kv = q.shape[2] if n_support is None else int(n_support)
    op = _attention_op if torch.compiler.is_compiling() else _EagerAttention.apply
    return op(q, k, v, n_kv)[0]


def unsupported_reason(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_support: int | None = None) -> str | None:
    """Why this kernel cannot run ``op`` on these arguments, or ``None``."""
    if op != "sample_attention":
        return f"hr2g.kernels.sample_attention implements sample_attention, not {op}"
    if q.dim() != 4 or not (q.shape == k.shape == v.shape):
        return f"q, k, v must share one [B, H, S, d] shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported by the Triton sample-attention kernel (fp32, bf16, fp16); use backend='torch'"
    b, h, s, d = q.shape
    if not 1 <= d <= MAX_HEAD_DIM:
        return f"head dim {d} is outside the Triton sample-attention kernel's range 1..{MAX_HEAD_DIM} (its [block, head dim] tiles live in registers)"
    if s > MAX_SAMPLES:
        return f"S={s} samples exceed the Triton sample-attention kernel's limit of {MAX_SAMPLES} (the grid's second axis holds at most 65535 blocks)"
    if b * h >= 2**31:
        return f"B*H = {b * h} (batch, head) pairs exceed the launch grid's 2**31 - 1 programs"
    if n_support is not None and not 1 <= int(n_support) <= s:
        return f"n_support must be in [1, S={s}], got {n_support}"
    return None
