"""CPU decoding (PyAV, PIL frame folders), BenchmarkDataset, unreadable videos, build_dataset and
decoder selection -- on tiny clips generated here (H.264, VP9, MPEG-4, JPEG folders)."""
import logging
import shutil

import av
import numpy as np
import pytest
import torch

from hr2g.config import DataConfig
from hr2g.data.base import VideoReadError, tsn_indices
from hr2g.data.benchmarks import BenchmarkDataset, choose_decoder
from hr2g.data.build import build_dataset
from hr2g.data.episodes import EpisodeSampler, ReadStats, load_episode
from hr2g.data.presets import get_preset
from hr2g.data.splits import read_split
from hr2g.data.synthetic import SyntheticActions
from hr2g.data import transforms
from hr2g.data.video import ShortVideo, decode_frames, list_frames, probe_video, read_frame_files
from tests.media import CODECS, frame_pattern, make_benchmark, write_frame_folder, write_video

# Decoded vs source pixels, uint8 levels: yuv420p chroma subsampling blurs the square's sharp edges
# (max error ~85 there), the smooth rest is within a few levels.  Per-frame mean |error| measured:
# H.264 1.85, VP9 1.98, MPEG-4 2.39, JPEG q95 1.16; neighbouring source frames differ by >= 15.
MEAN_ERR = 4.0


