"""Sample-axis attention (ISC): the reference against naive loops, then the fused Triton kernel
against the reference (forward, dq/dk/dv and the log-sum-exp), the support mask's semantics, the
custom-op registration, the dispatcher's refusals, and GPU-only dtypes and sizes.

On a machine without CUDA the kernel runs under ``TRITON_INTERPRET=1`` (tests/conftest.py), one
program at a time, so the CPU cases keep B*H*blocks small.  The fp64 oracle is PyTorch's
``scaled_dot_product_attention`` with a boolean mask: an implementation independent of both the
reference and the kernel.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hr2g import _dispatch, ops
from hr2g.kernels.sample_attention import _load_tile, _mm
from hr2g.reference import sample_attention_ref
from tests.helpers import assert_within_ref_error, kernel_devices, nan_guarded


# --------------------------------------------------------------------------- helpers
def naive_attention(q: list, k: list, v: list, n_support: int | None) -> list:
    """The op's definition one row at a time, in plain Python floats: for every (b, h, i) the
    scores of row i against the first n_support keys, a max-shifted softmax, the weighted sum."""
    out = []
    for qb, kb, vb in zip(q, k, v):
        heads = []
        for qh, kh, vh in zip(qb, kb, vb):
            n = len(kh) if n_support is None else n_support
            scale = 1.0 / math.sqrt(len(qh[0]))
            rows = []
            for qi in qh:
                scores = [scale * sum(a * b for a, b in zip(qi, kh[j])) for j in range(n)]
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                z = sum(e)
                rows.append([sum(e[j] / z * vh[j][c] for j in range(n)) for c in range(len(qi))])
            heads.append(rows)
        out.append(heads)
    return out


def support_mask(s: int, n_support: int | None, device) -> torch.Tensor:
    """Boolean ``[S, S]`` mask for SDPA: True where column j < n_support may be attended."""
    n = s if n_support is None else n_support
    return (torch.arange(s, device=device) < n).expand(s, s)


def sdpa(q, k, v, n_support):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=support_mask(q.shape[2], n_support, q.device))


# about one unit in the last place at magnitude 1, for cases where the references happen to be exact
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
LOG2E = 1 / math.log(2)  # the op's lse is in base 2


def _grads(fn, inputs, grad_out):
    xs = [x.detach().requires_grad_() for x in inputs]
    out = fn(*xs)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [x.grad for x in xs]


def check_against_reference(q, k, v, n_support, atol=None):
    """Forward and dq, dk, dv of ``backend='triton'`` against fp64 SDPA, bounded by the error of
    the reference and of SDPA at the inputs' dtype, under a random upstream gradient."""
    atol = ATOL[q.dtype] if atol is None else atol
    grad = torch.randn(q.shape, device=q.device, dtype=torch.float64)
    got = _grads(lambda a, b, c: ops.sample_attention(a, b, c, n_support, backend="triton"), (q, k, v), grad)
    assert got[0].dtype == q.dtype and got[0].shape == q.shape
    lp = [_grads(lambda a, b, c: sample_attention_ref(a, b, c, n_support), (q, k, v), grad),
          _grads(lambda a, b, c: sdpa(a, b, c, n_support), (q, k, v), grad)]
    hi = _grads(lambda a, b, c: sdpa(a, b, c, n_support), [x.double() for x in (q, k, v)], grad)
    for i, name in enumerate(("forward", "dq", "dk", "dv")):
        assert_within_ref_error(name, got[i], [r[i] for r in lp], hi[i], atol)


def rand_qkv(b, h, s, d, dtype=torch.float32, device="cpu"):
    return [torch.randn(b, h, s, d, device=device).to(dtype) for _ in range(3)]


def case_id(dtype, b, h, s, d, ns) -> str:
    name = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[dtype]
    return f"{name}-B{b}-H{h}-S{s}-d{d}-ns{'all' if ns is None else ns}"


