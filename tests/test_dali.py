"""DALI decoding vs the PyAV / PIL path: same TSN indices -> same frames.

On CPU, DALI's decoder reads VP9 (not H.264) and JPEG; the clips are generated here.  Measured on
these clips (DALI 2.4 CPU, PyAV 18):
- raw frames: VP9 bit-identical to PyAV (both swscale with full chroma interpolation + accurate
  rounding, see hr2g.data.video._rgb_flags); JPEG bit-identical to PIL;
- test clips (resize + centre crop + CLIP normalisation in DALI vs transforms.eval_transform):
  mean |diff| 0.0037, max 0.055 in normalised units (0.25 / 3.7 uint8 levels): DALI rounds the
  resized frame to uint8 and its antialiasing kernel differs slightly when downscaling.
With CUDA the same comparisons run on the GPU (NVDEC / nvJPEG) for H.264 too; NVDEC's own YUV->RGB
conversion is not bit-identical, hence the looser GPU bound below (unmeasured on this CI machine).
"""
import logging

import numpy as np
import pytest
import torch

from hr2g.data import transforms
from hr2g.data.base import VideoReadError, tsn_indices
from hr2g.data.benchmarks import BenchmarkDataset
from hr2g.data.dali import dali_status
from hr2g.data.presets import get_preset
from hr2g.data.splits import read_split
from hr2g.data.video import decode_frames, probe_frame_folder, read_frame_files
from tests.media import frame_pattern, make_benchmark, write_frame_folder, write_video

pytestmark = pytest.mark.skipif(dali_status() is not None, reason=str(dali_status()))

ON_GPU = torch.cuda.is_available()
RAW_MEAN = 3.0 if ON_GPU else 0.0  # per-frame mean |diff|, uint8 levels (CPU: measured 0)
TEST_MEAN, TEST_MAX = (0.02, 0.5) if ON_GPU else (0.01, 0.1)  # normalised units
# On the GPU the video decoder is NVDEC only, and DALI enforces NVDEC's minimum frame size per codec
# ("Video is too small in at least one dimension"): about 128 px for VP9, so the 48x64 clips the
# CPU tests use would fail there.  GPU runs use clips above every codec's minimum.
# An odd side too: DALI's NVDEC colour conversion works on 2x2 pixel blocks (raw SSv2 .webm files
# are 240 high with widths of either parity); on the CPU DALI matches PyAV bit for bit at odd sizes.
VIDEO_SIZES = [(144, 192), (160, 192), (192, 144), (145, 193)] if ON_GPU else [(48, 64), (36, 64), (64, 48), (37, 63)]


def reader(size=32):
    from hr2g.data.dali import DaliReader

    return DaliReader("auto", image_size=size, max_batch=4)


def frame_index(decoded: np.ndarray, source: np.ndarray) -> np.ndarray:
    d = np.abs(decoded[:, None].astype(np.int32) - source[None].astype(np.int32)).mean(axis=(2, 3, 4))  # [T, N]
    return d.argmin(axis=1)


def mean_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).mean(axis=(1, 2, 3)).max())


@pytest.mark.parametrize("codec", ["vp9"] + (["h264", "h264-bframes"] if ON_GPU else []))
def test_dali_video_frames_match_pyav(tmp_path, codec):
    r = reader()
    options = {"crf": "4", "preset": "medium", "bf": "3"} if codec == "h264-bframes" else None  # reordered frames
    codec = codec.split("-")[0]
    # several shapes in one batch (libx264's 4:2:0 needs even sides)
    sizes = [hw for hw in VIDEO_SIZES if codec == "vp9" or (hw[0] % 2 == 0 and hw[1] % 2 == 0)]
    paths, sources = [], []
    for k, (h, w) in enumerate(sizes):
        sources.append(frame_pattern(15 + k, h, w, seed=k))
        paths.append(write_video(tmp_path / f"v{k}.{'webm' if codec == 'vp9' else 'mp4'}", sources[-1], codec,
                                 options=options))
    idx = [np.array([0, 7, 7, 14, 3]), np.array([15, 2]), np.array([16, 0, 8]), np.array([17, 1])]  # any order, repeats, last frame
    idx = idx[:len(sizes)]
    got = r.videos(paths, idx, "raw")
    for g, p, i, src in zip(got, paths, idx, sources):
        g = g.cpu().numpy()
        assert g.dtype == np.uint8 and g.shape == (len(i), *src.shape[1:])
        assert frame_index(g, src).tolist() == i.tolist()
        ref = decode_frames(p, i)
        assert mean_err(g, ref) <= RAW_MEAN
        if not ON_GPU:  # the CPU decoders agree bit for bit
            assert np.array_equal(g, ref)
    # test mode: resize + centre crop + normalise in DALI == transforms.eval_transform on PyAV frames
    tests = r.videos(paths, idx, "test", sizes=sizes)
    for t, p, i in zip(tests, paths, idx):
        ref = transforms.eval_transform(torch.from_numpy(decode_frames(p, i)).permute(0, 3, 1, 2), 32)
        diff = (t.cpu() - ref).abs()
        assert t.shape == (len(i), 3, 32, 32) and t.dtype == torch.float32
        assert diff.mean() <= TEST_MEAN and diff.max() <= TEST_MAX, (diff.mean().item(), diff.max().item())


