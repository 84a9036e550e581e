"""``python -m hr2g.prepare``: raw dataset -> what the fast loader reads (see hr2g.data.prepare).

    # every video under RAW, as H.264 MP4 at short side <= 256, for DALI on the GPU (NVDEC)
    python -m hr2g.prepare --src RAW/hmdb51 --out DATA/hmdb51 --to h264 --workers 8
    # only the videos of the few-shot splits (lists found in --split-dir), VP9 for DALI's CPU decoder
    python -m hr2g.prepare --src RAW/hmdb51 --out DATA/hmdb51 --dataset hmdb51 --split-dir SPLITS --to vp9
    # one list, 32 JPEG frames per video (4 per segment at T = 8)
    python -m hr2g.prepare --src RAW/ssv2 --out DATA/ssv2 --split-list train_few_shot.txt --to jpeg --max-frames 32

Outputs mirror the inputs' paths under --out (new extension; a folder for jpeg), so the same split
lists work on either root; the lists used are copied to <out>/splits (the loader's default split
dir).  Rerunning skips finished outputs; unreadable inputs are listed in the report file (default
<out>/prepare_report.tsv) and never stop the run.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

log = logging.getLogger("hr2g.prepare")


def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.data.presets import PRESETS, SPLITS

    p = argparse.ArgumentParser(prog="python -m hr2g.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="raw dataset root (the folder the split lists' paths start from)")
    p.add_argument("--out", required=True, help="output root; created if missing, may be resumed")
    p.add_argument("--to", default="h264", choices=("h264", "vp9", "jpeg"),
                   help="h264: MP4 for NVDEC (DALI on the GPU); vp9: WebM for DALI's CPU decoder; jpeg: frame folders "
                        "(default: h264)")
    p.add_argument("--split-list", action="append", default=[], metavar="FILE",
                   help="prepare only the videos of this split list (repeatable; any of the three list formats)")
    p.add_argument("--dataset", default=None, choices=sorted(PRESETS),
                   help="dataset layout for locating listed videos; with --split-dir, prepares its train/val/test lists")
    p.add_argument("--split-dir", default=None, help="folder with the dataset's split lists (needs --dataset)")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                   help="which splits of --split-dir to prepare (default: train val test)")
    p.add_argument("--short-side", type=int, default=256,
                   help="downscale so the short side is at most this many pixels; 0 keeps the size (default: 256)")
    p.add_argument("--crf", type=int, default=None,
                   help="constant-quality level: lower is better and larger (default: 20 for h264, 32 for vp9)")
    p.add_argument("--gop", type=int, default=0,
                   help="key frame interval in frames; small values make sparse frame access cheaper (default: "
                        "the encoder's)")
    p.add_argument("--max-frames", type=int, default=0,
                   help="jpeg: keep only this many frames per video, the centre frames of as many equal segments "
                        "(0: all frames)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="jpeg: JPEG quality 1-95 (default: 90)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                   help="parallel processes (default: half the CPU cores)")
    p.add_argument("--report", default=None,
                   help="where to write the unreadable inputs, one 'path<TAB>reason' line each "
                        "(default: <out>/prepare_report.tsv)")
    p.add_argument("--no-progress", action="store_true",
                   help="disable the progress bar (also off when stderr is not a terminal)")
    args = p.parse_args(argv)
    if args.split_dir and not args.dataset:
        p.error("--split-dir needs --dataset (to know the list names)")
    for name in ("short_side", "gop", "max_frames"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 1 <= args.jpeg_quality <= 95:
        p.error(f"--jpeg-quality must be in [1, 95], got {args.jpeg_quality}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    return args


def split_lists(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(the split lists to prepare, label files naming the classes of index-only ones)."""
    from hr2g.data.presets import find_annotation_files, find_label_file, find_split_file, get_preset

    lists = [Path(p) for p in args.split_list]
    labels = []
    if args.split_dir:
        preset = get_preset(args.dataset)
        for s in args.splits:
            lists.append(find_split_file(preset, args.split_dir, s))
            label = find_label_file(preset, args.split_dir, s, exclude=lists[-1])
            labels += [label] if label else []
        # SSv2's own annotations (they name the classes of index-only lists) travel with the lists
        labels += find_annotation_files(preset, args.split_dir, args.src)
    return lists, labels


