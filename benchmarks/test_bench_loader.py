"""Video decoding throughput: PyAV, DALI on the CPU, DALI on the GPU (NVDEC / nvJPEG).

Workload ``hmdb_5w1s_episode``: one 5-way 1-shot episode with 1 query per class = 10 videos,
T = 8 TSN test frames each (80 frames delivered), HMDB-like clips (340x256 after
``hr2g.prepare``, 90 frames).  Generated here: H.264 MP4 (NVDEC), VP9 WebM (DALI's CPU decoder
reads only VP8/VP9/MJPEG) and JPEG frame folders.  ``extra_info["frames/s"]`` counts delivered
(sampled) frames; a sequential decoder also decodes the frames in between.
In smoke mode (no CUDA) the clips shrink to 64x48, 24 frames, and each provider runs once;
``HR2G_BENCH_CPU=1`` times the CPU decoders at the real shape instead.

Every provider's frames are checked against PyAV's before anything is timed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hr2g.data.base import tsn_indices
from hr2g.data.dali import dali_status
from hr2g.data.video import decode_frames, probe_frame_folder, read_frame_files
from tests.media import frame_pattern, write_frame_folder, write_video

VIDEOS, T = 10, 8
SHAPES = {"smoke": (24, 48, 64), "real": (90, 256, 340)}  # frames, height, width
PROVIDERS = ("pyav-h264", "pyav-vp9", "pil-jpeg", "dali_cpu-vp9", "dali_cpu-jpeg", "dali_gpu-h264", "dali_gpu-vp9",
             "dali_gpu-jpeg")


@pytest.fixture(scope="module")
def clips(tmp_path_factory, bench_full_shapes):
    """The generated sources; ``shape``: (frames, height, width), small in smoke mode."""
    root = tmp_path_factory.mktemp("loader_bench")
    n, h, w = SHAPES["real" if bench_full_shapes else "smoke"]
    out = {"h264": [], "vp9": [], "jpeg": [], "shape": (n, h, w)}
    for k in range(VIDEOS):
        frames = frame_pattern(n, h, w, seed=k)
        out["h264"].append(write_video(root / f"v{k}.mp4", frames, "h264"))
        out["vp9"].append(write_video(root / f"v{k}.webm", frames, "vp9"))
        out["jpeg"].append(probe_frame_folder(write_frame_folder(root / f"f{k}", frames)).files)
    return out


def _skip_reason(backend: str) -> str | None:
    if backend.startswith("dali"):
        if dali_status() is not None:
            return dali_status()
        if backend == "dali_gpu" and not torch.cuda.is_available():
            return "DALI GPU decoding needs CUDA: torch.cuda.is_available() is False"
    return None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_decode_throughput(provider, clips, run_bench):
    backend, source = provider.split("-")
    why = _skip_reason(backend)
    if why:
        pytest.skip(why)
    n = clips["shape"][0]
    indices = [tsn_indices(n, T, train=False)] * VIDEOS
    if backend == "pyav" or backend == "pil":
        if source == "jpeg":
            fn = lambda: [torch.from_numpy(read_frame_files(f, i)) for f, i in zip(clips["jpeg"], indices)]  # noqa: E731
        else:
            fn = lambda: [torch.from_numpy(decode_frames(p, i)) for p, i in zip(clips[source], indices)]  # noqa: E731
    else:
        from hr2g.data.dali import DaliReader

        reader = DaliReader("gpu" if backend == "dali_gpu" else "cpu", max_batch=VIDEOS, max_images=VIDEOS * T,
                            num_threads=4)
        read = reader.frame_folders if source == "jpeg" else reader.videos
        fn = lambda: read(clips[source], indices, "raw")  # noqa: E731
        fn()  # build the pipeline outside the timing
    ref = [decode_frames(p, i) for p, i in zip(clips["vp9"], indices)]
    first = fn()
    for got, want in zip(first, ref):
        assert isinstance(got, torch.Tensor), f"{provider} failed: {got}"
        got = got.cpu().numpy()
        assert got.shape == want.shape, (provider, got.shape, want.shape)
        err = np.abs(got.astype(np.int32) - want.astype(np.int32)).mean()
        assert err < 6.0, f"{provider}: frames differ from PyAV's by {err:.2f} levels on average"
    run_bench(fn, workload="hmdb_5w1s_episode", provider=provider, videos=VIDEOS, frames_per_video=T,
              clip_shape=list(clips["shape"]), rounds=20, cpu_timing=True,
              per_second={"frames/s": VIDEOS * T, "clips/s": VIDEOS})
