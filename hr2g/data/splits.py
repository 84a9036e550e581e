"""Few-shot split lists: parse the three formats in use, name the classes, find the videos.

Formats (auto-detected from the whole file, see :func:`detect_format`):

- ``indexed_path``  ``train0//videos/brush_hair/x.avi``: ``<split><class index>//<path under the root>``
  (CLIP-FSAR HMDB51 / UCF101 / Kinetics-100).  Class names come from the class folder of the paths.
- ``indexed_id``    ``train8/78687``: ``<split><class index>/<video id>`` (CLIP-FSAR SSv2, OTAM's
  SSv2-full lists: the number after the split name is the class index, not a video id).  The list
  carries no class names: they come from a label file (a ``class name/video id`` list of the same
  split, or one class name per line in index order), else "class {i}" with a warning.
- ``named``         ``brush_hair/x`` or ``Pouring something into something/51958``:
  ``<class name>/<video id>``; the name may contain spaces (and, in principle, slashes: the id is
  everything after the *last* slash).  Class index = order of first appearance, which is the
  CLIP-FSAR index order of every released list (alphabetical for HMDB/UCF/K100, not for SSv2-small:
  checked against the real lists in ``tests/test_splits.py``).

Class names for the text prompts are readable names: ``brush_hair`` -> "brush hair",
``ApplyEyeMakeup`` -> "apply eye makeup"; names that already contain spaces are kept as written.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hr2g.data.presets import VIDEO_EXTENSIONS, DatasetPreset

log = logging.getLogger(__name__)

FORMATS = ("indexed_path", "indexed_id", "named")

_INDEXED_PATH = re.compile(r"^(train|val|test)(\d+)//(.+)$")
_INDEXED_ID = re.compile(r"^(train|val|test)(\d+)/([^/]+)$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@dataclass(frozen=True)
class Split:
    """One parsed split list.

    ``videos[i]`` is what the list names for video i: a path under the data root (``indexed_path``)
    or a video id (``indexed_id``, ``named``).  ``folders[c]`` is class c's raw name as the list
    spells it (the class folder of ``indexed_path`` / the name of ``named`` lists; "" for
    ``indexed_id``), used to find videos on disk; ``class_names[c]`` is the prompt name.
    """

    name: str  # "train" | "val" | "test"
    format: str  # one of FORMATS
    videos: list[str]
    labels: np.ndarray  # [V] int64, class index of each video
    class_names: list[str]  # [C] readable names for the CLIP text prompts, label order
    folders: list[str]  # [C] raw class names / folders, label order
    source: Path | None = None
    label_source: str = field(default="list")  # where the class names came from

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prompt_name(raw: str) -> str:
    """A folder or list class name as words: ``brush_hair`` -> "brush hair", ``ApplyEyeMakeup`` ->
    "apply eye makeup", ``Archery`` -> "archery"; a name with spaces (TRX lists, SSv2 labels) is
    kept as written."""
    raw = raw.strip()
    if " " in raw:
        return raw
    # folder style: snake_case or CamelCase words, lower-cased like the prompts of the FSAR releases
    words = [w for part in raw.split("_") for w in _CAMEL.sub(" ", part).split()]
    return " ".join(words).lower()


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty, non-comment lines; CRLF, trailing blanks and a UTF-8
    byte-order mark (Windows editors add one; it would make the first line unlike the others and
    switch the detected format) dropped."""
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for no, line in enumerate(f, 1):
            line = line.rstrip()
            if line and not line.startswith("#"):
                out.append((no, line))
    return out


def detect_format(lines: list[str]) -> str:
    """The split format shared by every line (``named`` unless all lines are index-prefixed)."""
    if not lines:
        raise ValueError("cannot detect the split format of an empty list")
    if all(_INDEXED_PATH.match(line) for line in lines):
        return "indexed_path"
    if all(_INDEXED_ID.match(line) for line in lines):
        return "indexed_id"
    return "named"


def _split_from_filename(path: Path) -> str | None:
    stem = path.stem.lower()
    for name in ("train", "val", "test"):
        if stem.startswith(name):
            return name
    return None


class SplitNameUnknown(ValueError):
    """A ``class/video`` list whose file name says no split (``my_subset.txt``) and no ``split=``."""


