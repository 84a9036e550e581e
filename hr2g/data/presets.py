"""What each benchmark looks like on disk: split-file names, where its videos live, flip default.

Two public split releases are in use and both are recognised (``--split-dir`` may point at a folder
holding one dataset's lists, or at a folder with the releases' own sub-folders, e.g. ``splits/``
containing ``clipfsar/hmdb51/`` and ``trx/hmdb_ARN/``):

- CLIP-FSAR: ``{train,val,test}_few_shot.txt``; lines ``train0//videos/brush_hair/x.avi`` or, for
  SSv2, ``train0/51958`` (class index + video id, no class names);
- TRX / OTAM: ``{train,val,test}list03.txt`` (``ssv2_OTAM``: ``list07``); lines ``class name/video id``,
  except SSv2-full whose lists are again index-only.

Raw layouts (what the video locator searches; ``hr2g.prepare`` keeps the same relative layout):

- HMDB51, UCF101: ``<root>/videos/<ClassFolder>/<name>.avi``
- Kinetics-100: ``<root>/{train_256,val_256}/<class_folder>/<youtube id>_<start>_<end>.mp4`` (the
  TRX lists' names; the CLIP-FSAR lists name 579 of the ``val_256`` videos ``<youtube id>.mp4``
  without the times, so either name finds the other's file: see ``DatasetPreset.youtube_clips``)
- SSv2: ``<root>/<video id>.webm`` (or under ``20bn-something-something-v2/``), no class folders.

Each may instead be a frame folder ``<same path without extension>/img_00001.jpg ...``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")

#: Something-Something-v2's annotation files as released with the videos (``labels/`` of the
#: download, or renamed): ``[{"id": ..., "template": "Holding [something] next to [something]"}]``
SSV2_ANNOTATIONS = tuple(f"{d}something-something-v2-{s}.json" for d in ("", "labels/", "annotations/")
                         for s in ("train", "validation")) + ("labels/train.json", "labels/validation.json")

#: video file extensions the locator tries, after the list's own one; prepared outputs come first
#: (.mp4 = H.264 for NVDEC, .webm = VP9 for DALI's CPU decoder), then raw containers.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    #: split file names tried in order; ``{split}`` is replaced by train / val / test
    split_files: tuple[str, ...]
    #: sub-folders of a split dir that may hold this dataset's lists (release layouts), "" = itself
    split_subdirs: tuple[str, ...]
    #: files naming the classes of an index-only list (see :func:`hr2g.data.splits.read_split`)
    label_files: tuple[str, ...]
    #: sub-folders of the data root where videos may live ("" = the root itself)
    video_dirs: tuple[str, ...]
    #: the raw release's video extension (prepared roots hold .mp4 / .webm / frame folders instead)
    extension: str
    #: videos sit in one folder per class (HMDB/UCF/K100) rather than in one flat folder (SSv2)
    class_folders: bool
    #: horizontal flip augmentation is label-preserving (False for SSv2: "pushing left to right")
    flip: bool
    #: (classes, videos) per split in the public few-shot splits, for sanity messages
    expected: dict[str, tuple[int, int]]
    #: the dataset's own per-video annotations naming the classes of index-only lists when no
    #: label file does, searched in the split dir and the data root (all that exist are read)
    annotation_files: tuple[str, ...] = ()
    #: video ids are YouTube ids, ``<11 chars>`` or ``<11 chars>_<start>_<end>`` (6-digit seconds):
    #: the two Kinetics-100 releases name 579 of the same videos each way, so a name not found as
    #: listed is tried the other way (the only clip of that id in its folder)
    youtube_clips: bool = False


PRESETS: dict[str, DatasetPreset] = {
    "hmdb51": DatasetPreset(
        name="hmdb51",
        split_files=("{split}_few_shot.txt", "{split}list03.txt"),
        split_subdirs=("", "clipfsar/hmdb51", "trx/hmdb_ARN", "hmdb51", "hmdb_ARN"),
        label_files=(),
        video_dirs=("", "videos"),
        extension=".avi",
        class_folders=True,
        flip=True,
        expected={"train": (31, 4280), "val": (10, 1194), "test": (10, 1292)},
    ),
    "ucf101": DatasetPreset(
        name="ucf101",
        split_files=("{split}_few_shot.txt", "{split}list03.txt"),
        split_subdirs=("", "clipfsar/ucf101", "trx/ucf_ARN", "ucf101", "ucf_ARN"),
        label_files=(),
        video_dirs=("", "videos"),
        extension=".avi",
        class_folders=True,
        flip=True,
        expected={"train": (70, 9154), "val": (10, 1421), "test": (21, 2745)},
    ),
    "kinetics100": DatasetPreset(
        name="kinetics100",
        split_files=("{split}_few_shot.txt", "{split}list03.txt"),
        split_subdirs=("", "clipfsar/kinetics100", "trx/kinetics_CMN", "kinetics100", "kinetics_CMN"),
        label_files=(),
        # CLIP-FSAR's lists name both train_256/ and val_256/ (some few-shot videos come from
        # Kinetics' own val set); the TRX lists give no folder, so both are searched.
        video_dirs=("", "train_256", "val_256", "videos"),
        extension=".mp4",
        class_folders=True,
        flip=True,
        expected={"train": (64, 6400), "val": (12, 1200), "test": (24, 2400)},
        youtube_clips=True,
    ),
    "ssv2_small": DatasetPreset(
        name="ssv2_small",
        split_files=("{split}_few_shot.txt", "{split}list03.txt"),
        split_subdirs=("", "clipfsar/ssv2_small", "trx/ssv2_CMN", "ssv2_small", "ssv2_CMN"),
        # the CMN list of the same split names each video's class: it labels CLIP-FSAR's index-only list
        label_files=("{split}list03.txt", "{split}_classes.txt"),
        video_dirs=("", "20bn-something-something-v2", "videos", "frames"),
        extension=".webm",
        class_folders=False,
        flip=False,
        expected={"train": (64, 6400), "val": (12, 1200), "test": (24, 2400)},
        annotation_files=SSV2_ANNOTATIONS,
    ),
    "ssv2_full": DatasetPreset(
        name="ssv2_full",
        split_files=("{split}_few_shot.txt", "{split}list07.txt"),
        split_subdirs=("", "clipfsar/ssv2_full", "trx/ssv2_OTAM", "ssv2_full", "ssv2_OTAM"),
        # no public list names the OTAM split's classes; a user-made one-name-per-line file may,
        # else SSv2's own annotations (each video's template), which come with the videos
        label_files=("{split}_classes.txt",),
        video_dirs=("", "20bn-something-something-v2", "videos", "frames"),
        extension=".webm",
        class_folders=False,
        flip=False,
        expected={"train": (64, 67013), "val": (12, 1926), "test": (24, 2857)},
        annotation_files=SSV2_ANNOTATIONS,
    ),
}


def find_annotation_files(preset: DatasetPreset, split_dir: str | Path, root: str | Path) -> list[Path]:
    """The preset's annotation files that exist in ``split_dir`` or under the data ``root``."""
    found = []
    for base in (Path(split_dir), Path(root)):
        for name in preset.annotation_files:
            path = base / name
            if path.is_file() and path.resolve() not in {p.resolve() for p in found}:
                found.append(path)
    return found