# --------------------------------------------------------------------------- reference vs definition
@pytest.mark.parametrize("s,n_support", [(1, None), (5, None), (5, 1), (5, 3), (6, 6)], ids=["S1-nsall", "S5-nsall", "S5-ns1", "S5-ns3", "S6-ns6"])
def test_reference_matches_naive_loops(s, n_support):
    q, k, v = rand_qkv(2, 2, s, 4, dtype=torch.float64)
    want = torch.tensor(naive_attention(q.tolist(), k.tolist(), v.tolist(), n_support), dtype=torch.float64)
    got = sample_attention_ref(q.float(), k.float(), v.float(), n_support)
    assert got.dtype == torch.float32
    # fp32 arithmetic over 4-term dot products and <= 6-term sums of O(1) values
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_reference_keeps_low_precision_dtype():
    q, k, v = rand_qkv(1, 2, 7, 8, dtype=torch.bfloat16)
    out = sample_attention_ref(q, k, v, 3)
    assert out.dtype == torch.bfloat16
    want = torch.tensor(naive_attention(q.double().tolist(), k.double().tolist(), v.double().tolist(), 3), dtype=torch.float64)
    # computed in fp32, rounded once to bf16: within half a bf16 ulp (2**-9 relative)
    torch.testing.assert_close(out.double(), want, rtol=2**-8, atol=1e-6)


# --------------------------------------------------------------------------- kernel vs reference
# (B, H, S, d, n_support): S = 1, 2, primes, block size (16 / 32 / 64) + 1, two and three blocks
# each way, a key block wholly past n_support, n_support = 1, S and in between, head dims from the
# tiny config's 8 to 128, one that is not a power of two.
KERNEL_CASES = [
    (1, 1, 1, 32, None),
    (2, 1, 2, 32, 1),
    (1, 2, 7, 64, None),
    (2, 3, 13, 32, 5),
    (1, 2, 17, 32, 17),
    (2, 1, 33, 64, 1),
    (1, 1, 33, 64, 20),
    (1, 2, 65, 32, 64),
    (1, 1, 128, 64, None),
    (1, 1, 130, 32, 97),
    (2, 2, 10, 8, 5),
    (1, 3, 11, 16, 6),
    (1, 2, 11, 40, 6),
    (1, 1, 70, 128, 3),
]


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
@pytest.mark.parametrize("b,h,s,d,ns", KERNEL_CASES, ids=[case_id(torch.float32, *c) for c in KERNEL_CASES])
def test_kernel_matches_reference(b, h, s, d, ns, device):
    check_against_reference(*rand_qkv(b, h, s, d, device=device), ns)


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
def test_kernel_strided_inputs(device):
    """ISC slices q, k, v out of one qkv projection: views with a head-interleaved layout."""
    qkv = torch.randn(2, 9, 3, 3, 32, device=device)  # [B, S, three, H, d]
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, S, d], non-contiguous
    assert not q.is_contiguous()
    check_against_reference(q, k, v, 4)


