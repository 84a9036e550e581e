"""The dataset contract every source (synthetic, video files, frame folders) implements.

A dataset is one split (train / val / test) of labelled videos.  ``clip(i, train, rng)`` returns
T frames, CLIP-normalised, ``[T, 3, H, W]`` float32; an unreadable video raises
``VideoReadError`` so the episode loader can skip it, count it and resample.
"""
from __future__ import annotations

import abc

import numpy as np
import torch


class VideoReadError(RuntimeError):
    """A video could not be decoded (corrupt, empty, too short).  Carries the offending path."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


def per_video(rng: np.random.Generator | list[np.random.Generator], n: int) -> list[np.random.Generator]:
    """``clips``' ``rng`` as one generator per video (the shared one repeated: draws stay in order)."""
    if isinstance(rng, (list, tuple)):
        if len(rng) != n:
            raise ValueError(f"clips: {len(rng)} generators for {n} videos")
        return list(rng)
    return [rng] * n


class VideoDataset(abc.ABC):
    """One split of a labelled video dataset."""

    #: class names in label order (label i -> class_names[i]); used for the CLIP text prompts
    class_names: list[str]
    #: per-video label, index into ``class_names``
    labels: np.ndarray
    #: indices of listed videos known to be absent (not found on disk, or a file an earlier entry
    #: found): episodes never draw them
    unavailable: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def clip(self, index: int, train: bool, rng: np.random.Generator) -> torch.Tensor:
        """Frames of video ``index``: ``[T, 3, H, W]`` float32, CLIP-normalised.

        ``train`` selects the random TSN frame and augmentation; otherwise centre frame, centre
        crop, deterministic.  Raises ``VideoReadError`` when the video cannot be read.
        """

    def clips(self, indices: list[int], train: bool,
              rng: np.random.Generator | list[np.random.Generator]) -> list[torch.Tensor | VideoReadError]:
        """Several clips at once: each entry the clip of ``indices[k]`` or the VideoReadError that
        stopped it; ``rng`` one generator for all, or one per video.  Decoders that batch (DALI: one
        pipeline run per episode) override this."""
        out: list[torch.Tensor | VideoReadError] = []
        for i, r in zip(indices, per_video(rng, len(indices))):
            try:
                out.append(self.clip(int(i), train, r))
            except VideoReadError as err:
                out.append(err)
        return out

    @abc.abstractmethod
    def key(self, index: int) -> str:
        """A stable identifier of video ``index`` (feature caches and reports use it)."""

    def videos_of(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)


def tsn_indices(n_frames: int, t: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """TSN sparse sampling: split ``n_frames`` into ``t`` equal segments and take one frame of each.

    Training takes a random frame per segment, testing the centre frame.  Videos shorter than
    ``t`` repeat frames (indices stay sorted), as the public FSAR loaders do.
    """
    if n_frames < 1:
        raise ValueError(f"tsn_indices: a video needs at least one frame, got n_frames={n_frames}")
    edges = np.linspace(0, n_frames, t + 1)  # segment boundaries, float
    if train:
        if rng is None:
            raise ValueError("tsn_indices: training sampling needs an rng")
        idx = edges[:-1] + rng.random(t) * (edges[1:] - edges[:-1])
    else:
        idx = (edges[:-1] + edges[1:]) / 2
    return np.clip(np.floor(idx).astype(np.int64), 0, n_frames - 1)
