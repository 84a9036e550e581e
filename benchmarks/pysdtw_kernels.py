"""The public soft-DTW CUDA kernels of ``pysdtw`` (numba), launched directly: the baseline the
fused OTAM kernel is held against ("faster than the public soft-DTW CUDA kernel at the same shapes").

``pysdtw.SoftDTW`` itself is not what is timed, because its Python wrapper, not its kernels, would
decide the comparison:
- its forward ends with ``R[:, Ms, Ns].diag()``, which builds a B x B tensor first: 250 GB in fp32
  at the 10,000-episode shape (B = 250,000 pairs), so it cannot run there at all;
- every call turns gamma into a CUDA tensor and reads it back (``.item()``: two host syncs);
- its backward sets up each pair's boundary in a Python loop over the batch (B small launches).
Here the distance is computed once for both directions (D and its transpose stacked: one forward
and one backward launch for all pairs), the boundary set-up is vectorised (every pair has the
same lengths), and the two kernels run as pysdtw launches them (one block per pair, one thread
per anti-diagonal cell).  What remains is their work: the soft-DTW recursion, forward and
backward, on the same DP size as OTAM's (T x T per direction; OTAM pads two zero columns).
:func:`soft_dtw_ref` is the loop they are checked against before anything is timed.
"""
from __future__ import annotations

import importlib.util
import math

import torch


def unavailable_reason(device: torch.device) -> str | None:
    if importlib.util.find_spec("pysdtw") is None:
        return "pysdtw is not installed (pip install pysdtw: a public soft-DTW with numba CUDA kernels)"
    if device.type != "cuda":
        return "pysdtw's kernels are numba CUDA kernels: they need a CUDA device"
    try:  # numba-cuda must load and see the GPU (a numba built for another numpy or CUDA fails here)
        from numba import cuda
        import pysdtw.sdtw_cuda  # noqa: F401  (its kernels are compiled on first launch)

        if not cuda.is_available():
            return "pysdtw: numba.cuda.is_available() is False (numba-cuda finds no usable driver / GPU)"
    except Exception as exc:
        return f"pysdtw: numba's CUDA support does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    return None


def _as_array(t: torch.Tensor):
    from numba import cuda

    return cuda.as_cuda_array(t)


def _launch_shape(m: int, n: int) -> tuple[int, int]:
    from pysdtw.sdtw_cuda import MAX_THREADS_PER_BLOCK

    return min(max(m, n), MAX_THREADS_PER_BLOCK), max(m, n) // MAX_THREADS_PER_BLOCK + 1  # threads, passes


class SoftDTWKernels(torch.autograd.Function):
    """Soft-DTW of every ``[M, N]`` distance matrix in ``d`` ``[B, M, N]`` (fp32, contiguous) -> ``[B]``."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, gamma: float) -> torch.Tensor:
        from pysdtw.sdtw_cuda import compute_softdtw_cuda

        b, m, n = d.shape
        threads, passes = _launch_shape(m, n)
        lengths = torch.tensor([m, n], device=d.device).repeat(b, 1)  # [B, 2], as pysdtw passes them
        r = torch.full((b, m + 2, n + 2), math.inf, device=d.device, dtype=d.dtype)
        r[:, 0, 0] = 0
        compute_softdtw_cuda[b, threads](_as_array(d.detach()), gamma, 0.0, _as_array(lengths), passes, m + n - 1,
                                         _as_array(r))
        ctx.save_for_backward(d, r, lengths)
        ctx.gamma = gamma
        return r[:, m, n].clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        from pysdtw.sdtw_cuda import compute_softdtw_backward_cuda

        d, r, lengths = ctx.saved_tensors
        b, m, n = d.shape
        threads, passes = _launch_shape(m, n)
        d_pad = torch.zeros((b, m + 2, n + 2), device=d.device, dtype=d.dtype)
        d_pad[:, 1:m + 1, 1:n + 1] = d
        r = r.clone()  # the kernel overwrites it; a second backward (retain_graph) needs the original
        r[:, :, n + 1] = -math.inf  # pysdtw's per-pair loop, for pairs that all have lengths (m, n)
        r[:, m + 1, :] = -math.inf
        r[:, m + 1, n + 1] = r[:, m, n]
        e = torch.zeros_like(d_pad)
        e[:, m + 1, n + 1] = 1
        compute_softdtw_backward_cuda[b, threads](_as_array(d_pad), _as_array(r), 1.0 / ctx.gamma, 0.0,
                                                  _as_array(lengths), passes, m + n - 1, _as_array(e))
        return grad[:, None, None] * e[:, 1:m + 1, 1:n + 1], None


def soft_dtw_both_directions(dist: torch.Tensor, gamma: float) -> torch.Tensor:
    """``sdtw(D) + sdtw(D^T)`` for ``dist`` ``[..., T, T]`` (OTAM's two directions) in one launch each way."""
    *lead, m, n = dist.shape
    if m != n:
        raise ValueError(f"both directions in one launch need square distances, got {m} x {n}")
    d = dist.reshape(-1, m, n)
    both = SoftDTWKernels.apply(torch.cat([d, d.transpose(1, 2)]).contiguous(), gamma)
    return (both[:d.shape[0]] + both[d.shape[0]:]).view(lead)


def soft_dtw_ref(dist: torch.Tensor, gamma: float) -> torch.Tensor:
    """Standard soft-DTW of ``dist`` ``[..., M, N]`` (start and end fixed) as a plain loop over
    cells, batched over the leading axes; differentiable by autograd."""
    *lead, m, n = dist.shape
    inf = dist.new_full(lead, math.inf)
    prev = [dist.new_zeros(lead)] + [inf] * n  # row 0 of R: R[0, 0] = 0, R[0, j > 0] = inf
    for i in range(1, m + 1):
        row = [inf]
        for j in range(1, n + 1):
            stack = torch.stack([prev[j - 1], prev[j], row[j - 1]], dim=-1)
            row.append(dist[..., i - 1, j - 1] - gamma * torch.logsumexp(-stack / gamma, dim=-1))
        prev = row
    return prev[n]


def soft_dtw_both_directions_ref(dist: torch.Tensor, gamma: float) -> torch.Tensor:
    """:func:`soft_dtw_both_directions` by :func:`soft_dtw_ref`."""
    return soft_dtw_ref(dist, gamma) + soft_dtw_ref(dist.transpose(-1, -2), gamma)