def mean_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-frame mean |a - b| in uint8 levels."""
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean(axis=(1, 2, 3)).max())


def frame_index(decoded: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Which source frame each decoded frame is (nearest by mean |difference|)."""
    d = np.abs(decoded[:, None].astype(np.int32) - source[None].astype(np.int32)).mean(axis=(2, 3, 4))  # [T, N]
    return d.argmin(axis=1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("hmdb")
    return root, make_benchmark(root, codec="h264", n_frames=16)


@pytest.mark.parametrize("codec", ["h264", "h264-bframes", "vp9", "mpeg4"])
def test_pyav_decodes_exactly_the_requested_frames(tmp_path, codec):
    src = frame_pattern(20, 48, 64, seed=3)
    # B-frames: decode order != display order, and MP4 gets an edit list shifting the first timestamp
    options = {"crf": "4", "preset": "medium", "bf": "3"} if codec == "h264-bframes" else None
    codec = codec.split("-")[0]
    path = write_video(tmp_path / f"clip{CODECS[codec][1]}", src, codec, options=options)
    info = probe_video(path)
    assert (info.n_frames, info.codec, info.width, info.height) == (20, codec, 64, 48)
    idx = np.array([0, 5, 5, 19, 2])  # any order, repeats
    got = decode_frames(path, idx)
    assert got.shape == (5, 48, 64, 3) and got.dtype == np.uint8
    assert frame_index(got, src).tolist() == idx.tolist()
    assert mean_err(got, src[idx]) < MEAN_ERR
    with pytest.raises(ShortVideo, match="stream ended after 20 frames, frame 25"):
        decode_frames(path, [1, 25])


def test_frame_folders_read_in_name_order(tmp_path):
    src = frame_pattern(12, 32, 40)
    folder = write_frame_folder(tmp_path / "v", src)
    (folder / "notes.txt").write_text("not a frame")
    files = list_frames(folder)
    assert [f.rsplit("/", 1)[1] for f in files[:2]] == ["img_00001.jpg", "img_00002.jpg"] and len(files) == 12
    got = read_frame_files(files, np.array([11, 0, 4]))
    assert frame_index(got, src).tolist() == [11, 0, 4]
    assert mean_err(got, src[[11, 0, 4]]) < MEAN_ERR
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="holds no .jpg"):
        list_frames(tmp_path / "empty")
    (folder / "img_00003.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(VideoReadError, match="img_00003.jpg: unreadable frame image"):
        read_frame_files(files, np.array([2]))


def test_a_rawframes_folder_reads_its_rgb_frames_only(tmp_path):
    """mmaction2 / TSN rawframes hold flow_x_* / flow_y_* beside img_*: 10 frames read as 30
    images, and test-time sampling picked optical flow for frames."""
    src = frame_pattern(10, 32, 40)
    folder = write_frame_folder(tmp_path / "v", src)
    for i in range(10):
        for axis in "xy":
            shutil.copyfile(folder / f"img_{i + 1:05d}.jpg", folder / f"flow_{axis}_{i + 1:05d}.jpg")
    files = list_frames(folder)
    assert [f.rsplit("/", 1)[1] for f in files] == [f"img_{i:05d}.jpg" for i in range(1, 11)]


def test_unpadded_frame_names_keep_frame_order(tmp_path):
    # 1.jpg ... 12.jpg: as strings "10.jpg" < "2.jpg"; frames must come back in number order
    src = frame_pattern(12, 32, 40)
    folder = write_frame_folder(tmp_path / "v", src)
    for i in range(1, 13):
        (folder / f"img_{i:05d}.jpg").rename(folder / f"{i}.jpg")
    files = list_frames(folder)
    assert [f.rsplit("/", 1)[1] for f in files] == [f"{i}.jpg" for i in range(1, 13)]
    assert frame_index(read_frame_files(files, np.arange(12)), src).tolist() == list(range(12))


def _zero_frame_video(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        out.start_encoding()
    return path


@pytest.mark.parametrize("case, why", [
    ("empty", "empty file"), ("junk", "not a readable video container"), ("zero", "holds no frames"),
    ("truncated", "not a readable video container"), ("missing", "cannot read the file"),
    ("fourcc", "has no decoder")])
def test_unreadable_videos_raise_videoreaderror(tmp_path, case, why):
    path = tmp_path / "bad.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "junk":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif case == "zero":
        path = _zero_frame_video(tmp_path / "bad.avi")
    elif case == "truncated":  # an MP4 cut before its index (moov atom, written last)
        data = write_video(tmp_path / "ok.mp4", frame_pattern(16), "h264").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "fourcc":  # a damaged sample-entry code: PyAV opens the stream without a codec context
        data = write_video(tmp_path / "ok.mp4", frame_pattern(16), "h264").read_bytes()
        path.write_bytes(data.replace(b"avc1", b"zq9x"))
    with pytest.raises(VideoReadError, match=why) as err:
        probe_video(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_non_utf8_container_tags_do_not_stop_decoding(tmp_path, codec):
    """A title tag with bytes that are not UTF-8 (old encoders, QuickTime artwork): PyAV <= 18
    raises UnicodeDecodeError at open unless told to ignore it, PyAV 19 rejects that option."""
    src = frame_pattern(8, 48, 64, seed=5)
    path = write_video(tmp_path / f"tag{CODECS[codec][1]}", src, codec, metadata={"title": "MARKER12"})
    data = path.read_bytes()
    assert data.count(b"MARKER12") == 1
    path.write_bytes(data.replace(b"MARKER12", b"\xff\xfeRKER12"))
    assert probe_video(path).n_frames == 8
    assert frame_index(decode_frames(path, np.arange(8)), src).tolist() == list(range(8))


def test_truncated_video_with_an_overstated_header_is_resampled(tmp_path):
    """An AVI cut near its end keeps the header's frame count (20) but decodes fewer frames: the
    dataset samples again over the frames that exist instead of failing or padding."""
    src = frame_pattern(20, 48, 64)
    data = write_video(tmp_path / "full.avi", src, "mpeg4").read_bytes()
    (tmp_path / "videos/cut").mkdir(parents=True)
    (tmp_path / "videos/cut/v.avi").write_bytes(data[: int(len(data) * 0.9)])
    (tmp_path / "test_few_shot.txt").write_text("test0//videos/cut/v.avi\n")
    ds = BenchmarkDataset(tmp_path, read_split(tmp_path / "test_few_shot.txt"), frames=8, image_size=32, decoder="pyav")
    assert ds.num_frames(0) == 20
    clip = ds.clip(0, False, np.random.default_rng(0))
    real = ds.num_frames(0)
    assert clip.shape == (8, 3, 32, 32) and 8 <= real < 20
    raw = ds.read_raw(0, tsn_indices(real, 8, False))
    assert frame_index(raw.numpy(), src).tolist() == tsn_indices(real, 8, False).tolist()
    assert frame_index(ds.read_raw(0, np.arange(4)).numpy(), src).tolist() == [0, 1, 2, 3]
    # training draws: the same frames in a process that has met the video and in one that has not
    # (draws inside the real length decode as drawn, those past it are drawn again over it)
    for seed in range(12):
        fresh = BenchmarkDataset(tmp_path, read_split(tmp_path / "test_few_shot.txt"), frames=8, image_size=32,
                                 decoder="pyav")
        assert torch.equal(fresh.clip(0, True, np.random.default_rng(seed)), ds.clip(0, True, np.random.default_rng(seed)))


@pytest.mark.parametrize("fmt", ["test_few_shot.txt", "testlist03.txt"])
def test_benchmark_dataset_clips(bench, fmt):
    root, media = bench
    split = read_split(root / "splits" / fmt)
    ds = BenchmarkDataset(root, split, get_preset("hmdb51"), frames=4, image_size=32, flip=True, decoder="pyav")
    assert ds.backend == "pyav" and len(ds) == 6 and ds.class_names == ["archery", "kick ball"]
    assert ds.key(0) == "videos/Archery/Archery_v0.mp4" and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    src = media["frames"][("Archery", "Archery_v1")]
    assert ds.num_frames(1) == len(src) == 17
    # test mode: centre frame of each TSN segment, short side -> 32, centre crop, CLIP-normalised
    idx = tsn_indices(17, 4, train=False)
    clip = ds.clip(1, False, np.random.default_rng(0))
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.float32
    assert torch.equal(clip, ds.clip(1, False, np.random.default_rng(1)))
    expected = transforms.eval_transform(torch.from_numpy(decode_frames(ds.paths[1], idx)).permute(0, 3, 1, 2), 32)
    torch.testing.assert_close(clip, expected)
    assert (clip - transforms.eval_transform(torch.from_numpy(src[idx]).permute(0, 3, 1, 2), 32)).abs().mean() < 0.05
    # training: TSN random frames then the shared train transform, in that rng order
    rng = np.random.default_rng(5)
    t_idx = tsn_indices(17, 4, True, rng)
    raw = torch.from_numpy(decode_frames(ds.paths[1], t_idx)).permute(0, 3, 1, 2)
    expected = transforms.train_transform(raw, 32, rng, flip=True)
    torch.testing.assert_close(ds.clip(1, True, np.random.default_rng(5)), expected)
    assert not torch.equal(ds.clip(1, True, np.random.default_rng(6)), ds.clip(1, True, np.random.default_rng(5)))


def test_dataset_samples_one_frame_per_tsn_segment(bench):
    """Training takes a random frame in each of T equal segments of the real video length, testing
    the centre frame -- and the decoder returns exactly those frames."""
    root, media = bench
    ds = BenchmarkDataset(root, read_split(root / "splits" / "testlist03.txt"), frames=5, image_size=32, decoder="pyav")
    i = ds.split.videos.index("kick_ball_v2")
    src = media["frames"][("kick_ball", "kick_ball_v2")]
    n = ds.num_frames(i)
    assert n == len(src) == 18
    edges = np.linspace(0, n, 6)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(8):
        idx = ds.frame_indices(i, True, rng)
        assert (idx >= np.floor(edges[:-1])).all() and (idx < np.ceil(edges[1:])).all()
        assert frame_index(ds.read_raw(i, idx).numpy(), src).tolist() == idx.tolist()
        seen.update(idx.tolist())
    assert len(seen) > 5, "training sampling never moved within its segments"
    assert ds.frame_indices(i, False, rng).tolist() == [1, 5, 9, 12, 16]  # segment centres of 18 frames


def test_missing_and_corrupt_videos_are_skipped_counted_and_resampled(bench, tmp_path, caplog):
    root, _ = bench
    lines = (root / "splits" / "train_few_shot.txt").read_text().splitlines()
    lines.append("train0//videos/ApplyEyeMakeup/gone.mp4")  # listed, not on disk
    (root / "videos/catch/catch_v2.mp4").rename(root / "videos/catch/catch_v2.bak")
    (root / "videos/catch/catch_v2.mp4").write_bytes(b"\x00" * 100)  # corrupt
    try:
        lst = tmp_path / "train_few_shot.txt"
        lst.write_text("\n".join(lines) + "\n")
        with caplog.at_level(logging.WARNING):
            ds = BenchmarkDataset(root, read_split(lst), get_preset("hmdb51"), frames=4, image_size=32, decoder="pyav")
        assert "1 of 10 videos missing" in caplog.text and "gone.mp4" in caplog.text
        with pytest.raises(VideoReadError, match="not found under the data root"):
            ds.clip(9, True, np.random.default_rng(0))
        sampler = EpisodeSampler(ds.labels, n_way=3, k_shot=1, q_query=1)  # every class keeps 2 readable videos
        stats = ReadStats()
        rng = np.random.default_rng(0)
        for _ in range(10):
            ep = load_episode(ds, sampler, sampler.sample(rng), True, rng, stats)
            assert ep.support.shape == (3, 4, 3, 32, 32) and ep.query.shape == (3, 4, 3, 32, 32)
        assert set(stats.failed) == {"videos/catch/catch_v2.mp4", "videos/ApplyEyeMakeup/gone.mp4"}
        assert "not a readable video container" in stats.failed["videos/catch/catch_v2.mp4"]
    finally:
        (root / "videos/catch/catch_v2.bak").replace(root / "videos/catch/catch_v2.mp4")


def test_episodes_from_worker_processes_equal_the_main_process(bench):
    """The dataset crosses into DataLoader workers (decoder chosen again per process) and gives
    the same episodes there as in the main process."""
    from hr2g.data.loader import EpisodeStream, episode_loader

    root, _ = bench
    ds = BenchmarkDataset(root, read_split(root / "splits" / "train_few_shot.txt"), frames=3, image_size=16, decoder="auto")
    sampler = EpisodeSampler(ds.labels, n_way=2, k_shot=1, q_query=1)
    stream = EpisodeStream(ds, sampler, seed=1, epoch=0, steps=3)
    inline = [eps for eps, _ in episode_loader(stream, 0, workers=0)]
    workers = [eps for eps, _ in episode_loader(stream, 0, workers=2)]
    for a, b in zip(inline, workers):
        assert torch.equal(a[0].support, b[0].support) and torch.equal(a[0].query, b[0].query)


def test_root_without_any_video_is_a_clear_error(bench, tmp_path):
    root, _ = bench
    with pytest.raises(FileNotFoundError, match="6 of 6 videos missing .* none at all"):
        BenchmarkDataset(tmp_path, read_split(root / "splits" / "test_few_shot.txt"), decoder="pyav")


def test_build_dataset_synthetic_and_benchmark(bench, tmp_path, caplog):
    root, _ = bench
    syn = build_dataset(DataConfig(dataset="synthetic", frames=4, image_size=16, synthetic_videos_per_class=2), "val")
    assert isinstance(syn, SyntheticActions) and len(syn) == 16 * 2 and syn.clip(0, False, None).shape == (4, 3, 16, 16)
    cfg = DataConfig(dataset="hmdb51", data_root=str(root), frames=4, image_size=32, decoder="pyav")  # lists: root/splits
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, BenchmarkDataset) and ds.class_names == ["apply eye makeup", "brush hair", "catch"] and ds.flip
    assert ds.device is None and build_dataset(cfg, "train", torch.device("cpu")).device == torch.device("cpu")
    # SSv2: flat folder of webm files named by id; CMN list gives the names; flip forced off
    ss = tmp_path / "ssv2"
    for k in range(3):
        write_video(ss / f"{100 + k}.webm", frame_pattern(12, 32, 32, seed=k), "vp9")
    (ss / "splits").mkdir()
    (ss / "splits" / "test_few_shot.txt").write_text("test0/100\ntest1/101\ntest1/102\n")
    (ss / "splits" / "testlist03.txt").write_text("Pushing something from left to right/100\nTearing a paper/101\n"
                                                  "Tearing a paper/102\n")
    with caplog.at_level(logging.WARNING):
        ssds = build_dataset(DataConfig(dataset="ssv2_small", data_root=str(ss), frames=4, image_size=32,
                                        decoder="pyav", flip=True), "test")
    assert not ssds.flip and "flip augmentation disabled" in caplog.text
    assert ssds.class_names == ["Pushing something from left to right", "Tearing a paper"]
    assert ssds.clip(2, True, np.random.default_rng(0)).shape == (4, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match=r"data root not_there \(relative to the current folder /.*\) does not exist"):
        build_dataset(DataConfig(dataset="hmdb51", data_root="not_there", decoder="pyav"), "test")
    with pytest.raises(FileNotFoundError, match="no val split list"):
        build_dataset(DataConfig(dataset="ssv2_small", data_root=str(ss), decoder="pyav"), "val")


def test_decoder_selection_explains_itself(monkeypatch, bench, caplog):
    from hr2g.data import dali

    root, _ = bench
    split = read_split(root / "splits" / "test_few_shot.txt")
    monkeypatch.setattr(dali, "dali_status", lambda: "NVIDIA DALI is not importable (ModuleNotFoundError: x)")
    with pytest.raises(RuntimeError, match="decoder='dali': NVIDIA DALI is not importable"):
        BenchmarkDataset(root, split, decoder="dali")
    assert choose_decoder("auto") == ("pyav", "decoder='auto' falls back to PyAV: NVIDIA DALI is not importable "
                                              "(ModuleNotFoundError: x)")
    ds = BenchmarkDataset(root, split, frames=2, image_size=16, decoder="auto")
    with caplog.at_level(logging.INFO):
        assert ds.backend == "pyav"
    assert "falls back to PyAV" in caplog.text
    with pytest.raises(ValueError, match="decoder='nvdec' is not allowed"):
        BenchmarkDataset(root, split, decoder="nvdec")


def test_a_missing_dali_is_one_line_with_the_fix_and_commands_can_switch_decoder(monkeypatch, bench, tmp_path):
    """data.decoder=dali without DALI was a traceback (a RuntimeError the commands did not catch),
    and a checkpoint trained with DALI could not be evaluated without it."""
    import argparse

    from hr2g import train as train_cli
    from hr2g.data import dali
    from hr2g.inference import add_data_args, dataset_from_args
    from tests.helpers import tiny_config

    root, _ = bench
    monkeypatch.setattr(dali, "dali_status", lambda: "NVIDIA DALI is not importable (ModuleNotFoundError: x)")
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--no-progress", "--dataset", "hmdb51", "--data-root", str(root), "--set", "data.decoder=dali",
                        "--set", "data.frames=2", "--preset", "tiny", "--out", str(tmp_path / "run")])
    assert str(exc.value).startswith("error: decoder='dali': NVIDIA DALI is not importable") and "--data-root" not in str(exc.value)
    assert "--set data.decoder=pyav" in str(exc.value)
    cfg = tiny_config()
    cfg.data.dataset, cfg.data.data_root, cfg.data.decoder = "hmdb51", str(root), "dali"
    p = argparse.ArgumentParser()
    add_data_args(p)
    with pytest.raises(SystemExit, match=r"^error: decoder='dali': NVIDIA DALI is not importable.*--decoder pyav"):
        dataset_from_args(cfg, p.parse_args([]))
    assert dataset_from_args(cfg, p.parse_args(["--decoder", "pyav"])).backend == "pyav"