LARGE_LOGIT_CASES = [(2, 2, 10, 64, 5), (2, 3, 24, 16, 24), (1, 2, 40, 64, 33)]


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
@pytest.mark.parametrize("b,h,s,d,ns", LARGE_LOGIT_CASES, ids=["S10-d64-ns5", "S24-d16-nsall", "S40-d64-ns33"])
def test_kernel_at_large_logits(device, b, h, s, d, ns):
    """q scaled by 10: scaled scores up to ~100, softmax rows nearly one-hot, where an ulp of a
    score or of the lse is ~5e-6 of every probability.  The backward once rebuilt p from an lse
    converted to natural log and back, with its own rounding of log2(e)/sqrt(d): 2.6x the rule
    on the first case (4.6x on other draws).  The third has three key blocks (fp32 d64 backward
    tiles hold 16 keys), so the backward rebuilds p from the forward's stats: with the
    interpreter's BLAS dot, whose scores rounded differently in the backward, its dv was 1.8x
    the rule.  Now 0.3x, 0.3x and 0.5x (scores scaled after the max shift, the interpreter's
    dot summed in order)."""
    q, k, v = rand_qkv(b, h, s, d, device=device)
    check_against_reference(q * 10, k, v, ns)


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
@pytest.mark.parametrize("ns", [None, 4], ids=["nsall", "ns4"])
def test_kernel_past_exp_overflow(device, ns):
    """Raw scores up to ~300 at d16, past fp32's exp overflow at 88.7 (exp2 at 128), so a
    softmax that skips its max shift gives inf/inf = NaN.  Ten samples fit one key tile, so the
    backward recomputes p with _tile_softmax rather than the forward's stats: without the shift
    there, every gradient was NaN while the forward stayed right.

    q and k are quarter-integers (q then times 60), so every q.k is exact in fp32 whatever the
    summation order: at these magnitudes an ulp of a score (3e-5) moves p by ~1e-5, and which of
    the kernel's dot and the reference's happened to round better made the forward's error ratio
    10x on one draw -- luck, not the softmax under test."""
    q, k, v = rand_qkv(1, 2, 10, 16, device=device)
    q, k = (torch.round(x * 4) / 4 for x in (q, k))
    check_against_reference(q * 60, k, v, ns)


