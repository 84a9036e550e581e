"""Turn a raw dataset into what the fast loader reads (the library behind ``python -m hr2g.prepare``).

Targets:
- ``h264``: MP4 (H.264, yuv420p) for DALI's GPU decoder (NVDEC);
- ``vp9``:  WebM (VP9) for DALI's CPU decoder, which reads VP8/VP9/MJPEG only;
- ``jpeg``: frame folders ``<video>/img_00001.jpg ...`` (nvJPEG on the GPU, PIL on the CPU),
  optionally only ``max_frames`` frames per video (the TSN centre frames of ``max_frames`` segments).

Videos are scaled so the short side is at most ``short_side`` (never upscaled: it adds bytes, not
information) with even sides (yuv420p), and re-timed to a constant frame rate with every decoded
frame kept, so "frame i" means the same frame before and after.  Outputs mirror the inputs' paths
under the output root (new extension), so the same split lists find them.

Each job writes to a hidden temporary name and renames it into place when complete, so an output
that exists is complete: a rerun skips it (resumable), and a crash leaves only temporaries, which
the next run deletes.  A bad input never stops the run: it is returned as failed, with the reason.
"""
from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

TARGETS = {"h264": (".mp4", "libx264", "mp4"), "vp9": (".webm", "libvpx-vp9", "webm"), "jpeg": ("", None, None)}


@dataclass(frozen=True)
class Options:
    target: str = "h264"  # h264 | vp9 | jpeg
    short_side: int = 256  # max short side of the output; 0 keeps the size
    crf: int | None = None  # quality (None: 20 for H.264, 32 for VP9); lower is better and larger
    gop: int = 0  # key frame interval in frames (0: the encoder's default); smaller = faster sparse seeking
    max_frames: int = 0  # jpeg: frames kept per video (0: all)
    jpeg_quality: int = 90  # jpeg: PIL quality
    threads: int = 0  # decoder / encoder threads per job (0: FFmpeg decides)


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    rel: str  # the input's path relative to the source root (report key)


@dataclass(frozen=True)
class Outcome:
    rel: str
    status: str  # "done" | "skipped" | "failed"
    detail: str = ""  # failure reason, or what was written


def output_path(out_root: Path, rel: Path, target: str) -> Path:
    ext = TARGETS[target][0]
    return out_root / rel.with_suffix(ext) if ext else out_root / rel.with_suffix("")


def is_complete(dst: Path, target: str) -> bool:
    """Outputs appear only by atomic rename, so existing = complete (a non-empty file / folder)."""
    if target == "jpeg":
        return dst.is_dir() and any(dst.glob("img_*.jpg"))
    return dst.is_file() and dst.stat().st_size > 0


