"""The embedded few-shot action dataset: procedurally generated clips, nothing to download.

A clip shows one shape (bar, triangle or "L", random colour, size and start position, on a noisy
tinted background) performing two *sub-motions* one after the other.  A class is an ordered pair
of distinct sub-motions from {right, left, up, down, clockwise, counter-clockwise, grow, shrink}
at one of two speeds, e.g. "move left then rotate clockwise, fast".  Classes (a, b) and (b, a)
contain the same frames in a different order, and "right then left" vs "left then right" differ
only by direction, so a model blind to frame order or motion direction cannot solve them: this is
the property the temporal modules are there to exploit.  Flipping a clip horizontally changes its
class, so training uses no flip augmentation.

Every video is a pure function of (class, video index, seed): no files, identical on every machine.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from hr2g.data.base import VideoDataset, tsn_indices
from hr2g.data.transforms import normalize

MOTIONS = ("move right", "move left", "move up", "move down", "rotate clockwise",
           "rotate counter-clockwise", "grow", "shrink")
SPEEDS = ("slowly", "quickly")
SHAPES = ("bar", "triangle", "L")
# 8*7 ordered pairs x 2 speeds = 112 classes, split like the CMN benchmarks' 64/12/24 proportions.
SPLIT_SIZES = {"train": 64, "val": 16, "test": 32}


def all_classes() -> list[tuple[int, int, int]]:
    return [(a, b, s) for s in range(len(SPEEDS)) for a, b in itertools.permutations(range(len(MOTIONS)), 2)]


def class_name(cls: tuple[int, int, int]) -> str:
    a, b, s = cls
    return f"{MOTIONS[a]} then {MOTIONS[b]} {SPEEDS[s]}"


def split_classes(split: str, seed: int = 0) -> list[tuple[int, int, int]]:
    """Disjoint base (train) / val / novel (test) classes, fixed by ``seed``."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"synthetic split must be one of {sorted(SPLIT_SIZES)}, got {split!r}")
    classes = all_classes()
    order = np.random.default_rng(seed).permutation(len(classes))
    start = {"train": 0, "val": SPLIT_SIZES["train"], "test": SPLIT_SIZES["train"] + SPLIT_SIZES["val"]}[split]
    return [classes[i] for i in sorted(order[start : start + SPLIT_SIZES[split]])]


def _shape_mask(shape: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-size shape in its own (rotated, scaled) coordinates."""
    if shape == 0:  # bar, 2:1 -- not rotation-symmetric under 90 degrees
        return (np.abs(xs) < 1.0) & (np.abs(ys) < 0.45)
    if shape == 1:  # triangle pointing +x
        return (xs > -0.8) & (xs < 0.9) & (np.abs(ys) < 0.55 * (0.9 - xs) / 1.7 * 1.8)
    return ((np.abs(xs + 0.55) < 0.35) & (np.abs(ys) < 1.0)) | ((np.abs(ys - 0.65) < 0.35) & (np.abs(xs) < 0.9))


def render_clip(cls: tuple[int, int, int], rng: np.random.Generator, n_frames: int, size: int) -> np.ndarray:
    """Render one clip, ``[n_frames, 3, size, size]`` uint8."""
    a, b, s = cls
    speed = (0.6 if s == 0 else 1.3) * rng.uniform(0.85, 1.15)
    shape = int(rng.integers(len(SHAPES)))
    colour = rng.uniform(0.55, 1.0, size=3) * 255
    tint = rng.uniform(0.05, 0.35, size=3) * 255
    x, y = rng.uniform(0.35, 0.65, size=2) * size
    scale = rng.uniform(0.13, 0.18) * size
    angle = rng.uniform(0, 2 * math.pi)
    step = 0.045 * size * speed  # pixels per frame for translations
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    switch = n_frames // 2 + int(rng.integers(-1, 2))  # sub-motion boundary, jittered by a frame
    frames = np.empty((n_frames, 3, size, size), dtype=np.uint8)
    for t in range(n_frames):
        motion = a if t < switch else b
        if t > 0:
            if motion == 0:
                x += step
            elif motion == 1:
                x -= step
            elif motion == 2:
                y -= step
            elif motion == 3:
                y += step
            elif motion == 4:
                angle += 0.28 * speed  # image y points down: +angle turns clockwise on screen
            elif motion == 5:
                angle -= 0.28 * speed
            elif motion == 6:
                scale *= 1 + 0.07 * speed
            else:
                scale /= 1 + 0.07 * speed
        x, y = float(np.clip(x, 0.1 * size, 0.9 * size)), float(np.clip(y, 0.1 * size, 0.9 * size))
        dx, dy = (grid_x - x) / scale, (grid_y - y) / scale
        ca, sa = math.cos(angle), math.sin(angle)
        mask = _shape_mask(shape, ca * dx + sa * dy, -sa * dx + ca * dy)
        img = tint[:, None, None] + rng.normal(0, 12, size=(3, size, size))
        img = np.where(mask[None], colour[:, None, None], img)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


class SyntheticActions(VideoDataset):
    """One split of the embedded dataset.

    Args:
        split: "train" (64 base classes), "val" (16) or "test" (32 novel classes).
        videos_per_class: clips per class.
        frames: T, frames sampled per clip (TSN segments over ``n_frames`` rendered frames).
        image_size: rendered frame side in pixels.
        n_frames: frames rendered per clip.
        seed: fixes class split and clip content.
    """

    def __init__(self, split: str = "train", videos_per_class: int = 20, frames: int = 8, image_size: int = 32,
                 n_frames: int = 16, seed: int = 0):
        if n_frames < frames:
            raise ValueError(f"synthetic: n_frames ({n_frames}) must be >= frames ({frames})")
        self.split, self.frames, self.image_size, self.n_frames, self.seed = split, frames, image_size, n_frames, seed
        self._classes = split_classes(split, seed)
        self.class_names = [class_name(c) for c in self._classes]
        self.labels = np.repeat(np.arange(len(self._classes)), videos_per_class)
        self._vpc = videos_per_class

    def key(self, index: int) -> str:
        return f"synthetic/{self.split}/{self.class_names[self.labels[index]]}/{index % self._vpc:04d}"

    def raw(self, index: int) -> np.ndarray:
        """All rendered frames of video ``index``, ``[n_frames, 3, H, W]`` uint8."""
        label = int(self.labels[index])
        split_id = tuple(SPLIT_SIZES).index(self.split)
        rng = np.random.default_rng([self.seed, split_id, label, index])
        return render_clip(self._classes[label], rng, self.n_frames, self.image_size)

    def clip(self, index: int, train: bool, rng: np.random.Generator) -> torch.Tensor:
        idx = tsn_indices(self.n_frames, self.frames, train, rng)
        return normalize(torch.from_numpy(self.raw(index)[idx]))
