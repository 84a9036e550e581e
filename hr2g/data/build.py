"""``build_dataset(data_cfg, split)``: the one place that turns a DataConfig into a VideoDataset.

- ``dataset="synthetic"``: the embedded generated dataset (nothing to download);
- a benchmark name (hmdb51, ucf101, kinetics100, ssv2_small, ssv2_full): a
  :class:`~hr2g.data.benchmarks.BenchmarkDataset` over ``data_root``, with the split lists read
  from ``split_dir`` -- by default ``<data_root>/splits``, which may hold the lists themselves or
  the releases' folders (``clipfsar/<dataset>/``, ``trx/<dataset>_.../``), see
  :mod:`hr2g.data.presets`.
"""
from __future__ import annotations

import torch

from hr2g.config import DataConfig
from hr2g.data.base import VideoDataset


def build_dataset(cfg: DataConfig, split: str, device: torch.device | None = None) -> VideoDataset:
    """``device``: where the run's model is; a benchmark's clips are decoded there (DALI on that GPU,
    or on the CPU for a CPU run); None: on the current CUDA device when one is visible."""
    if cfg.dataset == "synthetic":
        from hr2g.data.synthetic import SyntheticActions

        return SyntheticActions(split, videos_per_class=cfg.synthetic_videos_per_class, frames=cfg.frames,
                                image_size=cfg.image_size)
    from hr2g.data.benchmarks import BenchmarkDataset

    return BenchmarkDataset.from_config(cfg, split, device)
