"""``python -m hr2g.prepare``: transcodes / extracts frames, keeps every frame, resumes without
redoing work, and reports unreadable or missing inputs without stopping."""
from pathlib import Path

import numpy as np
import pytest

from hr2g import prepare
from hr2g.data.base import tsn_indices
from hr2g.data.prepare import Job, Options, output_path, run_jobs, scaled_size
from hr2g.data.video import list_frames, probe_video, read_frame_files
from tests.media import make_benchmark


@pytest.fixture
def raw(tmp_path):
    """HMDB-style MPEG-4 AVIs (16-18 frames, 48x64) plus a corrupt and an empty 'video'."""
    root = tmp_path / "raw"
    media = make_benchmark(root, codec="mpeg4", n_frames=16)
    (root / "videos/catch/broken.avi").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    (root / "videos/catch/empty.avi").write_bytes(b"")
    return root, media


def report_lines(path):
    return [line.split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]


def snapshot(out):
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()}


def test_transcode_keeps_frames_resumes_and_reports(raw, tmp_path):
    root, media = raw
    out = tmp_path / "out"
    argv = ["--src", str(root), "--out", str(out), "--to", "h264", "--short-side", "32", "--workers", "2", "--no-progress"]
    assert prepare.main(argv) == 0
    for (cls, vid), frames in media["frames"].items():
        info = probe_video(out / "videos" / cls / f"{vid}.mp4")
        assert (info.codec, info.n_frames, info.height, info.width) == ("h264", len(frames), 32, 42)
    bad = dict(report_lines(out / "prepare_report.tsv"))
    assert set(bad) == {"videos/catch/broken.avi", "videos/catch/empty.avi"}
    assert "not a readable video container" in bad["videos/catch/broken.avi"] and "empty file" in bad["videos/catch/empty.avi"]
    assert not list(out.rglob(".*.tmp-*")), "temporaries left behind"
    before = snapshot(out)
    assert prepare.main(argv) == 0  # resumed: nothing rewritten
    after = snapshot(out)
    assert {p: v for p, v in after.items() if p.suffix == ".mp4"} == {p: v for p, v in before.items() if p.suffix == ".mp4"}
    jobs = [Job(root / "videos/Archery/Archery_v0.avi", out / "videos/Archery/Archery_v0.mp4", "a"),
            Job(root / "videos/catch/broken.avi", out / "videos/catch/broken.mp4", "b")]
    assert [o.status for o in run_jobs(jobs, Options("h264", 32), progress=False)] == ["skipped", "failed"]


def test_interrupted_output_is_redone_and_stale_temporaries_removed(raw, tmp_path):
    root, _ = raw
    src = root / "videos/kick_ball/kick_ball_v1.avi"
    dst = output_path(tmp_path / "out", src.relative_to(root), "vp9")
    dst.parent.mkdir(parents=True)
    stale = dst.with_name(f".{dst.name}.tmp-99999")
    stale.write_bytes(b"half a webm")  # a crashed run's partial output, never renamed into place
    (outcome,) = run_jobs([Job(src, dst, "k")], Options("vp9", 0), progress=False)
    assert outcome.status == "done" and not stale.exists()
    info = probe_video(dst)
    assert (info.codec, info.n_frames, info.width, info.height) == ("vp9", 17, 64, 48)  # 0 = keep the size


