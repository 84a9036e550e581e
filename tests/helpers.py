"""Small builders shared by the model/training tests (not fixtures: plain functions)."""
from __future__ import annotations

from hr2g.config import Config
from hr2g.configs import get_preset


def tiny_config(tmp_path=None, **model_overrides) -> Config:
    """The tiny preset shrunk for tests: 4 frames, 2 short epochs, few validation episodes."""
    cfg = get_preset("tiny")
    cfg.data.frames = 4
    cfg.data.synthetic_videos_per_class = 6
    cfg.data.q_query = 2
    cfg.train.epochs = 2
    cfg.train.episodes_per_epoch = 3
    cfg.train.val_episodes = 4
    cfg.train.test_episodes = 0
    cfg.train.milestones = (1,)
    cfg.train.log_every = 1
    cfg.eval.episodes = 20
    cfg.eval.batch_episodes = 7
    if tmp_path is not None:
        cfg.train.out_dir = str(tmp_path / "run")
    for k, v in model_overrides.items():
        setattr(cfg.model, k, v)
    return cfg.validate()
