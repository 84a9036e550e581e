"""CLIP normalisation and the frame transforms shared by every decoder (torch, on [T, 3, H, W])."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# open_clip's OPENAI_DATASET_MEAN / STD, the statistics the CLIP weights were trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float ``[T, 3, H, W]`` -> CLIP-normalised float32."""
    x = frames.float()
    if frames.dtype == torch.uint8:
        x = x / 255.0
    mean = x.new_tensor(CLIP_MEAN)[:, None, None]
    std = x.new_tensor(CLIP_STD)[:, None, None]
    return (x - mean) / std


def resize_short(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the short side is ``size`` (bilinear, antialiased), ``[T, 3, H, W]``."""
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) == (h, w):
        return frames
    return F.interpolate(frames.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    h, w = frames.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[..., top : top + size, left : left + size]


def eval_transform(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Test-time: short side -> size, centre crop, normalise.  uint8/float ``[T,3,H,W]`` in."""
    return normalize(center_crop(resize_short(frames.float() / (255.0 if frames.dtype == torch.uint8 else 1.0), size), size))


def train_transform(frames: torch.Tensor, size: int, rng: np.random.Generator, flip: bool = True,
                    scale: tuple[float, float] = (0.5, 1.0), jitter: float = 0.2) -> torch.Tensor:
    """Training: one random resized crop, optional horizontal flip and colour jitter, the same for
    every frame of the clip (temporal consistency), then normalise.

    ``flip`` must be False for direction-sensitive datasets (SSv2: "pushing left to right").
    """
    x = frames.float() / (255.0 if frames.dtype == torch.uint8 else 1.0)
    h, w = x.shape[-2:]
    area = h * w * rng.uniform(*scale)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = int(min(h, round(math.sqrt(area / ratio))))
    cw = int(min(w, round(math.sqrt(area * ratio))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    x = x[..., top : top + ch, left : left + cw]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if flip and rng.random() < 0.5:
        x = x.flip(-1)
    if jitter > 0:
        b = 1 + rng.uniform(-jitter, jitter)  # brightness
        c = 1 + rng.uniform(-jitter, jitter)  # contrast
        s = 1 + rng.uniform(-jitter, jitter)  # saturation
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        x = (x * b - mean) * c + mean
        gray = x.mean(dim=-3, keepdim=True)
        x = (x - gray) * s + gray
        x = x.clamp(0, 1)
    return normalize(x)