#: where ``build_dataset`` looks for split lists when ``data.split_dir`` is not set
DEFAULT_SPLIT_SUBDIR = "splits"


def get_preset(name: str) -> DatasetPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def _candidates(preset: DatasetPreset, split_dir: Path, names: tuple[str, ...], split: str) -> list[Path]:
    return [split_dir / sub / pattern.format(split=split) for sub in preset.split_subdirs for pattern in names]


def find_split_file(preset: DatasetPreset, split_dir: str | Path, split: str) -> Path:
    """The list of ``split`` for ``preset`` in ``split_dir`` (first match of the preset's names)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    split_dir = Path(split_dir)
    tried = _candidates(preset, split_dir, preset.split_files, split)
    for path in tried:
        if path.is_file():
            return path
    shown = ", ".join(str(p.relative_to(split_dir)) for p in tried[:6])
    raise FileNotFoundError(
        f"{preset.name}: no {split} split list in {split_dir} (looked for {shown}, ...); pass --split-dir "
        f"pointing at the folder with the lists (CLIP-FSAR {preset.split_files[0].format(split=split)} or "
        f"TRX {preset.split_files[-1].format(split=split)})")


def find_label_file(preset: DatasetPreset, split_dir: str | Path, split: str, exclude: Path | None = None) -> Path | None:
    """A file naming the classes of an index-only ``split`` list, or None when there is none."""
    for path in _candidates(preset, Path(split_dir), preset.label_files, split):
        if path.is_file() and (exclude is None or path.resolve() != exclude.resolve()):
            return path
    return None