def _temp(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.tmp-{os.getpid()}")


def _remove_stale(dst: Path) -> None:
    """Temporaries of an interrupted earlier run (any process id) for this output."""
    # escaped: 16 HMDB51 few-shot videos are named "..._[HD]_...", and glob read [HD] as a character
    # class, so their temporaries (a Ctrl-C's half-written frame folder, say) were never removed
    for stale in dst.parent.glob(f".{glob.escape(dst.name)}.tmp-*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at most ``short_side``, both even (yuv420p)."""
    scale = min(1.0, short_side / min(width, height)) if short_side > 0 else 1.0
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def run_job(job: Job, opts: Options) -> Outcome:
    """Prepare one video; never raises for a bad input (the reason goes to the report)."""
    from hr2g.data.base import VideoReadError

    if is_complete(job.dst, opts.target):
        return Outcome(job.rel, "skipped")
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(job.dst)
    tmp = _temp(job.dst)
    try:
        n = _extract_jpeg(job.src, tmp, opts) if opts.target == "jpeg" else _transcode(job.src, tmp, opts)
        os.replace(tmp, job.dst)  # atomic: the output is complete or absent
        return Outcome(job.rel, "done", f"{n} frames")
    except VideoReadError as err:
        return Outcome(job.rel, "failed", err.why)
    except Exception as exc:  # an encoder or file-system error on one input must not stop the batch
        return Outcome(job.rel, "failed", f"{type(exc).__name__}: {exc}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _transcode(src: Path, tmp: Path, opts: Options) -> int:
    import av
    from av.video.reformatter import Interpolation

    from hr2g.data.base import VideoReadError
    from hr2g.data.video import _open, reformat_kwargs

    ext, codec, fmt = TARGETS[opts.target]
    inp = _open(str(src))
    n = 0
    try:
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        if opts.threads:
            ist.codec_context.thread_count = opts.threads
        rate = ist.average_rate or ist.guessed_rate or Fraction(25)
        with av.open(str(tmp), "w", format=fmt) as out:
            ost = None
            for packet in inp.demux(ist):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue  # a damaged packet: skip it, as players (and the loader) do
                for frame in frames:
                    if ost is None:
                        width, height = scaled_size(frame.width, frame.height, opts.short_side)
                        ost = _add_stream(out, codec, rate, width, height, opts)
                    img = frame.reformat(**reformat_kwargs(width=width, height=height, format="yuv420p",
                                                           interpolation=Interpolation.AREA))
                    img.pts, img.time_base = n, Fraction(1) / rate  # constant rate, every frame kept
                    for pkt in ost.encode(img):
                        out.mux(pkt)
                    n += 1
            if ost is None:
                raise VideoReadError(str(src), "no frame could be decoded")
            for pkt in ost.encode():
                out.mux(pkt)
    finally:
        inp.close()
    return n


def _add_stream(out, codec: str, rate: Fraction, width: int, height: int, opts: Options):
    ost = out.add_stream(codec, rate=rate)
    ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
    ost.time_base = Fraction(1) / rate
    if opts.threads:
        ost.codec_context.thread_count = opts.threads
    if codec == "libx264":
        ost.options = {"crf": str(20 if opts.crf is None else opts.crf), "preset": "medium"}
    else:  # constant quality VP9; row-mt and cpu-used 4: ~3x faster encoding at a small size cost
        ost.options = {"crf": str(32 if opts.crf is None else opts.crf), "b:v": "0", "row-mt": "1", "cpu-used": "4",
                       "deadline": "good"}
    if opts.gop:
        ost.codec_context.gop_size = opts.gop
    return ost


def _extract_jpeg(src: Path, tmp: Path, opts: Options) -> int:
    from PIL import Image

    from hr2g.data.base import tsn_indices
    from hr2g.data.video import ShortVideo, decode_frames, probe_video

    tmp.mkdir(parents=True)

    def save(k: int, rgb: np.ndarray) -> None:
        img = Image.fromarray(rgb)
        width, height = scaled_size(img.width, img.height, opts.short_side)
        if (width, height) != img.size:
            img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
        img.save(tmp / f"img_{k:05d}.jpg", quality=opts.jpeg_quality)

    if opts.max_frames > 0:
        n = probe_video(src).n_frames
        idx = np.unique(tsn_indices(n, opts.max_frames, train=False))
        try:
            frames = decode_frames(src, idx)
        except ShortVideo as short:  # the header overstated the length
            idx = np.unique(tsn_indices(short.n_decoded, opts.max_frames, train=False))
            frames = decode_frames(src, idx)
        for k, rgb in enumerate(frames, 1):
            save(k, rgb)
        return len(frames)
    return _extract_all(src, save)


def _extract_all(src: Path, save) -> int:
    import av

    from hr2g.data.base import VideoReadError
    from hr2g.data.video import _open, _rgb_flags, reformat_kwargs

    inp = _open(str(src))
    n = 0
    try:
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        for packet in inp.demux(ist):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            for frame in frames:
                n += 1
                save(n, frame.to_ndarray(**reformat_kwargs(format="rgb24", interpolation=_rgb_flags())))
    finally:
        inp.close()
    if n == 0:
        raise VideoReadError(str(src), "no frame could be decoded")
    return n


def _run_packed(args: tuple[Job, Options]) -> Outcome:
    return run_job(*args)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent: a terminal sends it to the whole process group,
    and each worker printed a KeyboardInterrupt traceback of its own before the parent's line."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_jobs(jobs: list[Job], opts: Options, workers: int = 1, progress: bool = True) -> list[Outcome]:
    """Run ``jobs`` on ``workers`` processes with a progress bar; outcomes in completion order."""
    from tqdm import tqdm

    outcomes: list[Outcome] = []
    bar = tqdm(total=len(jobs), desc=f"prepare ({opts.target})", unit="video", disable=not progress, dynamic_ncols=True)
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def record(o: Outcome) -> None:
        outcomes.append(o)
        counts[o.status] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update()

    todo = []
    for job in jobs:  # finished outputs are skipped here: a complete rerun starts no process
        if is_complete(job.dst, opts.target):
            record(Outcome(job.rel, "skipped"))
        else:
            todo.append(job)
    try:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                record(run_job(job, opts))
        elif todo:
            import multiprocessing

            # spawn, not fork: the parent may hold threads (tqdm, torch) that a fork would copy mid-state
            with multiprocessing.get_context("spawn").Pool(min(workers, len(todo)), initializer=_ignore_sigint) as pool:
                # chunks of a few jobs: per-task overhead stays small next to a transcode
                for o in pool.imap_unordered(_run_packed, [(j, opts) for j in todo], chunksize=4):
                    record(o)
    except BaseException:
        # the pool's workers were killed mid-write (terminate(): their own clean-up never ran): remove
        # the temporaries of the jobs that did not finish, so an interrupted run leaves only whole outputs
        finished = {o.rel for o in outcomes}
        for job in todo:
            if job.rel not in finished:
                _remove_stale(job.dst)
        raise
    finally:
        bar.close()
    return outcomes
