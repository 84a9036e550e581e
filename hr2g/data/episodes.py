"""Episodic sampling: N-way K-shot episodes with Q queries per class, seeded and reproducible.

Supports are laid out class-major (support ``n*K + k`` is shot k of episode class n), queries too
(``n*Q + j``), so class-level pooling is a reshape.  Test episode lists are a pure function of
(dataset labels, N, K, Q, seed, count): the same seed gives the same 10,000 episodes everywhere.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from hr2g.data.base import VideoDataset, VideoReadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSpec:
    classes: np.ndarray  # [N] dataset labels of the episode's classes (episode class n = classes[n])
    support: np.ndarray  # [N*K] video indices, class-major
    query: np.ndarray  # [N*Q] video indices, class-major


@dataclass
class Episode:
    support: torch.Tensor  # [N*K, T, 3, H, W]
    query: torch.Tensor  # [N*Q, T, 3, H, W]
    support_labels: torch.Tensor  # [N*K] episode-local labels 0..N-1
    query_labels: torch.Tensor  # [N*Q]
    classes: torch.Tensor  # [N] dataset labels
    class_names: list[str]  # [N]


@dataclass
class ReadStats:
    """Unreadable videos seen so far: skipped, counted, reported -- never fatal."""

    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    bad: set[int] = field(default_factory=set)  # indices of the failed videos in this dataset
    quiet: bool = False  # True: the caller logs the failures (one warning per video across worker processes)
    exhausted: set[str] = field(default_factory=set)  # classes with too few readable videos for an episode

    @property
    def count(self) -> int:
        return len(self.failed)


class ClassExhausted(RuntimeError):
    """A class has too few readable videos left to fill its part of an episode."""

    def __init__(self, label: int):
        super().__init__(f"class {label}: no readable video left to replace an unreadable one")
        self.label = label


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from a dataset's labels.

    ``exclude``: indices of videos never to draw (known missing); a class counts only its others.
    """

    def __init__(self, labels: np.ndarray, n_way: int, k_shot: int, q_query: int, split: str = "dataset",
                 exclude=frozenset()):
        labels = np.asarray(labels).copy()
        if len(exclude):
            labels[np.fromiter(exclude, dtype=np.int64)] = -1  # below every label: dropped below
        self.split = split
        for name, val in (("n_way", n_way), ("k_shot", k_shot), ("q_query", q_query)):
            if int(val) < 1:
                raise ValueError(f"{name} must be >= 1, got {val}")
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        need = self.k_shot + self.q_query
        classes, counts = np.unique(labels[labels >= 0], return_counts=True)
        self.classes = classes[counts >= need]
        if len(self.classes) < self.n_way:
            most = int(counts.max()) if len(counts) else 0
            by_size = np.sort(counts)[::-1]  # the n-th largest class bounds k_shot + q_query at n_way = n
            hints = [f"k_shot + q_query <= {int(by_size[self.n_way - 1])} at n_way={self.n_way}"] if len(by_size) >= self.n_way else []
            hints += [f"n_way <= {len(self.classes)} at k_shot + q_query = {need}"] if len(self.classes) else []
            allowed = " or ".join(hints) or "nothing (no class has a video)"
            raise ValueError(
                f"{split}: {self.n_way}-way {self.k_shot}-shot with {self.q_query} queries needs {self.n_way} classes with "
                f">= {need} videos each, but only {len(self.classes)} of {len(classes)} classes have that many "
                f"(largest class: {most} videos); allowed: {allowed}")
        self._by_class = {int(c): np.flatnonzero(labels == c) for c in self.classes}

    @classmethod
    def for_dataset(cls, dataset: VideoDataset, n_way: int, k_shot: int, q_query: int, split: str = "dataset"):
        """A sampler over ``dataset``'s videos that exist (``dataset.unavailable`` excluded)."""
        return cls(dataset.labels, n_way, k_shot, q_query, split, exclude=dataset.unavailable)

    def sample(self, rng: np.random.Generator) -> EpisodeSpec:
        classes = rng.choice(self.classes, size=self.n_way, replace=False)
        sup, qry = [], []
        for c in classes:
            vids = rng.choice(self._by_class[int(c)], size=self.k_shot + self.q_query, replace=False)
            sup.append(vids[: self.k_shot])
            qry.append(vids[self.k_shot :])
        return EpisodeSpec(classes.astype(np.int64), np.concatenate(sup), np.concatenate(qry))

    def fixed(self, count: int, seed: int) -> list[EpisodeSpec]:
        """The seeded episode list used for evaluation (identical on every machine)."""
        rng = np.random.default_rng(seed)
        return [self.sample(rng) for _ in range(count)]

    def fixed_at(self, index: int, seed: int) -> EpisodeSpec:
        """``fixed(index + 1, seed)[index]`` without keeping the episodes before it: the list is one
        seeded stream, so they are still drawn (~35 µs each), but a plot of episode 1,000,000 no
        longer holds the ~630 MB of the other 999,999."""
        if index < 0:
            raise ValueError(f"episode index {index}: expected >= 0")
        rng = np.random.default_rng(seed)
        for _ in range(index):
            self.sample(rng)
        return self.sample(rng)

    def videos_of(self, label: int) -> np.ndarray:
        """The videos episodes draw for class ``label`` (those found on disk)."""
        return self._by_class[int(label)]

    def replacement(self, label: int, exclude: set[int], bad: set[int], rng: np.random.Generator) -> int:
        pool = [int(v) for v in self._by_class[int(label)] if int(v) not in exclude and int(v) not in bad]
        if not pool:
            raise ClassExhausted(int(label))
        return int(rng.choice(pool))


