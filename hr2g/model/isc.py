"""ISC, Inter-video Semantic Correlation: attention along the *sample* axis of an episode.

At each temporal position t, the S = NS + L videos of an episode attend to each other, so a video's
frame t is refined by the frames t of the other videos: O(S^2 T) instead of the O(S^2 T^2) of
attention over all S*T frame tokens ("dense").  Mask strategies (paper Fig. 3 / Table 6):

- ``adaptive``: every row, support or query, attends to support columns only.  Support outputs
  therefore never depend on the queries (no transductive leakage between queries).
- ``support-support``: only support rows are updated, from supports; queries pass unchanged.
- ``query-support``: only query rows are updated, from supports; supports pass unchanged.
- ``full``: every row attends to every sample.
- ``global`` (Table 5): attention over mean-pooled video features (adaptive mask), broadcast over T.
- ``dense`` (Table 5): attention over all S*T frame tokens (adaptive mask on support tokens).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from hr2g import _dispatch, ops


class ISC(nn.Module):
    def __init__(self, dim: int, heads: int = 8, mask: str = "adaptive", backend: str = "torch"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ISC: dim {dim} is not divisible by isc_heads={heads}")
        self.heads, self.mask, self.backend = heads, mask, backend
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _attend(self, x: torch.Tensor, n_support: int | None) -> torch.Tensor:
        """Pre-norm attention over axis -2 of ``x [B, S, C]`` -> update ``[B, S, C]``."""
        q, k, v = rearrange(self.qkv(self.norm(x)), "b s (three h d) -> three b h s d", three=3, h=self.heads)
        backend = _dispatch.model_backend("sample_attention", self.backend)
        out = ops.sample_attention(q, k, v, n_support, backend=backend)  # each [B, H, S, d]
        return self.proj(rearrange(out, "b h s d -> b s (h d)"))

    def forward(self, fs: torch.Tensor, fq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fs [E, NS, T, C]``, ``fq [E, L, T, C]`` -> refined (fs, fq), same shapes."""
        e, ns, t, c = fs.shape
        x = torch.cat([fs, fq], dim=1)  # [E, S, T, C]
        if self.mask == "global":
            pooled = x.mean(dim=2)  # [E, S, C]
            return _split(x + self._attend(pooled, ns)[:, :, None, :], ns)
        if self.mask == "dense":
            tokens = rearrange(x, "e s t c -> e (s t) c")  # sample-major: support tokens first
            upd = rearrange(self._attend(tokens, ns * t), "e (s t) c -> e s t c", t=t)
            return _split(x + upd, ns)
        if self.mask == "support-support":
            xs = rearrange(fs, "e s t c -> (e t) s c")
            upd = rearrange(self._attend(xs, None), "(e t) s c -> e s t c", e=e)
            return fs + upd, fq
        seq = rearrange(x, "e s t c -> (e t) s c")  # [E*T, S, C]: attention along samples per frame
        upd = rearrange(self._attend(seq, None if self.mask == "full" else ns), "(e t) s c -> e s t c", e=e)
        if self.mask == "query-support":
            return fs, fq + upd[:, ns:]
        return _split(x + upd, ns)


def _split(x: torch.Tensor, ns: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, :ns], x[:, ns:]