def test_dali_jpeg_folders_match_pil(tmp_path):
    r = reader(24)
    infos, sources = [], []
    for k, (h, w) in enumerate([(40, 56), (32, 32)]):
        sources.append(frame_pattern(10, h, w, seed=k))
        infos.append(probe_frame_folder(write_frame_folder(tmp_path / f"f{k}", sources[-1])))
    idx = [np.array([9, 0, 0, 4]), np.array([1, 2, 3])]
    for g, info, i, src in zip(r.frame_folders([x.files for x in infos], idx, "raw"), infos, idx, sources):
        ref = read_frame_files(info.files, i)
        assert frame_index(g.cpu().numpy(), src).tolist() == i.tolist()
        assert mean_err(g.cpu().numpy(), ref) <= RAW_MEAN
    tests = r.frame_folders([x.files for x in infos], idx, "test", sizes=[(x.height, x.width) for x in infos])
    for t, info, i in zip(tests, infos, idx):
        ref = transforms.eval_transform(torch.from_numpy(read_frame_files(info.files, i)).permute(0, 3, 1, 2), 24)
        diff = (t.cpu() - ref).abs()
        assert t.shape == (len(i), 3, 24, 24) and diff.mean() <= TEST_MEAN and diff.max() <= TEST_MAX


def test_bad_video_in_a_batch_fails_alone_and_the_pipeline_recovers(tmp_path):
    r = reader()
    good = write_video(tmp_path / "good.webm", frame_pattern(12, *VIDEO_SIZES[0]), "vp9")
    bad = tmp_path / "bad.webm"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    idx = [np.array([0, 5])] * 4
    out = r.videos([good, bad, empty, good], idx, "raw")
    assert isinstance(out[1], VideoReadError) and "DALI could not decode it" in out[1].why and out[1].path == str(bad)
    assert isinstance(out[2], VideoReadError) and "empty file" in out[2].why
    assert torch.equal(out[0], out[3]) and out[0].shape[0] == 2
    (again,) = r.videos([good], [np.array([0, 5])], "raw")  # a fresh pipeline after the failure
    assert torch.equal(again, out[0])


@pytest.mark.parametrize("frame_folders", [False, True], ids=["vp9", "jpeg"])
def test_dataset_with_dali_matches_pyav(tmp_path, frame_folders):
    make_benchmark(tmp_path, codec="vp9", n_frames=14, frame_folders=frame_folders, size=VIDEO_SIZES[0])
    split = read_split(tmp_path / "splits" / "train_few_shot.txt")
    kw = dict(preset=get_preset("hmdb51"), frames=4, image_size=32, flip=True)
    dali_ds = BenchmarkDataset(tmp_path, split, decoder="dali", **kw)
    pyav_ds = BenchmarkDataset(tmp_path, split, decoder="pyav", **kw)
    assert dali_ds.backend == "dali" and pyav_ds.backend == "pyav"
    for i in (0, 4, 8):
        n = pyav_ds.num_frames(i)
        assert dali_ds.num_frames(i) == n
        idx = tsn_indices(n, 4, False)
        assert mean_err(dali_ds.read_raw(i, idx).cpu(), pyav_ds.read_raw(i, idx)) <= RAW_MEAN
        a, b = dali_ds.clip(i, False, np.random.default_rng(0)), pyav_ds.clip(i, False, np.random.default_rng(0))
        assert (a.cpu() - b).abs().mean() <= TEST_MEAN
        # training: the same rng gives the same TSN frames and the same augmentation
        a, b = dali_ds.clip(i, True, np.random.default_rng(3)), pyav_ds.clip(i, True, np.random.default_rng(3))
        assert (a.cpu() - b).abs().mean() <= TEST_MEAN
    # one DALI run for a whole episode == clip by clip (test mode: no rng involved)
    batch = dali_ds.clips([0, 4, 8, 2], False, np.random.default_rng(0))
    for j, i in enumerate([0, 4, 8, 2]):
        torch.testing.assert_close(batch[j], dali_ds.clip(i, False, np.random.default_rng(0)))


