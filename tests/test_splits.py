"""Split-list parsing (three formats), class names, presets, locating videos, root validation --
on small hand-written lists and on the real released lists when ``../shared/splits`` exists."""
import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from hr2g.data.presets import PRESETS, SPLITS, find_annotation_files, find_label_file, find_split_file, get_preset
from hr2g.data.splits import detect_format, locate_videos, prompt_name, read_split, validate_root

SHARED = Path(__file__).resolve().parents[2] / "shared" / "splits"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real split lists not present at {SHARED}")

# README of the released lists: (classes, videos) per split
COUNTS = {
    "hmdb51": {"train": (31, 4280), "val": (10, 1194), "test": (10, 1292)},
    "ucf101": {"train": (70, 9154), "val": (10, 1421), "test": (21, 2745)},
    "kinetics100": {"train": (64, 6400), "val": (12, 1200), "test": (24, 2400)},
    "ssv2_small": {"train": (64, 6400), "val": (12, 1200), "test": (24, 2400)},
    "ssv2_full": {"train": (64, 67013), "val": (12, 1926), "test": (24, 2857)},
}
TRX = {"hmdb51": "hmdb_ARN/{s}list03", "ucf101": "ucf_ARN/{s}list03", "kinetics100": "kinetics_CMN/{s}list03",
       "ssv2_small": "ssv2_CMN/{s}list03", "ssv2_full": "ssv2_OTAM/{s}list07"}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("raw, name", [("brush_hair", "brush hair"), ("ApplyEyeMakeup", "apply eye makeup"),
                                        ("blasting_sand", "blasting sand"), ("Archery", "archery"),
                                        ("YoYo", "yo yo"), ("kick_ball", "kick ball"), ("air drumming", "air drumming"),
                                        ("Pouring something into something", "Pouring something into something")])
def test_prompt_names(raw, name):
    assert prompt_name(raw) == name


def test_indexed_path_list(tmp_path):
    f = write(tmp_path / "train_few_shot.txt", ["train0//videos/brush_hair/a.avi", "train0//videos/brush_hair/b.avi",
                                               "train1//videos/ApplyEyeMakeup/v_1.avi", "", "train2//videos/catch/c d.avi"])
    s = read_split(f)
    assert (s.name, s.format, len(s)) == ("train", "indexed_path", 4)
    assert s.labels.tolist() == [0, 0, 1, 2] and s.labels.dtype == np.int64
    assert s.class_names == ["brush hair", "apply eye makeup", "catch"]
    assert s.folders == ["brush_hair", "ApplyEyeMakeup", "catch"]
    assert s.videos[3] == "videos/catch/c d.avi"


def test_an_indexed_list_out_of_class_order_names_each_index_its_own_folder(tmp_path):
    """Class 1's lines first: the names go by index, not by first appearance (b's videos would be
    prompted as "a" and a's as "b")."""
    s = read_split(write(tmp_path / "train.txt", ["train1//videos/b/x.avi", "train0//videos/a/y.avi"]))
    assert s.folders == ["a", "b"] and s.class_names == ["a", "b"] and s.labels.tolist() == [1, 0]


def test_byte_order_mark_and_crlf_are_ignored(tmp_path):
    # a list re-saved by a Windows editor: BOM + CRLF; the BOM used to make line 1 unlike the rest,
    # so the list was read as "class name/video" with a class called "\ufefftrain0//videos/brush hair"
    f = tmp_path / "train_few_shot.txt"
    f.write_bytes("\ufefftrain0//videos/brush_hair/a.avi\r\ntrain1//videos/catch/c.avi\r\n".encode("utf-8"))
    s = read_split(f)
    assert (s.format, s.class_names, s.videos) == ("indexed_path", ["brush hair", "catch"], ["videos/brush_hair/a.avi", "videos/catch/c.avi"])


