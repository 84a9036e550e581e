"""Query-to-class metrics (paper Table 12).  Each maps ``query [E, L, T, C]`` and class-major
``support [E, N*K, T, C]`` to logits ``[E, L, N]`` (negative distances).

- OTAM: ordered temporal alignment, summed over both directions (``hr2g.ops.otam_distance``);
  class distance = mean over the class's K supports.
- Bi-MHM: bidirectional Hausdorff metric over the cosine frame distances: each frame's distance
  to its nearest frame of the other video, summed over the frames of both (HyRSM's and CLIP-FSAR's
  public heads sum; the HyRSM paper writes a mean, which divides every logit by T -- at T = 8 a
  softmax temperature of 8 in the loss).
- TRX: temporal-relational cross-transformer: frame tuples of the query attend to the tuples of a
  class's supports to build a query-specific prototype; distance = squared L2 to it, per tuple.
  As in the public TRX code, only the keys are layer-normalised; the values are the projections.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from hr2g import _dispatch, ops
from hr2g.reference import otam_cosine_distance


class OTAM(nn.Module):
    def __init__(self, lam: float = 0.5, backend: str = "torch"):
        super().__init__()
        self.lam, self.backend = lam, backend

    def forward(self, query: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
        e, l = query.shape[:2]
        d = ops.otam_distance(query, support, self.lam, backend=_dispatch.model_backend("otam_distance", self.backend))
        return -d.view(e, l, -1, k).mean(-1)


class BiMHM(nn.Module):
    def forward(self, query: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
        e, l = query.shape[:2]
        d = otam_cosine_distance(query.float(), support.float())  # [E, L, N*K, Tq, Ts], fp32 as OTAM's
        dist = d.min(dim=-1).values.sum(-1) + d.min(dim=-2).values.sum(-1)  # [E, L, N*K]
        return -dist.view(e, l, -1, k).mean(-1)


class TRX(nn.Module):
    """Tuples of ``w`` frames (i1 < ... < iw), each embedded as concat(frames + sinusoidal
    position) -> key/value projections; per class, a query tuple's prototype is the
    softmax-weighted sum of the class's support tuple values.  Averaged over cardinalities.
    ``proj_dim``: width of the key/value projections (default ``dim``; public TRX uses 1152 on
    2048-d ResNet-50 features)."""

    def __init__(self, dim: int, frames: int, cardinalities: tuple[int, ...] = (2, 3), proj_dim: int | None = None):
        super().__init__()
        proj_dim = proj_dim or dim
        if not cardinalities or max(cardinalities) > frames:
            raise ValueError(f"TRX: tuples of {tuple(cardinalities)} frames need clips of at least that many frames, got T={frames}")
        self.frames = frames
        for i, w in enumerate(cardinalities):  # [U, w] frame indices of every tuple, moved with the module
            self.register_buffer(f"tuples{i}", torch.tensor(list(itertools.combinations(range(frames), w))), persistent=False)
        self.cardinalities = tuple(cardinalities)
        self.n_cardinalities = len(cardinalities)
        self.k = nn.ModuleList(nn.Linear(dim * w, proj_dim) for w in cardinalities)
        self.v = nn.ModuleList(nn.Linear(dim * w, proj_dim) for w in cardinalities)
        self.norm_k = nn.ModuleList(nn.LayerNorm(proj_dim) for _ in cardinalities)
        self.register_buffer("pe", _sinusoid(frames, dim), persistent=False)

    def forward(self, query: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
        if query.shape[2] != self.frames or support.shape[2] != self.frames:
            raise ValueError(f"TRX was built for T={self.frames} frames, got query T={query.shape[2]}, support T={support.shape[2]}")
        e, l = query.shape[:2]
        n = support.shape[1] // k
        logits = 0.0
        tuples = [getattr(self, f"tuples{i}") for i in range(self.n_cardinalities)]
        for idx, fk, fv, nk in zip(tuples, self.k, self.v, self.norm_k):
            qt = (query + self.pe.to(query.dtype))[:, :, idx].flatten(-2)  # [E, L, U, w*C]
            st = (support + self.pe.to(support.dtype))[:, :, idx].flatten(-2)  # [E, N*K, U, w*C]
            qk, qv = nk(fk(qt)), fv(qt)  # [E, L, U, D]
            sk = nk(fk(st)).reshape(e, n, -1, qk.shape[-1])  # [E, N, K*U, D]
            sv = fv(st).reshape(e, n, -1, qk.shape[-1])
            attn = torch.softmax(torch.einsum("elud,enxd->elnux", qk, sk) / math.sqrt(qk.shape[-1]), dim=-1)
            proto = torch.einsum("elnux,enxd->elnud", attn, sv)  # [E, L, N, U, D]
            dist = (qv[:, :, None] - proto).pow(2).sum(-1).mean(-1)  # [E, L, N]
            logits = logits - dist
        return logits / self.n_cardinalities


def _sinusoid(t: int, dim: int) -> torch.Tensor:
    pos = torch.arange(t, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(t, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe * 0.1  # small: the tuple identity should come mostly from the features


def build_metric(name: str, dim: int, frames: int, lam: float, cardinalities: tuple[int, ...], backend: str,
                 trx_dim: int = 0) -> nn.Module:
    if name == "otam":
        return OTAM(lam, backend)
    if name == "bimhm":
        return BiMHM()
    if name == "trx":
        return TRX(dim, frames, cardinalities, trx_dim or None)
    raise ValueError(f"unknown metric {name!r}; choose one of otam, trx, bimhm")