@triton.jit
def _scores_both_ways(q_ptr, k_ptr, s_ptr, st_ptr, D, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """One tile of scores the forward's way (``q k^T``, [BM, BN]) and the dk/dv programs' way
    (``k q^T``, [BN, BM]), with the sample-attention kernel's own helpers (fp32, IEEE)."""
    rows, cols, offs_d = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BD)
    q = _load_tile(q_ptr, 0, rows, BM, offs_d, D, True)
    k = _load_tile(k_ptr, 0, cols, BN, offs_d, D, True)
    tl.store(s_ptr + rows[:, None] * BN + cols[None, :], _mm(q, tl.trans(k), True, "ieee"))
    tl.store(st_ptr + cols[:, None] * BM + rows[None, :], _mm(k, tl.trans(q), True, "ieee"))


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
def test_scores_round_the_same_in_every_tile_and_orientation(device):
    """With several key blocks the backward rebuilds p from the forward's row max and log-sum,
    which is exact only if its scores round exactly as the forward's did, though its tiles are
    smaller (fp32 d64: 16 x 16 against the forward's 32 x 32) and the dk/dv programs multiply
    ``k q^T``.  On the GPU an fp32 IEEE dot is one fma chain over k per entry; under the
    interpreter ``_mm`` emulates that (numpy's BLAS does not: 93 of 256 entries differed)."""
    d = 64
    q, k = torch.randn(32, d, device=device) * 10, torch.randn(32, d, device=device)
    tiles = {}
    for bm in (16, 32):
        s = torch.empty(bm, bm, device=device)
        st = torch.empty(bm, bm, device=device)
        _scores_both_ways[(1,)](q[:bm].contiguous(), k[:bm].contiguous(), s, st, d, BM=bm, BN=bm, BD=d)
        tiles[bm] = (s, st)
    s32, st32 = tiles[32]
    s16, st16 = tiles[16]
    assert torch.equal(st32.T, s32), "k q^T rounds differently from q k^T"
    assert torch.equal(s16, s32[:16, :16]) and torch.equal(st16.T, s32[:16, :16]), "a 16 x 16 tile rounds differently"
    # and they are the fp32 dot products (to the accumulation error of 64 terms of ~10)
    torch.testing.assert_close(s32, q @ k.T, rtol=0, atol=1e-3)


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
@pytest.mark.parametrize("s,d", [(1, 24), (3, 80), (40, 64)], ids=["S1-d24", "S3-d80", "S40-d64"])
def test_lone_key_gets_no_score_gradient(device, s, d):
    """n_support = 1: every row's softmax is the constant 1, so dq and dk are exactly zero, as the
    reference's are.  ``delta = rowsum(dO * O)`` left them at ~5e-6 with large logits (8x the
    rule): the backward now recomputes the softmax from its tile, so p = 1 and ds = dp - dp = 0
    exactly."""
    q, k, v = rand_qkv(2, 2, s, d, device=device)
    xs = [x.detach().requires_grad_() for x in (q * 10, k, v)]
    grad = torch.randn(2, 2, s, d, device=device)
    ops.sample_attention(*xs, 1, backend="triton").backward(grad)
    assert torch.count_nonzero(xs[0].grad) == 0 and torch.count_nonzero(xs[1].grad) == 0
    # dv of the lone key is the sum of the upstream gradient over the rows; nothing else gets any
    torch.testing.assert_close(xs[2].grad[:, :, 0], grad.sum(2), rtol=0, atol=1e-5)
    assert torch.count_nonzero(xs[2].grad[:, :, 1:]) == 0


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
@pytest.mark.parametrize("b,h,s,d,ns", [(1, 2, 17, 40, 9), (1, 1, 33, 24, None)], ids=["S17-d40-ns9", "S33-d24-nsall"])
def test_kernel_reads_nothing_outside_its_inputs(device, b, h, s, d, ns):
    """q, k, v and the upstream gradient inside NaN guard zones, at sizes that pad the row and key
    blocks and the head dim: any unmasked padded load reaches the guard and poisons the result."""
    q, k, v = (nan_guarded(x) for x in rand_qkv(b, h, s, d, device=device))
    grad = nan_guarded(torch.randn(b, h, s, d, device=device))
    xs = [x.detach().requires_grad_() for x in (q, k, v)]
    out = ops.sample_attention(*xs, ns, backend="triton")
    out.backward(grad)
    want = _grads(lambda a, b_, c: sample_attention_ref(a, b_, c, ns), (q, k, v), grad)
    for name, got, ref in zip(("forward", "dq", "dk", "dv"), [out.detach()] + [x.grad for x in xs], want):
        assert torch.isfinite(got).all(), f"{name}: NaN from outside the inputs"
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
@pytest.mark.parametrize("s,d,ns", [(19, 32, 7), (40, 64, 33)], ids=["one-key-block", "three-key-blocks"])
def test_log_sum_exp_output_and_its_gradient(device, s, d, ns):
    """The op's second output is logsumexp of the scaled support scores in base 2 (times log2 e),
    and gradients through it (which fold into delta) are right too, with delta taken from the
    tile (all keys in one block) and from O (several)."""
    from hr2g.kernels import sample_attention as kernel

    b, h = 2, 2
    assert kernel._blocks(s, ns, d, torch.float32, backward=True)["ONE_KV_BLOCK"] == (ns == 7)
    inputs = rand_qkv(b, h, s, d, device=device)
    g_out = torch.randn(b, h, s, d, device=device, dtype=torch.float64)
    g_lse = torch.randn(b, h, s, device=device, dtype=torch.float64)

    def lse_torch(q, k, v):
        scores = q @ k[..., :ns, :].transpose(-1, -2) / math.sqrt(d)  # [B, H, S, ns]
        return torch.logsumexp(scores, dim=-1) * LOG2E

    def run(fn, dtype):
        xs = [x.detach().to(dtype).requires_grad_() for x in inputs]
        out, lse = fn(*xs)[:2]
        ((out * g_out.to(dtype)).sum() + (lse * g_lse.to(lse.dtype)).sum()).backward()
        return [out.detach(), lse.detach()] + [x.grad for x in xs]

    got = run(lambda q, k, v: torch.ops.hr2g.sample_attention(q, k, v, ns), torch.float32)
    assert got[1].dtype == torch.float32 and got[1].shape == (b, h, s)
    lp = run(lambda q, k, v: (sample_attention_ref(q, k, v, ns), lse_torch(q, k, v)), torch.float32)
    hi = run(lambda q, k, v: (sdpa(q, k, v, ns), lse_torch(q, k, v)), torch.float64)
    for i, name in enumerate(("out", "lse", "dq", "dk", "dv")):
        assert_within_ref_error(name, got[i], [lp[i]], hi[i], ATOL[torch.float32])


