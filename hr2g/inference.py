"""Loading a trained checkpoint for the commands that use one (sweep, plots, predict).

The same flags everywhere -- ``--checkpoint``, ``--device``, ``--backend`` / ``--fused`` and the
data overrides ``--data-root`` / ``--split-dir`` / ``--split`` / ``--decoder`` -- and errors that name the flag.
"""
from __future__ import annotations

import argparse

import torch

from hr2g.cli import add_device_arg
from hr2g.config import BACKEND_CHOICES, Config
from hr2g.data.base import VideoDataset
from hr2g.model.model import HR2G


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by hr2g.train (last.pt or best.pt)")
    add_device_arg(p, "auto")
    p.add_argument("--backend", default=None, choices=BACKEND_CHOICES,
                   help="op backend override (default: the checkpoint's, normally torch)")
    p.add_argument("--fused", action="store_true", help="use the fused kernels where they apply (backend auto)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default=None, choices=("train", "val", "test"), help="split to use (default: eval.split, test)")
    p.add_argument("--data-root", default=None, help="override the dataset root stored in the checkpoint")
    p.add_argument("--split-dir", default=None, help="override the split-list folder stored in the checkpoint")
    p.add_argument("--decoder", default=None, choices=("auto", "dali", "pyav"),
                   help="video decoder (default: the checkpoint's data.decoder)")


def set_backend(model: HR2G, cfg: Config, backend: str) -> None:
    """Switch every op of a built model (ISC, IKT, OTAM) to ``backend``."""
    cfg.model.backend = backend
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend


def load_trained(args: argparse.Namespace) -> tuple[HR2G, Config, torch.device]:
    """(model in eval mode on its device, its config, the device) from ``add_checkpoint_args`` flags."""
    from hr2g import checkpoint
    from hr2g.evaluation import load_model
    from hr2g.training import resolve_device

    device = resolve_device(args.device)
    try:  # random-init CLIP, then the checkpoint's weights: nothing to download
        model, cfg = load_model(checkpoint.load(args.checkpoint), device, args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: --checkpoint: {exc}") from None
    apply_backend_flags(args, model, cfg, device)
    return model, cfg, device


def apply_backend_flags(args: argparse.Namespace, model: HR2G, cfg: Config, device: torch.device) -> None:
    """``--fused`` / ``--backend`` on a built model, or exit naming the flag if that backend cannot
    run here at the model's shapes: now, not after every video has been encoded (or measured)."""
    from hr2g.errors import SetupError
    from hr2g.training import backend_report

    if not (args.fused or args.backend):
        return
    flag = "--fused" if args.fused and not args.backend else f"--backend {args.backend}"
    try:
        backend_report(args.backend or "auto", device, cfg)
    except SetupError as exc:
        raise SystemExit(f"error: {flag}: {exc}") from None
    set_backend(model, cfg, args.backend or "auto")


def dataset_from_args(cfg: Config, args: argparse.Namespace, device: torch.device | None = None) -> VideoDataset:
    """The split named by ``--split`` (default ``eval.split``), with ``--data-root`` / ``--split-dir``
    applied, decoded for ``device`` (the model's)."""
    from hr2g.data.build import build_dataset

    decoder = getattr(args, "decoder", None)
    if cfg.data.dataset == "synthetic" and (args.data_root or args.split_dir or decoder not in (None, "auto")):
        flag = "--data-root" if args.data_root else "--split-dir" if args.split_dir else f"--decoder {decoder}"
        raise SystemExit(f"error: {flag}: the checkpoint was trained on the synthetic dataset, which is generated, not "
                         "read; a benchmark needs a model trained on it (python -m hr2g.train --dataset NAME)")
    for key, val in (("data_root", args.data_root), ("split_dir", args.split_dir), ("decoder", decoder)):
        if val:
            setattr(cfg.data, key, val)
    from hr2g.errors import SetupError

    try:
        cfg.validate()
        return build_dataset(cfg.data, args.split or cfg.eval.split, device)
    except SetupError as exc:  # DALI asked for and missing: the data paths are not the cause
        raise SystemExit(f"error: {exc}") from None
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc} (check --data-root / --split-dir)") from None
