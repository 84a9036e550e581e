"""The assembled HR²G-shot model.

Pipeline per episode (E episodes batched, supports class-major):
frames --CLIP+adapters--> X [.., T, C] --temporal (+text token on supports)--> F
--ISC / IKT (order configurable, each switchable: Table 4)--> F~ --metric--> logits [E, L, N].

``encode_videos`` and ``head`` are separate so evaluation can cache per-video encoder features
once and run thousands of episodes through the head in large batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hr2g.config import ModelConfig
from hr2g.model.encoder import CLIPEncoder
from hr2g.model.ikt import IKT
from hr2g.model.isc import ISC
from hr2g.model.metrics import build_metric
from hr2g.model.temporal import TemporalTransformer


@dataclass
class HeadOutput:
    logits: torch.Tensor  # [E, L, N]
    prototypes: torch.Tensor | None  # P_hat [E, M, C] (None without IKT): feed to update_bank during training
    support: torch.Tensor  # refined support features [E, NS, T, C]
    query: torch.Tensor  # refined query features [E, L, T, C]
    video_feats: torch.Tensor | None = None  # encoder features [NS+L, T, C] when the forward started from frames


class HR2G(nn.Module):
    def __init__(self, cfg: ModelConfig, frames: int = 8):
        super().__init__()
        cfg.validate()
        cfg.validate_frames(frames)  # TRX's tuples of T frames (T=1 built empty index buffers: an IndexError later)
        self.cfg, self.frames = cfg, frames
        self.encoder = CLIPEncoder(cfg)
        c = self.dim = self.encoder.dim
        self.temporal = TemporalTransformer(c, cfg.temporal_layers, cfg.temporal_heads, cfg.temporal_pos_embed)
        self.isc = ISC(c, cfg.isc_heads, cfg.isc_mask, cfg.backend) if cfg.isc else None
        self.ikt = IKT(c, cfg.ikt_prototypes, cfg.ikt_bank_size, cfg.ikt_topk, cfg.ikt_momentum, cfg.ikt_temperature,
                       cfg.ikt_heads, cfg.ikt_on_query, cfg.backend) if cfg.ikt else None
        self.metric = build_metric(cfg.metric, c, frames, cfg.otam_lambda, cfg.trx_cardinalities, cfg.backend,
                                   cfg.trx_dim)
        # learnable temperature of the video-text auxiliary loss, CLIP's init 1/0.07
        self.aux_logit_scale = nn.Parameter(torch.tensor(2.6593)) if cfg.aux_text_weight > 0 else None
        self._text_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ features
    def encode_videos(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> ``[B, T, C]``."""
        return self.encoder.encode_frames(frames)

    def text_features(self, class_names: list[str]) -> torch.Tensor:
        """Frozen CLIP text features ``[len, C]``, computed once per class name and cached."""
        missing = [n for n in dict.fromkeys(class_names) if n not in self._text_cache]
        if missing:
            for name, feat in zip(missing, self.encoder.encode_text(missing)):
                self._text_cache[name] = feat
        dev = self.encoder.clip.logit_scale.device
        return torch.stack([self._text_cache[n] for n in class_names]).to(dev)

    # ------------------------------------------------------------------ episode head
    def head(self, support: torch.Tensor, query: torch.Tensor, class_text: torch.Tensor, k_shot: int) -> HeadOutput:
        """support ``[E, N*K, T, C]`` (class-major), query ``[E, L, T, C]``, class_text ``[E, N, C]``."""
        e, nk, t, c = support.shape
        if nk % k_shot:
            raise ValueError(f"head: {nk} supports is not a multiple of k_shot={k_shot}")
        k = k_shot
        if self.cfg.support_aggregation == "mean_before" and k > 1:
            support = support.view(e, nk // k, k, t, c).mean(2)  # [E, N, T, C]: class prototypes first
            k = 1
        text = class_text.repeat_interleave(k, dim=1) if self.cfg.text_token else None  # [E, NS, C]
        fs = self.temporal(support.flatten(0, 1), None if text is None else text.flatten(0, 1)).view(e, -1, t, c)
        fq = self.temporal(query.flatten(0, 1)).view(e, -1, t, c)
        protos = None
        for stage in (("isc", "ikt") if self.cfg.order == "isc-ikt" else ("ikt", "isc")):
            if stage == "isc" and self.isc is not None:
                fs, fq = self.isc(fs, fq)
            elif stage == "ikt" and self.ikt is not None:
                fs, fq, protos = self.ikt(fs, fq)
        logits = self.metric(fq, fs, k)
        return HeadOutput(logits.float(), protos, fs, fq)

    def forward(self, support_frames: torch.Tensor, query_frames: torch.Tensor, class_names: list[str], k_shot: int) -> HeadOutput:
        """One episode from frames: support ``[N*K, T, 3, H, W]``, query ``[L, T, 3, H, W]``."""
        feats = self.encode_videos(torch.cat([support_frames, query_frames]))  # one encoder pass
        ns = support_frames.shape[0]
        text = self.text_features(class_names)[None]  # [1, N, C]
        out = self.head(feats[None, :ns], feats[None, ns:], text, k_shot)
        out.video_feats = feats
        return out

    # ------------------------------------------------------------------ training helpers
    def aux_text_loss(self, video_feats: torch.Tensor, labels: torch.Tensor, base_class_names: list[str]) -> torch.Tensor:
        """Video-text loss: cosine of the mean frame feature with every base class's text feature,
        scaled by a learnable temperature, cross-entropy on the videos' dataset labels."""
        if self.aux_logit_scale is None:
            raise RuntimeError("aux_text_loss needs model.aux_text_weight > 0")
        text = F.normalize(self.text_features(base_class_names), dim=-1)  # [B, C]
        vid = F.normalize(video_feats.float().mean(dim=1), dim=-1)  # [V, C]
        logits = self.aux_logit_scale.exp().clamp(max=100) * vid @ text.t()
        return F.cross_entropy(logits, labels)

    def update_bank(self, prototypes: torch.Tensor | None) -> None:
        """Momentum-update the knowledge bank with this step's ``P_hat`` (training only)."""
        if self.ikt is not None and prototypes is not None:
            self.ikt.update_bank(prototypes)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