@pytest.mark.parametrize("device", kernel_devices(), ids=str)
def test_gradient_through_log_sum_exp_alone(device):
    """Only lse in the loss: the output's gradient arrives as None and the kernel must not need it."""
    from hr2g.kernels import sample_attention as kernel  # noqa: F401  (registers the op)

    b, h, s, d, ns = 1, 2, 9, 16, 4
    inputs = rand_qkv(b, h, s, d, device=device)
    g = torch.randn(b, h, s, device=device, dtype=torch.float64)

    def run(fn, dtype):
        xs = [x.detach().to(dtype).requires_grad_() for x in inputs]
        (fn(*xs) * g.to(dtype)).sum().backward()
        return [x.grad for x in xs]

    got = run(lambda q, k, v: torch.ops.hr2g.sample_attention(q, k, v, ns)[1], torch.float32)
    lse = lambda q, k, v: torch.logsumexp(q @ k[..., :ns, :].transpose(-1, -2) / math.sqrt(d), dim=-1) * LOG2E  # noqa: E731
    lp, hi = run(lse, torch.float32), run(lambda q, k, v: lse(q, k, v) + 0 * v.sum(), torch.float64)
    for name, a, b_, c in zip(("dq", "dk"), got, lp, hi):
        assert_within_ref_error(name, a, [b_], c, ATOL[torch.float32])
    assert torch.count_nonzero(got[2]) == 0  # lse does not depend on v


# --------------------------------------------------------------------------- mask semantics
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_support_samples_act_only_through_their_own_rows(backend):
    """With n_support = ns, samples >= ns are never keys or values: changing their k, v changes
    nothing; changing their q changes only their own output rows; they get no dk, dv; and the
    support rows' outputs send no gradient to them."""
    device = kernel_devices()[0] if backend == "triton" else torch.device("cpu")
    b, h, s, d, ns = 2, 2, 21, 32, 5  # rows 5..20 span both halves of a 16-row query block
    q, k, v = rand_qkv(b, h, s, d, device=device)
    fn = lambda q_, k_, v_: ops.sample_attention(q_, k_, v_, ns, backend=backend)  # noqa: E731
    base = fn(q, k, v)

    def perturb(x):
        y = x.clone()
        y[:, :, ns:] = torch.randn_like(y[:, :, ns:]) * 3
        return y

    assert torch.equal(fn(q, perturb(k), perturb(v)), base)
    moved = fn(perturb(q), k, v)
    assert torch.equal(moved[:, :, :ns], base[:, :, :ns])
    assert (moved[:, :, ns:] != base[:, :, ns:]).any(dim=-1).all(), "every perturbed query row must change"

    xs = [x.detach().requires_grad_() for x in (q, k, v)]
    out = fn(*xs)
    grad = torch.randn_like(out)
    grad[:, :, ns:] = 0  # only the support rows' outputs feed the loss
    out.backward(grad)
    dq, dk, dv = (x.grad for x in xs)
    assert torch.count_nonzero(dq[:, :, ns:]) == 0
    assert torch.count_nonzero(dk[:, :, ns:]) == 0 and torch.count_nonzero(dv[:, :, ns:]) == 0
    assert torch.count_nonzero(dk[:, :, :ns]) > 0 and torch.count_nonzero(dv[:, :, :ns]) > 0

    xs = [x.detach().requires_grad_() for x in (q, k, v)]
    fn(*xs).backward(torch.randn_like(out))  # every row's output in the loss
    assert torch.count_nonzero(xs[1].grad[:, :, ns:]) == 0 and torch.count_nonzero(xs[2].grad[:, :, ns:]) == 0


