"""OTAM: the reference against the spec (naive loops, hard-min brute force, overflow), then the
fused Triton kernel against the reference (forward and both gradients), its custom-op
registration, the dispatcher's refusals, and GPU-only dtypes and sizes.

On a machine without CUDA the kernel runs under ``TRITON_INTERPRET=1`` (tests/conftest.py), one
program at a time, so the CPU cases keep pair counts small.
"""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.helpers import assert_within_ref_error, nan_guarded

from hr2g import _dispatch, ops
from hr2g.reference import OTAM_COS_EPS, otam_cosine_distance, otam_cum_dist, otam_distance_ref


# --------------------------------------------------------------------------- helpers
def naive_otam(d: list[list[float]], lam: float) -> float:
    """The spec's recursion, one scalar at a time (plain floats, no torch)."""
    la, lb = len(d), len(d[0])
    dp = [[0.0] + row + [0.0] for row in d]  # pad one zero column each side

    def softmin(*xs):
        m = min(xs)
        return m - lam * math.log(sum(math.exp(-(x - m) / lam) for x in xs))

    r = [[0.0] * (lb + 2) for _ in range(la)]
    for m in range(lb + 2):
        r[0][m] = dp[0][m] + (r[0][m - 1] if m > 0 else 0.0)
    for l in range(1, la):
        for m in range(1, lb + 2):
            if m == 1 or m == lb + 1:
                r[l][m] = dp[l][m] + softmin(r[l - 1][m - 1], r[l - 1][m], r[l][m - 1])
            else:
                r[l][m] = dp[l][m] + softmin(r[l - 1][m - 1], r[l][m - 1])
    return r[la - 1][lb + 1]


def naive_cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + OTAM_COS_EPS)


def hard_min_paths(d: torch.Tensor) -> float:
    """Brute force over the spec's hard-min reading: every column j is matched to a row r_j,
    r_0 is free, r_{j+1} - r_j is 0 or 1, the path may end on any row."""
    la, lb = d.shape
    best = math.inf
    for r0 in range(la):
        for steps in itertools.product((0, 1), repeat=lb - 1):
            rows = [r0]
            for s in steps:
                rows.append(rows[-1] + s)
            if rows[-1] < la:
                best = min(best, sum(float(d[r, j]) for j, r in enumerate(rows)))
    return best