def test_named_list_with_spaces_and_first_appearance_order(tmp_path):
    f = write(tmp_path / "vallist03.txt", ["Pouring something into something/51958",
                                           "Holding something behind something/511",
                                           "Pouring something into something/7\r", "air drumming/-VtL_0012"])
    s = read_split(f)
    assert (s.name, s.format) == ("val", "named")
    assert s.class_names == ["Pouring something into something", "Holding something behind something", "air drumming"]
    assert s.labels.tolist() == [0, 1, 0, 2] and s.videos == ["51958", "511", "7", "-VtL_0012"]


def test_indexed_id_list_names_from_a_named_list_or_a_names_file(tmp_path):
    f = write(tmp_path / "test_few_shot.txt", ["test1/88", "test0/7", "test1/90", "test2/5"])
    named = write(tmp_path / "testlist03.txt", ["Twisting something/7", "Poking a hole/88", "Poking a hole/90",
                                                "Tearing/5"])
    s = read_split(f, label_file=named)
    assert s.format == "indexed_id" and s.labels.tolist() == [1, 0, 1, 2]
    assert s.class_names == ["Twisting something", "Poking a hole", "tearing"]  # one word: folder style
    per_line = write(tmp_path / "classes.txt", ["zero", "one", "two"])
    assert read_split(f, label_file=per_line).class_names == ["zero", "one", "two"]
    with pytest.warns(UserWarning, match="no label file.*'class 0'"):
        assert read_split(f).class_names == ["class 0", "class 1", "class 2"]
    with pytest.raises(ValueError, match="needs 3 lines"):
        read_split(f, label_file=write(tmp_path / "two.txt", ["a", "b"]))
    clash = write(tmp_path / "clash.txt", ["A/7", "B/88", "C/90", "D/5"])
    with pytest.raises(ValueError, match="class index 1 .* two names"):
        read_split(f, label_file=clash)


