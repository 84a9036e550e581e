"""Fused OTAM (Triton) vs the PyTorch reference, the reference under ``torch.compile``, and a
public soft-DTW CUDA implementation (``pysdtw``) when it is importable.

Workloads (T = 8 frames, C = 512 channels, CLIP ViT-B/16 features):
- ``train_5w1s``: one 5-way 1-shot training episode, 5 queries x 5 supports, forward + backward;
- ``test_5w5s``: one 5-way 5-shot test episode, 5 queries x 25 supports, forward;
- ``eval_10k_episodes``: the evaluation protocol batched, 10,000 episodes x 5 x 5, forward.

Every OTAM provider's result (and gradients, for fwd+bwd) is checked against the reference
before anything is timed; pysdtw solves standard soft-DTW, so only its shape and finiteness are.
In smoke mode (no CUDA) each runs once on a small shape, Triton under the interpreter.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest
import torch

from hr2g import ops
from hr2g.reference import otam_cosine_distance, otam_distance_ref

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


def _work(w: Workload, elem_bytes: int) -> dict:
    """Explicit counts: dot-product FLOPs of the cosine distances (the backward recomputes them
    and contracts twice more), DP cells over both directions, and input bytes read once."""
    t, c = w.frames, w.channels
    dot_flops = w.pairs * 2 * t * t * c
    return dict(pairs=w.pairs, dp_cells=w.pairs * 2 * t * (t + 2),
                flops=dot_flops * (4 if w.backward else 1),
                nbytes=w.episodes * (w.queries + w.supports) * t * c * elem_bytes + w.pairs * 4)


def _inputs(w: Workload, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    # rank-3 structure plus noise, so cosines spread over [-1, 1] and alignments differ
    def frames(n):
        low = torch.randn(w.episodes, n, w.frames, 3, generator=g) @ torch.randn(3, w.channels, generator=g)
        return (low + 0.3 * torch.randn(w.episodes, n, w.frames, w.channels, generator=g)).to(device)

    return frames(w.queries), frames(w.supports)


def _pysdtw_fn(device):
    """Two soft-DTW directions per pair with pysdtw on the same cosine distance: the same DP
    size and distance work as OTAM, but standard soft-DTW (start and end fixed), so its values
    are not OTAM's."""
    if importlib.util.find_spec("pysdtw") is None:
        pytest.skip("pysdtw is not installed (pip install pysdtw: a public soft-DTW with a numba CUDA kernel)")
    import pysdtw

    def cos(x, y):  # [B, T, C], [B, T', C] -> [B, T, T']
        return otam_cosine_distance(x[:, None], y[:, None])[:, 0, 0]

    sdtw = pysdtw.SoftDTW(gamma=LAM, dist_func=cos, use_cuda=device.type == "cuda")

    def run(q, s):
        e, nq, t, c = q.shape
        np_ = s.shape[1]
        x = q[:, :, None].expand(e, nq, np_, t, c).reshape(-1, t, c)  # [E*Q*P, T, C]
        y = s[:, None].expand(e, nq, np_, s.shape[2], c).reshape(-1, s.shape[2], c)  # [E*Q*P, T', C]
        return (sdtw(x, y) + sdtw(y, x)).view(e, nq, np_)

    return run


def _provider_fn(provider: str, device, smoke: bool):
    if provider == "triton":
        return lambda q, s: ops.otam_distance(q, s, LAM, backend="triton")
    if provider == "torch":
        return lambda q, s: otam_distance_ref(q, s, LAM)
    if provider == "torch_compile":
        if smoke:
            pytest.skip("smoke mode: Inductor's C++ build of the reference's unrolled DP takes ~11 s per shape on CPU, and nothing is timed")
        compiled = torch.compile(otam_distance_ref)
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

    # agree before timing: every OTAM provider against the reference (pysdtw solves a different
    # recursion, so only its shape and finiteness are checked)
    got = [x.detach().clone() for x in _step(fn, q, s, grad, w.backward)]
    if provider == "pysdtw":
        assert got[0].shape == (w.episodes, w.queries, w.supports) and torch.isfinite(got[0]).all()
    elif provider != "torch":
        want = _step(lambda a, b: otam_distance_ref(a, b, LAM), q, s, grad, w.backward)
        for name, a, b in zip(("distance", "d query", "d support"), got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{provider} {name}: {m}")

    work = _work(w, q.element_size())
    out = run_bench(lambda: _step(fn, q, s, grad, w.backward), flops=work["flops"], nbytes=work["nbytes"],
                    workload=workload, provider=provider, lam=LAM, episodes=w.episodes, queries=w.queries,
                    supports=w.supports, frames=w.frames, channels=w.channels, backward=w.backward,
                    pairs=work["pairs"], dp_cells=work["dp_cells"], work_flops=work["flops"], work_bytes=work["nbytes"])
    assert torch.isfinite(out[0]).all()