def frames(*shape: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Random frame features ``[..., C]`` whose cosines span most of [-1, 1].

    i.i.d. Gaussian features in C = 512 are nearly orthogonal (every D ~ 1 +- 0.05), which would
    leave every alignment path equally good; a rank-3 component plus noise makes the DP choose.
    """
    *lead, c = shape
    low = torch.randn(*lead, 3, device=device) @ torch.randn(3, c, device=device)
    return (low + 0.3 * torch.randn(*lead, c, device=device)).to(dtype)


def check_against_reference(query: torch.Tensor, support: torch.Tensor, lam: float, floor: float = 1e-6) -> None:
    """Forward and both gradients of ``backend='triton'`` vs the reference at the inputs' dtype
    and in fp64, with a random upstream gradient.

    Each output may be off by twice the same-precision reference's worst error plus ``floor``
    times its largest fp64 value (1e-6: 8 fp32 ulps there).  The floor scales with the output
    because the outputs' scales differ by 10^5: distances reach ~100 (T + T' cells of D <= 2),
    gradients at lam = 0.1 on anti-aligned inputs ~4e-4, where a fixed 1e-5 would pass a 3 % error.
    Half-precision gradients are rounded to bf16/fp16 like the reference's, and a value near a
    rounding midpoint may go either way: there the floor is one rounding step of that dtype.
    """
    from hr2g.kernels import otam as kernel

    q, s = query.detach().requires_grad_(), support.detach().requires_grad_()
    out = kernel.otam_distance(q, s, lam)
    grad = torch.randn(out.shape, device=out.device, dtype=torch.float64)
    out.backward(grad.to(out.dtype))

    results = {}
    for dt in (query.dtype, torch.float64):
        rq, rs = query.detach().to(dt).requires_grad_(), support.detach().to(dt).requires_grad_()
        ref = otam_distance_ref(rq, rs, lam)
        ref.backward(grad.to(dt))
        results[dt] = (ref.detach(), rq.grad, rs.grad)
    lp, hi = results[query.dtype], results[torch.float64]
    # distances come back in fp32 whatever the input dtype (bf16 would quantise them to 0.125)
    assert out.shape == hi[0].shape and out.dtype == lp[0].dtype == torch.float32
    grad_floor = max(floor, torch.finfo(query.dtype).eps if query.dtype in (torch.float16, torch.bfloat16) else 0.0)
    assert_within_ref_error("forward", out.detach(), lp[0], hi[0], floor * hi[0].abs().max().item())
    assert_within_ref_error("d query", q.grad, lp[1], hi[1], grad_floor * hi[1].abs().max().item())
    assert_within_ref_error("d support", s.grad, lp[2], hi[2], grad_floor * hi[2].abs().max().item())


@pytest.fixture
def device():
    """The GPU when there is one (the kernel for real), else the CPU (the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- reference vs spec
def _shape_ids(shapes):
    return [f"La{a}-Lb{b}" for a, b in shapes]


NAIVE_SHAPES = [(1, 1), (1, 4), (4, 1), (3, 3), (5, 2), (2, 6)]
HARD_MIN_SHAPES = [(3, 3), (4, 5), (5, 3), (1, 4), (5, 5)]


@pytest.mark.parametrize("la,lb", NAIVE_SHAPES, ids=_shape_ids(NAIVE_SHAPES))
@pytest.mark.parametrize("lam", [0.5, 0.1], ids=["lam0.5", "lam0.1"])
def test_cum_dist_matches_naive_loops(la, lb, lam):
    d = torch.rand(3, la, lb, dtype=torch.float64) * 2  # cosine distances live in [0, 2)
    got = otam_cum_dist(d, lam)
    want = torch.tensor([naive_otam(x.tolist(), lam) for x in d], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_distance_ref_matches_naive_loops():
    q, s = frames(2, 4, 6, dtype=torch.float64), frames(3, 5, 6, dtype=torch.float64)  # T=4, T'=5
    got = otam_distance_ref(q, s, 0.5)  # [2, 3]
    for i, j in itertools.product(range(2), range(3)):
        d = [[naive_cosine(a, b) for b in s[j].tolist()] for a in q[i].tolist()]
        dt = [list(col) for col in zip(*d)]
        want = naive_otam(d, 0.5) + naive_otam(dt, 0.5)
        assert abs(got[i, j].item() - want) < 1e-12, (i, j, got[i, j].item(), want)


@pytest.mark.parametrize("la,lb", HARD_MIN_SHAPES, ids=_shape_ids(HARD_MIN_SHAPES))
def test_small_lambda_approaches_hard_min(la, lb):
    lam = 1e-3
    # each soft-min undercuts the min by at most lam*log(3); a cell's error adds up along its
    # dependency chain, at most la + lb + 1 soft-mins long
    bound = (la + lb + 2) * lam * math.log(3)
    d = torch.rand(4, la, lb, dtype=torch.float64) * 2
    soft = otam_cum_dist(d, lam)
    for k in range(d.shape[0]):
        hard = hard_min_paths(d[k])
        assert hard - bound <= soft[k].item() <= hard + 1e-12, (k, soft[k].item(), hard, bound)
    # both directions through the public reference, on real cosine distances
    q, s = frames(1, la, 8, dtype=torch.float64), frames(1, lb, 8, dtype=torch.float64)
    dist = otam_cosine_distance(q, s)[0, 0]  # [la, lb]
    hard = hard_min_paths(dist) + hard_min_paths(dist.T)
    both_bound = 2 * bound
    assert hard - both_bound <= otam_distance_ref(q, s, lam).item() <= hard + 1e-12


def _anti_aligned(t: int, tp: int, c: int, dtype=torch.float32, device="cpu"):
    """Support frames pointing away from every query frame: D ~ 2 in every cell, the worst case
    for exp(-R/lam) (R ~ 2 (T + T') per direction)."""
    direction = torch.randn(c, dtype=torch.float64)
    q = direction * torch.rand(1, 1, t, 1, dtype=torch.float64).add(0.5)
    s = -direction * torch.rand(1, 1, tp, 1, dtype=torch.float64).add(0.5)
    return q.to(device=device, dtype=dtype), s.to(device=device, dtype=dtype)


def _naive_softmin_overflows(d: torch.Tensor, lam: float) -> bool:
    # -lam*log(sum(exp(-x/lam))) without the max shift, at the last cell of row 0's successor
    r = torch.cumsum(d[0], 0)[-1]
    return not torch.isfinite(-lam * torch.log(torch.exp(-r / lam) + torch.exp(-r / lam))).item()


@pytest.mark.parametrize("t,tp", [(32, 32), (8, 20)], ids=["T32", "T8x20"])
def test_no_overflow_at_small_lambda(t, tp):
    lam = 0.1
    q, s = _anti_aligned(t, tp, 16)
    d = otam_cosine_distance(q, s)[0, 0, 0]  # [t, tp]
    assert d.min() > 1.99
    assert _naive_softmin_overflows(d, lam), "the input must be one where the unshifted form fails"
    q, s = q.requires_grad_(), s.requires_grad_()
    out = otam_distance_ref(q, s, lam)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(s.grad).all()
    # every path of a direction crosses each of its columns once: the hard min lies between
    # (#columns) * min(D) and (#columns) * max(D); the soft min at most the chain bound below it
    lo, hi = (t + tp) * d.min().item(), (t + tp) * d.max().item()
    bound = 2 * (t + tp + 2) * lam * math.log(3)
    assert lo - bound <= out.item() <= hi + 1e-3


# --------------------------------------------------------------------------- kernel vs reference
# (leading dims, Q, P, T, T', C): Q or P = 1, primes, T = 1, T != T', block size 16 and 16 + 1,
# the 32-frame limit, C over one chunk, no leading dims at all.
KERNEL_CASES = {
    "f32-Q1-P1-T1-noE": ((), 1, 1, 1, 1, 8),
    "f32-E1-Q3-P5-T8": ((1,), 3, 5, 8, 8, 32),
    "f32-E1-Q1-P7-T5x3-C70": ((1,), 1, 7, 5, 3, 70),
    "f32-E2-Q2-P1-T1x4": ((2,), 2, 1, 1, 4, 16),
    "f32-E1-Q2-P3-T8x13-C130": ((1,), 2, 3, 8, 13, 130),
    "f32-E2x3-Q1-P2-T4": ((2, 3), 1, 2, 4, 4, 24),
    "f32-E1-Q3-P1-T16x1": ((1,), 3, 1, 16, 1, 20),
    "f32-E1-Q1-P2-T17x32": ((1,), 1, 2, 17, 32, 40),
    "f32-E1-Q1-P1-T32": ((1,), 1, 1, 32, 32, 48),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES), ids=list(KERNEL_CASES))
def test_kernel_matches_reference(case, device):
    lead, nq, np_, t, tp, c = KERNEL_CASES[case]
    query, support = frames(*lead, nq, t, c, device=device), frames(*lead, np_, tp, c, device=device)
    check_against_reference(query, support, lam=0.5)


def test_kernel_small_lambda_large_distances(device):
    # lam = 0.1 with D ~ 2 everywhere: exp(-R/lam) underflows without the max shift (see above)
    q, s = _anti_aligned(32, 24, 16, device=device)
    check_against_reference(q, s, lam=0.1)


@pytest.mark.parametrize("case", ["f32-E1-Q2-P3-T8x13-C130", "f32-E1-Q1-P2-T17x32"])
def test_kernel_small_lambda_random_inputs(case, device):
    # lam = 0.1 where distances vary (the anti-aligned case above has D ~ 2 everywhere, so its
    # soft-min weights are nearly uniform): sharp weights, gradients concentrated on few paths
    lead, nq, np_, t, tp, c = KERNEL_CASES[case]
    query, support = frames(*lead, nq, t, c, device=device), frames(*lead, np_, tp, c, device=device)
    check_against_reference(query, support, lam=0.1)


def test_kernel_empty_inputs(device):
    """Q, P or C = 0 (an empty query list, say): the shapes of the reference, zero gradients."""
    from hr2g.kernels import otam as kernel

    for (nq, np_, c) in ((0, 3, 16), (2, 0, 16), (2, 3, 0)):
        q = frames(2, nq, 4, max(c, 1), device=device)[..., :c].requires_grad_()
        s = frames(2, np_, 5, max(c, 1), device=device)[..., :c].requires_grad_()
        out = kernel.otam_distance(q, s, 0.5)
        ref = otam_distance_ref(q.detach(), s.detach(), 0.5)
        assert out.shape == ref.shape == (2, nq, np_)
        if c == 0:  # no channels: every cosine is 0, D = 1 everywhere
            torch.testing.assert_close(out, ref)
        out.sum().backward()
        assert q.grad.shape == q.shape and not q.grad.any() and s.grad.shape == s.shape and not s.grad.any()


def test_kernel_strided_inputs_and_zero_frame(device):
    # non-contiguous views (channel stride 2, frame-major layout) and an all-zero query frame
    # (|a| = 0: the norm's gradient is the zero subgradient, like torch's)
    base = frames(1, 6, 2, 2 * 20, device=device)  # [E, T, Q, 2C]
    query = base[..., ::2].transpose(1, 2)  # [E, Q, T, C], strides (480, 40, 80, 2)
    query[0, 1, 3] = 0.0
    support = frames(1, 5, 2, 20, device=device).transpose(1, 2)  # [E, P=2, T'=5, C]
    assert not query.is_contiguous() and not support.is_contiguous()
    check_against_reference(query, support, lam=0.5)


@pytest.mark.parametrize("t,tp,c", [(5, 3, 70), (17, 32, 40), (1, 1, 8)], ids=["T5x3-C70", "T17x32-C40", "T1-C8"])
def test_kernel_reads_nothing_outside_its_inputs(device, t, tp, c):
    """Inputs inside NaN guard zones, at sizes that pad both the frame tile (BT = 16 / 32) and the
    last channel block: any unmasked padded load reaches the guard and poisons the result."""
    query, support = nan_guarded(frames(1, 2, t, c, device=device)), nan_guarded(frames(1, 3, tp, c, device=device))
    check_against_reference(query, support, lam=0.5)


@pytest.mark.parametrize("scale", [1e-6, 1e10, 1e15])
def test_gradients_hold_at_extreme_feature_norms(device, scale):
    """D depends on the features' directions only, so the gradients scale as 1/scale; the kernel's
    norm term once divided by den^2, which overflows fp32 from norms of ~4e9 on (the term became
    0: a relative error of 0.5 at 1e10 and above, the forward still right)."""
    check_against_reference(frames(1, 2, 4, 16, device=device) * scale, frames(1, 3, 5, 16, device=device) * scale,
                            lam=0.5)


def test_public_op_routes_to_kernel(device):
    query, support = frames(2, 3, 4, 16, device=device), frames(2, 2, 5, 16, device=device)
    from hr2g.kernels import otam as kernel

    got = ops.otam_distance(query, support, 0.5, backend="triton")
    torch.testing.assert_close(got, kernel.otam_distance(query, support, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(got, otam_distance_ref(query, support, 0.5), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- custom op
def test_eager_path_equals_the_custom_op(device):
    """Eager calls skip the custom op's dispatch (host time) but must launch exactly what it does."""
    from hr2g.kernels import otam as kernel

    query, support = frames(2, 2, 5, 24, device=device), frames(2, 3, 4, 24, device=device)
    grad = torch.randn(2, 2, 3, device=device)

    def run(fn):
        q, s = query.clone().requires_grad_(), support.clone().requires_grad_()
        out = fn(q, s, 0.5)
        out.backward(grad)
        return out.detach(), q.grad, s.grad

    for a, b in zip(run(kernel._EagerOtam.apply), run(torch.ops.hr2g.otam_distance)):
        assert torch.equal(a, b)


def test_opcheck_forward(device):
    from hr2g.kernels import otam as kernel  # noqa: F401  (registers hr2g::otam_distance)

    q = frames(2, 2, 3, 16, device=device).requires_grad_()
    s = frames(2, 3, 4, 16, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.hr2g.otam_distance.default, (q, s, 0.5))


def test_opcheck_backward(device):
    from hr2g.kernels import otam as kernel  # noqa: F401

    q, s = frames(1, 2, 3, 16, device=device), frames(1, 2, 4, 16, device=device)
    grad = torch.randn(1, 2, 2, device=device)
    torch.library.opcheck(torch.ops.hr2g.otam_distance_backward.default, (grad, q, s, 0.5))


def test_opcheck_non_contiguous_inputs(device):
    # [E, Q, T, C] views of [E, T, Q, C] tensors: the fake kernels must report the real outputs'
    # strides (contiguous gradients), or torch.compile's generated code asserts on them
    from hr2g.kernels import otam as kernel  # noqa: F401

    q = frames(1, 3, 2, 16, device=device).transpose(1, 2)
    s = frames(1, 4, 3, 16, device=device).transpose(1, 2)
    assert not q.is_contiguous() and not s.is_contiguous()
    torch.library.opcheck(torch.ops.hr2g.otam_distance.default, (q.requires_grad_(), s.requires_grad_(), 0.5))
    grad = torch.randn(1, 2, 3, device=device)
    torch.library.opcheck(torch.ops.hr2g.otam_distance_backward.default, (grad, q.detach(), s.detach(), 0.5))


def test_torch_compile_fullgraph(device):
    # the op is a leaf of the traced graph, forward and backward (no graph break)
    from hr2g.kernels import otam as kernel

    def loss(q, s):
        return (kernel.otam_distance(q * 2.0, s, 0.5) ** 2).sum()

    backend = "inductor" if device.type == "cuda" else "aot_eager"  # no C++ compiler needed on CPU
    compiled = torch.compile(loss, backend=backend, fullgraph=True)
    q, s = frames(1, 2, 4, 16, device=device), frames(1, 2, 4, 16, device=device)
    q1, s1 = q.clone().requires_grad_(), s.clone().requires_grad_()
    q2, s2 = q.clone().requires_grad_(), s.clone().requires_grad_()
    compiled(q1, s1).backward()
    loss(q2, s2).backward()
    torch.testing.assert_close(q1.grad, q2.grad)
    torch.testing.assert_close(s1.grad, s2.grad)


_COMPILE_SCRIPT = textwrap.dedent("""
    from hr2g.kernels import otam as K
    from tests.sm90 import compile_sm90, in_shard

    assert not K._INTERPRET
    index = -1
    ptrs = {"out_ptr": "DT", "g_ptr": "DT", "q_ptr": "DT", "s_ptr": "DT", "w_ptr": "fp32", "rq_ptr": "fp32", "rs_ptr": "fp32"}
    # every config the autotuner may time, per (dtype, BT): fp32's IEEE dot and a tensor-core dtype
    for dt, dot_fp32 in (("fp32", True), ("bf16", False)):
        for bt in (16, 32):
            for cfg in K._prune_configs(K._configs(), {}, BT=bt, DOT_FP32=dot_fp32):
                for kern in (K._otam_fwd_kernel.fn, K._otam_bwd_kernel.fn):
                    index += 1
                    if not in_shard(index):
                        continue
                    consts = dict(BT=bt, DOT_FP32=dot_fp32, **cfg.kwargs)
                    sig = {}
                    for name in kern.arg_names:
                        if name in consts:
                            sig[name] = "constexpr"
                        elif name in ptrs:
                            sig[name] = "*" + ptrs[name].replace("DT", dt)
                        else:
                            sig[name] = "fp32" if name in ("lam", "il2", "eps") else "i32"  # as launched: Python floats
                    what = f"{kern.__name__} {dt} BT={bt} {cfg}"
                    _, usage = compile_sm90(kern, sig, consts, cfg.num_warps, what)
                    print("compiled", what, usage, flush=True)
""")


def test_kernels_compile_for_h100():
    """Compile both kernels at every config the autotuner may time to sm_90 cubin without a GPU
    (about 60 s on 2 cores, one process per core): the interpreter does not enforce tl.dot's >= 16 dims, power-of-2
    shapes or loop-carried type stability; the compiler does.  Where triton ships cuobjdump, no
    config may spill registers either (checked with Triton 3.8, CI's, and 3.6, the GPU image's)."""
    from tests.sm90 import ptxas_missing, run_sharded

    if (why := ptxas_missing()) is not None:
        pytest.skip(why)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stdout = run_sharded(_COMPILE_SCRIPT, root, timeout=600)
    # (fwd, bwd) x the kept configs of test_autotune_configs_and_pruning: 6 + 4 (fp32), 8 + 6 (bf16)
    assert stdout.count("compiled") == 2 * (6 + 4 + 8 + 6), stdout


def test_autotune_configs_and_pruning():
    """The GPU config list (built without the interpreter) and what the pruning keeps."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = textwrap.dedent("""
        from hr2g.kernels import otam as K
        for bt, fp32 in ((16, True), (32, True), (16, False), (32, False)):
            kept = K._prune_configs(K._configs(), {}, BT=bt, DOT_FP32=fp32)
            print(bt, fp32, sorted((c.kwargs["BLOCK_C"], c.num_warps) for c in kept))
        print("classes", [K._pairs_class(n) for n in (1, 25, 1024, 1025, 32768, 32769, 250000)])
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "16 True [(16, 1), (16, 4), (32, 1), (32, 2), (32, 4), (32, 8)]"
    assert lines[1] == "32 True [(16, 4), (32, 2), (32, 4), (32, 8)]"
    assert lines[2] == "16 False [(16, 1), (16, 4), (32, 1), (32, 2), (32, 4), (32, 8), (64, 4), (64, 8)]"
    assert lines[3] == "32 False [(16, 4), (32, 2), (32, 4), (32, 8), (64, 4), (64, 8)]"
    assert lines[4] == "classes [0, 0, 0, 1, 1, 2, 2]"


# --------------------------------------------------------------------------- dispatcher
def _triton_takes_yes() -> bool:
    """Whether this Triton interprets for TRITON_INTERPRET=yes (3.8 does; older ones do not)."""
    out = subprocess.run([sys.executable, "-c", "from triton import knobs; print(knobs.runtime.interpret)"],
                         env={**os.environ, "TRITON_INTERPRET": "yes"}, capture_output=True, text=True, timeout=120)
    return out.stdout.strip() == "True"


@pytest.mark.parametrize("value,interprets", [("true", True), ("On", True), ("0", False), ("off", False),
                                             ("yes", None)])
def test_every_spelling_triton_takes_for_interpret_is_taken_by_the_kernels(value, interprets):
    """Triton interprets for TRITON_INTERPRET=true as for =1; the kernels and the dispatcher read
    only "1", so with =true bf16 attention ran the interpreter's wrong bf16 dot (errors of 8e8)
    and OTAM timed 8 autotune configs on no GPU ("0 active drivers")."""
    if interprets is None:  # as this Triton reads it
        interprets = _triton_takes_yes()
    env = {**os.environ, "TRITON_INTERPRET": value, "CUDA_VISIBLE_DEVICES": ""}
    script = textwrap.dedent("""
        import torch
        from hr2g import _dispatch, ops
        from hr2g.kernels import otam, sample_attention
        jit = type(otam._otam_fwd_kernel.fn).__name__  # Autotuner(JITFunction | InterpretedFunction)
        print(_dispatch.interpret_requested(), otam._INTERPRET, sample_attention._INTERPRET, jit,
              len(otam._configs()), _dispatch.triton_interpreting("sample_attention"))
        if otam._INTERPRET:
            q, k, v = (torch.randn(1, 2, 10, 64).bfloat16() for _ in range(3))
            out = ops.sample_attention(q, k, v, 5, backend="triton").float()
            ref = ops.sample_attention(q, k, v, 5, backend="torch").float()
            print("err", float((out - ref).abs().max()))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    flags = lines[0].split()
    assert flags[:3] == [str(interprets)] * 3 and flags[5] == str(interprets), lines
    assert flags[3] == ("InterpretedFunction" if interprets else "JITFunction") and flags[4] == ("1" if interprets else "8")
    if interprets:  # bf16 rounding of the output: ~1e-2 at these magnitudes, not 8e8
        assert float(lines[1].split()[1]) < 0.05, lines


def test_triton_on_cpu_without_interpreter_refuses(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, s = torch.randn(1, 2, 4, 8), torch.randn(1, 3, 4, 8)
    why = _dispatch.refusal("otam_distance", "triton", (q, s, 0.5))
    assert why is not None and "TRITON_INTERPRET" in why
    with pytest.raises(_dispatch.BackendUnavailable, match="TRITON_INTERPRET"):
        ops.otam_distance(q, s, 0.5, backend="triton")
    # auto falls back to the reference, with the reason on record
    assert _dispatch.resolve("otam_distance", "auto", q, s, 0.5)[0] == "torch"


def test_old_interpreter_with_new_numpy_refuses(monkeypatch):
    """Triton 3.6's interpreter fails every kernel with a runtime loop bound under numpy >= 2.4."""
    for tv, nv in (("3.6.0", "2.4.6"), ("3.5.1", "2.5.2"), ("3.6.0+git1234", "2.4.0rc1")):
        why = _dispatch.interpreter_reason(tv, nv)
        assert why is not None and tv in why and nv in why and "triton >= 3.7 or numpy < 2.4" in why
    for tv, nv in (("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"), ("3.8.0", "2.5.2"), ("4.0", "3.0")):
        assert _dispatch.interpreter_reason(tv, nv) is None, (tv, nv)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "interpreter_reason", lambda: "old interpreter")
    q, s = torch.randn(1, 2, 4, 8), torch.randn(1, 3, 4, 8)
    assert _dispatch.refusal("otam_distance", "triton", (q, s, 0.5)) == "old interpreter"


def test_unsupported_reasons():
    from hr2g.kernels import otam as kernel

    q8, s33 = torch.randn(2, 8, 16), torch.randn(3, 33, 16)
    why = kernel.unsupported_reason("otam_distance", q8, s33, 0.5)
    assert why is not None and "32" in why and "T'=33" in why
    why = kernel.unsupported_reason("otam_distance", q8.double(), s33[:, :8].double(), 0.5)
    assert why is not None and "float64" in why
    assert kernel.unsupported_reason("otam_distance", q8, s33[:, :32], 0.5) is None
    assert kernel.unsupported_reason("otam_distance", q8.bfloat16(), s33[:, :8].bfloat16(), 0.5) is None


def test_explicit_triton_request_explains_refusal():
    if not (torch.cuda.is_available() or _dispatch.triton_interpreting()):
        pytest.skip("neither CUDA nor TRITON_INTERPRET=1: the device check refuses first")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, s = torch.randn(2, 40, 16, device=dev), torch.randn(3, 8, 16, device=dev)
    with pytest.raises(_dispatch.BackendUnavailable, match="T=40"):
        ops.otam_distance(q, s, 0.5, backend="triton")
    # auto quietly takes the reference for the same input
    torch.testing.assert_close(ops.otam_distance(q, s, 0.5), otam_distance_ref(q, s, 0.5))


# --------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("t,tp", [(8, 8), (5, 32)], ids=["T8", "T5x32"])
def test_kernel_half_precision(cuda_device, dtype, t, tp):
    query, support = frames(4, 5, t, 512, dtype=dtype, device=cuda_device), frames(4, 5, tp, 512, dtype=dtype, device=cuda_device)
    check_against_reference(query, support, lam=0.5)


@pytest.mark.gpu
def test_kernel_eval_10k_episodes(cuda_device):
    # the evaluation workload: 10,000 episodes x 5 queries x 5 supports, T = 8, C = 512
    query, support = frames(10_000, 5, 8, 512, device=cuda_device), frames(10_000, 5, 8, 512, device=cuda_device)
    from hr2g.kernels import otam as kernel

    got = kernel.otam_distance(query, support, 0.5)
    ref32 = otam_distance_ref(query, support, 0.5)
    ref64 = otam_distance_ref(query.double(), support.double(), 0.5)
    assert_within_ref_error("forward", got, ref32, ref64, 1e-5)


@pytest.mark.gpu
def test_kernel_fp32_long_sequences_many_pairs(cuda_device):
    # fp32 with T, T' > 16 (the BT = 32 configs) over 50,000 pairs: the largest autotune
    # grid-size class, forward and backward
    query, support = frames(2000, 5, 32, 512, device=cuda_device), frames(2000, 5, 24, 512, device=cuda_device)
    check_against_reference(query, support, lam=0.5)


@pytest.mark.gpu
def test_kernel_training_batch_gradients(cuda_device):
    # many episodes at once, lam = 0.1, fwd + bwd: 64 episodes x 5 x 25 pairs (5-way 5-shot)
    query, support = frames(64, 5, 8, 512, device=cuda_device), frames(64, 25, 8, 512, device=cuda_device)
    check_against_reference(query, support, lam=0.1)