@pytest.mark.skipif(ON_GPU, reason="the GPU decoder reads H.264: nothing to fall back from")
def test_h264_on_dali_cpu_falls_back_to_pyav_with_a_warning(tmp_path, caplog):
    make_benchmark(tmp_path, codec="h264", n_frames=12)
    split = read_split(tmp_path / "splits" / "test_few_shot.txt")
    ds = BenchmarkDataset(tmp_path, split, frames=4, image_size=32, decoder="dali")
    with caplog.at_level(logging.WARNING):
        clips = ds.clips([0, 1], False, np.random.default_rng(0))
    assert all(c.shape == (4, 3, 32, 32) for c in clips)
    assert caplog.text.count("cannot decode h264 videos") == 1 and "--to vp9" in caplog.text


# ------------------------------------------------------------------ the GPU graph, checked without a GPU


@pytest.mark.parametrize("mode", ["raw", "test"])
@pytest.mark.parametrize("source", ["video", "image"])
def test_gpu_pipeline_graph_places_operators_on_supported_devices(source, mode):
    """Defines (does not build: building a GPU pipeline needs CUDA) the device='gpu' graph and checks
    the placement rules DALI would enforce on a GPU machine: each operator on a backend its schema
    has, decoders "mixed" with CPU input, GPU operators' argument inputs (resize size, crop
    positions, decoder frame indices) on the CPU, and the pipeline output in GPU memory."""
    from hr2g.data.dali import DaliReader

    r = DaliReader("cpu", image_size=32, max_batch=4)
    r.device, r._cuda_index = "gpu", 0  # what resolve_device / the first GPU use would set
    pipe = r._define(source, mode)
    assert pipe.device_id == 0
    outputs = list(pipe._graph_out)
    assert [o.device for o in outputs] == ["gpu"]
    seen, stack, kinds = set(), [o.source for o in outputs], []
    while stack:
        op = stack.pop()
        if op.id in seen:
            continue
        seen.add(op.id)
        schema, device, spec = op._op.schema, op._op.device, op.spec
        name = schema.Name()
        kinds.append((name, device))
        assert device in schema.GetSupportedBackends(), (name, device)
        for i in range(spec.NumInput()):
            regular = i < spec.NumRegularInput()
            if device in ("cpu", "mixed") or not regular:  # mixed ops read CPU data; argument inputs are CPU
                assert spec.InputDevice(i) == "cpu", (name, device, i)
        stack += [inp.source for inp in op.inputs]
    decoder = "decoders__Video" if source == "video" else "decoders__Image"
    assert (decoder, "mixed") in kinds
    assert all(d == "cpu" for n, d in kinds if n == "ExternalSource")
    if mode == "test":
        assert {("Resize", "gpu"), ("CropMirrorNormalize", "gpu")} <= set(kinds)


def test_gpu_codecs_leave_av1_to_pyav_where_nvdec_lacks_it(monkeypatch):
    from hr2g.data.dali import GPU_VIDEO_CODECS, DaliReader, nvdec_has_av1

    assert not any(nvdec_has_av1(c) for c in [(7, 0), (7, 5), (8, 0), (9, 0)])  # V100, T4, A100, H100/H200
    assert all(nvdec_has_av1(c) for c in [(8, 6), (8, 9), (10, 0), (12, 0)])  # A10/A40, L4/L40, B200, RTX 50
    r = DaliReader("cpu")
    r.device, r._cuda_index = "gpu", 0
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert "av1" not in r.codecs and "h264" in r.codecs
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert r.codecs == GPU_VIDEO_CODECS


