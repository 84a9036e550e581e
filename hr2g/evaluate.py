"""``python -m hr2g.evaluate``: N-way K-shot accuracy with a 95% CI over fixed, seeded episodes.

    python -m hr2g.evaluate --checkpoint runs/tiny/best.pt                 # 10,000 episodes, 1- and 5-shot
    python -m hr2g.evaluate --checkpoint C --shots 1 --episodes 1000 --split val
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hr2g.cli import seed_arg

log = logging.getLogger("hr2g.evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.inference import add_checkpoint_args, add_data_args

    p = argparse.ArgumentParser(prog="python -m hr2g.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    add_data_args(p)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="K values to evaluate (default: 1 5)")
    p.add_argument("--ways", type=int, default=None, help="N, classes per episode (default: the checkpoint's)")
    p.add_argument("--queries", type=int, default=None, help="queries per class (default: data.test_q_query)")
    p.add_argument("--episodes", type=int, default=None, help="number of test episodes (default: eval.episodes, 10000)")
    p.add_argument("--seed", type=seed_arg, default=None, help="seed of the episode list (default: eval.seed)")
    p.add_argument("--batch-episodes", type=int, default=None, help="episodes per batched head call")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from hr2g.checkpoint import write_text_atomic
    from hr2g.cli import setup_logging, writable_file
    from hr2g.config import set_field
    from hr2g.data.episodes import EpisodeSampler
    from hr2g.evaluation import EncodedVideos, NoEpisodesLeft, evaluate_model, unreadable_summary
    from hr2g.inference import dataset_from_args, load_trained

    setup_logging()
    if bad := [k for k in args.shots if k < 1]:
        raise SystemExit(f"error: --shots expects integers >= 1, got {bad}")
    if args.json:
        writable_file("--json", args.json, {"--checkpoint": args.checkpoint})  # before the evaluation, not after it
    model, cfg, device = load_trained(args)
    for flag, field, value in (("--ways", "data.n_way", args.ways), ("--queries", "data.test_q_query", args.queries),
                               ("--episodes", "eval.episodes", args.episodes),
                               ("--batch-episodes", "eval.batch_episodes", args.batch_episodes)):
        if value is not None:
            try:
                set_field(cfg, field, value)
                cfg.validate()
            except ValueError as exc:
                raise SystemExit(f"error: {flag}: {exc}") from None
    dataset = dataset_from_args(cfg, args, device)
    split = args.split or cfg.eval.split
    seed = cfg.eval.seed if args.seed is None else args.seed
    for k in args.shots:  # every requested shape first: an impossible 5-shot stops before the 1-shot work
        try:
            EpisodeSampler.for_dataset(dataset, cfg.data.n_way, k, cfg.data.test_q_query, split=split)
        except ValueError as exc:
            # the episode shape is --ways x --shots x --queries: --ways 40 had been blamed on --shots 1
            raise SystemExit(f"error: --ways / --shots {k} / --queries: {exc}") from None
    results, listed, written = [], [], 0  # listed: the rows with the names of the unreadable videos (--json)
    encoded = EncodedVideos()  # each video decoded and encoded once, for every shot setting
    try:
        for k in args.shots:
            try:
                res = evaluate_model(model, dataset, cfg, episodes=cfg.eval.episodes, seed=seed, k_shot=k,
                                     batch_episodes=cfg.eval.batch_episodes, progress=not args.no_progress,
                                     encoded=encoded, split=split)
            except NoEpisodesLeft as exc:
                raise SystemExit(f"error: {exc}; {unreadable_summary(exc.skipped_videos)}") from None
            except (ValueError, FloatingPointError) as exc:
                raise SystemExit(f"error: {exc}") from None
            if res.skipped_videos and not results:  # the cache shares them: one warning for all shots
                where = f" (all of them in {args.json})" if args.json else " (--json FILE lists all of them)"
                log.warning("%s, replaced by other videos of their class%s", unreadable_summary(res.skipped_videos),
                            where if len(res.skipped_videos) > 5 else "")
            row = {"dataset": cfg.data.dataset, "split": split, "n_way": cfg.data.n_way, "k_shot": k,
                   "episodes": res.episodes, "seed": seed, "accuracy": round(100 * res.accuracy, 2),
                   "ci95": round(100 * res.ci95, 2), "skipped_videos": len(res.skipped_videos),
                   "missing_videos": len(dataset.unavailable),  # listed, not on disk: never drawn
                   "device": str(device)}
            log.info("%d-way %d-shot: %.2f ± %.2f %% over %d episodes", cfg.data.n_way, k, row["accuracy"], row["ci95"],
                     res.episodes)
            print(json.dumps(row), flush=True)
            results.append(row)
            # video -> why; the keys are relative to the data root (the warnings give whole paths), so
            # the row names that root: a --json file read elsewhere still says where the videos were
            root = getattr(dataset, "root", None)
            listed.append({**row, "videos_root": None if root is None else str(Path(root).resolve()),
                           "unreadable_videos": dict(sorted(res.skipped_videos.items()))})
            if args.json:  # after every shot: a crash or Ctrl-C keeps the finished ones
                write_text_atomic(args.json, json.dumps(listed, indent=2))
                written = len(results)
    except KeyboardInterrupt:
        done = f"{len(results)} of {len(args.shots)} shot settings finished"
        saved = f", {written} written to {args.json}" if args.json and written else ""
        print(f"hr2g.evaluate: interrupted; {done}{saved}", file=sys.stderr)
        raise SystemExit(130) from None
    return results


if __name__ == "__main__":
    main()
