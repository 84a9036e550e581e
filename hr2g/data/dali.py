"""DALI decoding: video files (NVDEC) and JPEG frame folders (nvJPEG) on the GPU, or DALI's CPU
backend without one, at explicit frame indices -- the same TSN indices the PyAV path decodes.

Two outputs per source:

- ``raw``: decoded uint8 frames ``[T, H, W, 3]``, for training (the random resized crop, flip and
  colour jitter are then :func:`hr2g.data.transforms.train_transform` on the GPU tensor, so both
  decoders share one augmentation implementation and one sequence of rng draws);
- ``test``: resize (short side -> ``image_size``, antialiased), centre crop and CLIP normalisation
  fused in DALI (``crop_mirror_normalize``), float32 ``[T, 3, S, S]``, what evaluation consumes.

DALI is imported lazily (:func:`dali_status` says why it is unusable, if it is).  Pipelines are
built on first use -- after a DataLoader fork, never before -- and run synchronously, one run per
batch of clips (an episode).  A video DALI cannot decode leaves its pipeline unusable ("Current
pipeline object is no longer valid"), so a failed run drops the pipeline and the batch is retried
one clip at a time to name the culprit as a :class:`VideoReadError`.

DALI's CPU video decoder reads VP8/VP9/MJPEG only (2.4); H.264/HEVC need the GPU ("mixed").
The mixed decoder is NVDEC only (no CPU fallback inside DALI), so on the GPU a stream must also fit
the GPU's NVDEC: AV1 only on GPUs whose NVDEC has it (see :func:`nvdec_has_av1`), and DALI enforces
NVDEC's per-codec minimum frame size (``cuvidGetDecoderCaps``; "Video is too small in at least one
dimension") -- small for H.264 (48x16), but about 128 px for VP9/AV1 and 144 px for HEVC.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from hr2g.data.base import VideoReadError
from hr2g.errors import SetupError
from hr2g.data.transforms import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

#: codecs DALI's CPU ("cpu" device) video decoder supports; the mixed (NVDEC) one adds H.264, HEVC, AV1, MPEG-4
CPU_VIDEO_CODECS = ("vp8", "vp9", "mjpeg")
GPU_VIDEO_CODECS = CPU_VIDEO_CODECS + ("h264", "hevc", "av1", "mpeg4")
MODES = ("raw", "test")


def nvdec_has_av1(capability: tuple[int, int]) -> bool:
    """Whether the NVDEC of a GPU of this compute capability decodes AV1.

    NVIDIA's NVDEC application note (Video Codec SDK 13): AV1 Main is decoded by GA10x/Ada (sm 8.6,
    8.7, 8.9) and Blackwell/Thor (sm >= 10), *not* by Turing, GA100 (A100, sm 8.0) or Hopper (H100/H200,
    sm 9.0).  DALI's mixed decoder then fails every AV1 video ("Codec configuration not supported on
    this GPU") instead of the dataset handing them to PyAV."""
    return capability in ((8, 6), (8, 7), (8, 9)) or capability[0] >= 10


