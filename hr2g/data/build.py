"""``build_dataset(data_cfg, split)``: the one place that turns a DataConfig into a VideoDataset."""
from __future__ import annotations

from hr2g.config import DataConfig
from hr2g.data.base import VideoDataset


def build_dataset(cfg: DataConfig, split: str) -> VideoDataset:
    if cfg.dataset == "synthetic":
        from hr2g.data.synthetic import SyntheticActions

        return SyntheticActions(split, videos_per_class=cfg.synthetic_videos_per_class, frames=cfg.frames,
                                image_size=cfg.image_size)
    from hr2g.data.benchmarks import BenchmarkDataset

    return BenchmarkDataset.from_config(cfg, split)