def test_gpu_output_device_is_fixed_once(monkeypatch):
    """The torch tensors go to the device the pipelines were built on, not to whatever device is
    current when a later batch is copied out."""
    from hr2g.data.dali import DaliReader

    r = DaliReader("cpu")
    r.device = "gpu"
    current = [1]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    assert r._define("video", "raw").device_id == 1
    current[0] = 0
    assert r.torch_device == torch.device("cuda", 1)
    import pickle

    assert pickle.loads(pickle.dumps(r))._cuda_index is None  # chosen again in the receiving process


def test_a_video_dali_fails_on_is_decoded_by_pyav(tmp_path, monkeypatch, caplog):
    """NVDEC refuses streams PyAV reads (too small, 10-bit, ...): the dataset retries them with
    PyAV instead of counting them unreadable.  Simulated by a reader that fails one video."""
    make_benchmark(tmp_path, codec="vp9", n_frames=12, size=VIDEO_SIZES[0])
    split = read_split(tmp_path / "splits" / "test_few_shot.txt")
    kw = dict(frames=4, image_size=32)
    ds = BenchmarkDataset(tmp_path, split, decoder="dali", **kw)
    want = BenchmarkDataset(tmp_path, split, decoder="pyav", **kw)
    _, dali = ds._reader()
    real = dali.videos
    refused = str(ds._path(1))

    asked = []

    def flaky(paths, indices, mode, **kwargs):
        asked.extend(str(p) for p in paths)
        out = real(paths, indices, mode, **kwargs)
        return [VideoReadError(str(p), "Video is too small in at least one dimension") if str(p) == refused else o
                for p, o in zip(paths, out)]

    monkeypatch.setattr(dali, "videos", flaky)
    with caplog.at_level(logging.WARNING):
        got = ds.clips([0, 1, 2], False, np.random.default_rng(0))
        raw = ds.read_raw(1, np.array([0, 3, 6, 9]))
    # refused once, the video goes to PyAV from then on (its batch is not run twice each time)
    assert not any(isinstance(c, VideoReadError) for c in got) and ds.dali_fallbacks == 1
    assert asked.count(refused) == 1
    # PyAV's path: exactly on the CPU; on the GPU the resize runs there (CUDA's antialiasing rounds differently)
    torch.testing.assert_close(got[1].cpu(), want.clip(1, False, np.random.default_rng(0)),
                               **(dict(rtol=1e-4, atol=1e-4) if ON_GPU else {}))
    assert (got[0].cpu() - want.clip(0, False, np.random.default_rng(0))).abs().mean() <= TEST_MEAN
    assert torch.equal(raw.cpu(), want.read_raw(1, np.array([0, 3, 6, 9])))
    assert caplog.text.count("retrying such videos with PyAV") == 1 and "too small" in caplog.text