# --------------------------------------------------------------------------- registration
@pytest.mark.parametrize("device", kernel_devices(), ids=str)
def test_eager_path_equals_the_custom_op(device):
    """Eager calls skip the custom op's dispatch (host time) but must launch exactly what it does:
    out, lse, stats and every gradient, through both differentiable outputs, bit for bit."""
    from hr2g.kernels import sample_attention as kernel

    inputs = rand_qkv(2, 2, 11, 24, device=device)
    g_out, g_lse = torch.randn(2, 2, 11, 24, device=device), torch.randn(2, 2, 11, device=device)

    def run(fn):
        xs = [x.detach().requires_grad_() for x in inputs]
        out, lse, stats = fn(*xs, 6)
        assert not stats.requires_grad  # the backward's copy of the lse, in two parts
        ((out * g_out).sum() + (lse * g_lse).sum()).backward()
        return [out.detach(), lse.detach(), stats] + [x.grad for x in xs]

    for a, b in zip(run(kernel._EagerAttention.apply), run(torch.ops.hr2g.sample_attention)):
        assert torch.equal(a, b)
    xs = [x.detach().requires_grad_() for x in inputs]
    kernel.sample_attention(*xs, 6).sum().backward()  # the public function takes the eager path here
    assert all(x.grad is not None for x in xs)


def test_opcheck():
    from hr2g.kernels import sample_attention as kernel  # noqa: F401  (registers the ops)

    device = kernel_devices()[0]
    q, k, v = (x.requires_grad_() for x in rand_qkv(1, 2, 9, 16, device=device))
    torch.library.opcheck(torch.ops.hr2g.sample_attention.default, (q, k, v, 4))
    out, lse, stats = torch.ops.hr2g.sample_attention(q.detach(), k.detach(), v.detach(), 4)
    g = torch.randn_like(out)
    bwd = torch.ops.hr2g.sample_attention_backward.default
    torch.library.opcheck(bwd, (g, None, q.detach(), k.detach(), v.detach(), out, stats, 4))
    torch.library.opcheck(bwd, (g, torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out, stats, 4))


def test_torch_compile_full_graph():
    """The custom op traces as one opaque node (fake impl + registered autograd): no graph break,
    and compiled forward/backward match eager."""
    from hr2g.kernels import sample_attention as kernel

    device = kernel_devices()[0]
    torch._dynamo.reset()
    step = lambda q, k, v: kernel.sample_attention(q * 2, k, v, 3).square().sum()  # noqa: E731
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    inputs = rand_qkv(1, 2, 7, 16, device=device)
    eager_x = [x.clone().requires_grad_() for x in inputs]
    comp_x = [x.clone().requires_grad_() for x in inputs]
    step(*eager_x).backward()
    compiled(*comp_x).backward()
    for a, b in zip(eager_x, comp_x):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)


