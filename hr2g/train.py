"""``python -m hr2g.train``: episodic training.

    python -m hr2g.train --fused                       # tiny model on the embedded synthetic dataset
    python -m hr2g.train --dataset hmdb51 --data-root DATA/hmdb51 --shots 1 --fused
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from pathlib import Path

from hr2g.cli import add_config_args, config_from_args, setup_logging, writable_dir
from hr2g.config import Config, absolute_data_paths


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hr2g.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--episodes-per-epoch", type=int, default=None, help="override train.episodes_per_epoch")
    p.add_argument("--out", default=None, help="output folder for checkpoints and logs (train.out_dir)")
    p.add_argument("--resume", default=None, metavar="CKPT|auto",
                   help="continue from a checkpoint (its settings, its folder unless --out; flags given now override), "
                        "or 'auto': <out>/last.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out folder that already holds a run")
    p.add_argument("--tensorboard", action="store_true", help="also log to <out>/tb for TensorBoard (train.tensorboard)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:  # which would win is anyone's guess: say so instead
        p.error("--resume continues a run and --overwrite starts afresh in its folder: pass one of them")
    return args


def resume_config(args: argparse.Namespace, cfg: Config) -> tuple[Config, str | None]:
    """(settings, checkpoint path) for ``--resume``: the checkpoint's settings, in the checkpoint's
    folder, with the flags given on this command line applied on top -- so ``--resume auto`` after
    ``--fused --epochs 3`` stays fused and 3 epochs long, and ``--epochs 5`` extends it."""
    from hr2g import checkpoint

    path = Path(cfg.train.out_dir) / "last.pt" if args.resume == "auto" else Path(args.resume)
    if args.resume == "auto" and not path.exists():
        return cfg, "auto"  # nothing to resume: train() starts afresh and says so
    try:
        base = checkpoint.config_of(checkpoint.load(path, mmap=True), path)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: --resume: {exc}") from None
    base.train.out_dir = str(path.parent)  # --out (in args.overrides) still wins
    resumed = config_from_args(args, base=base)
    named = [f"--{k} {getattr(args, k)}" for k in ("preset", "config") if getattr(args, k)]
    # data paths as a run stores them, absolute: relative ones differ in text only
    ignored = [d for d in absolute_data_paths(copy.deepcopy(cfg)).diff(absolute_data_paths(copy.deepcopy(resumed)))
               if not d.startswith("train.out_dir:")]
    if named and ignored:  # silently, --config e5.json (epochs: 5) said "nothing to train"
        logging.getLogger("hr2g.train").warning(
            "%s: not applied, a resumed run keeps its checkpoint's settings (with the flags and --set given): %s differ "
            "(theirs -> the run's); pass changes as flags or --set", " ".join(named), "; ".join(ignored))
    return resumed, str(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    extra = []
    if args.epochs is not None:
        extra.append(f"train.epochs={args.epochs}")
    if args.episodes_per_epoch is not None:
        extra.append(f"train.episodes_per_epoch={args.episodes_per_epoch}")
    if args.out:
        extra.append(f"train.out_dir={args.out}")
    if args.tensorboard:
        extra.append("train.tensorboard=true")
    args.overrides = extra + args.overrides
    cfg = config_from_args(args)
    resume = None
    if args.resume:
        cfg, resume = resume_config(args, cfg)
    writable_dir("--out", cfg.train.out_dir)
    from hr2g.distributed import episodes_per_rank

    try:  # torchrun's WORLD_SIZE, checked here: train() would check it too, after every rank's traceback
        episodes_per_rank(cfg.train.episodes_per_step, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    from hr2g.checkpoint import CheckpointWriteError
    from hr2g.errors import SetupError
    from hr2g.stopping import FinalTestSkipped, InterruptOnSignal, SignalInterrupt, TrainingStopped

    try:
        # outside the steps (setup, which has nothing to save, and after the loop) the first SIGINT /
        # SIGTERM ends the run at once and says so: a SIGTERM used to kill it without a word
        with InterruptOnSignal():
            from hr2g.training import train  # heavy imports after argument errors are reported

            return train(cfg, resume=resume, progress=not args.no_progress, overwrite=args.overwrite)
    except FinalTestSkipped as stop:  # training done and saved: nothing to resume
        print(f"hr2g.train: {stop}", file=sys.stderr)
        raise SystemExit(143 if stop.signal_name == "SIGTERM" else 130) from None
    except TrainingStopped as stop:
        # 128 + signal number, as a shell reports a process ended by that signal
        print(f"hr2g.train: {stop}; continue with: python -m hr2g.train --resume {stop.checkpoint}", file=sys.stderr)
        raise SystemExit(143 if stop.signal_name == "SIGTERM" else 130) from None
    except KeyboardInterrupt as exc:  # a SignalInterrupt is one too
        if args.verbose:
            raise
        last = Path(cfg.train.out_dir) / "last.pt"
        then = f"; continue from the last checkpoint with: python -m hr2g.train --resume {last}" if last.exists() else \
            " (no checkpoint was written yet)"
        if isinstance(exc, SignalInterrupt):  # the first signal outside the steps
            print(f"hr2g.train: {exc.signal_name} received outside the training steps (in setup, or once they were "
                  f"done): stopped at once{then}", file=sys.stderr)
            raise SystemExit(143 if exc.signal_name == "SIGTERM" else 130) from None
        # a second Ctrl-C in a step: stopped mid-step, nothing saved now
        print(f"hr2g.train: stopped at once (Ctrl-C twice): the steps since the last checkpoint are lost{then}",
              file=sys.stderr)
        raise SystemExit(130) from None
    except (FileExistsError, FileNotFoundError, NotADirectoryError, SetupError, CheckpointWriteError) as exc:
        # a run folder in the way or in use, data not found, an episode shape / backend / weights
        # that cannot be had, a checkpoint that cannot be written (a full disk)
        if args.verbose:
            raise
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
