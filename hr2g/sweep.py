"""``python -m hr2g.sweep``: accuracy over a grid of N-way x K-shot settings (paper Fig. 8).

    python -m hr2g.sweep --checkpoint runs/tiny/best.pt --ways 5 10 --shots 1 2 3 4 5 --episodes 2000
    python -m hr2g.sweep --checkpoint C --ways 5 6 7 8 9 10 --shots 1 --out results/fig8_nway

Every video the grid needs is encoded once, for all grid points together; each point then runs
its own fixed, seeded episode list through the batched head.  A grid point gives exactly what
``python -m hr2g.evaluate --ways N --shots K`` gives with the same seed and episode count (the
episode lists are identical; tests/test_sweep.py checks it episode by episode).  Writes
``sweep.csv``, ``sweep.json`` and ``sweep.md`` (a ways x shots grid of accuracy ± 95% CI), and
``unreadable_videos.json`` (video -> why) when videos could not be read.  A Ctrl-C writes the
points finished so far, the header saying so.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hr2g.cli import seed_arg
from hr2g.config import Config
from hr2g.data.base import VideoDataset
from hr2g.data.episodes import EpisodeSampler
from hr2g.evaluation import (NoEpisodesLeft, confidence95, encode_for_episodes, episode_accuracies, repair_episodes,
                             unreadable_summary, write_unreadable)
from hr2g.model.model import HR2G

log = logging.getLogger("hr2g.sweep")


@dataclass
class SweepPoint:
    n_way: int
    k_shot: int
    q_query: int
    episodes: int
    accuracy: float | None  # mean episode accuracy, %; None where no episode could be scored
    ci95: float | None  # half-width of the 95% confidence interval, %; None with accuracy
    chance: float  # 100 / N, %
    seed: int
    split: str
    per_episode: np.ndarray | None = field(default=None, repr=False)  # [episodes] accuracy of each episode (not tabulated)

    def row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_episode"}


class GridError(ValueError):
    """A grid point that the split cannot sample (too few classes or videos per class)."""


def _samplers(dataset: VideoDataset, ways: list[int], shots: list[int], q_query: int, split: str) -> dict:
    """One sampler per grid point; an impossible point stops before anything is encoded."""
    samplers = {}
    for n in ways:
        for k in shots:
            try:
                samplers[n, k] = EpisodeSampler.for_dataset(dataset, n, k, q_query, split=split)
            except ValueError as exc:
                raise GridError(f"grid point {n}-way {k}-shot cannot be sampled: {exc}") from None
    return samplers


@torch.no_grad()
def sweep(model: HR2G, dataset: VideoDataset, cfg: Config, ways: list[int], shots: list[int], episodes: int, seed: int,
          q_query: int | None = None, batch_episodes: int | None = None, split: str = "test",
          progress: bool = True, unreadable: dict[str, str] | None = None,
          done: list[SweepPoint] | None = None) -> list[SweepPoint]:
    """Accuracy ± 95% CI of ``model`` at every (N, K) of ``ways`` x ``shots``, features encoded once.
    ``unreadable``: a dict that gets the videos that could not be read (video -> why), also when
    the sweep then fails for lack of readable videos; ``done``: a list that gets each point as it
    is finished, also when the sweep is then interrupted."""
    q_query = q_query or cfg.data.test_q_query
    batch_episodes = batch_episodes or cfg.eval.batch_episodes
    samplers = _samplers(dataset, ways, shots, q_query, split)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    amp = cfg.train.amp and device.type == "cuda"
    bank_before = model.ikt.bank.clone() if model.ikt is not None else None
    specs = {nk: s.fixed(episodes, seed) for nk, s in samplers.items()}
    needed = sorted({int(i) for ss in specs.values() for s in ss for i in np.concatenate([s.support, s.query])})
    log.info("%d grid points, %d episodes each: encoding %d of the split's %d videos once", len(specs), episodes,
             len(needed), len(dataset))
    rows, feats, failed, bad = encode_for_episodes(model, dataset, needed, device, amp, progress)
    if unreadable is not None:
        unreadable.update(failed)
    if failed:
        log.warning("%s, replaced by other videos of their class", unreadable_summary(failed))
        for nk in specs:  # the same seeded repair rng per point as evaluate_model: identical episodes
            rng = np.random.default_rng([seed, 1])
            try:
                specs[nk] = repair_episodes(specs[nk], bad, samplers[nk], rng)
            except NoEpisodesLeft as exc:  # this point has no episode left; the others still count
                log.warning("grid point %d-way %d-shot skipped: %s", *nk, exc)
                specs[nk] = []
        if not any(specs.values()):
            raise ValueError(f"no grid point has an episode left after {len(failed)} unreadable videos "
                             f"(every class needs {max(k for _, k in specs)} + {q_query} readable videos at the largest shot)")
    text_all = model.text_features(dataset.class_names)  # [classes, C]
    results = [] if done is None else done
    for (n, k), ss in tqdm(specs.items(), desc="grid points", disable=not progress, dynamic_ncols=True):
        if not ss:
            results.append(SweepPoint(n, k, q_query, 0, None, None, round(100 / n, 2), seed, split, np.zeros(0)))
            continue
        acc = episode_accuracies(model, feats, rows, ss, text_all, n, k, q_query, batch_episodes, amp)
        point = SweepPoint(n, k, q_query, len(acc), round(100 * float(acc.mean()), 2), round(100 * confidence95(acc), 2),
                           round(100 / n, 2), seed, split, acc)
        log.info("%d-way %d-shot: %.2f ± %.2f %% (chance %.1f %%)", n, k, point.accuracy, point.ci95, point.chance)
        results.append(point)
    if bank_before is not None and not torch.equal(bank_before, model.ikt.bank):
        raise AssertionError("the sweep changed the knowledge bank; it must be frozen at test time")
    model.train(was_training)
    return results


def markdown_grid(points: list[SweepPoint]) -> str:
    """Rows N-way, columns K-shot, cells ``accuracy ± ci``."""
    ways = sorted({p.n_way for p in points})
    shots = sorted({p.k_shot for p in points})
    cell = {(p.n_way, p.k_shot): "no episode" if p.accuracy is None else f"{p.accuracy:.2f} ± {p.ci95:.2f}"
            for p in points}
    lines = ["| N-way \\ K-shot | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for n in ways:
        lines.append(f"| {n}-way | " + " | ".join(cell.get((n, k), "") for k in shots) + " |")
    return "\n".join(lines)


def write_tables(points: list[SweepPoint], out: Path, header: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "sweep.csv", "json": out / "sweep.json", "md": out / "sweep.md"}
    from hr2g.checkpoint import write_csv_atomic, write_text_atomic

    # each written whole or not at all: an interrupted write used to leave a truncated table
    write_csv_atomic(paths["csv"], list(points[0].row()), [p.row() for p in points])
    write_text_atomic(paths["json"], json.dumps([p.row() for p in points], indent=2) + "\n")
    write_text_atomic(paths["md"], f"{header}\n\n{markdown_grid(points)}\n")
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.inference import add_checkpoint_args, add_data_args

    p = argparse.ArgumentParser(prog="python -m hr2g.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    add_data_args(p)
    p.add_argument("--ways", type=int, nargs="+", default=[5], help="N values, classes per episode (default: 5)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="K values, supports per class (default: 1 2 3 4 5)")
    p.add_argument("--queries", type=int, default=None, help="queries per class (default: data.test_q_query)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per grid point (default: eval.episodes)")
    p.add_argument("--seed", type=seed_arg, default=None, help="seed of the episode lists (default: eval.seed)")
    p.add_argument("--batch-episodes", type=int, default=None, help="episodes per batched head call (default: eval.batch_episodes)")
    p.add_argument("--out", default=None, help="folder for sweep.csv / .json / .md (default: <checkpoint folder>/sweep)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    args = p.parse_args(argv)
    for flag, values in (("--ways", args.ways), ("--shots", args.shots)):
        low = 2 if flag == "--ways" else 1
        if any(v < low for v in values):
            p.error(f"{flag} expects integers >= {low}, got {values}")
    for flag, value in (("--queries", args.queries), ("--episodes", args.episodes), ("--batch-episodes", args.batch_episodes)):
        if value is not None and value < 1:
            p.error(f"{flag} expects an integer >= 1, got {value}")
    return args


def main(argv=None) -> list[SweepPoint]:
    args = parse_args(argv)
    from hr2g.cli import setup_logging, writable_dir
    from hr2g.inference import dataset_from_args, load_trained

    setup_logging()
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "sweep"
    if Path(args.checkpoint).is_file():  # a missing checkpoint is named by load_trained
        writable_dir("--out", out)  # before the grid is computed, not after
    model, cfg, device = load_trained(args)
    split = args.split or cfg.eval.split
    dataset = dataset_from_args(cfg, args, device)
    episodes = args.episodes or cfg.eval.episodes
    seed = cfg.eval.seed if args.seed is None else args.seed
    unreadable: dict[str, str] = {}
    done: list[SweepPoint] = []
    grid = len(set(args.ways)) * len(set(args.shots))
    try:
        points = sweep(model, dataset, cfg, sorted(set(args.ways)), sorted(set(args.shots)), episodes, seed,
                       q_query=args.queries, batch_episodes=args.batch_episodes, split=split, progress=not args.no_progress,
                       unreadable=unreadable, done=done)
    except GridError as exc:
        raise SystemExit(f"error: --ways / --shots / --queries: {exc}") from None
    except (ValueError, FloatingPointError) as exc:
        raise SystemExit(f"error: {exc}" + (f"; {unreadable_summary(unreadable)}" if unreadable else "")) from None
    except KeyboardInterrupt:  # was a traceback; the finished points are kept, each as a whole run would give it
        if not done:
            print(f"hr2g.sweep: interrupted before any grid point was finished; nothing written to {out}: run the "
                  "same command again", file=sys.stderr)
            raise SystemExit(130) from None
        paths = _write(done, out, args, cfg, split, seed, episodes, device, dataset, unreadable,
                       f"INTERRUPTED after {len(done)} of {grid} grid points, ")
        print(f"hr2g.sweep: interrupted; the {len(done)} of {grid} grid points finished are written to {paths['csv']}, "
              f"{paths['json']} and {paths['md']}; run the same command again for the whole grid", file=sys.stderr)
        raise SystemExit(130) from None
    _write(points, out, args, cfg, split, seed, episodes, device, dataset, unreadable, "")
    return points


def _write(points: list[SweepPoint], out: Path, args: argparse.Namespace, cfg: Config, split: str, seed: int,
           episodes: int, device: torch.device, dataset: VideoDataset, unreadable: dict[str, str],
           status: str) -> dict[str, Path]:
    """The tables of ``points`` (``status`` opens the header: what the grid is missing), the list of
    unreadable videos, and the header and grid printed."""
    # fewer than asked where unrepairable episodes were dropped; 0 at a point with none left
    scored = sorted({p.episodes for p in points if p.episodes})
    counts = "0" if not scored else str(scored[0]) if len(scored) == 1 else f"{scored[0]}-{scored[-1]}"
    per_point = f"{counts} episodes per point" + ("" if scored == [episodes] else f" (of {episodes} drawn)")
    empty = [f"{p.n_way}-way {p.k_shot}-shot" for p in points if not p.episodes]
    if empty:
        per_point += f", no episode left at {', '.join(empty)} (unreadable videos)"
    header = (f"{status}N-way K-shot accuracy (%) ± 95% CI, {cfg.data.dataset} {split} split, {per_point}, "
              f"{points[0].q_query} queries per class, seed {seed}, checkpoint {args.checkpoint}, device {device}")
    if unreadable:
        header += f", {len(unreadable)} unreadable videos replaced by others of their class (unreadable_videos.json)"
    if dataset.unavailable:
        header += f", {len(dataset.unavailable)} listed videos missing on disk (never drawn)"
    paths = write_tables(points, out, header)
    listing = out / "unreadable_videos.json"
    if unreadable:
        write_unreadable(listing, unreadable)
    elif listing.exists():  # a stale list from an earlier sweep into this folder would mislead
        listing.unlink()
    print(header)
    print(markdown_grid(points))
    if not status:
        print(f"wrote {paths['csv']}, {paths['json']}, {paths['md']}" + (f", {listing}" if unreadable else ""))
    return paths


if __name__ == "__main__":
    main()
