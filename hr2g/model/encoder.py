"""Frozen CLIP (open_clip) with trainable bottleneck adapters, plus the frozen text tower.

Adapters sit inside every residual block of the visual tower: after the attention branch and
after the MLP branch (ViT), or after each bottleneck block (RN50).  Their up-projection is
zero-initialised, so at step 0 the encoder computes exactly CLIP's features and training departs
from there.  Everything of CLIP itself is frozen (requires_grad=False) and kept in eval mode:
RN50's BatchNorm statistics must not drift while the adapters train.
"""
from __future__ import annotations

import logging
import os

import open_clip
import torch
from torch import nn

from hr2g.config import TINY_HAS_NO_WEIGHTS, ModelConfig

log = logging.getLogger(__name__)

# The tiny config: a 2-layer ViT on 32x32 frames and a 2-layer text tower, randomly initialised.
# ~3.4M parameters, ~5 ms per 80-frame episode on one CPU core: for tests and the CPU demo only.
TINY = dict(embed_dim=64, vision=dict(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
            text=dict(width=64, heads=2, layers=2))


class Adapter(nn.Module):
    """``x + up(gelu(down(x)))`` with ``up`` zero-initialised (identity at init)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class ConvAdapter(nn.Module):
    """Channel adapter for conv feature maps ``[B, C, H, W]`` (RN50), zero-initialised."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.down = nn.Conv2d(channels, bottleneck, 1)
        self.up = nn.Conv2d(bottleneck, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.relu(self.down(x)))


def _create_clip(cfg: ModelConfig) -> tuple[nn.Module, str]:
    from hr2g.errors import WeightsUnavailable

    if cfg.backbone == "tiny":
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        if cfg.pretrained not in (None, "", "none"):  # ModelConfig.validate says so first
            raise WeightsUnavailable(f"model.pretrained={cfg.pretrained!r}: {TINY_HAS_NO_WEIGHTS}")
        model = CLIP(TINY["embed_dim"], CLIPVisionCfg(**TINY["vision"]), CLIPTextCfg(**TINY["text"]))
        return model, "ViT-B-16"  # tokenizer (bundled BPE vocabulary, no download)
    pretrained = cfg.pretrained or None
    if pretrained and os.sep in pretrained and not os.path.exists(pretrained):
        raise WeightsUnavailable(f"model.pretrained={pretrained!r}: checkpoint file not found")
    try:
        model = open_clip.create_model(cfg.backbone, pretrained=pretrained)
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not load CLIP {cfg.backbone} weights {pretrained!r} ({type(exc).__name__}: {exc}). Without network "
            f"access, pass a local checkpoint with --set model.pretrained=/path/to/open_clip_{cfg.backbone}.pt") from exc
    return model, cfg.backbone


class CLIPEncoder(nn.Module):
    """Frame and class-name encoder.  ``dim`` is CLIP's joint embedding width (512 for ViT-B/16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        clip, tokenizer_name = _create_clip(cfg)
        for p in clip.parameters():
            p.requires_grad_(False)
        self.clip = clip
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        self.image_size = _image_size(clip.visual)
        self.dim = int(clip.text_projection.shape[1]) if isinstance(clip.text_projection, torch.Tensor) else int(clip.text_projection.out_features)
        self.adapters = nn.ModuleList(_insert_adapters(clip.visual, cfg.adapter_dim))

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen tower stays in eval mode (BatchNorm statistics, dropout off)
        for a in self.adapters:
            a.train(mode)
        return self

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> ``[B, T, C]`` (CLIP image embeddings, unnormalised)."""
        b, t = frames.shape[:2]
        if tuple(frames.shape[-2:]) != self.image_size:
            raise ValueError(f"frames are {tuple(frames.shape[-2:])} pixels but the encoder expects {self.image_size} "
                             f"(set data.image_size={self.image_size[0]})")
        feats = self.clip.encode_image(frames.flatten(0, 1))  # [B*T, C]
        return feats.view(b, t, -1)

    @torch.no_grad()
    def encode_text(self, class_names: list[str]) -> torch.Tensor:
        """Frozen text features of "a photo of {name}": ``[len, C]``."""
        tokens = self.tokenizer([f"a photo of {n}" for n in class_names]).to(self.clip.logit_scale.device)
        return self.clip.encode_text(tokens).float()


def _image_size(visual: nn.Module) -> tuple[int, int]:
    size = getattr(visual, "image_size", None)
    if size is None:
        size = getattr(visual, "input_resolution", 224)
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _insert_adapters(visual: nn.Module, bottleneck: int) -> list[nn.Module]:
    """Put adapters into the residual blocks of ``visual`` in place; return them."""
    adapters: list[nn.Module] = []
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):
        for block in transformer.resblocks:
            width = block.ln_1.normalized_shape[0]
            a1, a2 = Adapter(width, bottleneck), Adapter(width, bottleneck)
            # open_clip's block: x = x + ls_1(attn(ln_1(x))); x = x + ls_2(mlp(ln_2(x))).
            # Wrapping ls_1/ls_2 applies each adapter to its branch output before the residual add.
            block.ls_1 = nn.Sequential(block.ls_1, a1)
            block.ls_2 = nn.Sequential(block.ls_2, a2)
            adapters += [a1, a2]
        return adapters
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):  # ModifiedResNet (RN50)
        for i in range(1, 5):
            layer = getattr(visual, f"layer{i}")
            for j, block in enumerate(layer):
                channels = block.bn3.num_features
                a = ConvAdapter(channels, bottleneck)
                layer[j] = nn.Sequential(block, a)
                adapters.append(a)
        return adapters
    raise ValueError(f"don't know where to put adapters in {type(visual).__name__}")
