"""Few-shot evaluation over a fixed, seeded episode list: the library behind ``python -m hr2g.evaluate``.

Every test video's encoder features are computed once (test-time sampling is deterministic:
centre frame per segment, centre crop), then episodes run through the head in large batches.
The knowledge bank is frozen: evaluation asserts it is bit-identical afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from hr2g.config import Config
from hr2g.data.base import VideoDataset, VideoReadError
from hr2g.data.episodes import ClassExhausted, EpisodeSampler, EpisodeSpec
from hr2g.model.model import HR2G

log = logging.getLogger("hr2g.evaluate")


@dataclass
class EvalResult:
    accuracy: float  # mean episode accuracy in [0, 1]
    ci95: float  # half-width of the 95% confidence interval: 1.96 * s / sqrt(episodes), s the sample std
    episodes: int
    per_episode: np.ndarray = field(repr=False)  # [episodes] accuracy of each episode
    skipped_videos: dict[str, str] = field(default_factory=dict)  # unreadable videos: key -> reason


class NoEpisodesLeft(ValueError):
    """Unreadable videos left no episode that can be scored; ``skipped_videos`` lists them."""

    def __init__(self, message: str, skipped_videos: dict[str, str] | None = None):
        super().__init__(message)
        self.skipped_videos = dict(skipped_videos or {})


def unreadable_summary(failed: dict[str, str], limit: int = 5) -> str:
    """``failed`` (video -> why it could not be read) as one line that names the first ``limit``."""
    named = "; ".join(f"{k} ({why})" for k, why in list(failed.items())[:limit])
    more = f"; and {len(failed) - limit} more" if len(failed) > limit else ""
    return f"{len(failed)} unreadable video{'s' * (len(failed) != 1)}: {named}{more}"


def write_unreadable(path, failed: dict[str, str]) -> None:
    """``failed`` as a JSON object video -> reason, sorted, written whole or not at all (the same
    file ``hr2g.train`` writes beside its checkpoints)."""
    from hr2g.checkpoint import write_text_atomic

    write_text_atomic(path, json.dumps(dict(sorted(failed.items())), indent=2) + "\n")


def require_finite_logits(logits: torch.Tensor, what: str) -> None:
    """Refuse NaN / inf logits ``[E, L, N]``: their argmax is class 0, so a diverged or corrupt model
    would silently score exactly chance (queries are class-major) and predict the first class."""
    bad = ~torch.isfinite(logits).flatten(1).all(-1)  # [E]
    if bad.any():
        raise FloatingPointError(f"{what}: the model gives non-finite logits in {int(bad.sum())} of {len(bad)} episodes: "
                                 "its weights have diverged or the checkpoint is corrupt")


def confidence95(acc: np.ndarray) -> float:
    """Half-width of the normal 95% interval of the mean episode accuracy. The sample std (ddof=1):
    the population std understates it by sqrt((n-1)/n), 29% at 2 episodes, 0.005% at 10,000."""
    return float(1.96 * acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else 0.0


@torch.no_grad()
def encode_dataset(model: HR2G, dataset: VideoDataset, indices: list[int], device: torch.device, amp: bool,
                   batch_videos: int = 32, progress: bool = False) -> tuple[dict[int, int], torch.Tensor, dict[str, str]]:
    """Encoder features of ``indices`` (test-time sampling): (index -> row, feats [V, T, C], failures)."""
    rng = np.random.default_rng(0)  # unused by test-time sampling; required by the signature
    rows: dict[int, int] = {}
    chunks, failed = [], {}
    starts = range(0, len(indices), batch_videos)
    for start in tqdm(starts, desc="encoding videos", disable=not progress, dynamic_ncols=True):
        chunk = indices[start : start + batch_videos]
        ok, clips = [], []
        for i, r in zip(chunk, dataset.clips(chunk, False, rng)):  # one batched decode per chunk
            if isinstance(r, VideoReadError):
                failed[dataset.key(i)] = r.why
                log.warning("skipping unreadable video %s (%s)", r.path, r.why)
            else:
                ok.append(i)
                clips.append(r)
        if not clips:
            continue
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            chunks.append(model.encode_videos(torch.stack(clips).to(device)).float())
        for i in ok:
            rows[i] = len(rows)
    # none encoded: [0, T, C] on the model's device, so encode_for_episodes' cat with the first
    # pass's features works on CUDA too (a CPU torch.zeros(0) only concatenates with CPU tensors)
    feats = torch.cat(chunks) if chunks else torch.zeros(0, model.frames, model.dim, device=device)
    return rows, feats, failed


class EncodedVideos:
    """Encoder features of one dataset's videos under one model, encoded as evaluations need them
    and kept: ``evaluate --shots 1 5`` used to decode and encode the split once per shot."""

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}  # video index -> row of feats
        self.feats: torch.Tensor | None = None
        self.failed: dict[str, str] = {}  # path -> why it could not be read
        self.tried: set[int] = set()

    def _encode(self, model: HR2G, dataset: VideoDataset, indices: list[int], device: torch.device, amp: bool,
                progress: bool) -> None:
        rows, feats, failed = encode_dataset(model, dataset, indices, device, amp, progress=progress)
        offset = 0 if self.feats is None else len(self.feats)
        self.rows.update({i: r + offset for i, r in rows.items()})
        self.feats = feats if self.feats is None else torch.cat([self.feats, feats])
        self.failed.update(failed)
        self.tried.update(indices)

    def ensure(self, model: HR2G, dataset: VideoDataset, needed: list[int], device: torch.device, amp: bool,
               progress: bool = False) -> tuple[dict[int, int], torch.Tensor, dict[str, str], set[int]]:
        """The videos ``needed`` encoded (those not yet tried); once any video has failed, the rest
        of the split too, because repaired episodes draw replacements from all of it.  Returns
        (index -> row, feats, failures, indices without features)."""
        todo = sorted(set(needed) - self.tried)
        if todo or self.feats is None:
            self._encode(model, dataset, todo, device, amp, progress)
        if self.failed:
            rest = sorted(set(range(len(dataset))) - self.tried - set(dataset.unavailable))  # known missing: never drawn
            if rest:
                self._encode(model, dataset, rest, device, amp, progress)
        bad = set(range(len(dataset))) - set(self.rows) if self.failed else set()
        return self.rows, self.feats, self.failed, bad


def encode_for_episodes(model: HR2G, dataset: VideoDataset, needed: list[int], device: torch.device, amp: bool,
                        progress: bool = False) -> tuple[dict[int, int], torch.Tensor, dict[str, str], set[int]]:
    """:func:`encode_dataset` of the videos the episodes use (:meth:`EncodedVideos.ensure`, once)."""
    return EncodedVideos().ensure(model, dataset, needed, device, amp, progress)


def repair(spec: EpisodeSpec, bad: set[int], sampler: EpisodeSampler, rng: np.random.Generator) -> EpisodeSpec | None:
    """Replace unreadable videos (``bad``) of an episode with other videos of the same class;
    None if a class has too few readable videos (the episode cannot be evaluated as drawn)."""
    used = set(spec.support.tolist() + spec.query.tolist())
    if not used & bad:
        return spec

    def fix(arr: np.ndarray) -> np.ndarray:
        arr, per = arr.copy(), len(arr) // len(spec.classes)
        for j, v in enumerate(arr):
            if int(v) in bad:
                arr[j] = sampler.replacement(int(spec.classes[j // per]), used, bad, rng)
                used.add(int(arr[j]))
        return arr

    try:
        return EpisodeSpec(spec.classes, fix(spec.support), fix(spec.query))
    except ClassExhausted:
        return None


def repair_episodes(specs: list[EpisodeSpec], bad: set[int], sampler: EpisodeSampler,
                    rng: np.random.Generator) -> list[EpisodeSpec]:
    """:func:`repair` every episode; those that cannot be repaired are dropped, with a warning
    (the accuracy is then over fewer episodes, and says so in its count).  ValueError if none is left."""
    fixed = [repair(s, bad, sampler, rng) for s in specs]
    kept = [s for s in fixed if s is not None]
    need = sampler.k_shot + sampler.q_query
    what = f"{sampler.split}, {sampler.n_way}-way {sampler.k_shot}-shot"
    if len(kept) < len(fixed):
        log.warning("%s: %d of %d episodes dropped: a class of theirs has fewer than %d readable videos",
                    what, len(fixed) - len(kept), len(fixed), need)
    if not kept:
        raise NoEpisodesLeft(f"{what}: every episode has a class with fewer than {need} readable videos")
    return kept


@torch.no_grad()
def episode_accuracies(model: HR2G, feats: torch.Tensor, rows: dict[int, int], specs: list[EpisodeSpec],
                       text_all: torch.Tensor, n_way: int, k_shot: int, q_query: int, batch_episodes: int, amp: bool,
                       progress: bool = False) -> np.ndarray:
    """Per-episode accuracy of ``specs`` from cached encoder features ``feats`` (video index -> row
    ``rows``), ``batch_episodes`` episodes per head call; ``text_all`` holds every class's text feature."""
    device = feats.device
    labels = torch.arange(n_way, device=device).repeat_interleave(q_query)  # [L], class-major queries
    accs = []
    bar = tqdm(range(0, len(specs), batch_episodes), desc=f"{n_way}-way {k_shot}-shot episodes", disable=not progress,
               dynamic_ncols=True)
    for start in bar:
        batch = specs[start : start + batch_episodes]
        sup = torch.as_tensor(np.stack([[rows[int(i)] for i in s.support] for s in batch]), device=device)  # [E, N*K]
        qry = torch.as_tensor(np.stack([[rows[int(i)] for i in s.query] for s in batch]), device=device)  # [E, L]
        cls = torch.as_tensor(np.stack([s.classes for s in batch]), device=device)  # [E, N]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model.head(feats[sup], feats[qry], text_all[cls], k_shot)  # logits [E, L, N]
        require_finite_logits(out.logits, f"{n_way}-way {k_shot}-shot episodes {start}-{start + len(batch) - 1}")
        accs.append((out.logits.argmax(-1) == labels).float().mean(-1).cpu())
    return torch.cat(accs).numpy()