def test_format_detection_and_errors(tmp_path):
    assert detect_format(["train0//videos/a/b.avi"]) == "indexed_path"
    assert detect_format(["train8/78687", "train50/42326"]) == "indexed_id"
    assert detect_format(["train8/78687", "catch/x"]) == "named"
    with pytest.raises(ValueError, match=r"bad\.txt:2: .* is not a indexed_path line"):
        read_split(write(tmp_path / "bad.txt", ["train0//videos/a/b.avi", "train1/x"]), fmt="indexed_path")
    with pytest.raises(ValueError, match=r"mix\.txt:2: 'test0/2' is a test line, but line 1 is train: one list holds one split"):
        read_split(write(tmp_path / "mix.txt", ["train0/1", "test0/2"]))
    # checked before repeats are dropped: the val line is no repeat of the train line
    with pytest.raises(ValueError, match=r"mix2\.txt:3: 'val0//v/a/x.avi' is a val line"):
        read_split(write(tmp_path / "mix2.txt", ["train0//v/a/x.avi", "train0//v/a/y.avi", "val0//v/a/x.avi"]))
    with pytest.raises(ValueError, match="expected the val split"):
        read_split(write(tmp_path / "t.txt", ["train0/1"]), split="val")
    with pytest.raises(ValueError, match=r"without gaps; no video has class \[1\]"):
        read_split(write(tmp_path / "gap.txt", ["train0/1", "train2/2"]))
    with pytest.raises(ValueError, match=r"two\.txt:3: class index 0 is folder 'b' here but 'a' at line 1"):
        read_split(write(tmp_path / "two.txt", ["train0//v/a/x.avi", "train1//v/c/z.avi", "train0//v/b/y.avi"]))
    with pytest.raises(ValueError, match=r"flat\.txt:2: 'y.avi' has no class folder"):
        read_split(write(tmp_path / "flat.txt", ["train0//v/a/x.avi", "train0//y.avi"]))
    with pytest.raises(ValueError, match="cannot tell the split"):
        read_split(write(tmp_path / "list.txt", ["a/b"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_split(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="is empty"):
        read_split(write(tmp_path / "empty.txt", ["", "# comment"]))


def test_locate_and_validate_root(tmp_path):
    root = tmp_path / "data"
    for rel in ["videos/brush_hair/a.avi", "videos/brush_hair/b.mp4", "videos/catch/c.webm"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "videos/catch/d").mkdir()  # a frame folder
    lst = write(tmp_path / "train_few_shot.txt", ["train0//videos/brush_hair/a.avi", "train0//videos/brush_hair/b.avi",
                                                  "train1//videos/catch/c.avi", "train1//videos/catch/d.avi",
                                                  "train1//videos/catch/gone.avi"])
    s = read_split(lst)
    found = locate_videos(root, s, get_preset("hmdb51"))
    assert [p.relative_to(root).as_posix() if p else None for p in found] == [
        "videos/brush_hair/a.avi", "videos/brush_hair/b.mp4", "videos/catch/c.webm", "videos/catch/d", None]
    rep = validate_root(root, s, get_preset("hmdb51"))
    assert not rep.ok and rep.found == 4 and rep.missing == ["videos/catch/gone.avi"]
    assert "1 of 5 videos missing" in rep.message() and "videos/catch/gone.avi" in rep.message()
    # root = the videos/ folder itself; TRX-style names with spaces map to underscore folders
    named = read_split(write(tmp_path / "trainlist03.txt", ["brush hair/a", "catch/d"]))
    assert [p.name for p in locate_videos(root / "videos", named, get_preset("kinetics100"))] == ["a.avi", "d"]
    assert validate_root(root / "videos", read_split(lst), get_preset("hmdb51")).found == 4
    empty = validate_root(tmp_path, s, get_preset("hmdb51"))
    assert empty.found == 0 and "none at all" in empty.message()
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        validate_root(tmp_path / "nope", s)


def test_kinetics_clips_found_under_either_releases_name(tmp_path):
    # CLIP-FSAR names 579 Kinetics-100 videos "<youtube id>.mp4", TRX the same videos
    # "<id>_<start>_<end>": one tree must serve both lists
    root = tmp_path / "k100"
    for rel in ["val_256/baking_cookies/-514AQUrSow_000058_000068.mp4", "train_256/baking_cookies/m6RF5r3I8dA.mp4",
                "train_256/baking_cookies/twoClipsId_000001_000011.mp4", "train_256/baking_cookies/twoClipsId_000020_000030.mp4"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    clipfsar = read_split(write(tmp_path / "val_few_shot.txt", [
        "val0//val_256/baking_cookies/-514AQUrSow.mp4", "val0//train_256/baking_cookies/m6RF5r3I8dA.mp4",
        "val0//train_256/baking_cookies/twoClipsId.mp4", "val0//train_256/baking_cookies/absentClip0.mp4"]))
    trx = read_split(write(tmp_path / "vallist03.txt", [
        "baking cookies/-514AQUrSow_000058_000068", "baking cookies/m6RF5r3I8dA_000100_000110",
        "baking cookies/twoClipsId_000001_000011", "baking cookies/absentClip0_000001_000011"]))
    expect = ["val_256/baking_cookies/-514AQUrSow_000058_000068.mp4", "train_256/baking_cookies/m6RF5r3I8dA.mp4",
              None, None]  # two clips of one id: which one the list meant is a guess, so missing
    for split in (clipfsar, trx):
        got = locate_videos(root, split, get_preset("kinetics100"))
        rel = [p.relative_to(root).as_posix() if p else None for p in got]
        assert rel[:2] == expect[:2] and rel[3] is None
    assert locate_videos(root, clipfsar, get_preset("kinetics100"))[2] is None
    assert locate_videos(root, trx, get_preset("kinetics100"))[2].name == "twoClipsId_000001_000011.mp4"  # as listed
    # only Kinetics: other presets never rename
    assert locate_videos(root, clipfsar, get_preset("hmdb51"))[:2] == [None, root / "train_256/baking_cookies/m6RF5r3I8dA.mp4"]
    rep = validate_root(root, clipfsar, get_preset("kinetics100"))
    assert rep.found == 2 and "_<start>_<end> times removed or added" in rep.message()


@needs_shared
@pytest.mark.parametrize("name", SPLITS)
def test_one_kinetics_tree_serves_both_released_lists(tmp_path, name):
    # a tree named as TRX names the clips (<id>_<start>_<end>.mp4, in CLIP-FSAR's folders): before
    # the YouTube-name fallback, 579 CLIP-FSAR entries (362 / 68 / 149) counted as missing
    clipfsar = read_split(SHARED / "clipfsar/kinetics100" / f"{name}_few_shot.txt")
    trx = read_split(SHARED / "trx/kinetics_CMN" / f"{name}list03.txt")
    trx_stem = {v[:11]: v for v in trx.videos}
    both = 0
    for listed in clipfsar.videos:
        folder, _, base = listed.lstrip("/").rpartition("/")
        if (stem := trx_stem.get(base[:11])) is not None:  # the releases also pick a few different clips
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / folder / f"{stem}.mp4").write_bytes(b"")
            both += 1
    k100 = get_preset("kinetics100")
    assert validate_root(tmp_path, clipfsar, k100).found == both == validate_root(tmp_path, trx, k100).found


def test_flat_ssv2_layout(tmp_path):
    for vid in ("51958.webm", "7.mp4"):
        (tmp_path / "20bn-something-something-v2").mkdir(exist_ok=True)
        (tmp_path / "20bn-something-something-v2" / vid).write_bytes(b"x")
    (tmp_path / "88").mkdir()
    s = read_split(write(tmp_path / "trainlist03.txt", ["Pouring something/51958", "Holding/7", "Holding/88", "Holding/9"]))
    got = locate_videos(tmp_path, s, get_preset("ssv2_small"))
    assert [p.name if p else None for p in got] == ["51958.webm", "7.mp4", "88", None]


def test_one_file_found_by_two_entries_is_never_two_videos(tmp_path, caplog):
    """In SSv2's flat folder "Pushing something/100" and "Pulling something/100" are both 100.webm:
    one file could be an episode's support and its query, under two labels."""
    from hr2g.data.benchmarks import BenchmarkDataset

    flat = tmp_path / "20bn-something-something-v2"
    flat.mkdir()
    for vid in ("100", "101", "102"):
        (flat / f"{vid}.webm").write_bytes(b"x")
    clash = read_split(write(tmp_path / "trainlist03.txt", ["Pushing something/100", "Pulling something/101",
                                                             "Pulling something/100"]))
    with pytest.raises(ValueError, match=r"trainlist03.txt: '100' \(Pushing something\) and '100' \(Pulling "
                                         r"something\) are the same file .*100.webm: a video under two classes$"):
        BenchmarkDataset(tmp_path, clash, get_preset("ssv2_small"), decoder="pyav")
    # one class naming a file twice (with and without its extension): the second is never drawn
    twice = read_split(write(tmp_path / "testlist03.txt", ["Pushing/100", "Pushing/101", "Pushing/100.webm", "Pulling/102"]))
    with caplog.at_level("WARNING", logger="hr2g"):
        ds = BenchmarkDataset(tmp_path, twice, get_preset("ssv2_small"), decoder="pyav")
    assert ds.unavailable == {2} and "1 entries find a file an earlier entry of their class found" in caplog.text


def _ssv2_annotations(path: Path, entries: list[tuple[str, str]]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"id": vid, "label": "x", "template": t, "placeholders": []} for vid, t in entries]))
    return path