def test_decoding_follows_the_runs_device(tmp_path, monkeypatch):
    """A CPU run decodes on the CPU even where a GPU is visible (decoder=auto: PyAV, as on a machine
    without CUDA; decoder=dali: DALI's CPU backend), and a run on cuda:1 decodes on GPU 1, not on
    the current device.  CUDA's presence is simulated: only the choice is checked here."""
    import pickle

    from hr2g.data.benchmarks import choose_decoder

    make_benchmark(tmp_path, codec="vp9", n_frames=12, size=VIDEO_SIZES[0])
    split = read_split(tmp_path / "splits" / "test_few_shot.txt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    name, why = choose_decoder("auto", torch.device("cpu"))
    assert name == "pyav" and "device is cpu" in why
    assert choose_decoder("auto", torch.device("cuda", 1))[0] == "dali"
    assert choose_decoder("auto")[0] == "dali"  # no device given: wherever CUDA is, as before
    assert BenchmarkDataset(tmp_path, split, decoder="auto", device="cpu").backend == "pyav"
    _, on_cpu = BenchmarkDataset(tmp_path, split, decoder="dali", device="cpu")._reader()
    assert on_cpu.device == "cpu" and on_cpu.torch_device == torch.device("cpu")
    _, on_gpu1 = BenchmarkDataset(tmp_path, split, decoder="dali", device="cuda:1")._reader()
    assert on_gpu1.device == "gpu" and on_gpu1._define("video", "raw").device_id == 1
    assert on_gpu1.torch_device == torch.device("cuda", 1)
    assert pickle.loads(pickle.dumps(on_gpu1))._device_index() == 1  # a pinned GPU survives the trip to a worker
    _, on_current = BenchmarkDataset(tmp_path, split, decoder="dali", device="cuda")._reader()
    assert on_current.torch_device == torch.device("cuda", 0)


def test_frames_past_a_videos_real_end_fail_in_dali_so_pyav_draws_again(tmp_path):
    """A header that overstates the length (common in MP4 / AVI on the GPU path) leads to indices
    past the real end: DALI fails that video, naming the cause, and the dataset's PyAV path then
    samples over the frames that exist.  DALI used to repeat the last frame (pad_mode="edge")."""
    r = reader()
    path = write_video(tmp_path / "ten.webm", frame_pattern(10, *VIDEO_SIZES[0]), "vp9")
    inside, past = r.videos([path, path], [np.array([0, 9]), np.array([0, 9, 12])], "raw")
    assert inside.shape[0] == 2
    assert isinstance(past, VideoReadError) and "out-of-bounds frame index 12" in past.why, past


def test_a_dali_that_cannot_build_its_pipeline_is_no_videos_fault(tmp_path, monkeypatch, caplog):
    """A pipeline build that fails (a GPU out of memory, a driver DALI cannot use) used to count as a
    decoding failure of every clip, each rebuilt and retried alone, and the run went on with PyAV
    and one line about one video.  decoder="dali" now stops with the fix; "auto" says once that
    this process decodes with PyAV / PIL and does so, the clips as PyAV's."""
    from hr2g.data import benchmarks
    from hr2g.data.dali import DaliReader
    from hr2g.errors import SetupError

    make_benchmark(tmp_path, codec="vp9", n_frames=12, size=VIDEO_SIZES[0])
    split = read_split(tmp_path / "splits" / "test_few_shot.txt")
    kw = dict(frames=4, image_size=32)
    want = BenchmarkDataset(tmp_path, split, decoder="pyav", **kw).clips([0, 1], False, np.random.default_rng(0))

    def broken(self, source, mode):
        raise RuntimeError("Critical error in pipeline:\nCUDA allocation failed")

    monkeypatch.setattr(DaliReader, "_define", broken)
    forced = BenchmarkDataset(tmp_path, split, decoder="dali", **kw)
    with pytest.raises(SetupError, match=r"DALI cannot build its \w+ video pipeline here \(CUDA allocation failed\);"
                                         r" pass --set data.decoder=pyav"):
        forced.clips([0, 1], False, np.random.default_rng(0))
    monkeypatch.setattr(benchmarks, "choose_decoder", lambda decoder, device=None: ("dali", "simulated auto"))
    ds = BenchmarkDataset(tmp_path, split, decoder="auto", **kw)
    with caplog.at_level(logging.WARNING):
        got = ds.clips([0, 1], False, np.random.default_rng(0))
        again = ds.clips([0, 1], False, np.random.default_rng(0))
    assert ds.backend == "pyav" and ds.dali_fallbacks == 0
    for a, b, w in zip(got, again, want):
        assert torch.equal(a, w) and torch.equal(b, w)
    assert caplog.text.count("decoding with PyAV / PIL instead") == 1


def test_dali_errors_are_reported_by_their_cause():
    from hr2g.data.dali import _first_line

    nvdec = RuntimeError("Critical error in pipeline:\nError in MIXED operator `nvidia.dali.fn.decoders.video`,\n"
                         "which was used in the pipeline definition with the following traceback:\n  File x\n"
                         "encountered:\n\nAssert on \"w >= min_w\" failed: Video is too small in at least one dimension\n"
                         "C++ context: [frames_decoder_gpu.cc:123]")
    assert _first_line(nvdec) == "Video is too small in at least one dimension"
    plain = RuntimeError("Critical error in pipeline:\nError in CPU operator `x`,\nencountered:\nUnexpected frame 12")
    assert _first_line(plain) == "Unexpected frame 12"
    assert _first_line(RuntimeError("")) == "RuntimeError"