_COMPILE_SCRIPT = textwrap.dedent("""
    import itertools
    import torch
    from hr2g.kernels import sample_attention as K
    from tests.sm90 import compile_sm90, in_shard

    assert not K._INTERPRET
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    # every distinct choice of the host's _blocks: S from 1 to 128 (5-way 1-shot is 10, 5-shot 30),
    # head dims 16 to 128 (d = 48, 96 round up to 64, 128), keys = all samples ("full") or the
    # support only (the default "adaptive" mask: 5 of 10 at 5-way 1-shot, a key block smaller
    # than the query block; backward without the lse gradient, as ISC calls it)
    # fp32 tiles in both precisions _dot_mode picks: IEEE, and TF32 (float32_matmul_precision
    # "high"/"medium": fewer registers per product, a different allocation)
    modes = [("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee"), ("fp16", "ieee")]
    chosen = {}
    for (dt, prec), d, s, backward in itertools.product(modes, (16, 32, 64, 128), (10, 30, 60, 128), (False, True)):
        for n_kv in sorted({s, s // 2 + 1, 5}):
            cfg = K._blocks(s, n_kv, d, dtypes[dt], backward, prec)
            glse = backward and n_kv == s  # all keys: with the lse gradient; support only: without, as ISC calls it
            chosen[(dt, prec, backward, glse, tuple(sorted(cfg.items())))] = (s, n_kv, d)
    print("configs", len(chosen), flush=True)
    for index, ((dt, prec, backward, glse, items), (s, n_kv, d)) in enumerate(chosen.items()):
        if not in_shard(index):
            continue
        kern = K._bwd_kernel if backward else K._fwd_kernel
        cfg = dict(items)
        warps = cfg.pop("num_warps")
        consts = dict(cfg, UPCAST=dt == "fp32", PRECISION=prec)
        if backward:
            consts["HAS_GLSE"] = glse
        sig = {}
        for name in kern.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = "*fp32" if name in ("lse_ptr", "stats_ptr", "glse_ptr") else "*" + dt
            else:
                sig[name] = "fp32" if name in ("qk_scale", "sm_scale") else "i32"
        what = f"{kern.fn.__name__} {dt}/{prec} S={s} keys={n_kv} d={d} {cfg} warps={warps}" + (" glse" if glse else "")
        out, usage = compile_sm90(kern, sig, consts, warps, what)
        assert out.metadata.shared <= 227 * 1024, (what, out.metadata.shared)
        print("compiled", what, usage, flush=True)
""")


def test_kernels_compile_for_h100():
    """Compile forward and backward to sm_90 cubin without a GPU, with the block sizes the host
    code picks: the interpreter does not enforce tl.dot's >= 16 dims, power-of-2 shapes or the
    227 KiB of shared memory per block; the compiler does.  Where triton ships cuobjdump, the
    chosen tiles must not spill registers either (run by CI with Triton 3.8; checked with 3.6, the
    GPU image's, too: its register allocation differs by up to 90 per thread)."""
    from tests.sm90 import ptxas_missing, run_sharded

    if (why := ptxas_missing()) is not None:
        pytest.skip(why)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stdout = run_sharded(_COMPILE_SCRIPT, root, timeout=400)
    counts = set(re.findall(r"configs (\d+)", stdout))  # every shard lists the same tiles
    assert len(counts) == 1, stdout
    n = int(counts.pop())
    assert n >= 150 and stdout.count("compiled") == n, stdout


# --------------------------------------------------------------------------- dispatcher
def test_unsupported_reason_names_the_limit():
    from hr2g.kernels import sample_attention as kernel

    q = torch.randn(1, 1, 4, 160)
    assert "head dim 160" in kernel.unsupported_reason("sample_attention", q, q, q, None)
    q0 = torch.randn(1, 1, 4, 0)
    assert "head dim 0" in kernel.unsupported_reason("sample_attention", q0, q0, q0, None)
    q64 = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    assert "float64" in kernel.unsupported_reason("sample_attention", q64, q64, q64, None)
    ok = torch.randn(2, 3, 5, 128)
    assert kernel.unsupported_reason("sample_attention", ok, ok, ok, 2) is None
    assert "otam_distance" in kernel.unsupported_reason("otam_distance", ok, ok, ok, None)


def test_dispatcher_refusals(monkeypatch):
    device = kernel_devices()[0]
    big = torch.randn(1, 1, 4, 256, device=device)
    why = _dispatch.refusal("sample_attention", "triton", (big, big, big, None))
    assert why is not None and "head dim 256" in why
    with pytest.raises(_dispatch.BackendUnavailable, match="head dim 256"):
        ops.sample_attention(big, big, big, backend="triton")
    # auto falls back to the reference with the same numbers
    torch.testing.assert_close(ops.sample_attention(big, big, big, 2), sample_attention_ref(big, big, big, 2))

    q = torch.randn(1, 2, 5, 16)  # CPU tensors
    verdicts = _dispatch.reasons("sample_attention", q, q, q, 2)
    assert verdicts["torch"] is None
    assert "interpreter" in verdicts["triton"] or "TRITON_INTERPRET" in verdicts["triton"]
    assert _dispatch.resolve("sample_attention", "auto", q, q, q, 2)[0] == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1 is not set" in _dispatch.refusal("sample_attention", "triton", (q, q, q, 2))