def test_index_only_ssv2_list_named_by_the_datasets_own_annotations(tmp_path):
    # SSv2-full's OTAM lists carry no class names; SSv2's annotation files (released with the
    # videos) give each video's template: "Holding [something] next to [something]"
    (tmp_path / "splits").mkdir()
    lst = write(tmp_path / "splits" / "train_few_shot.txt", ["train0/11", "train0/12", "train1/21", "train2/31"])
    train = _ssv2_annotations(tmp_path / "labels" / "train.json",
                              [("11", "Holding [something] next to [something]"), ("21", "Pushing [something] from left to right")])
    val = _ssv2_annotations(tmp_path / "something-something-v2-validation.json", [("31", "Tearing [something] into two pieces")])
    found = find_annotation_files(get_preset("ssv2_full"), tmp_path / "splits", tmp_path)
    assert sorted(map(str, found)) == sorted([str(train), str(val)])
    s = read_split(lst, "train", label_file=found)
    assert s.class_names == ["Holding something next to something", "Pushing something from left to right",
                             "Tearing something into two pieces"]  # as the TRX lists spell SSv2's classes
    assert find_annotation_files(get_preset("hmdb51"), tmp_path / "splits", tmp_path) == []
    with pytest.raises(ValueError, match=r"names no video of class indices \[2\]"):
        read_split(lst, "train", label_file=[train])
    _ssv2_annotations(train, [("11", "Holding [something]"), ("12", "Dropping [something]"), ("21", "Pushing"), ("31", "x")])
    with pytest.raises(ValueError, match=r"videos of class index 0 .* carry two names"):
        read_split(lst, "train", label_file=[train])
    train.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=r"not a Something-Something-v2 annotation file"):
        read_split(lst, "train", label_file=[train])