def test_jpeg_extraction_of_the_needed_frames_only(raw, tmp_path):
    root, media = raw
    out = tmp_path / "frames"
    lst = root / "splits" / "test_few_shot.txt"
    lines = lst.read_text().splitlines() + ["test0//videos/Archery/not_there.avi"]
    lst.write_text("\n".join(lines) + "\n")
    assert prepare.main(["--src", str(root), "--out", str(out), "--to", "jpeg", "--max-frames", "5", "--split-list",
                         str(lst), "--workers", "1", "--no-progress"]) == 0
    folders = sorted(p for p in (out / "videos").glob("*/*") if p.is_dir())
    assert [f.name for f in folders] == [f"{c}_v{k}" for c in ("Archery", "kick_ball") for k in range(3)]  # listed only
    src = media["frames"][("kick_ball", "kick_ball_v2")]
    files = list_frames(out / "videos/kick_ball/kick_ball_v2")
    got = read_frame_files(files, np.arange(len(files)))
    want = tsn_indices(len(src), 5, train=False)  # the centre frames of 5 segments
    nearest = np.abs(got[:, None].astype(int) - src[None].astype(int)).mean(axis=(2, 3, 4)).argmin(axis=1)
    assert nearest.tolist() == want.tolist()
    missing = dict(report_lines(out / "prepare_report.tsv"))
    assert "not found under" in missing["videos/Archery/not_there.avi"]
    assert (out / "splits" / "test_few_shot.txt").read_text() == lst.read_text()  # --data-root out finds it
    # run again with corrected lists: they replace the copied ones (kept as .prev), not silently lose
    lst.write_text("\n".join(lines[:-1]) + "\n")
    assert prepare.main(["--src", str(root), "--out", str(out), "--to", "jpeg", "--max-frames", "5", "--split-list",
                         str(lst), "--workers", "1", "--no-progress"]) == 0
    assert (out / "splits" / "test_few_shot.txt").read_text() == lst.read_text()
    assert (out / "splits" / "test_few_shot.txt.prev").read_text().endswith("not_there.avi\n")


def test_ctrl_c_leaves_no_partial_output_of_the_jobs_in_flight(raw, tmp_path, monkeypatch):
    """The pool's workers are killed mid-write (their clean-up never runs): the parent removes the
    temporaries of every unfinished job; the workers ignore SIGINT (each printed a traceback)."""
    import multiprocessing
    import signal

    from hr2g.data import prepare as prep

    root, _ = raw
    srcs = sorted((root / "videos").rglob("*_v*.avi"))[:3]
    jobs = [Job(p, output_path(tmp_path / "out", p.relative_to(root), "vp9"), p.name) for p in srcs]
    seen = {}

    class Pool:  # the parent's view: one job finished, then Ctrl-C while the other two were being written
        def __init__(self, n, initializer=None):
            seen["initializer"] = initializer

        def __enter__(self):
            for j in jobs[1:]:
                j.dst.parent.mkdir(parents=True, exist_ok=True)
                j.dst.with_name(f".{j.dst.name}.tmp-4242").write_bytes(b"half a webm")
            return self

        def __exit__(self, *exc):
            return False

        def imap_unordered(self, fn, items, chunksize=1):
            yield prep.run_job(*items[0])
            raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: type("Ctx", (), {"Pool": Pool}))
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, Options("vp9", 0), workers=2, progress=False)
    assert jobs[0].dst.is_file() and not any(j.dst.exists() for j in jobs[1:])
    assert not list((tmp_path / "out").rglob(".*.tmp-*")), "temporaries left behind"
    assert seen["initializer"] is prep._ignore_sigint
    previous = signal.getsignal(signal.SIGINT)
    try:
        prep._ignore_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_split_list_the_loader_will_not_find_by_name_is_warned_about(raw, tmp_path, caplog):
    root, _ = raw
    mine = tmp_path / "my_test_list.txt"
    mine.write_text((root / "splits" / "test_few_shot.txt").read_text())
    argv = ["--src", str(root), "--out", str(tmp_path / "out"), "--to", "jpeg", "--max-frames", "2", "--workers", "1",
            "--no-progress", "--split-list"]
    with caplog.at_level("WARNING", logger="hr2g"):
        assert prepare.main(argv + [str(mine)]) == 0
    assert "will not find my_test_list.txt in" in caplog.text and (tmp_path / "out" / "splits" / "my_test_list.txt").exists()
    caplog.clear()
    with caplog.at_level("WARNING", logger="hr2g"):
        assert prepare.main(argv + [str(root / "splits" / "test_few_shot.txt")]) == 0
    assert "will not find" not in caplog.text
    assert prepare.names_the_loader_skips([Path("testlist07.txt")], "ssv2_full") == []
    assert prepare.names_the_loader_skips([Path("testlist07.txt")], "hmdb51") == [Path("testlist07.txt")]