@torch.no_grad()
def evaluate_model(model: HR2G, dataset: VideoDataset, cfg: Config, episodes: int, seed: int, k_shot: int,
                   n_way: int | None = None, q_query: int | None = None, batch_episodes: int | None = None,
                   progress: bool = True, encoded: EncodedVideos | None = None, split: str = "evaluation") -> EvalResult:
    """Mean accuracy and 95% CI of ``model`` over ``episodes`` seeded N-way K-shot episodes.
    ``encoded``: features to reuse and extend, for several evaluations of this model on ``dataset``;
    ``split``: the split's name in warnings and errors."""
    n_way = n_way or cfg.data.n_way
    q_query = q_query or cfg.data.test_q_query
    batch_episodes = batch_episodes or cfg.eval.batch_episodes
    sampler = EpisodeSampler.for_dataset(dataset, n_way, k_shot, q_query, split=split)
    specs = sampler.fixed(episodes, seed)
    was_training = model.training
    model.eval()
    try:  # a failure (an unrepairable split, a diverged model) leaves the model as it came
        device = next(model.parameters()).device
        amp = cfg.train.amp and device.type == "cuda"
        bank_before = model.ikt.bank.clone() if model.ikt is not None else None
        needed = sorted({int(i) for s in specs for i in np.concatenate([s.support, s.query])})
        rows, feats, failed, bad = (encoded or EncodedVideos()).ensure(model, dataset, needed, device, amp, progress)
        failed = dict(failed)  # this result's own copy: a later evaluation may add to the cache's
        if failed:
            rng = np.random.default_rng([seed, 1])  # repairs are seeded too: same episodes on every run
            try:
                specs = repair_episodes(specs, bad, sampler, rng)
            except NoEpisodesLeft as exc:
                exc.skipped_videos = failed  # the caller still lists them
                raise
        text_all = model.text_features(dataset.class_names)  # [classes, C]
        acc = episode_accuracies(model, feats, rows, specs, text_all, n_way, k_shot, q_query, batch_episodes, amp, progress)
        if bank_before is not None and not torch.equal(bank_before, model.ikt.bank):
            raise AssertionError("evaluation changed the knowledge bank; it must be frozen at test time")
    finally:
        model.train(was_training)
    return EvalResult(float(acc.mean()), confidence95(acc), len(acc), acc, failed)


def load_model(ckpt: dict, device: torch.device, path: str = "?") -> tuple[HR2G, Config]:
    """The model and config of a loaded checkpoint (``path``: named in errors).  ValueError if this
    version of hr2g cannot rebuild it."""
    from hr2g.checkpoint import config_of, load_weights

    cfg = config_of(ckpt, path)
    # the checkpoint holds every weight, frozen CLIP included: build the tower with random init
    # instead of loading (offline: failing to download) pretrained weights only to overwrite them
    model = HR2G(dataclasses.replace(cfg.model, pretrained=None), cfg.data.frames)
    load_weights(model, ckpt["model"], path)
    return model.to(device).eval(), cfg