def collect_inputs(args: argparse.Namespace, lists: list[Path]) -> tuple[list[Path], list[tuple[str, str]], list[tuple[str, str]]]:
    """(input video files, [(listed entry, reason)] for list entries with no file under --src, the
    same for listed frame folders, which are not converted)."""
    from hr2g.data.presets import VIDEO_EXTENSIONS, get_preset
    from hr2g.data.splits import locate_videos, validate_root

    src = Path(args.src)
    preset = get_preset(args.dataset) if args.dataset else None
    if not lists:
        # an --out inside --src is not an input: each re-run would convert the last run's outputs
        # again, one folder deeper (out/out/out/...)
        out = Path(args.out).resolve()
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                       and not p.name.startswith(".") and out not in p.resolve().parents)
        return files, [], []
    files, missing, folders = {}, [], []
    for path in lists:
        split = _read_list(path)
        located = locate_videos(src, split, preset)
        report = validate_root(src, split, preset, located)
        if not report.ok:
            log.warning("%s", report.message())
        missing += [(m, f"listed in {path.name} but not found under {src}") for m in report.missing]
        for p in located:
            if p is not None and p.is_file():
                files[p] = None
            elif p is not None:  # listed as frames already: nothing to decode, and not silently dropped
                folders.append((p.relative_to(src).as_posix(), f"listed in {path.name}: a frame folder, not a "
                                "video file; prepare converts video files only (train / evaluate read frame "
                                "folders as they are: copy or link it under --out)"))
    return list(files), missing, folders


def _read_list(path: Path):
    """A split list, for its files only: class names do not matter here (no label file needed), nor
    which split it is (that of a class/video list named my_subset.txt is the loader's concern:
    prepare only needs its videos)."""
    from hr2g.data.splits import SplitNameUnknown, read_split

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_split(path)
        except SplitNameUnknown:
            return read_split(path, split="train")  # a placeholder name: only the videos are used


def copy_lists(paths: list[Path], dest: Path, dataset: str | None = None) -> list[str]:
    """Copy the split lists (and label files) used next to the outputs, so that ``--data-root <out>``
    finds them without ``--split-dir``.  An existing file with other contents (lists from an earlier
    run with another ``--split-dir``) is replaced, with a warning, and kept as ``<name>.prev``: the
    loader would otherwise read the old lists without a word.  So is an earlier run's list of the
    same split under another of the names the loader tries (``test_few_shot.txt`` is read before
    ``testlist03.txt``: lists of the other format, copied earlier, shadowed the new ones)."""
    import filecmp
    import shutil

    from hr2g.data.presets import SPLITS

    new = {p.name for p in paths}
    for split in SPLITS:
        names = loader_list_names(dataset, split)
        if new & names:  # this run brings a list of this split: one of another name must not win
            for name in sorted(names - new):
                old = dest / name
                if old.is_file():
                    backup = old.with_name(old.name + ".prev")
                    log.warning("%s is an earlier run's %s list, which the loader would read instead of %s: moved "
                                "to %s", old, split, ", ".join(sorted(new & names)), backup.name)
                    os.replace(old, backup)
    copied = []
    for path in paths:
        # labels/train.json of the SSv2 download keeps the name the loader looks for without "labels/"
        name = f"something-something-v2-{path.name}" if path.parent.name == "labels" and path.name in (
            "train.json", "validation.json") else path.name
        target = dest / name
        if target.exists() and filecmp.cmp(path, target, shallow=False):
            continue
        if target.exists():
            backup = target.with_name(target.name + ".prev")
            log.warning("%s differs from %s: replacing it (the old one is kept as %s)", target, path, backup.name)
            os.replace(target, backup)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(name)
    return copied


def loader_list_names(dataset: str | None, split: str) -> set[str]:
    """The names train / evaluate look for ``split``'s list by (``test_few_shot.txt``,
    ``testlist03.txt``, ...): ``dataset``'s preset's, or any benchmark's without ``--dataset``."""
    from hr2g.data.presets import PRESETS

    presets = [PRESETS[dataset]] if dataset in PRESETS else list(PRESETS.values())
    return {pattern.format(split=split) for preset in presets for pattern in preset.split_files}