def test_stale_temporaries_of_a_name_with_brackets_are_removed(raw, tmp_path):
    """16 HMDB51 few-shot videos are named "..._[HD]_...": glob read [HD] as a character class, so
    an interrupted run's temporaries of those outputs were never cleaned up."""
    root, _ = raw
    dst = tmp_path / "out" / "Die_Another_Day_[HD]_v1.webm"
    dst.parent.mkdir()
    stale = dst.with_name(f".{dst.name}.tmp-999")
    stale.mkdir()  # a jpeg run's half-written frame folder
    (outcome,) = run_jobs([Job(root / "videos/kick_ball/kick_ball_v1.avi", dst, "k")], Options("vp9", 0), progress=False)
    assert outcome.status == "done" and not stale.exists() and dst.is_file()


def test_an_out_inside_src_is_not_read_back_as_input(raw, tmp_path):
    """Without split lists every video under --src is an input: an --out inside it was too, so each
    re-run converted the last run's outputs again, one folder deeper."""
    root, _ = raw
    argv = ["--src", str(root), "--out", str(root / "prep"), "--to", "vp9", "--short-side", "16", "--workers", "1",
            "--no-progress"]
    assert prepare.main(argv) == 0
    first = sorted(p.relative_to(root) for p in (root / "prep").rglob("*.webm"))
    assert prepare.main(argv) == 0
    assert sorted(p.relative_to(root) for p in (root / "prep").rglob("*.webm")) == first and len(first) == 15
    assert not (root / "prep" / "prep").exists()


def test_a_class_video_list_of_any_name_and_listed_frame_folders(raw, tmp_path, caplog):
    """prepare only needs a list's videos: a 'class/video' list named my_subset.txt used to stop it
    ("cannot tell the split from the file name"), and a listed frame folder was neither converted
    nor reported."""
    root, media = raw
    from tests.media import write_frame_folder

    write_frame_folder(root / "videos/Archery/Archery_frames", media["frames"][("Archery", "Archery_v0")][:4])
    mine = tmp_path / "my_subset.txt"
    mine.write_text("Archery/Archery_v1\nArchery/Archery_frames\nkick_ball/kick_ball_v0\n")
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="hr2g"):
        assert prepare.main(["--src", str(root / "videos"), "--out", str(out), "--to", "vp9", "--short-side", "16",
                             "--workers", "1", "--no-progress", "--split-list", str(mine)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.webm")) == [
        "Archery/Archery_v1.webm", "kick_ball/kick_ball_v0.webm"]
    report = dict(report_lines(out / "prepare_report.tsv"))
    assert list(report) == ["Archery/Archery_frames"] and "a frame folder, not a video file" in report["Archery/Archery_frames"]
    assert "2 written, 0 already done, 0 unreadable, 0 missing, 1 listed frame folders not converted" in caplog.text
    with pytest.raises(ValueError, match=r"my_subset.txt: cannot tell the split"):  # the loader still needs a name
        from hr2g.data.splits import read_split

        read_split(mine)


def test_a_list_none_of_whose_videos_is_found_fails_with_a_hint(raw, tmp_path, caplog):
    """A wrong --src (or an SSv2 list without --dataset) found 0 of the listed videos and exited 0."""
    root, _ = raw
    out = tmp_path / "out"
    argv = ["--src", str(root / "videos" / "catch"), "--out", str(out), "--to", "vp9", "--workers", "1", "--no-progress",
            "--split-list", str(root / "splits" / "testlist03.txt")]
    with caplog.at_level("ERROR", logger="hr2g"):
        assert prepare.main(argv) == 1
    assert "none of the 6 listed videos is under " in caplog.text and "or pass --dataset" in caplog.text
    assert len(report_lines(out / "prepare_report.tsv")) == 6  # the report still names them


def test_scaled_size_and_cli_errors(tmp_path):
    assert scaled_size(320, 240, 256) == (320, 240)  # never upscaled
    assert scaled_size(640, 360, 256) == (456, 256) and scaled_size(341, 257, 256) == (340, 256)
    assert scaled_size(64, 48, 0) == (64, 48)
    with pytest.raises(SystemExit) as err:
        prepare.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--split-dir", str(tmp_path)])
    assert err.value.code == 2  # argparse: --split-dir needs --dataset
    with pytest.raises(SystemExit, match="is not a folder"):
        prepare.main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no train split list"):
        prepare.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--dataset", "hmdb51", "--split-dir",
                      str(tmp_path)])
    assert prepare.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]) == 1  # no videos