def read_split(path: str | Path, split: str | None = None, fmt: str = "auto",
               label_file: str | Path | list | None = None) -> Split:
    """Parse a split list.

    Args:
        path: the list file.
        split: expected split name (train / val / test); checked against the line prefixes of
            indexed lists, and taken from the file name (``trainlist03.txt``) when None.
        fmt: "auto" or one of :data:`FORMATS`.
        label_file: for ``indexed_id`` lists only (others name their classes): a ``class name/video id``
            list of the same videos, a text file with one class name per line in index order, or
            Something-Something-v2's own annotation files (``something-something-v2-{train,
            validation}.json``, a list: each video's ``template`` names its class).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} does not exist")
    lines = _lines(path)
    if not lines:
        raise ValueError(f"split list {path} is empty")
    if fmt == "auto":
        fmt = detect_format([text for _, text in lines])
        if fmt == "named":
            _refuse_mostly_indexed(path, lines)
    elif fmt not in FORMATS:
        raise ValueError(f"read_split(fmt={fmt!r}): expected 'auto' or one of {FORMATS}")
    if fmt == "named":
        return _read_named(path, lines, split)
    return _read_indexed(path, lines, split, fmt, label_file)


def _refuse_mostly_indexed(path: Path, lines: list[tuple[int, str]]) -> None:
    """An indexed list with a typo in a line read as a named one (its classes and videos all wrong,
    the error then about missing videos): name the line instead."""
    for pattern, fmt, example in ((_INDEXED_PATH, "indexed_path", "train0//videos/brush_hair/x.avi"),
                                  (_INDEXED_ID, "indexed_id", "train0/51958")):
        hits = sum(bool(pattern.match(text)) for _, text in lines)
        if 2 * hits > len(lines):  # most of them: the others are typos, not a named list
            no, text = next((no, text) for no, text in lines if not pattern.match(text))
            raise ValueError(f"{path}:{no}: {text!r} is not a {fmt} line like {example!r}, as {hits} of the list's "
                             f"{len(lines)} lines are")


def _drop_repeats(path: Path, nos: list[int], videos: list[str], labels: list[int],
                  per_class: bool = False) -> tuple[list[str], list[int], list[int]]:
    """The list without repeated lines (a video listed twice can be an episode's support and its
    query at once: with one class's lines doubled, 138 of 1000 seeded test episodes were); a video
    under two classes is an error -- unless ``per_class`` (named lists: ``kick_ball/0001.mp4`` and
    ``run/0001.mp4`` are two files in class folders), where only a repeated (class, video) is.
    Returns the kept lines' (videos, labels, line numbers)."""
    first: dict[object, tuple[int, int]] = {}
    keep, repeats = [], []
    for i, (no, vid, lab) in enumerate(zip(nos, videos, labels)):
        key = (lab, vid) if per_class else vid
        if key not in first:
            first[key] = (no, lab)
            keep.append(i)
        elif first[key][1] != lab:
            raise ValueError(f"{path}:{no}: {vid!r} is listed again under another class (first at line {first[key][0]})")
        else:
            repeats.append((no, first[key][0]))
    if repeats:
        log.warning("%s: %d repeated lines ignored (line %d repeats line %d)", path, len(repeats), *repeats[0])
    return [videos[i] for i in keep], [labels[i] for i in keep], [nos[i] for i in keep]


def _read_indexed(path: Path, lines: list[tuple[int, str]], split: str | None, fmt: str,
                  label_file: str | Path | list | None) -> Split:
    pattern = _INDEXED_PATH if fmt == "indexed_path" else _INDEXED_ID
    videos, labels, nos = [], [], []
    name, first_no = None, None
    for no, text in lines:
        m = pattern.match(text)
        if m is None:
            example = "train0//videos/brush_hair/x.avi" if fmt == "indexed_path" else "train0/51958"
            raise ValueError(f"{path}:{no}: {text!r} is not a {fmt} line like {example!r}")
        if name is None:
            name, first_no = m.group(1), no
        elif m.group(1) != name:  # before repeats are dropped: val1//x after train1//x is no repeat
            raise ValueError(f"{path}:{no}: {text!r} is a {m.group(1)} line, but line {first_no} is {name}: one list "
                             "holds one split")
        labels.append(int(m.group(2)))
        videos.append(m.group(3))
        nos.append(no)
    videos, labels, nos = _drop_repeats(path, nos, videos, labels)
    if fmt == "indexed_path":  # each line's folder, checked with its line number
        folders = _folders_from_paths(path, nos, videos, labels)
    if split is not None and split != name:
        raise ValueError(f"{path}: expected the {split} split but its lines are {name}<class>/...")
    labels_arr = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels_arr.max()) + 1
    missing = sorted(set(range(n_classes)) - set(labels))
    if missing:
        raise ValueError(f"{path}: class indices must run 0..{n_classes - 1} without gaps; no video has "
                         f"class {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if fmt == "indexed_path":
        return Split(name, fmt, videos, labels_arr, [prompt_name(f) for f in folders], folders, path, "list")
    names, source = _names_for_ids(path, videos, labels_arr, n_classes, label_file)
    return Split(name, fmt, videos, labels_arr, [prompt_name(n) for n in names], ["" for _ in names], path, source)


def _folders_from_paths(path: Path, nos: list[int], videos: list[str], labels: list[int]) -> list[str]:
    """Each class index's folder, in index order (the indices were checked to run without gaps)."""
    folders: dict[int, tuple[str, int]] = {}  # class index -> (folder, first line naming it)
    for no, rel, c in zip(nos, videos, labels):
        parts = rel.replace("\\", "/").split("/")
        if len(parts) < 2:
            raise ValueError(f"{path}:{no}: {rel!r} has no class folder; expected <split><index>//<dir>/<class>/<file>")
        folder = parts[-2]
        if c not in folders:
            folders[c] = (folder, no)
        elif folders[c][0] != folder:
            raise ValueError(f"{path}:{no}: class index {c} is folder {folder!r} here but {folders[c][0]!r} at line "
                             f"{folders[c][1]}")
    return [folders[c][0] for c in sorted(folders)]


def ssv2_annotation_names(files) -> dict[str, str]:
    """video id -> class name from SSv2's annotation JSON files (``[{"id": "78687", "template":
    "Holding [something] next to [something]", ...}, ...]``): the template without brackets,
    "Holding something next to something", as the TRX lists spell the classes."""
    by_id = {}
    for f in files:
        try:
            entries = json.loads(Path(f).read_text())
            by_id.update({str(e["id"]): e["template"].replace("[", "").replace("]", "") for e in entries})
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{f}: not a Something-Something-v2 annotation file (a JSON list of objects with "
                             f"'id' and 'template'): {type(exc).__name__}: {exc}") from None
    return by_id


def _names_by_id(path: Path, ids: list[str], labels: np.ndarray, n_classes: int, by_id: dict[str, str],
                 source: str) -> list[str]:
    """Class names of an index-only list from names per video id (every class needs one, and one only)."""
    names: list[str | None] = [None] * n_classes
    for vid, c in zip(ids, labels):
        if vid not in by_id:
            continue
        if names[c] is None:
            names[c] = by_id[vid]
        elif names[c] != by_id[vid]:
            raise ValueError(f"{source}: videos of class index {c} in {path} carry two names, "
                             f"{names[c]!r} and {by_id[vid]!r}; is it a list of the same split?")
    unnamed = [c for c, n in enumerate(names) if n is None]
    if unnamed:
        raise ValueError(f"{source}: names no video of class indices {unnamed[:5]} of {path}; "
                         f"is it a list of the same split?")
    return [n for n in names if n is not None]


def _names_for_ids(path: Path, ids: list[str], labels: np.ndarray, n_classes: int,
                   label_file: str | Path | list | None) -> tuple[list[str], str]:
    if label_file is None:
        warnings.warn(f"{path}: index-only split list and no label file: classes are named 'class 0'..'class "
                      f"{n_classes - 1}', so the text prompts carry no meaning (pass a label file: the "
                      f"'class name/video id' list of the same split, one class name per line, or for SSv2 "
                      f"its something-something-v2-{{train,validation}}.json annotations)", stacklevel=3)
        return [f"class {i}" for i in range(n_classes)], "placeholder"
    if isinstance(label_file, (list, tuple)) or str(label_file).endswith(".json"):
        files = [Path(f) for f in (label_file if isinstance(label_file, (list, tuple)) else [label_file])]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"label file {f} (naming the classes of {path}) does not exist")
        source = " + ".join(map(str, files))
        return _names_by_id(path, ids, labels, n_classes, ssv2_annotation_names(files), source), source
    label_file = Path(label_file)
    if not label_file.is_file():
        raise FileNotFoundError(f"label file {label_file} (naming the classes of {path}) does not exist")
    lines = [text for _, text in _lines(label_file)]
    if lines and detect_format(lines) == "named" and all("/" in t for t in lines):
        by_id = {vid: name for name, vid in (text.rsplit("/", 1) for text in lines)}
        return _names_by_id(path, ids, labels, n_classes, by_id, str(label_file)), str(label_file)
    if len(lines) != n_classes:
        raise ValueError(f"{label_file}: a one-name-per-line label file needs {n_classes} lines for {path}, "
                         f"found {len(lines)}")
    return lines, str(label_file)


