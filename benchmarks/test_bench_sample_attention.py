"""ISC's sample-axis attention: the paper's Table 5 complexity comparison, and the fused Triton
kernel against PyTorch's attention.

(a) ``test_bench_isc_variants``: the whole ISC module (LayerNorm, q/k/v and output projections,
attention, residual) in its three Table-5 forms at the paper's 5-way 1-shot shape (S = 5 supports
+ 5 queries = 10 videos, T = 8 frames, C = 512, 8 heads, adaptive mask):

- ``isc``: attention along the sample axis at each of the T positions: T sequences of S tokens;
- ``dense``: one attention over all S*T frame tokens (support tokens as keys);
- ``global``: attention over the S mean-pooled video features, broadcast over T.

FLOPs are counted explicitly (2 per multiply-add of every matmul; softmax, LayerNorm and the
residual are O(S*T*C) elementwise work and left out, as ``FlopCounterMode`` leaves them out) and
must equal ``FlopCounterMode``'s count of the reference backend.  The paper reports ISC 58, dense
252, video-level 53 MFLOPs without saying what it counts; the counts here are in ``extra_info``
next to the paper's, with each variant's ratio to ISC.

(b) ``test_bench_sample_attention``: the attention op alone at episode shapes, forward and
forward + backward.  Providers: the fused kernel, SDPA with the support mask (additive, aligned,
built once: :func:`sdpa_support_mask`), SDPA on the sliced support keys (what a careful PyTorch user would write), and the reference.  Every
provider's output (and gradients) must agree with the reference before anything is timed.

Without CUDA (smoke mode) each provider runs once on a shrunken batch, Triton under the
interpreter; none of the timings mean anything there.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hr2g import ops
from hr2g.model.isc import ISC
from hr2g.reference import sample_attention_ref


# --------------------------------------------------------------------------- (a) Table 5
@dataclass(frozen=True)
class Episode:
    supports: int = 5  # N*K = 5-way 1-shot
    queries: int = 5  # one query per class
    frames: int = 8
    channels: int = 512  # CLIP ViT-B/16
    heads: int = 8


PAPER_MFLOPS = {"isc": 58, "dense": 252, "global": 53}  # Table 5, as published
ISC_MASK = {"isc": "adaptive", "dense": "dense", "global": "global"}


def isc_flops(variant: str, ep: Episode) -> dict:
    """Explicit matmul FLOPs of one ISC forward: projections on every token the variant attends
    with, and ``q k^T`` plus ``p v`` on (sequences x queries x support keys x C), summed over heads.
    """
    s, ns, t, c = ep.supports + ep.queries, ep.supports, ep.frames, ep.channels
    # (sequences, tokens per sequence, support keys per sequence)
    seqs, length, keys = {"isc": (t, s, ns), "dense": (1, s * t, ns * t), "global": (1, s, ns)}[variant]
    tokens = seqs * length
    proj = 2 * tokens * c * (3 * c) + 2 * tokens * c * c  # fused qkv Linear, output Linear
    attention = 2 * (2 * seqs * length * keys * c)  # q k^T and p v, all heads together (H * d = C)
    return dict(projection=proj, attention=attention, total=proj + attention)


@pytest.mark.parametrize("variant", list(PAPER_MFLOPS))
def test_bench_isc_variants(run_bench, device, variant):
    ep = Episode()
    torch.manual_seed(0)
    module = ISC(ep.channels, ep.heads, mask=ISC_MASK[variant], backend="torch").to(device)
    fs = torch.randn(1, ep.supports, ep.frames, ep.channels, device=device)  # [E, NS, T, C]
    fq = torch.randn(1, ep.queries, ep.frames, ep.channels, device=device)  # [E, L, T, C]

    counts = {v: isc_flops(v, ep) for v in PAPER_MFLOPS}
    mine = counts[variant]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        want = module(fs, fq)
    assert counter.get_total_flops() == mine["total"], (variant, counter.get_flop_counts(), mine)

    module.backend = "auto"  # the fused kernel on a GPU (the reference on CPU, where auto skips the interpreter)
    with torch.no_grad():
        got = module(fs, fq)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

        def forward():
            return module(fs, fq)

        out = run_bench(forward, flops=mine["total"], variant=variant, backend=ops.resolve("sample_attention", "auto", *_qkv_like(ep, device))[0],
                        supports=ep.supports, queries=ep.queries, frames=ep.frames, channels=ep.channels, heads=ep.heads,
                        mflops_explicit=mine["total"] / 1e6, mflops_flop_counter=counter.get_total_flops() / 1e6,
                        mflops_projection=mine["projection"] / 1e6, mflops_attention=mine["attention"] / 1e6,
                        ratio_to_isc=mine["total"] / counts["isc"]["total"],
                        attention_ratio_to_isc=mine["attention"] / counts["isc"]["attention"],
                        mflops_paper=PAPER_MFLOPS[variant], paper_ratio_to_isc=PAPER_MFLOPS[variant] / PAPER_MFLOPS["isc"])
    assert all(torch.isfinite(x).all() for x in out)


def _qkv_like(ep: Episode, device):
    # what ISC hands the op: [E*T, H, S, C/H] (only shape, dtype and device matter to the dispatcher)
    x = torch.empty(ep.frames, ep.heads, ep.supports + ep.queries, ep.channels // ep.heads, device=device)
    return x, x, x, ep.supports


# --------------------------------------------------------------------------- (b) the attention op
@dataclass(frozen=True)
class Workload:
    batch: int  # episodes x T frames
    samples: int  # S = supports + queries
    support: int  # n_support
    heads: int = 8
    head_dim: int = 64  # 512 / 8 (CLIP ViT-B/16 width, 8 ISC heads)

    def smoke(self) -> "Workload":
        # the interpreter runs one program at a time: 2 x 2 heads keep it under a second
        return Workload(2, self.samples, self.support, 2, self.head_dim)


WORKLOADS = {
    "train_5w1s": Workload(8, 10, 5),  # one episode: T = 8 positions, 5 supports + 5 queries
    "train_5w5s": Workload(8, 30, 25),  # 25 supports + 5 queries
    "eval_batch_512_episodes": Workload(8 * 512, 10, 5),  # evaluation, 512 episodes per batch
}
PROVIDERS = ("fused", "sdpa_mask", "sdpa_slice", "reference")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
# providers vs the reference (fp32 inside): fp32 agrees to rounding; bf16 rounds p (and ds) to 8
# bits.  SDPA's fp32 GPU kernels are allowed TF32-sized differences (10-bit mantissa products).
AGREE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
AGREE_SDPA_F32 = dict(rtol=5e-3, atol=5e-3)


def _work(w: Workload, backward: bool, elem_bytes: int) -> dict:
    """Model FLOPs: ``q k^T`` and ``p v`` forward (2 * B*H*S*ns*d each); the backward's dV, dP,
    dQ, dK are four more of the same size (recomputing the scores is not counted).  Bytes: the
    least traffic -- q, o and (support rows of) k, v once forward; q, k, v, o, dO read and dq,
    dk, dv written backward; the fp32 log-sum-exp."""
    bh, s, ns, d = w.batch * w.heads, w.samples, w.support, w.head_dim
    mm = 2 * bh * s * ns * d
    fwd_bytes = elem_bytes * bh * d * (2 * s + 2 * ns) + 4 * bh * s
    bwd_bytes = elem_bytes * bh * d * 8 * s + 4 * bh * s
    return dict(flops=mm * (6 if backward else 2), nbytes=fwd_bytes + (bwd_bytes if backward else 0))


def sdpa_support_mask(samples: int, support: int, dtype: torch.dtype, device) -> torch.Tensor:
    """SDPA's best form of the support mask, built once outside the timed call: additive (0 or
    -inf) in the inputs' dtype, so SDPA does not convert a boolean one per call, with rows padded
    to 16 elements so its memory-efficient kernel does not copy it to aligned storage per call."""
    buf = torch.zeros(samples, -(-samples // 16) * 16, dtype=dtype, device=device)
    buf[:, support:] = float("-inf")
    return buf[:, :samples]  # [S, S], row stride a multiple of 16


def _provider_fn(provider: str, mask: torch.Tensor):
    if provider == "fused":
        return lambda q, k, v, ns: ops.sample_attention(q, k, v, ns, backend="triton")
    if provider == "sdpa_mask":
        return lambda q, k, v, ns: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if provider == "sdpa_slice":
        return lambda q, k, v, ns: F.scaled_dot_product_attention(q, k[:, :, :ns], v[:, :, :ns])
    return sample_attention_ref


def _sdpa_backend(provider: str, q, k, v, mask, ns: int) -> str | None:
    """The kernel SDPA picks for these inputs (flash, efficient, cuDNN or the math fallback)."""
    if not provider.startswith("sdpa"):
        return None
    if provider == "sdpa_slice":
        k, v, mask = k[:, :, :ns], v[:, :, :ns], None
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, k, v, attn_mask=mask)).name
    except Exception as exc:  # a private helper: its absence must not cost the figure
        return f"unknown ({type(exc).__name__})"


def _step(fn, q, k, v, ns, grad, backward: bool):
    """One call: forward only, or forward + backward returning (out, dq, dk, dv)."""
    if not backward:
        with torch.no_grad():
            return (fn(q, k, v, ns),)
    q.grad = k.grad = v.grad = None
    out = fn(q, k, v, ns)
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_bench_sample_attention(run_bench, device, workload, mode, dtype, provider):
    if workload.startswith("eval") and mode == "fwd_bwd":
        pytest.skip("evaluation runs forward only: no backward workload to measure")
    smoke = device.type != "cuda"  # benchmarks/conftest.py's smoke mode
    w = WORKLOADS[workload].smoke() if smoke else WORKLOADS[workload]
    dt, backward = DTYPES[dtype], mode == "fwd_bwd"
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, grad = (torch.randn(w.batch, w.heads, w.samples, w.head_dim, generator=g).to(device, dt) for _ in range(4))
    q, k, v = (x.requires_grad_(backward) for x in (q, k, v))
    mask = sdpa_support_mask(w.samples, w.support, dt, device)
    fn = _provider_fn(provider, mask)

    # agree before timing
    got = [x.detach().clone() for x in _step(fn, q, k, v, w.support, grad, backward)]
    if provider != "reference":
        want = _step(sample_attention_ref, q, k, v, w.support, grad, backward)
        tol = AGREE_SDPA_F32 if (provider.startswith("sdpa") and dt == torch.float32) else AGREE[dt]
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{provider} {name}: {m}")

    work = _work(w, backward, q.element_size())
    out = run_bench(lambda: _step(fn, q, k, v, w.support, grad, backward), flops=work["flops"], nbytes=work["nbytes"],
                    workload=workload, mode=mode, dtype=dtype, provider=provider, batch=w.batch, heads=w.heads,
                    samples=w.samples, support=w.support, head_dim=w.head_dim,
                    work_flops=work["flops"], work_bytes=work["nbytes"],
                    sdpa_backend=_sdpa_backend(provider, q, k, v, mask, w.support))
    assert all(torch.isfinite(x).all() for x in out)