def test_ssv2_annotations_travel_with_the_split_lists(tmp_path):
    # SSv2's own annotation files name the classes of the index-only SSv2-full lists: prepare copies
    # them next to the prepared videos under the name the loader looks for
    import argparse

    src = tmp_path / "raw"
    (src / "splits").mkdir(parents=True)
    (src / "labels").mkdir()
    for s in ("train", "val", "test"):
        (src / "splits" / f"{s}_few_shot.txt").write_text(f"{s}0/11\n")
    (src / "labels" / "train.json").write_text('[{"id": "11", "template": "Folding [something]"}]')
    args = argparse.Namespace(split_list=[], split_dir=str(src / "splits"), dataset="ssv2_full",
                              splits=["train", "val", "test"], src=str(src))
    lists, labels = prepare.split_lists(args)
    assert labels == [src / "labels" / "train.json"]
    copied = prepare.copy_lists(lists + labels, tmp_path / "out" / "splits")
    assert "something-something-v2-train.json" in copied
    assert (tmp_path / "out" / "splits" / "something-something-v2-train.json").read_text().startswith('[{"id": "11"')


def test_lists_of_another_format_from_an_earlier_run_do_not_shadow_the_new_ones(tmp_path, caplog):
    """The loader reads test_few_shot.txt before testlist03.txt: after a run with CLIP-FSAR lists, a
    run with the TRX lists copied them beside the old ones and the old ones were still read."""
    from hr2g.data.presets import find_split_file, get_preset

    dest = tmp_path / "out" / "splits"
    clip = tmp_path / "clipfsar" / "test_few_shot.txt"
    trx = tmp_path / "trx" / "testlist03.txt"
    for path, text in ((clip, "train0//videos/a/x.avi\n"), (trx, "b/y\n")):
        path.parent.mkdir()
        path.write_text(text)
    prepare.copy_lists([clip], dest, "hmdb51")
    assert find_split_file(get_preset("hmdb51"), dest, "test").name == "test_few_shot.txt"
    with caplog.at_level("WARNING", logger="hr2g"):
        prepare.copy_lists([trx], dest, "hmdb51")
    assert find_split_file(get_preset("hmdb51"), dest, "test").name == "testlist03.txt"
    assert (dest / "test_few_shot.txt.prev").read_text() == clip.read_text() and "would read instead of testlist03.txt" in caplog.text
    # lists of other splits and a run that brings both names (SSv2-small's index list and its labels) keep theirs
    (dest / "val_few_shot.txt").write_text("x")
    prepare.copy_lists([clip, trx], dest, "ssv2_small")
    assert (dest / "val_few_shot.txt").exists() and (dest / "test_few_shot.txt").exists() and (dest / "testlist03.txt").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--short-side", "-1", "--short-side must be >= 0, got -1"), ("--gop", "-2", "--gop must be >= 0, got -2"),
    ("--max-frames", "-1", "--max-frames must be >= 0, got -1"),
    ("--jpeg-quality", "0", "--jpeg-quality must be in [1, 95], got 0"),
    ("--jpeg-quality", "96", "--jpeg-quality must be in [1, 95], got 96"),
    ("--workers", "0", "--workers must be >= 1, got 0")])
def test_out_of_range_options_are_refused_by_name(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as err:
        prepare.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything is written


@pytest.mark.parametrize("flag, value", [("--jpeg-quality", "1"), ("--jpeg-quality", "95"), ("--short-side", "0")])
def test_the_edges_of_the_option_ranges_are_accepted(tmp_path, flag, value):
    assert prepare.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress", flag, value]) == 1  # no videos