def test_ssv2_full_dataset_takes_class_names_from_the_annotations_beside_the_videos(tmp_path):
    from hr2g.config import DataConfig
    from hr2g.data.benchmarks import BenchmarkDataset

    (tmp_path / "splits").mkdir()
    (tmp_path / "20bn-something-something-v2").mkdir()
    for vid in ("11", "21"):
        (tmp_path / "20bn-something-something-v2" / f"{vid}.webm").write_bytes(b"x")  # located, not decoded here
    write(tmp_path / "splits" / "train_few_shot.txt", ["train0/11", "train1/21"])
    _ssv2_annotations(tmp_path / "labels" / "something-something-v2-train.json",
                      [("11", "Folding [something]"), ("21", "Unfolding [something]")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the placeholder-names warning must not fire
        ds = BenchmarkDataset.from_config(DataConfig(dataset="ssv2_full", data_root=str(tmp_path)), "train")
    assert ds.class_names == ["Folding something", "Unfolding something"]


def test_presets_flip_and_split_file_lookup(tmp_path):
    assert not PRESETS["ssv2_small"].flip and not PRESETS["ssv2_full"].flip and PRESETS["hmdb51"].flip
    (tmp_path / "trx" / "ssv2_CMN").mkdir(parents=True)
    (tmp_path / "clipfsar" / "ssv2_small").mkdir(parents=True)
    write(tmp_path / "clipfsar/ssv2_small/val_few_shot.txt", ["val0/1"])
    write(tmp_path / "trx/ssv2_CMN/vallist03.txt", ["Moving something/1"])
    p = get_preset("ssv2_small")
    lst = find_split_file(p, tmp_path, "val")
    assert lst == tmp_path / "clipfsar/ssv2_small/val_few_shot.txt"
    assert find_label_file(p, tmp_path, "val", exclude=lst) == tmp_path / "trx/ssv2_CMN/vallist03.txt"
    with pytest.raises(FileNotFoundError, match=r"no test split list .*test_few_shot.txt"):
        find_split_file(p, tmp_path, "test")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_preset("hmdb")


# --------------------------------------------------------------------------- the real lists


@needs_shared
@pytest.mark.parametrize("dataset", list(COUNTS))
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_real_lists_counts_and_formats_agree(dataset, split):
    want_classes, want_videos = COUNTS[dataset][split]
    preset = get_preset(dataset)
    clip_path = find_split_file(preset, SHARED, split)  # CLIP-FSAR list first
    assert clip_path == SHARED / "clipfsar" / dataset / f"{split}_few_shot.txt"
    label = find_label_file(preset, SHARED, split, exclude=clip_path)
    if dataset == "ssv2_full":  # no public names list for the OTAM split: placeholders with a warning
        assert label is None
        with pytest.warns(UserWarning, match="no label file"):
            clip = read_split(clip_path, split)
    else:
        clip = read_split(clip_path, split, label_file=label)
    with pytest.warns(UserWarning) if dataset == "ssv2_full" else _no_warning():
        trx = read_split(SHARED / "trx" / (TRX[dataset].format(s=split) + ".txt"))
    for s in (clip, trx):
        assert s.name == split and (s.num_classes, len(s)) == (want_classes, want_videos)
        assert sorted(set(s.labels.tolist())) == list(range(want_classes))
    # both releases index the classes the same way and name them the same
    assert clip.class_names == trx.class_names
    expected_format = {"ssv2_small": "indexed_id", "ssv2_full": "indexed_id"}.get(dataset, "indexed_path")
    assert clip.format == expected_format
    assert trx.format == ("indexed_id" if dataset == "ssv2_full" else "named")
    if dataset in ("hmdb51", "ucf101", "kinetics100"):  # documented: index = alphabetical folder order
        assert clip.folders == sorted(clip.folders)
    if dataset == "ssv2_small":  # the same videos, with the same labels, in both lists
        assert dict(zip(clip.videos, clip.labels.tolist())) == dict(zip(trx.videos, trx.labels.tolist()))
    if dataset == "ssv2_full":
        assert clip.videos == trx.videos and np.array_equal(clip.labels, trx.labels)


@needs_shared
def test_real_lists_readable_names():
    hmdb = read_split(SHARED / "clipfsar/hmdb51/train_few_shot.txt")
    ucf = read_split(SHARED / "clipfsar/ucf101/train_few_shot.txt")
    k100 = read_split(SHARED / "clipfsar/kinetics100/test_few_shot.txt")
    assert hmdb.class_names[0] == "brush hair" and ucf.class_names[0] == "apply eye makeup"
    assert k100.class_names[0] == "blasting sand"
    assert all(n == n.lower() and "_" not in n for n in hmdb.class_names + ucf.class_names + k100.class_names)


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_a_typo_in_an_indexed_list_is_named_not_read_as_another_format(tmp_path):
    """One line with a single slash switched the whole list to the named format (other classes,
    every video "missing"): the line is named instead."""
    lines = ["test0//videos/a/a1.mp4", "test0//videos/a/a2.mp4", "test1//videos/b/b1.mp4", "test1/videos/b/b2.mp4"]
    with pytest.raises(ValueError, match=r"t\.txt:4: 'test1/videos/b/b2.mp4' is not a indexed_path line like .*, as 3 "
                                         r"of the list's 4 lines are"):
        read_split(write(tmp_path / "t.txt", lines))
    # "most" is more than half: a named list whose class folders happen to look like "test0/" in
    # half its lines is still a named list (2 of 4 here), read as written
    half = ["test0//a1.mp4", "test0//a2.mp4", "kick_ball/k1.mp4", "run/r1.mp4"]
    split = read_split(write(tmp_path / "half.txt", half), split="test")
    assert split.format == "named" and split.folders == ["test0/", "kick_ball", "run"]


def test_repeated_lines_are_dropped_and_a_video_under_two_classes_refused(tmp_path, caplog):
    """A repeated line let one file be an episode's support and its query at once."""
    lines = ["kick_ball/v1.mp4", "kick_ball/v2.mp4", "Archery/v3.mp4", "kick_ball/v1.mp4", "kick_ball /v2.mp4"]
    split = read_split(write(tmp_path / "testlist.txt", lines))
    assert split.videos == ["v1.mp4", "v2.mp4", "v3.mp4"] and split.labels.tolist() == [0, 0, 1]
    assert split.folders == ["kick_ball", "Archery"], "a class name's trailing space made a new class"
    assert "testlist.txt: 2 repeated lines ignored (line 4 repeats line 1)" in caplog.text
    with pytest.raises(ValueError, match=r"testlist.txt:3: 'x/v1.mp4' is listed again under another class \(first at line 1\)"):
        read_split(write(tmp_path / "testlist.txt", ["test0//x/v1.mp4", "test1//y/v2.mp4", "test1//x/v1.mp4"]))


def test_named_lists_may_reuse_a_file_name_in_another_class_folder(tmp_path):
    split = read_split(write(tmp_path / "trainlist.txt", ["kick_ball/0001.mp4", "run/0001.mp4", "run/0002.mp4"]))
    assert split.videos == ["0001.mp4", "0001.mp4", "0002.mp4"] and split.labels.tolist() == [0, 1, 1]