@functools.lru_cache(maxsize=None)
def dali_status() -> str | None:
    """None when DALI can be used here, else the reason (not installed, broken install)."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA/ABI failure inside DALI's own import
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (f"NVIDIA DALI is not importable ({type(exc).__name__}: {first}); install it with "
                "`pip install --no-build-isolation -e '.[dali]'` in the hr2g checkout (nvidia-dali-cuda130)")
    return None


class DaliUnavailable(SetupError, RuntimeError):
    """DALI was asked for and cannot be used here (not importable; GPU decoding without CUDA): a
    setup error the commands print as one line, before any video is read."""


def require_dali() -> None:
    why = dali_status()
    if why is not None:
        raise DaliUnavailable(f"decoder='dali': {why}; or decode with PyAV: --decoder pyav (evaluate, sweep, plots, "
                              "predict), --set data.decoder=pyav (train)")


def in_dataloader_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def resolve_device(device: str = "auto") -> str:
    """"gpu" (mixed decoders, outputs on the current CUDA device) or "cpu"."""
    if device not in ("auto", "gpu", "cpu"):
        raise ValueError(f"DALI device must be 'auto', 'gpu' or 'cpu', got {device!r}")
    if device == "cpu":
        return "cpu"
    cuda = torch.cuda.is_available()
    if device == "gpu" and not cuda:
        raise DaliUnavailable("DALI device='gpu' needs CUDA, but torch.cuda.is_available() is False")
    if cuda and in_dataloader_worker():
        # CUDA cannot be initialised in a forked DataLoader worker; DALI has its own decode threads,
        # so GPU decoding wants data.num_workers=0.
        log.warning("DALI in a DataLoader worker process: decoding on the CPU (set data.num_workers=0 to "
                    "decode on the GPU)")
        return "cpu"
    return "gpu" if cuda else "cpu"


class DaliSetupError(RuntimeError):
    """DALI cannot build its pipeline on this machine (no video is involved: a build takes none):
    the decoder, not a video, is broken here."""


class DaliReader:
    """Decode batches of clips with DALI.

    Args:
        device: "auto" (GPU when CUDA is available), "gpu" or "cpu".
        image_size: side of the ``test`` output crop.
        max_batch: clips (video sources) per pipeline run; larger requests are chunked.
        max_images: frames per run for frame folders.
        num_threads: DALI CPU threads (parsing, CPU decoding, resizing on the CPU backend).
        cuda_index: the GPU to decode on (device "gpu"); None: the current CUDA device at first use.
    """

    def __init__(self, device: str = "auto", image_size: int = 224, max_batch: int = 16, max_images: int = 256,
                 num_threads: int = 2, cuda_index: int | None = None):
        require_dali()
        self.device = resolve_device(device)
        self._pinned_index = cuda_index if self.device == "gpu" else None
        self.image_size, self.max_batch, self.max_images, self.num_threads = image_size, max_batch, max_images, num_threads
        self._pipes: dict[tuple[str, str], object] = {}
        self._copy_stream = None  # CUDA side stream of the output copies, made on first GPU use
        # CUDA device of the pipelines and of the output tensors, fixed on first GPU use (not here:
        # torch.cuda.current_device() initialises CUDA, and a reader may be made before a fork)
        self._cuda_index: int | None = self._pinned_index

    def __getstate__(self):  # pipelines and streams hold native resources: rebuilt in the receiving process
        state = self.__dict__.copy()
        state["_pipes"] = {}
        state["_copy_stream"] = None
        state["_cuda_index"] = state["_pinned_index"]
        return state

    def _device_index(self) -> int:
        # One index for the pipelines (device_id, fixed when built) and for the torch tensors the
        # outputs are copied into: reading torch.cuda.current_device() at each call, as before, gave
        # tensors on another GPU than DALI's outputs once the caller switched devices (multi-GPU).
        if self._cuda_index is None:
            self._cuda_index = torch.cuda.current_device()
        return self._cuda_index

    @property
    def codecs(self) -> tuple[str, ...]:
        if self.device != "gpu":
            return CPU_VIDEO_CODECS
        if nvdec_has_av1(torch.cuda.get_device_capability(self._device_index())):
            return GPU_VIDEO_CODECS
        # A100 / H100 / H200 NVDEC lacks AV1: leave AV1 videos to PyAV (the dataset checks this list)
        # rather than failing each of them in DALI
        return tuple(c for c in GPU_VIDEO_CODECS if c != "av1")

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", self._device_index()) if self.device == "gpu" else torch.device("cpu")

    # ---------------------------------------------------------------- pipelines

    def _define(self, source: str, mode: str):
        """The pipeline graph, not yet built (building a GPU one needs CUDA; defining it does not,
        which lets the CPU tests check the GPU graph's operator placement).

        Placement: the external sources are CPU (the mixed decoders take CPU input, and the
        resize / crop arguments must be CPU argument inputs); the decoders are "mixed" on the GPU
        (their output is GPU memory); resize and crop_mirror_normalize then run on the GPU because
        their input is.  exec_async/exec_pipelined off: the legacy simple executor, one synchronous
        run per feed_input (no prefetch that would need inputs in advance), whose outputs are
        host-synchronised when run() returns and valid until the next run."""
        from nvidia.dali import fn, pipeline_def, types

        dec_device = "mixed" if self.device == "gpu" else "cpu"
        # the mixed decoders' thread pools: not pinned to cores (pinned, every process of a node --
        # DDP ranks -- pins its threads to the cores nearest the GPU, the same ones for all)
        mixed = dict(affine=False) if self.device == "gpu" else {}
        size = self.image_size
        batch = self.max_batch if source == "video" else self.max_images

        @pipeline_def(batch_size=batch, num_threads=self.num_threads,
                      device_id=self._device_index() if self.device == "gpu" else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            if source == "video":
                idx = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
                # pad_mode="none": an index past the real end of a video whose header overstates its
                # length fails that video, so the PyAV path samples again over the frames that exist
                # ("edge" returned the last frame repeated, "constant" black frames)
                x = fn.decoders.video(encoded, device=dec_device, frames=idx, pad_mode="none", **mixed)  # [F, H, W, 3]
                layout = "FCHW"
            else:
                # hw_decoder_load=0: every image through nvJPEG's CUDA decoder; by default 65 % of a
                # batch goes to the hardware JPEG decoder, whose pixels differ, so a frame would
                # depend on which other frames shared its batch
                jpeg = dict(mixed, hw_decoder_load=0.0) if self.device == "gpu" else {}
                x = fn.decoders.image(encoded, device=dec_device, output_type=types.RGB, **jpeg)  # [H, W, 3]
                layout = "CHW"
            if mode == "raw":
                return x
            # geometry computed on the host by crop_geometry(): the same output size and crop corner
            # as transforms.eval_transform, so only the interpolation kernels differ
            resized = fn.external_source(name="resize", dtype=types.FLOAT, ndim=1)  # [2] = (H, W)
            pos_x = fn.external_source(name="crop_x", dtype=types.FLOAT, ndim=0)
            pos_y = fn.external_source(name="crop_y", dtype=types.FLOAT, ndim=0)
            x = fn.resize(x, size=resized, antialias=True, interp_type=types.INTERP_LINEAR)
            return fn.crop_mirror_normalize(
                x, crop=(size, size), crop_pos_x=pos_x, crop_pos_y=pos_y, dtype=types.FLOAT, output_layout=layout,
                mean=[255.0 * m for m in CLIP_MEAN], std=[255.0 * s for s in CLIP_STD])

        return pipe()

    def _build(self, source: str, mode: str):
        try:
            p = self._define(source, mode)
            p.build()
        except Exception as exc:  # no video is read while building: this machine's DALI is the problem
            raise DaliSetupError(f"DALI cannot build its {self.device} {source} pipeline here ({_first_line(exc)})") from exc
        return p

    def _pipe(self, source: str, mode: str):
        key = (source, mode)
        if key not in self._pipes:
            self._pipes[key] = self._build(source, mode)
        return self._pipes[key]

    def _run(self, source: str, mode: str, feeds: dict[str, list[np.ndarray]]) -> list[torch.Tensor]:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        pipe = self._pipe(source, mode)
        try:
            for name, data in feeds.items():
                pipe.feed_input(name, data)
            (out,) = pipe.run()
        except Exception:
            self._pipes.pop((source, mode), None)  # DALI invalidates a pipeline that failed
            raise
        dtype = torch.uint8 if mode == "raw" else torch.float32
        if self.device == "cpu":
            tensors = []
            for i in range(len(out)):
                tensors.append(feed_ndarray(out[i], torch.empty(tuple(out[i].shape()), dtype=dtype)))
            return tensors
        return self._copy_out_gpu(out, dtype, feed_ndarray)

    def _copy_out_gpu(self, out, dtype: torch.dtype, feed_ndarray) -> list[torch.Tensor]:
        """Device-to-device copies (no host round trip) of DALI's outputs into fresh torch tensors.

        DALI refills its output buffers on its next run, so the copies must be complete when we
        return; they run on a side stream that is synchronised alone (not waiting for the model's
        kernels on the current stream), and ``record_stream`` keeps the caching allocator from
        handing the memory back to the side stream while the consumer stream still reads it."""
        dev = self.torch_device  # == the pipelines' device_id (see _device_index)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(dev)
        consumer = torch.cuda.current_stream(dev)
        tensors = []
        with torch.cuda.stream(self._copy_stream):
            for i in range(len(out)):
                t = torch.empty(tuple(out[i].shape()), dtype=dtype, device=dev)
                feed_ndarray(out[i], t, cuda_stream=self._copy_stream)
                t.record_stream(consumer)
                tensors.append(t)
        self._copy_stream.synchronize()
        return tensors

    # ---------------------------------------------------------------- sources

    def _geometry_feeds(self, sizes: list[tuple[int, int]] | None, n: int, mode: str) -> dict[str, list[np.ndarray]]:
        if mode == "raw":
            return {}
        if sizes is None or len(sizes) != n:
            raise ValueError(f"mode='test' needs the (height, width) of each of the {n} sources, got {sizes!r}")
        feeds: dict[str, list[np.ndarray]] = {"resize": [], "crop_x": [], "crop_y": []}
        s = self.image_size
        for h, w in sizes:
            nh, nw, top, left = crop_geometry(h, w, s)
            # crop_mirror_normalize places the corner at pos * (extent - crop): these give top / left exactly
            feeds["resize"].append(np.array([nh, nw], dtype=np.float32))
            feeds["crop_y"].append(np.array(top / (nh - s) if nh > s else 0.0, dtype=np.float32))
            feeds["crop_x"].append(np.array(left / (nw - s) if nw > s else 0.0, dtype=np.float32))
        return feeds

    def videos(self, paths: list[str | Path], indices: list[np.ndarray], mode: str = "raw",
               sizes: list[tuple[int, int]] | None = None) -> list[torch.Tensor | VideoReadError]:
        """Frames ``indices[i]`` of video ``paths[i]``: uint8 ``[T, H, W, 3]`` (raw) or normalised
        float ``[T, 3, S, S]`` (test; ``sizes[i]`` = the video's (height, width)).  A video that
        fails is returned as its VideoReadError."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        geometry = self._geometry_feeds(sizes, len(paths), mode)
        results: list[torch.Tensor | VideoReadError | None] = [None] * len(paths)
        encoded: dict[int, np.ndarray] = {}
        for i, p in enumerate(paths):
            try:
                encoded[i] = np.fromfile(str(p), dtype=np.uint8)
            except OSError as exc:
                results[i] = VideoReadError(str(p), f"cannot read the file ({exc.strerror or exc})")
                continue
            if encoded[i].size == 0:
                results[i] = VideoReadError(str(p), "empty file (0 bytes)")
                del encoded[i]
        todo = sorted(encoded)
        for start in range(0, len(todo), self.max_batch):
            chunk = todo[start : start + self.max_batch]
            feeds = {"encoded": [encoded[i] for i in chunk],
                     "frames": [np.asarray(indices[i], dtype=np.int32) for i in chunk]}
            feeds.update({name: [vals[i] for i in chunk] for name, vals in geometry.items()})
            for i, r in zip(chunk, self._run_or_isolate("video", mode, feeds, [str(paths[i]) for i in chunk])):
                results[i] = r
        return results  # type: ignore[return-value]

    def frame_folders(self, files: list[list[str]], indices: list[np.ndarray], mode: str = "raw",
                      sizes: list[tuple[int, int]] | None = None) -> list[torch.Tensor | VideoReadError]:
        """Frames ``indices[i]`` of the JPEG listing ``files[i]`` (see :func:`hr2g.data.video.list_frames`),
        decoded with nvJPEG on the GPU: uint8 ``[T, H, W, 3]`` (raw) or float ``[T, 3, S, S]`` (test;
        ``sizes[i]`` = the frames' (height, width))."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        geometry = self._geometry_feeds(sizes, len(files), mode)
        per_image: dict[str, list[np.ndarray]] = {name: [] for name in geometry}
        results: list[torch.Tensor | VideoReadError | None] = [None] * len(files)
        images: list[np.ndarray] = []
        owner: list[int] = []
        names: list[str] = []
        for i, (listing, idx) in enumerate(zip(files, indices)):
            try:
                loaded = {int(j): np.fromfile(listing[int(j)], dtype=np.uint8) for j in set(np.asarray(idx).tolist())}
            except (OSError, IndexError) as exc:
                results[i] = VideoReadError(str(Path(listing[0]).parent) if listing else "?", f"cannot read a frame ({exc})")
                continue
            for j in idx:
                images.append(loaded[int(j)])
                owner.append(i)
                names.append(listing[int(j)])
                for name, vals in geometry.items():
                    per_image[name].append(vals[i])
        decoded: list[torch.Tensor | VideoReadError] = []
        for start in range(0, len(images), self.max_images):
            sl = slice(start, start + self.max_images)
            feeds = {"encoded": images[sl], **{name: vals[sl] for name, vals in per_image.items()}}
            decoded += self._run_or_isolate("image", mode, feeds, names[sl])
        per_clip: dict[int, list] = {}
        for i, d in zip(owner, decoded):
            per_clip.setdefault(i, []).append(d)
        for i, frames in per_clip.items():
            err = next((f for f in frames if isinstance(f, VideoReadError)), None)
            if err is not None:
                results[i] = VideoReadError(str(Path(err.path).parent), f"{Path(err.path).name}: {err.why}")
            elif len({tuple(f.shape) for f in frames}) != 1:
                results[i] = VideoReadError(str(Path(names[owner.index(i)]).parent), "frames of one clip differ in size")
            else:
                results[i] = torch.stack(frames)
        return results  # type: ignore[return-value]

    def _run_or_isolate(self, source: str, mode: str, feeds: dict[str, list[np.ndarray]],
                        names: list[str]) -> list[torch.Tensor | VideoReadError]:
        """Run one batch; when it fails, rerun sample by sample so one bad file costs only itself.
        A pipeline that cannot be built raises :class:`DaliSetupError` (that is no file's fault)."""
        self._pipe(source, mode)  # built here, outside the per-file handling below
        try:
            return self._run(source, mode, feeds)
        except Exception as exc:  # DALI raises RuntimeError for any decode failure inside the graph
            if len(names) == 1:
                return [VideoReadError(names[0], f"DALI could not decode it ({_first_line(exc)})")]
        out: list[torch.Tensor | VideoReadError] = []
        for k in range(len(names)):
            out += self._run_or_isolate(source, mode, {n: [v[k]] for n, v in feeds.items()}, [names[k]])
        return out


def crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized H, resized W, crop top, crop left) of the test transform: short side -> ``size``
    (Python rounding, as :func:`hr2g.data.transforms.resize_short`), then a ``size`` centre crop."""
    scale = size / min(height, width)
    nh, nw = max(size, round(height * scale)), max(size, round(width * scale))
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def _first_line(exc: Exception) -> str:
    """The cause in a DALI error: it starts "Critical error in pipeline: / Error in CPU operator
    ... / which was used ... / <traceback> / encountered:" and the cause follows; an assertion
    reads "Assert on ... failed: <cause>"."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln == "encountered:" and i + 1 < len(lines):
            return _first_line_of(lines[i + 1:])
    return _first_line_of(lines) if lines else type(exc).__name__


def _first_line_of(lines: list[str]) -> str:
    for ln in lines:
        if ln.startswith("Assert on") and "failed:" in ln:
            return ln.split("failed:", 1)[1].strip()[:300]
    rest = [ln for ln in lines if not ln.startswith("Critical error")] or lines  # DALI's header line
    useful = [ln for ln in rest if "Assert" in ln or "Failed" in ln or "rror" in ln]
    return (useful or rest)[0][:300]