def _read_named(path: Path, lines: list[tuple[int, str]], split: str | None) -> Split:
    name = split or _split_from_filename(path)
    if name is None:
        raise SplitNameUnknown(f"{path}: cannot tell the split from the file name; pass split='train'|'val'|'test'")
    folders: dict[str, int] = {}  # first appearance order = class index
    videos, labels, nos = [], [], []
    for no, text in lines:
        if "/" not in text:
            raise ValueError(f"{path}:{no}: {text!r} is not a 'class name/video id' line")
        cls, vid = text.rsplit("/", 1)
        cls, vid = cls.strip(), vid.strip()  # "kick_ball /v1.mp4" is class kick_ball, not a new one
        if not cls or not vid:
            raise ValueError(f"{path}:{no}: {text!r} has an empty class name or video id")
        labels.append(folders.setdefault(cls, len(folders)))
        videos.append(vid)
        nos.append(no)
    videos, labels, _ = _drop_repeats(path, nos, videos, labels, per_class=True)
    raw = list(folders)
    return Split(name, "named", videos, np.asarray(labels, dtype=np.int64), [prompt_name(f) for f in raw], raw, path,
                 "list")


# --------------------------------------------------------------------------- finding the videos


class _DirCache:
    """Directory listings, read once each: locating 67k SSv2 videos stats one folder, not 67k x 10
    candidate paths."""

    def __init__(self, root: Path):
        self.root = root
        self._entries: dict[str, dict[str, bool]] = {}
        self._clips: dict[str, dict[str, set[str]]] = {}

    def lookup(self, rel_dir: str) -> dict[str, bool]:
        """name -> is_dir for the entries of ``root/rel_dir`` (empty when it does not exist)."""
        if rel_dir not in self._entries:
            entries: dict[str, bool] = {}
            try:
                with os.scandir(self.root / rel_dir) as it:
                    for e in it:
                        entries[e.name] = e.is_dir()
            except (FileNotFoundError, NotADirectoryError):
                pass
            self._entries[rel_dir] = entries
        return self._entries[rel_dir]

    def youtube_clips(self, rel_dir: str) -> dict[str, set[str]]:
        """YouTube id -> the ``<id>_<start>_<end>`` stems in ``root/rel_dir`` (any extension)."""
        if rel_dir not in self._clips:
            clips: dict[str, set[str]] = {}
            for name in self.lookup(rel_dir):
                stem = name.rsplit(".", 1)[0] if "." in name else name
                if (m := _YOUTUBE_CLIP.match(stem)) is not None:
                    clips.setdefault(m["id"], set()).add(stem)
            self._clips[rel_dir] = clips
        return self._clips[rel_dir]


