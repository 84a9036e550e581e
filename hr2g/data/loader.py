"""Training episode stream: the episode in slot ``slot`` of step ``step`` of ``epoch`` is a pure
function of (seed, epoch, step, slot) and of which videos are unreadable (not of which a process
has met: see :func:`hr2g.data.episodes.load_episode`), so a run resumed mid-epoch sees exactly the
episodes it would have seen, with any number of decoding workers, and ``W`` DDP ranks (rank r
takes its share of the slots) see exactly the episodes of one process taking all slots."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hr2g.data.base import VideoDataset
from hr2g.data.episodes import Episode, EpisodeSampler, ReadStats, load_episode


@dataclass
class ReadNews:
    """What one step's decoding learned: unreadable videos (key -> reason) and classes left with
    too few readable videos for an episode (names)."""

    failed: dict[str, str] = field(default_factory=dict)
    exhausted: set[str] = field(default_factory=set)


class EpisodeStream(Dataset):
    """Map-style: item ``step`` -> (episodes of ``slots``, what their decoding learned) for one epoch.

    Failures are returned, not logged: with decoding workers each process finds a bad video on its
    own, so the consumer logs each new one once.  ``known`` (key -> reason, from earlier epochs or
    the checkpoint) are never decoded again, in any worker."""

    def __init__(self, dataset: VideoDataset, sampler: EpisodeSampler, seed: int, epoch: int, steps: int,
                 slots: range = range(1), train: bool = True, known: dict[str, str] | None = None):
        self.dataset, self.sampler, self.seed, self.epoch, self.steps = dataset, sampler, seed, epoch, steps
        self.slots, self.train = slots, train
        self.stats = ReadStats(quiet=True)  # per process: known-bad videos are not decoded twice
        if known:
            self.stats.failed.update(known)
            self.stats.bad.update(i for i in range(len(dataset)) if dataset.key(i) in known)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[list[Episode], ReadNews]:
        before, exhausted = set(self.stats.failed), set(self.stats.exhausted)
        episodes = []
        for slot in self.slots:
            rng = np.random.default_rng([self.seed, self.epoch, step, slot])
            episodes.append(load_episode(self.dataset, self.sampler, self.sampler.sample(rng), self.train, rng, self.stats))
        return episodes, ReadNews({k: v for k, v in self.stats.failed.items() if k not in before},
                                  self.stats.exhausted - exhausted)


def episode_loader(stream: EpisodeStream, start_step: int, workers: int) -> DataLoader:
    """Iterate the stream from ``start_step`` with ``workers`` background processes."""
    indices = list(range(start_step, len(stream)))
    return DataLoader(torch.utils.data.Subset(stream, indices), batch_size=None, shuffle=False, num_workers=workers,
                      persistent_workers=False, prefetch_factor=2 if workers else None)