def test_an_unexpected_decoder_error_is_that_videos_read_error(bench, monkeypatch):
    """PyAV raised AttributeError on a fuzzed MP4 (and killed training, evaluate and predict): any
    error while probing or decoding one file now counts as that file being unreadable."""
    from hr2g.data import benchmarks

    root, _ = bench
    ds = BenchmarkDataset(root, read_split(root / "splits" / "train_few_shot.txt"), get_preset("hmdb51"), frames=4,
                          image_size=32, decoder="pyav")
    real_probe, real_decode = benchmarks.probe_video, benchmarks.decode_frames

    def probe(path):
        if str(path).endswith("catch_v1.mp4"):
            raise AttributeError("'NoneType' object has no attribute 'name'")
        return real_probe(path)

    def decode(path, idx):
        if str(path).endswith("catch_v2.mp4"):
            raise IndexError("list index out of range")
        return real_decode(path, idx)

    monkeypatch.setattr(benchmarks, "probe_video", probe)
    monkeypatch.setattr(benchmarks, "decode_frames", decode)
    keys = [ds.key(i) for i in range(len(ds))]
    out = ds.clips(list(range(len(ds))), True, np.random.default_rng(0))
    bad = {k: r.why for k, r in zip(keys, out) if isinstance(r, VideoReadError)}
    assert bad == {"videos/catch/catch_v1.mp4": "unexpected AttributeError from the decoder: 'NoneType' object has no "
                                                 "attribute 'name'",
                   "videos/catch/catch_v2.mp4": "unexpected IndexError from the decoder: list index out of range"}
    assert all(r.shape == (4, 3, 32, 32) for r in out if not isinstance(r, VideoReadError))


def test_a_broken_decoder_install_is_not_blamed_on_the_videos(bench, monkeypatch):
    """An ImportError is the environment's: counted as an unreadable video, every video of a
    run would be skipped (and remembered in its checkpoint as bad)."""
    from hr2g.data import benchmarks

    root, _ = bench
    ds = BenchmarkDataset(root, read_split(root / "splits" / "train_few_shot.txt"), get_preset("hmdb51"), frames=4,
                          image_size=32, decoder="pyav")

    def broken(path):
        raise ModuleNotFoundError("No module named 'av._core'")

    monkeypatch.setattr(benchmarks, "probe_video", broken)
    with pytest.raises(ModuleNotFoundError):
        ds.clips([0], True, np.random.default_rng(0))