def _stems(split: Split, i: int, preset: DatasetPreset | None) -> list[str]:
    """Relative paths without extension where video i may be, most specific first: the listed path
    (indexed_path lists), else ``<video dir>/[<class folder>/]<id>`` for each of the preset's video
    dirs (no preset: the root and ``videos/``)."""
    video = split.videos[i]
    if split.format == "indexed_path":
        rel = video.replace("\\", "/").lstrip("/")
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        # the root may be the folder holding videos/ (as listed) or videos/ itself
        return [stem] + ([stem.split("/", 1)[1]] if stem.count("/") >= 2 else [])
    dirs = preset.video_dirs if preset is not None else ("", "videos")
    if split.format == "indexed_id" or (preset is not None and not preset.class_folders):
        return [f"{d}/{video}".lstrip("/") for d in dirs]
    raw = split.folders[int(split.labels[i])]
    folder_names = list(dict.fromkeys([raw, raw.replace(" ", "_")]))  # TRX K100 names drop the underscores
    return [f"{d}/{f}/{video}".lstrip("/") for d in dirs for f in folder_names]


def _extension_of(split: Split, i: int) -> str | None:
    if split.format != "indexed_path":
        return None
    base = split.videos[i].rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[1] if "." in base else None  # as listed: file systems are case-sensitive


