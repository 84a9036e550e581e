"""``python -m hr2g.evaluate``: N-way K-shot accuracy with a 95% CI over fixed, seeded episodes.

    python -m hr2g.evaluate --checkpoint runs/tiny/best.pt                 # 10,000 episodes, 1- and 5-shot
    python -m hr2g.evaluate --checkpoint C --shots 1 --episodes 1000 --split val
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("hr2g.evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hr2g.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by hr2g.train (last.pt or best.pt)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="K values to evaluate (default: 1 5)")
    p.add_argument("--ways", type=int, default=None, help="N, classes per episode (default: the checkpoint's)")
    p.add_argument("--queries", type=int, default=None, help="queries per class (default: data.test_q_query)")
    p.add_argument("--episodes", type=int, default=None, help="number of test episodes (default: eval.episodes, 10000)")
    p.add_argument("--seed", type=int, default=None, help="seed of the episode list (default: eval.seed)")
    p.add_argument("--split", default=None, choices=("train", "val", "test"), help="split to evaluate (default: test)")
    p.add_argument("--batch-episodes", type=int, default=None, help="episodes per batched head call")
    p.add_argument("--data-root", default=None, help="override the dataset root stored in the checkpoint")
    p.add_argument("--split-dir", default=None, help="override the split folder stored in the checkpoint")
    p.add_argument("--backend", default=None, help="op backend override: auto, triton, ext, torch")
    p.add_argument("--fused", action="store_true", help="use the fused kernels where they apply (backend auto)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from hr2g.cli import setup_logging

    setup_logging()
    from hr2g import checkpoint
    from hr2g.data.build import build_dataset
    from hr2g.evaluation import evaluate_model, load_model
    from hr2g.training import resolve_device

    device = resolve_device(args.device)
    try:
        ckpt = checkpoint.load(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    model, cfg = load_model(ckpt, device)
    if args.fused or args.backend:
        backend = args.backend or "auto"
        cfg.model.backend = backend
        for m in model.modules():
            if hasattr(m, "backend"):
                m.backend = backend
    for key, val in (("data_root", args.data_root), ("split_dir", args.split_dir)):
        if val:
            setattr(cfg.data, key, val)
    if args.ways:
        cfg.data.n_way = args.ways
    if args.queries:
        cfg.data.test_q_query = args.queries
    try:
        cfg.validate()
        dataset = build_dataset(cfg.data, args.split or cfg.eval.split)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    episodes = args.episodes or cfg.eval.episodes
    seed = cfg.eval.seed if args.seed is None else args.seed
    results = []
    for k in args.shots:
        try:
            res = evaluate_model(model, dataset, cfg, episodes=episodes, seed=seed, k_shot=k,
                                 batch_episodes=args.batch_episodes, progress=not args.no_progress)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        row = {"dataset": cfg.data.dataset, "split": args.split or cfg.eval.split, "n_way": cfg.data.n_way, "k_shot": k,
               "episodes": res.episodes, "seed": seed, "accuracy": round(100 * res.accuracy, 2), "ci95": round(100 * res.ci95, 2),
               "skipped_videos": len(res.skipped_videos), "device": str(device)}
        log.info("%d-way %d-shot: %.2f ± %.2f %% over %d episodes", cfg.data.n_way, k, row["accuracy"], row["ci95"], res.episodes)
        print(json.dumps(row))
        results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