def test_ops_validates_n_support():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="n_support"):
        ops.sample_attention(q, q, q, 5)
    with pytest.raises(ValueError, match="n_support"):
        ops.sample_attention(q, q, q, 0)
    q0 = torch.randn(1, 1, 4, 0)  # was a bare ZeroDivisionError in the reference
    with pytest.raises(ValueError, match=r"head dim d must be >= 1; got q of shape \(1, 1, 4, 0\)"):
        ops.sample_attention(q0, q0, q0)


# --------------------------------------------------------------------------- GPU only
GPU_CASES = [
    (2, 3, 13, 32, 5),
    (1, 2, 33, 64, 20),
    (2, 2, 10, 64, 5),
    (1, 1, 128, 128, None),
    (1, 2, 130, 128, 97),
    (1, 2, 11, 8, 6),
]


GPU_LOW_PRECISION = [(dt, c) for dt in (torch.bfloat16, torch.float16) for c in GPU_CASES]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,case", GPU_LOW_PRECISION, ids=[case_id(dt, *c) for dt, c in GPU_LOW_PRECISION])
def test_kernel_low_precision_gpu(cuda_device, dtype, case):
    b, h, s, d, ns = case
    check_against_reference(*rand_qkv(b, h, s, d, dtype=dtype, device=cuda_device), ns)


@pytest.mark.gpu
@pytest.mark.parametrize("s,d,ns", [(128, 128, 64), (10, 64, 5), (30, 64, 25)], ids=["S128-d128-ns64", "5w1s", "5w5s"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_kernel_large_batch_gpu(cuda_device, s, d, ns, dtype):
    """B = T x episodes = 8 x 64, H = 8: 4096 heads in one launch; B*H*S*d > 2**26 elements."""
    check_against_reference(*rand_qkv(8 * 64, 8, s, d, dtype=dtype, device=cuda_device), ns)


@pytest.mark.gpu
def test_torch_compile_inductor_gpu(cuda_device):
    from hr2g.kernels import sample_attention as kernel

    torch._dynamo.reset()
    step = lambda q, k, v: kernel.sample_attention(q.sin(), k, v, 5).float().square().sum()  # noqa: E731
    compiled = torch.compile(step, fullgraph=True)
    inputs = rand_qkv(8, 8, 10, 64, dtype=torch.bfloat16, device=cuda_device)
    eager_x = [x.clone().requires_grad_() for x in inputs]
    comp_x = [x.clone().requires_grad_() for x in inputs]
    step(*eager_x).backward()
    compiled(*comp_x).backward()
    for a, b in zip(eager_x, comp_x):
        # inductor may fuse sin differently from eager: one bf16 rounding apart at most
        torch.testing.assert_close(b.grad, a.grad, rtol=2**-7, atol=2**-7)


def test_tf32_follows_torch_old_and_new_precision_apis():
    """The kernel used TF32 for fp32 where torch.get_float32_matmul_precision() allowed it, but that
    getter raises once a process has used torch's new API (torch.backends.fp32_precision, set by
    any library): every CUDA call of the op then failed.  Run in a child: the settings are global."""
    def child(settings: str) -> str:
        code = f"import torch; from kernels.sample_attention import _torch_matmul_uses_tf32 as f; r = [f()]; {settings}; print(r)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "TRITON_INTERPRET": "1"},
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    legacy = ("torch.set_float32_matmul_precision('high'); r.append(f()); "
              "torch.set_float32_matmul_precision('highest'); r.append(f())")
    assert child(legacy) == "[False, True, False]"
    new = ("torch.backends.fp32_precision = 'tf32'; r.append(f()); "
           "torch.backends.cuda.matmul.fp32_precision = 'ieee'; r.append(f())")
    assert child(new) == "[False, True, False]"
