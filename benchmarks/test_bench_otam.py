"""Fused OTAM (Triton) vs the PyTorch reference, the reference under ``torch.compile``, and the
public soft-DTW CUDA kernels of ``pysdtw`` when it is importable (launched directly on the
precomputed cosine distance: ``benchmarks/pysdtw_kernels.py`` says why not through its wrapper).

Workloads (T = 8 frames, C = 512 channels, CLIP ViT-B/16 features):
- ``train_5w1s``: one 5-way 1-shot training episode, 5 queries x 5 supports, forward + backward;
- ``test_5w5s``: one 5-way 5-shot test episode, 5 queries x 25 supports, forward;
- ``eval_10k_episodes``: the evaluation protocol batched, 10,000 episodes x 5 x 5, forward.

Every OTAM provider's result (and gradients, for fwd+bwd) is checked against the reference
before anything is timed; pysdtw solves standard soft-DTW, so it is checked against a soft-DTW
loop (``pysdtw_kernels.soft_dtw_ref``) on the same distances instead.
In smoke mode (no CUDA) each runs once on a small shape, Triton under the interpreter.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hr2g import ops
from hr2g.reference import otam_cosine_distance, otam_distance_ref

import pysdtw_kernels  # benchmarks/ (pytest puts a test file's folder on sys.path)

LAM = 0.5


@dataclass(frozen=True)
class Workload:
    episodes: int
    queries: int
    supports: int
    frames: int = 8
    channels: int = 512
    backward: bool = False

    def smoke(self) -> "Workload":
        # the interpreter runs one program at a time (~0.07 s fwd / 0.2 s bwd per pair at T = 8)
        return Workload(min(self.episodes, 2), 2, 3, 4, 32, self.backward)

    @property
    def pairs(self) -> int:
        return self.episodes * self.queries * self.supports


WORKLOADS = {
    "train_5w1s": Workload(1, 5, 5, backward=True),
    "test_5w5s": Workload(1, 5, 25),
    "eval_10k_episodes": Workload(10_000, 5, 5),
}
PROVIDERS = ("triton", "torch", "torch_compile", "pysdtw")


def _work(w: Workload, elem_bytes: int, provider: str) -> dict:
    """Explicit counts: model FLOPs of the cosine distances' dot products (the backward's two
    contractions, for d query and d support, are twice the forward's; the Triton kernel's
    recompute of the forward is not counted, as in the attention benchmark), DP cells over both
    directions (OTAM's T x (T + 2) with its padding columns; pysdtw's soft-DTW T x T), and input
    bytes read once."""
    t, c = w.frames, w.channels
    dot_flops = w.pairs * 2 * t * t * c
    return dict(pairs=w.pairs, dp_cells=w.pairs * 2 * t * (t if provider == "pysdtw" else t + 2),
                flops=dot_flops * (3 if w.backward else 1),
                nbytes=w.episodes * (w.queries + w.supports) * t * c * elem_bytes + w.pairs * 4)


def _inputs(w: Workload, device):
    # drawn on the device: on the CPU, eval_10k_episodes' 2 x 205M values took ~14 s per provider
    # on 2 cores, time out of the device call's benchmark budget
    g = torch.Generator(device=device).manual_seed(0)

    # rank-3 structure plus noise, so cosines spread over [-1, 1] and alignments differ
    def frames(n):
        low = torch.randn(w.episodes, n, w.frames, 3, generator=g, device=device) \
            @ torch.randn(3, w.channels, generator=g, device=device)
        return low + 0.3 * torch.randn(w.episodes, n, w.frames, w.channels, generator=g, device=device)

    return frames(w.queries), frames(w.supports)


def _pysdtw_fn(device):
    """pysdtw's soft-DTW kernels on the same cosine distance, both directions: the same DP size
    and distance work as OTAM, but standard soft-DTW (start and end fixed), so not OTAM's values."""
    why = pysdtw_kernels.unavailable_reason(device)
    if why:
        pytest.skip(why)
    return lambda q, s: pysdtw_kernels.soft_dtw_both_directions(otam_cosine_distance(q, s), LAM)


def _pysdtw_ref(q, s):
    return pysdtw_kernels.soft_dtw_both_directions_ref(otam_cosine_distance(q, s), LAM)


def _provider_fn(provider: str, device, smoke: bool):
    if provider == "triton":
        return lambda q, s: ops.otam_distance(q, s, LAM, backend="triton")
    if provider == "torch":
        return lambda q, s: otam_distance_ref(q, s, LAM)
    if provider == "torch_compile":
        if smoke:
            pytest.skip("smoke mode: Inductor's C++ build of the reference's unrolled DP takes ~11 s per shape on CPU, and nothing is timed")
        # a static graph per workload: Dynamo's cache is process-wide, so without the reset the
        # 2nd and 3rd workloads would recompile as dynamic-shape graphs (TORCH_LOGS=recompiles)
        torch._dynamo.reset()
        compiled = torch.compile(otam_distance_ref, dynamic=False)
        return lambda q, s: compiled(q, s, LAM)
    return _pysdtw_fn(device)


def _step(fn, q, s, grad, backward: bool):
    """One call: forward only, or forward + backward returning (value, dq, ds)."""
    if not backward:
        with torch.no_grad():
            return (fn(q, s),)
    q.grad = s.grad = None
    out = fn(q, s)
    out.backward(grad)
    return out.detach(), q.grad, s.grad


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_bench_otam(run_bench, device, workload, provider):
    smoke = device.type != "cuda"  # benchmarks/conftest.py's smoke mode
    w = WORKLOADS[workload].smoke() if smoke else WORKLOADS[workload]
    fn = _provider_fn(provider, device, smoke)
    q, s = _inputs(w, device)
    q, s = q.requires_grad_(w.backward), s.requires_grad_(w.backward)
    grad = torch.randn(w.episodes, w.queries, w.supports, device=device)

    # agree before timing: every OTAM provider against the reference (pysdtw, which solves
    # standard soft-DTW, against a soft-DTW loop on the same distances)
    got = [x.detach().clone() for x in _step(fn, q, s, grad, w.backward)]
    if provider != "torch":
        ref = _pysdtw_ref if provider == "pysdtw" else (lambda a, b: otam_distance_ref(a, b, LAM))
        want = _step(ref, q, s, grad, w.backward)
        for name, a, b in zip(("distance", "d query", "d support"), got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{provider} {name}: {m}")

    work = _work(w, q.element_size(), provider)
    out = run_bench(lambda: _step(fn, q, s, grad, w.backward), flops=work["flops"], nbytes=work["nbytes"],
                    workload=workload, provider=provider, lam=LAM, episodes=w.episodes, queries=w.queries,
                    supports=w.supports, frames=w.frames, channels=w.channels, backward=w.backward,
                    pairs=work["pairs"], dp_cells=work["dp_cells"], work_flops=work["flops"], work_bytes=work["nbytes"])
    assert torch.isfinite(out[0]).all()