def locate_videos(root: str | Path, split: Split, preset: DatasetPreset | None = None) -> list[Path | None]:
    """The file (or frame folder) of every video of ``split`` under ``root``, None when absent.

    For each candidate location (see :func:`_stems`) tries, in order: the list's own file name,
    the same stem with each of :data:`~hr2g.data.presets.VIDEO_EXTENSIONS` (so lists naming ``.avi``
    find the ``.mp4`` that ``hr2g.prepare`` wrote), then a frame folder named like the stem.  For
    presets with ``youtube_clips`` (Kinetics-100), a name found nowhere is then tried with its
    ``_<start>_<end>`` times removed, or added from the one clip of that YouTube id in the folder.
    """
    root = Path(root)
    cache = _DirCache(root)
    youtube = preset is not None and preset.youtube_clips
    out: list[Path | None] = []
    for i in range(len(split)):
        own = _extension_of(split, i)
        exts = ([own] if own else []) + [e for e in VIDEO_EXTENSIONS if e != (own or "").lower()]
        stems = _stems(split, i, preset)
        found = next((p for stem in stems if (p := _find(cache, stem, exts, own)) is not None), None)
        if found is None and youtube:
            found = next((p for stem in stems for alt in _youtube_alternatives(cache, stem)
                          if (p := _find(cache, alt, exts, own)) is not None), None)
        out.append(found)
    return out


def _find(cache: _DirCache, stem: str, exts: list[str], own: str | None) -> Path | None:
    parent, _, base = stem.rpartition("/")
    entries = cache.lookup(parent)
    for ext in exts:
        if entries.get(base + ext) is False:
            return cache.root / f"{stem}{ext}"
    if entries.get(base) is True or (own is None and entries.get(base) is False):  # frame folder / id = file name
        return cache.root / stem
    return None


_YOUTUBE_CLIP = re.compile(r"^(?P<id>[\w-]{11})_\d{6}_\d{6}$")


def _youtube_alternatives(cache: _DirCache, stem: str) -> list[str]:
    """``x/<id>_<start>_<end>`` -> ``x/<id>``; ``x/<id>`` -> ``x/<id>_<start>_<end>`` when the folder
    holds exactly one clip of that id (two would be a guess)."""
    parent, _, base = stem.rpartition("/")
    prefix = f"{parent}/" if parent else ""
    if (m := _YOUTUBE_CLIP.match(base)) is not None:
        return [prefix + m["id"]]
    clips = cache.youtube_clips(parent).get(base, set())
    return [prefix + next(iter(clips))] if len(clips) == 1 else []


@dataclass
class RootReport:
    """What :func:`validate_root` found: every video of the split present, or which are not."""

    root: Path
    split: Split
    found: int
    missing: list[str]  # the list's entries with no file or frame folder under root
    preset: DatasetPreset | None = None

    @property
    def ok(self) -> bool:
        return not self.missing

    def message(self, examples: int = 5) -> str:
        src = f" ({self.split.source})" if self.split.source else ""
        total = self.found + len(self.missing)
        if self.ok:
            return f"{self.split.name} split{src}: all {total} videos found under {self.root}"
        shown = ", ".join(self.missing[:examples]) + (", ..." if len(self.missing) > examples else "")
        hint = ""
        youtube = (", and each YouTube clip with its _<start>_<end> times removed or added"
                   if self.preset is not None and self.preset.youtube_clips else "")
        if not self.found:
            layout = (f" (raw {self.preset.name}: {'/'.join(d or '.' for d in self.preset.video_dirs)} holding "
                      f"{'<class>/' if self.preset.class_folders else ''}<video>{self.preset.extension})"
                      if self.preset else "")
            hint = f" -- none at all: is data_root the folder that holds the videos{layout}, or their prepared copies?"
        return (f"{self.split.name} split{src}: {len(self.missing)} of {total} videos missing under "
                f"{self.root}, e.g. {shown} (looked for the listed name, the same name with "
                f"{'/'.join(VIDEO_EXTENSIONS)}, or a frame folder{youtube}){hint}")


def validate_root(root: str | Path, split: Split, preset: DatasetPreset | None = None,
                  located: list[Path | None] | None = None) -> RootReport:
    """Check that every video of ``split`` exists under ``root``: counts and the missing entries."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    located = located if located is not None else locate_videos(root, split, preset)
    missing = [split.videos[i] if split.format == "indexed_path" else
               (f"{split.folders[int(split.labels[i])]}/{split.videos[i]}" if split.format == "named" else split.videos[i])
               for i, p in enumerate(located) if p is None]
    return RootReport(root, split, len(located) - len(missing), missing, preset)