def names_the_loader_skips(paths: list[Path], dataset: str | None) -> list[Path]:
    """The ``--split-list`` files that train / evaluate would not find in ``<out>/splits``: they
    look for the lists by name (:func:`loader_list_names`)."""
    from hr2g.data.presets import SPLITS

    names = set().union(*(loader_list_names(dataset, s) for s in SPLITS))
    return [path for path in paths if path.name not in names]


def main(argv=None) -> int:
    args = parse_args(argv)
    from hr2g.checkpoint import write_text_atomic
    from hr2g.cli import setup_logging, writable_dir

    setup_logging()
    from hr2g.data.prepare import Job, Options, output_path, run_jobs
    from hr2g.data.presets import DEFAULT_SPLIT_SUBDIR

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise SystemExit(f"error: --src {src} is not a folder")
    if out.resolve() == src.resolve():
        raise SystemExit("error: --out must differ from --src (outputs mirror the inputs' paths)")
    writable_dir("--out", out)
    try:
        lists, labels = split_lists(args)
        inputs, missing, folders = collect_inputs(args, lists)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    opts = Options(target=args.to, short_side=args.short_side, crf=args.crf, gop=args.gop, max_frames=args.max_frames,
                   jpeg_quality=args.jpeg_quality, threads=1 if args.workers > 1 else 0)
    log.info("prepare: %d videos from %s -> %s as %s (%s), %d workers", len(inputs), src, out, args.to, opts, args.workers)
    if not inputs and not missing and not folders:
        log.error("no input videos found under %s", src)
        return 1
    jobs = [Job(p, output_path(out, p.relative_to(src), args.to), p.relative_to(src).as_posix()) for p in inputs]
    try:
        outcomes = run_jobs(jobs, opts, workers=args.workers, progress=not args.no_progress and sys.stderr.isatty())
    except KeyboardInterrupt:  # finished outputs are complete (written to a temporary, then renamed)
        print(f"hr2g.prepare: interrupted; run the same command again to continue (finished outputs under {out} "
              "are kept and skipped)", file=sys.stderr)
        raise SystemExit(130) from None
    failed = sorted([(o.rel, o.detail) for o in outcomes if o.status == "failed"] + missing + folders)
    report = Path(args.report) if args.report else out / "prepare_report.tsv"
    report.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# input\treason (unreadable, missing or unconverted inputs of the last run)"]
    lines += [f"{rel}\t{' '.join(why.split())}" for rel, why in failed]
    write_text_atomic(report, "\n".join(lines) + "\n")  # whole or not at all, as every result file
    copied = copy_lists(lists + labels, out / DEFAULT_SPLIT_SUBDIR, args.dataset)
    if copied:
        log.info("prepare: copied %s into %s (the default split dir of --data-root %s)", ", ".join(copied),
                 out / DEFAULT_SPLIT_SUBDIR, out)
    for path in names_the_loader_skips([Path(p) for p in args.split_list], args.dataset):
        log.warning("prepare: train / evaluate look for split lists by name ({split}_few_shot.txt, {split}list03.txt, "
                    "...) and will not find %s in %s: rename it there (e.g. test_few_shot.txt), or give them --split-dir",
                    path.name, out / DEFAULT_SPLIT_SUBDIR)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    log.info("prepare: %d written, %d already done, %d unreadable, %d missing%s; report: %s",
             counts["done"], counts["skipped"], counts["failed"], len(missing),
             f", {len(folders)} listed frame folders not converted" if folders else "", report)
    if not inputs and missing:  # a wrong --src or layout, not a few lost videos: not a success
        hint = "" if args.dataset else (" (or pass --dataset: SSv2 keeps its videos in one folder, not in class "
                                        "folders, and Kinetics-100 names clips by YouTube id and times)")
        log.error("prepare: none of the %d listed videos is under %s: give the folder the lists' paths start "
                  "from as --src%s", len(missing), src, hint)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
