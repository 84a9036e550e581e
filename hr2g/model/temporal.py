"""Inter-frame temporal modelling: a small Transformer over the T frames of each video.

Support sequences get their class's text feature appended as token T+1 (dropped after the
layer), so the text conditions the support frames; queries have no class and no text token.
"""
from __future__ import annotations

import torch
from torch import nn


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int, layers: int = 1, heads: int = 8, pos_embed: bool = False, max_frames: int = 64):
        super().__init__()
        if dim % heads:
            raise ValueError(f"temporal Transformer: dim {dim} is not divisible by temporal_heads={heads}")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers))
        self.pos = nn.Parameter(torch.zeros(max_frames, dim)) if pos_embed else None

    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, C]``, optional ``text [B, C]`` appended as token T+1 -> ``[B, T, C]``."""
        t = x.shape[1]
        if self.pos is not None:
            x = x + self.pos[:t]
        if text is not None:
            x = torch.cat([x, text[:, None, :].to(x.dtype)], dim=1)  # [B, T+1, C]
        for layer in self.layers:
            x = layer(x)
        return x[:, :t]
