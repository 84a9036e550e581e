"""Argument parsing shared by the commands: preset, common overrides, ``--set section.field=value``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from hr2g.config import DEVICE_HELP, Config, is_device, set_field
from hr2g.configs import PRESETS, get_preset


def _device_arg(text: str) -> str:
    if not is_device(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose {DEVICE_HELP}")
    return text


def seed_arg(text: str) -> int:
    """``--seed``: numpy's generators take integers >= 0 only (-1 failed deep inside with "expected
    non-negative integer", naming no flag, or as a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: a seed is an integer >= 0")
    return value


def add_device_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    """Every command's ``--device``: auto, cpu, cuda or cuda:N."""
    p.add_argument("--device", default=default, type=_device_arg, help=f"where to run: {DEVICE_HELP}")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=PRESETS, help="named configuration (default: tiny, or the --dataset's preset)")
    p.add_argument("--dataset", default=None, help="synthetic or a benchmark: hmdb51, ucf101, kinetics100, ssv2_small, ssv2_full")
    p.add_argument("--data-root", default=None, help="benchmark data folder (videos or frame folders)")
    p.add_argument("--split-dir", default=None, help="folder holding the split lists (default: per dataset, see README)")
    p.add_argument("--shots", type=int, default=None, help="K, support videos per class")
    p.add_argument("--ways", type=int, default=None, help="N, classes per episode")
    p.add_argument("--backend", default=None, help="op backend: auto, triton, ext, torch (default: torch; --fused means auto)")
    p.add_argument("--fused", action="store_true", help="use the fused kernels (Triton / C++ / CUDA) wherever they apply")
    add_device_arg(p, None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set model.ikt_kappa=0.5 (repeatable)")
    p.add_argument("--config", default=None, help="JSON config file (as written to <out_dir>/config.json) to start from")


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply ``--set SECTION.FIELD=VALUE`` items in order; a bad item exits naming it."""
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"error: --set expects SECTION.FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            set_field(cfg, key.strip(), value.strip())
        except ValueError as exc:
            raise SystemExit(f"error: --set: {exc}") from None


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    if base is not None:
        cfg = base
    elif args.config:
        try:
            with open(args.config) as f:
                data = json.load(f)
            if not isinstance(data, dict):  # Config.from_dict(a list) was an AttributeError traceback
                raise ValueError(f"expected a JSON object of sections (as hr2g.train writes to <out_dir>/config.json), "
                                 f"got {type(data).__name__}")
            cfg = Config.from_dict(data)
        except OSError as exc:
            raise SystemExit(f"error: --config {args.config}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise SystemExit(f"error: --config {args.config}: not valid JSON ({exc})") from None
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"error: --config {args.config}: {exc}") from None
    else:
        preset = args.preset or (args.dataset if args.dataset in PRESETS and args.dataset != "synthetic" else "tiny")
        cfg = get_preset(preset)
    if args.dataset:
        cfg.data.dataset = args.dataset
    if args.data_root:
        cfg.data.data_root = args.data_root
    if args.split_dir:
        cfg.data.split_dir = args.split_dir
    if args.shots is not None:
        cfg.data.k_shot = args.shots
    if args.ways is not None:
        cfg.data.n_way = args.ways
    if args.fused:
        cfg.model.backend = "auto"
    if args.backend:
        cfg.model.backend = args.backend
    if args.device:
        cfg.train.device = args.device
    apply_overrides(cfg, args.overrides)
    for flag, value in (("--data-root", args.data_root), ("--split-dir", args.split_dir)):
        if value and cfg.data.dataset == "synthetic":  # else silently ignored: the synthetic data is generated
            raise SystemExit(f"error: {flag} {value} needs --dataset (one of hmdb51, ucf101, kinetics100, "
                             "ssv2_small, ssv2_full); the synthetic dataset is generated, not read")
    try:
        return cfg.validate()
    except ValueError as exc:
        raise SystemExit(f"error: invalid configuration: {exc}") from None


def setup_logging(verbose: bool = False) -> None:
    """hr2g's own messages from INFO (DEBUG with ``verbose``); other libraries' from WARNING: open_clip
    logged "Parsing tokenizer identifier" at INFO in every command, even with the tiny backbone."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hr2g").setLevel(logging.DEBUG if verbose else logging.INFO)


def writable_file(flag: str, path: str | os.PathLike, inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """``path`` for an output file, its folder created; exits naming ``flag`` if it cannot be
    written -- checked (by opening it) before the work that produces it, not after -- or if it is
    one of ``inputs`` (flag -> path: ``evaluate --json`` given the checkpoint replaced it with JSON)."""
    path = Path(path)
    for other, given in (inputs or {}).items():
        if given is not None and path.resolve() == Path(given).resolve():
            raise SystemExit(f"error: {flag} {str(path)!r} is the {other} file: it would be overwritten; pick another path")
    if path.is_dir():
        raise SystemExit(f"error: {flag}: {str(path)!r} is a folder, expected a file path")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise SystemExit(f"error: {flag}: cannot write {str(path)!r} ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()
    return path


def writable_dir(flag: str, path: str | os.PathLike) -> Path:
    """``path`` as an output folder, created; exits naming ``flag`` if files cannot be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: {flag}: {str(path)!r} is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise SystemExit(f"error: {flag}: cannot write in {str(path)!r} ({exc.strerror or exc})") from None
    return path