# attempts at one training episode before giving up: redraws skip episodes with a class known to
# be exhausted at the cost of one sample() (~10 us), so this bounds a pathological split, not a slow one
MAX_ATTEMPTS = 10_000


def load_episode(dataset: VideoDataset, sampler: EpisodeSampler, spec: EpisodeSpec, train: bool,
                 rng: np.random.Generator, stats: ReadStats | None = None) -> Episode:
    """Decode an episode's clips; an unreadable video is logged, counted in ``stats`` and replaced
    by another video of the same class.  An episode with a class left without enough readable
    videos is drawn again (the class is reported once in ``stats.exhausted``).

    What comes out depends on ``rng`` and on which videos are unreadable, never on which of them
    this process already knew about (DataLoader workers and resumed runs each learn on their own):
    every clip draws its frames and augmentation from its own generator, a replacement is drawn
    from the class's untried videos (a known-bad draw is skipped, not decoded: the same outcome
    as trying it), and a redrawn episode comes from a generator of its attempt number.
    """
    stats = stats if stats is not None else ReadStats()  # one ReadStats per dataset
    seed = int(rng.integers(2**63))  # the only draw from the caller's rng
    for attempt in range(MAX_ATTEMPTS):
        arng = np.random.default_rng([seed, attempt])
        if attempt:
            spec = sampler.sample(arng)
        try:
            return _load_episode(dataset, sampler, spec, train, arng, stats)
        except ClassExhausted as exc:
            name = dataset.class_names[exc.label]
            if name not in stats.exhausted:
                stats.exhausted.add(name)
                if not stats.quiet:
                    log.warning("%s: class %r has too few readable videos left; no longer sampled", sampler.split, name)
            left = len(sampler.classes) - len(stats.exhausted)
            if left < sampler.n_way:
                raise ValueError(f"{sampler.split}: only {left} classes keep >= {sampler.k_shot + sampler.q_query} "
                                 f"readable videos, fewer than n_way={sampler.n_way}: too many unreadable videos "
                                 "(see the warnings)") from None
    raise ValueError(f"{sampler.split}: no episode without an exhausted class in {MAX_ATTEMPTS} draws "
                     f"({len(stats.exhausted)} of {len(sampler.classes)} classes have too few readable videos)")


def _load_episode(dataset: VideoDataset, sampler: EpisodeSampler, spec: EpisodeSpec, train: bool,
                  rng: np.random.Generator, stats: ReadStats) -> Episode:
    bad = stats.bad
    clip_seed = int(rng.integers(2**63))

    def clip_rng(idx: int) -> np.random.Generator:  # a clip's draws: its own, whatever else is decoded
        return np.random.default_rng([clip_seed, idx])

    need = len(spec.support) // len(spec.classes) + len(spec.query) // len(spec.classes)
    for c in spec.classes:  # known too few: fail now, as decoding would later (no decode wasted)
        if sum(int(v) not in bad for v in sampler.videos_of(int(c))) < need:
            raise ClassExhausted(int(c))
    used = set(int(v) for v in np.concatenate([spec.support, spec.query]))

    def read(idx: int, label: int) -> torch.Tensor:
        while True:
            if idx in bad:  # known unreadable: no second failed decode; the next draw as if it failed
                idx = sampler.replacement(label, used, set(), rng)
                used.add(idx)
                continue
            try:
                return dataset.clip(idx, train, clip_rng(idx))
            except VideoReadError as err:
                stats.failed[dataset.key(idx)] = err.why
                if not stats.quiet:
                    log.warning("skipping unreadable video %s (%s); %d skipped so far", err.path, err.why, stats.count)
                bad.add(idx)
                idx = sampler.replacement(label, used, set(), rng)
                used.add(idx)

    k, q = len(spec.support) // len(spec.classes), len(spec.query) // len(spec.classes)
    vids = [int(v) for v in spec.support] + [int(v) for v in spec.query]
    labels = [int(spec.classes[i // k]) for i in range(len(spec.support))] + [int(spec.classes[i // q]) for i in range(len(spec.query))]
    # one batched decode for the whole episode (one DALI run); failures fall back to read(),
    # which records them and draws replacements
    todo = [j for j, v in enumerate(vids) if v not in bad]
    got: list[torch.Tensor | None] = [None] * len(vids)
    for j, r in zip(todo, dataset.clips([vids[j] for j in todo], train, [clip_rng(vids[j]) for j in todo])):
        if isinstance(r, VideoReadError):
            stats.failed[dataset.key(vids[j])] = r.why
            bad.add(vids[j])
            if not stats.quiet:
                log.warning("skipping unreadable video %s (%s); %d skipped so far", r.path, r.why, stats.count)
        else:
            got[j] = r
    frames = [c if c is not None else read(v, lab) for c, v, lab in zip(got, vids, labels)]
    support, query = torch.stack(frames[: len(spec.support)]), torch.stack(frames[len(spec.support) :])
    n = len(spec.classes)
    return Episode(
        support=support, query=query,
        support_labels=torch.arange(n).repeat_interleave(k),
        query_labels=torch.arange(n).repeat_interleave(q),
        classes=torch.as_tensor(spec.classes),
        class_names=[dataset.class_names[int(c)] for c in spec.classes],
    )
