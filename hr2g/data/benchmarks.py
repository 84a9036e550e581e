"""The five FSAR benchmarks (HMDB51, UCF101, Kinetics-100, SSv2-small, SSv2-full) as VideoDatasets.

A :class:`BenchmarkDataset` is a data root + a parsed split list.  ``clip(i, train, rng)``:

1. TSN indices over the video's length (:func:`hr2g.data.base.tsn_indices`: a random frame per
   segment in training, the centre frame in testing); the length comes from the container header
   or demuxed packets (:func:`hr2g.data.video.probe_video`) or the frame folder listing, cached;
2. decodes exactly those frames -- PyAV / PIL on the CPU, or DALI (NVDEC / nvJPEG on the GPU);
3. training: :func:`~hr2g.data.transforms.train_transform` (random resized crop, flip unless the
   dataset is direction-sensitive, colour jitter, CLIP normalisation), on the decoder's device;
   testing: short side -> ``image_size``, centre crop, CLIP normalisation (fused in DALI, or
   :func:`~hr2g.data.transforms.eval_transform`).

Output ``[T, 3, S, S]`` float32, on the GPU when DALI decodes there.  A missing or unreadable video
raises :class:`~hr2g.data.base.VideoReadError` (the episode loader skips, counts and resamples it).

``decoder``: "pyav"; "dali" (GPU when CUDA is available, DALI's CPU backend otherwise; a clear
error if DALI is not installed); "auto" = DALI on the GPU when DALI and CUDA are both there and
this is not a DataLoader worker, else PyAV -- the reason is logged.  ``device`` (the run's model
device, given by the commands) places the decoding: a CPU run decodes on the CPU (``auto``: PyAV)
even where a GPU is visible, and ``cuda:N`` decodes on GPU N rather than on the current device.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from hr2g.data.base import VideoDataset, VideoReadError, per_video, tsn_indices
from hr2g.data.dali import DaliSetupError
from hr2g.data.presets import (DEFAULT_SPLIT_SUBDIR, DatasetPreset, find_annotation_files, find_label_file,
                                find_split_file, get_preset)
from hr2g.data.splits import Split, locate_videos, read_split, validate_root
from hr2g.data.transforms import eval_transform, train_transform
from hr2g.data.video import (FrameFolderInfo, ShortVideo, VideoInfo, decode_frames, probe_frame_folder, probe_video,
                             read_frame_files)
from hr2g.errors import SetupError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def one_video(path):
    """One file never kills a run: a decoder library's unexpected error while probing or decoding
    ``path`` (PyAV raised AttributeError on a fuzzed MP4's damaged header) becomes the video's
    VideoReadError -- skipped, counted and listed like any unreadable video."""
    try:
        yield
    except VideoReadError:
        raise
    except Exception as exc:  # noqa: BLE001 -- deliberately broad, per video
        if isinstance(exc, (MemoryError, ImportError)):  # the machine's or the install's, not the file's
            raise
        log.debug("unexpected error reading %s", path, exc_info=True)
        raise VideoReadError(str(path), f"unexpected {type(exc).__name__} from the decoder: {exc}") from None

DECODERS = ("auto", "dali", "pyav")


def choose_decoder(decoder: str, device: torch.device | None = None) -> tuple[str, str]:
    """(backend, reason): which decoder ``decoder`` means in this process for a run on ``device``
    (None: wherever CUDA is), and why."""
    from hr2g.data import dali

    if decoder not in DECODERS:
        raise ValueError(f"data.decoder={decoder!r} is not allowed; choose one of {list(DECODERS)}")
    if decoder == "pyav":
        return "pyav", "data.decoder='pyav'"
    if decoder == "dali":
        dali.require_dali()
        return "dali", "data.decoder='dali'"
    why = dali.dali_status()
    if why is not None:
        return "pyav", f"decoder='auto' falls back to PyAV: {why}"
    if device is not None and device.type != "cuda":
        return "pyav", (f"decoder='auto' uses PyAV: the run's device is {device.type} (DALI's CPU video decoder "
                        "reads only VP8/VP9/MJPEG; pass decoder='dali' to use it anyway)")
    if not torch.cuda.is_available():
        return "pyav", ("decoder='auto' uses PyAV: no CUDA device, and DALI's CPU video decoder reads only "
                        "VP8/VP9/MJPEG (pass decoder='dali' to use it anyway)")
    if dali.in_dataloader_worker():
        return "pyav", "decoder='auto' uses PyAV in DataLoader workers (GPU decoding needs data.num_workers=0)"
    return "dali", "decoder='auto': DALI and CUDA available, decoding on the GPU"


def _same_file_again(split: Split, paths: list[Path | None]) -> frozenset[int]:
    """Entries that find a file an earlier entry found: never drawn, so no episode has one file as
    its support and its query.  A class/video list may name one id under two classes (two files in
    class folders), but in SSv2's one flat folder ``Pushing something/100`` and ``Pulling
    something/100`` are both 100.webm: that is refused, as a list naming a video under two classes is.
    (They join the missing ones in ``unavailable``, so evaluate's ``missing_videos`` counts them.)"""
    first: dict[Path, int] = {}
    again = []
    for i, path in enumerate(paths):
        if path is None:
            continue
        j = first.setdefault(path, i)
        if j == i:
            continue
        if split.labels[j] != split.labels[i]:
            raise ValueError(f"{split.source or split.name + ' split'}: {split.videos[j]!r} ({split.class_names[split.labels[j]]}) "
                             f"and {split.videos[i]!r} ({split.class_names[split.labels[i]]}) are the same file {path}: "
                             "a video under two classes")
        again.append(i)
    if again:
        log.warning("%s: %d entries find a file an earlier entry of their class found (%r and %r are %s): never drawn",
                    split.source or split.name, len(again), split.videos[first[paths[again[0]]]], split.videos[again[0]],
                    paths[again[0]])
    return frozenset(again)


def _require_root(root: Path) -> None:
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to the current folder {Path.cwd()})"
        raise FileNotFoundError(f"data root {root}{where} does not exist or is not a folder")


class BenchmarkDataset(VideoDataset):
    """One split of a benchmark: videos (or frame folders) under ``root`` listed by ``split``.

    Args:
        root: data root (raw videos, or what ``python -m hr2g.prepare`` wrote).
        split: the parsed list (:func:`hr2g.data.splits.read_split`).
        preset: the dataset's layout (where to look for videos); None: the listed paths, or the root and videos/.
        frames: T, TSN segments.
        image_size: output crop side.
        flip: horizontal flip in training.
        decoder: "auto" | "dali" | "pyav" (module docstring).
        located: precomputed :func:`~hr2g.data.splits.locate_videos` result (saves a directory scan).
        device: the device the clips are for (module docstring); None: the current CUDA device if any.
    """

    def __init__(self, root: str | Path, split: Split, preset: DatasetPreset | None = None, frames: int = 8,
                 image_size: int = 224, flip: bool = True, decoder: str = "auto",
                 located: list[Path | None] | None = None, device: torch.device | str | None = None):
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r} is not allowed; choose one of {list(DECODERS)}")
        if decoder == "dali":  # fail at construction, not at the first episode
            from hr2g.data.dali import require_dali

            require_dali()
        self.root, self.split, self.preset = Path(root), split, preset
        self.frames, self.image_size, self.flip, self.decoder = frames, image_size, flip, decoder
        self.device = None if device is None else torch.device(device)
        _require_root(self.root)
        self.paths = located if located is not None else locate_videos(self.root, split, preset)
        report = validate_root(self.root, split, preset, self.paths)
        if report.found == 0:
            raise FileNotFoundError(report.message())
        if not report.ok:
            log.warning("%s; the missing ones are never drawn (episodes use the videos found)", report.message())
        self.report = report  # what validate_root found: counts and missing entries
        self.unavailable = frozenset(i for i, p in enumerate(self.paths) if p is None) | _same_file_again(split, self.paths)
        self.class_names = list(split.class_names)
        self.labels = split.labels
        self._meta: dict[int, VideoInfo | FrameFolderInfo] = {}  # probed once per video and process
        self._decoded_frames: dict[int, int] = {}  # videos whose header overstates their length: frames there
        self._backend: tuple[int, str, object] | None = None  # (pid, "pyav"|"dali", DaliReader|None)
        self._warned_codecs: set[str] = set()
        self.dali_fallbacks = 0  # videos DALI failed on and PyAV / PIL was asked instead (this process)
        # videos DALI failed on once: PyAV / PIL from then on (a refusal -- NVDEC's minimum size, a
        # profile it lacks, a header overstating the length -- repeats, and costs its batch a rerun)
        self._dali_refused: set[int] = set()

    @classmethod
    def from_config(cls, cfg, split: str, device: torch.device | None = None) -> "BenchmarkDataset":
        """Build from a :class:`hr2g.config.DataConfig`: lists from ``cfg.split_dir`` (default
        ``<data_root>/splits``), names of index-only SSv2 lists from the preset's label files."""
        preset = get_preset(cfg.dataset)
        if not cfg.data_root:
            raise ValueError(f"data.data_root is required for dataset {cfg.dataset!r} (pass --data-root DIR)")
        root = Path(cfg.data_root)
        _require_root(root)  # before looking for the lists in it: "no split list in ..." would mislead
        split_dir = Path(cfg.split_dir) if cfg.split_dir else root / DEFAULT_SPLIT_SUBDIR
        list_path = find_split_file(preset, split_dir, split)
        label_file = find_label_file(preset, split_dir, split, exclude=list_path) or \
            find_annotation_files(preset, split_dir, root) or None
        parsed = read_split(list_path, split, label_file=label_file)
        want = preset.expected.get(split)
        if want and (parsed.num_classes, len(parsed)) != want:
            log.warning("%s %s list %s has %d classes / %d videos; the public few-shot split has %d / %d",
                        cfg.dataset, split, list_path, parsed.num_classes, len(parsed), *want)
        flip = cfg.flip
        if flip and not preset.flip:
            log.warning("%s: flip augmentation disabled: its classes are direction-sensitive "
                        "(e.g. 'pushing something from left to right')", cfg.dataset)
            flip = False
        log.info("%s %s: %d videos, %d classes from %s (class names: %s)", cfg.dataset, split, len(parsed),
                 parsed.num_classes, list_path, parsed.label_source)
        return cls(root, parsed, preset, frames=cfg.frames, image_size=cfg.image_size, flip=flip, decoder=cfg.decoder,
                   device=device)

    def __getstate__(self):  # decoders are per process (DALI pipelines, CUDA contexts)
        state = self.__dict__.copy()
        state["_backend"] = None
        return state

    # ---------------------------------------------------------------- identity and metadata

    def key(self, index: int) -> str:
        path = self.paths[index]
        if path is not None:
            return path.relative_to(self.root).as_posix()
        return self.split.videos[index]

    def _path(self, index: int) -> Path:
        path = self.paths[index]
        if path is None:
            raise VideoReadError(str(self.root / self.split.videos[index]),
                                 "not found under the data root (no video file or frame folder)")
        return path

    def _info(self, index: int) -> VideoInfo | FrameFolderInfo:
        if index not in self._meta:
            path = self._path(index)
            with one_video(path):
                self._meta[index] = probe_frame_folder(path) if path.is_dir() else probe_video(path)
        return self._meta[index]

    def num_frames(self, index: int) -> int:
        """Frames of video ``index``: its header's count, or the frames that decode once a decode
        found the header overstating it."""
        return self._decoded_frames.get(index, self._info(index).n_frames)

    def frame_indices(self, index: int, train: bool, rng: np.random.Generator) -> np.ndarray:
        # the header's count even where it is known to overstate: the first draw is the same in
        # every process (the decode draws again over the frames that exist)
        return tsn_indices(self._info(index).n_frames, self.frames, train, rng)

    # ---------------------------------------------------------------- decoding

    def _reader(self) -> tuple[str, object]:
        pid = os.getpid()
        if self._backend is None or self._backend[0] != pid:  # first use in this process (or a fork)
            name, why = choose_decoder(self.decoder, self.device)
            reader = None
            if name == "dali":
                from hr2g.data.dali import DaliReader

                mode = "auto" if self.device is None else "gpu" if self.device.type == "cuda" else "cpu"
                reader = DaliReader(mode, image_size=self.image_size, cuda_index=getattr(self.device, "index", None))
                why += f" (DALI device: {reader.device})"
            log.info("%s: decoding with %s -- %s", self.split.name, name, why)
            self._backend = (pid, name, reader)
        return self._backend[1], self._backend[2]

    @property
    def backend(self) -> str:
        """The decoder this process uses: "pyav" or "dali"."""
        return self._reader()[0]

    def _pyav_raw(self, index: int, idx: np.ndarray, train: bool, rng: np.random.Generator) -> np.ndarray:
        info = self._info(index)
        if isinstance(info, FrameFolderInfo):
            with one_video(self._path(index)):
                return read_frame_files(info.files, idx)
        path = str(self._path(index))
        with one_video(path):
            n = self._decoded_frames.get(index)
            if n is not None and int(np.max(idx)) >= n:  # known short and asked past its end: skip the decode
                return decode_frames(path, tsn_indices(n, self.frames, train, rng))  # that would stop early
            try:
                return decode_frames(path, idx)
            except ShortVideo as short:
                # the header overstated the length: sample again over the frames that exist.  The
                # header's count stays the one the first draw uses, so a clip's draws do not depend
                # on whether this process has met the video before (workers, resumed runs)
                self._decoded_frames[index] = short.n_decoded
                return decode_frames(path, tsn_indices(short.n_decoded, self.frames, train, rng))

    def read_raw(self, index: int, indices: np.ndarray) -> torch.Tensor:
        """Frames ``indices`` of video ``index`` through this dataset's decoder, uint8 ``[T, H, W, 3]``."""
        backend, reader = self._reader()
        if backend == "dali" and self._dali_can_read(index, reader):
            info = self._info(index)
            try:
                if isinstance(info, FrameFolderInfo):
                    (out,) = reader.frame_folders([info.files], [indices], "raw")
                else:
                    (out,) = reader.videos([self._path(index)], [indices], "raw")
            except DaliSetupError as exc:
                self._dali_unusable(exc)
            else:
                if not isinstance(out, VideoReadError):
                    return out
                self._note_dali_failure(out, reader, index)
        return torch.from_numpy(self._pyav_raw(index, np.asarray(indices), False, np.random.default_rng(0)))

    def _dali_unusable(self, exc: Exception) -> None:
        """DALI cannot build its pipeline here: stop (decoder="dali" was asked for) or decode with
        PyAV / PIL from now on in this process, saying so once (decoder="auto")."""
        if self.decoder == "dali":
            raise SetupError(f"{self.split.name}: {exc}; pass --set data.decoder=pyav (or auto) to decode with "
                             "PyAV / PIL") from exc
        log.warning("%s: %s: decoding with PyAV / PIL instead (--set data.decoder=pyav says so up front)",
                    self.split.name, exc)
        self._backend = (os.getpid(), "pyav", None)

    def _note_dali_failure(self, err: VideoReadError, reader, index: int) -> None:
        # DALI refuses streams PyAV reads fine (NVDEC: below its minimum frame size, 10-bit or 4:4:4
        # H.264, codec profiles the GPU lacks), so a DALI failure is retried with PyAV before the
        # video counts as unreadable, and the video goes to PyAV from then on; the first one is
        # logged, all are counted.
        self.dali_fallbacks += 1
        self._dali_refused.add(index)
        if self.dali_fallbacks == 1:
            log.warning("DALI (%s) could not decode %s (%s): retrying such videos with PyAV (counted in "
                        "dataset.dali_fallbacks)", reader.device, err.path, err.why)

    def _dali_can_read(self, index: int, reader) -> bool:
        # (a video shorter than its header goes to DALI until a draw past its real end fails
        # there and PyAV draws again; after that it is one of the refused)
        if index in self._dali_refused:
            return False
        info = self._info(index)
        if isinstance(info, FrameFolderInfo) or info.codec in reader.codecs:
            return True
        if info.codec not in self._warned_codecs:
            self._warned_codecs.add(info.codec)
            log.warning("DALI (%s) cannot decode %s videos such as %s: those are decoded with PyAV; transcode "
                        "them with `python -m hr2g.prepare --to %s` to decode everything with DALI",
                        reader.device, info.codec, self._path(index), "h264" if reader.device == "gpu" else "vp9")
        return False

    def _finish(self, frames: torch.Tensor, train: bool, rng: np.random.Generator) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> augmented / centre-cropped, CLIP-normalised ``[T, 3, S, S]``."""
        x = frames.permute(0, 3, 1, 2)  # [T, 3, H, W]
        if train:
            return train_transform(x, self.image_size, rng, flip=self.flip)
        return eval_transform(x, self.image_size)

    def clip(self, index: int, train: bool, rng: np.random.Generator) -> torch.Tensor:
        (out,) = self.clips([index], train, rng)
        if isinstance(out, VideoReadError):
            raise out
        return out

    def clips(self, indices: list[int], train: bool,
              rng: np.random.Generator | list[np.random.Generator]) -> list[torch.Tensor | VideoReadError]:
        """Several clips in one go (one DALI run for all of them): each entry the clip of
        ``indices[k]`` or the VideoReadError that stopped it.  ``rng``: one generator, which draws
        all TSN indices first, then the augmentations, in order (a single clip: the same draws as
        :meth:`clip`); or one per video, each drawing that video's only."""
        backend, reader = self._reader()
        rngs = per_video(rng, len(indices))
        out: dict[int, torch.Tensor | VideoReadError] = {}
        plan: list[tuple[int, np.ndarray]] = []
        for k, i in enumerate(indices):
            try:
                plan.append((k, self.frame_indices(int(i), train, rngs[k])))
            except VideoReadError as err:
                out[k] = err
        dali_videos, dali_frames, retried = [], [], set()
        # with DALI on the GPU, clips PyAV has to decode (codecs DALI lacks) join the others there
        device = reader.torch_device if backend == "dali" else torch.device("cpu")
        for k, idx in plan:
            i = int(indices[k])
            if backend == "dali" and self._dali_can_read(i, reader):
                (dali_frames if isinstance(self._info(i), FrameFolderInfo) else dali_videos).append((k, idx))
                continue
            try:
                out[k] = torch.from_numpy(self._pyav_raw(i, idx, train, rngs[k])).to(device)
            except VideoReadError as err:
                out[k] = err
        mode = "raw" if train else "test"
        if backend == "dali":
            for group, read in ((dali_videos, reader.videos), (dali_frames, reader.frame_folders)):
                if not group:
                    continue
                infos = [self._info(int(indices[k])) for k, _ in group]
                sources = [info.files if isinstance(info, FrameFolderInfo) else self._path(int(indices[k]))
                           for (k, _), info in zip(group, infos)]
                try:
                    res = read(sources, [idx for _, idx in group], mode, sizes=[(info.height, info.width) for info in infos])
                except DaliSetupError as exc:  # no clip's fault: all of them through PyAV / PIL below
                    self._dali_unusable(exc)
                    for k, _ in dali_videos + dali_frames:  # those a group before this one decoded stay
                        out.setdefault(k, None)
                    break
                out.update({k: r for (k, _), r in zip(group, res)})
            for k, idx in dali_videos + dali_frames:  # what DALI could not decode, PyAV / PIL may
                if out[k] is None or isinstance(out[k], VideoReadError):
                    if out[k] is not None:
                        self._note_dali_failure(out[k], reader, int(indices[k]))
                    retried.add(k)
                    try:
                        out[k] = torch.from_numpy(self._pyav_raw(int(indices[k]), idx, train, rngs[k])).to(device)
                    except VideoReadError as err:
                        out[k] = err
        # DALI's test output is already resized, cropped and normalised
        done = {k for k, _ in dali_videos + dali_frames} - retried if not train else set()
        result: list[torch.Tensor | VideoReadError] = []
        for k in range(len(indices)):
            r = out[k]
            result.append(r if isinstance(r, VideoReadError) or k in done else self._finish(r, train, rngs[k]))
        return result
