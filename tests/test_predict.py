"""``python -m hr2g.predict`` end to end: a tiny trained checkpoint classifies generated clips
(PNG frame folders from the synthetic renderer, and H.264 / VP9 / MPEG-4 videos)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hr2g import checkpoint, predict
from hr2g.data.base import tsn_indices
from hr2g.data.synthetic import render_clip, split_classes
from hr2g.data.transforms import eval_transform
from hr2g.evaluation import load_model
from hr2g.training import train
from tests.helpers import tiny_config
from tests.media import write_video

N_FRAMES = 13  # rendered per clip: not a multiple of T, so TSN centre frames are not trivially spaced


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("predict"))
    cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes = 1, 2, 0
    return train(cfg, progress=False)["last"]


def _clip(cls_index: int, video: int) -> np.ndarray:
    """``[N_FRAMES, H, W, 3]`` uint8: a synthetic test-class clip."""
    cls = split_classes("test")[cls_index]
    return render_clip(cls, np.random.default_rng([cls_index, video]), N_FRAMES, 32).transpose(0, 2, 3, 1)


def _frame_folder(folder, frames):
    folder.mkdir(parents=True)
    for i, img in enumerate(frames):
        Image.fromarray(img).save(folder / f"frame_{i:03d}.png")
    return folder


def _expected(frames: np.ndarray, t: int) -> torch.Tensor:
    idx = tsn_indices(len(frames), t, False)
    return eval_transform(torch.from_numpy(frames[idx]).permute(0, 3, 1, 2), 32)


FOLDERS = ["brush_hair", "jump", "PlayGuitar"]  # case-insensitive order; read as "brush hair", "jump", "play guitar"


def test_frame_folders_are_classified_exactly_like_a_model_forward(ckpt, tmp_path, capsys):
    support, queries, expected_sup = tmp_path / "support", [], []
    for c, name in enumerate(FOLDERS):
        for v in range(2):
            frames = _clip(c, v)
            _frame_folder(support / name / f"clip{v}", frames)
            expected_sup.append(_expected(frames, 4))
    (support / "jump" / "notes.txt").write_text("not a clip")  # ignored with a warning
    expected_q = []
    for c in (2, 0):
        frames = _clip(c, 7)
        queries.append(str(_frame_folder(tmp_path / f"query_{c}", frames)))
        expected_q.append(_expected(frames, 4))

    result = predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", *queries, "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert result["classes"] == ["brush hair", "jump", "play guitar"] and result["class_folders"] == FOLDERS
    assert result["k_shot"] == 2 and result["draws"] == 1 and result["clips_per_class"] == {f: 2 for f in FOLDERS}

    model, _ = load_model(checkpoint.load(ckpt), torch.device("cpu"))
    for q, entry in zip(expected_q, result["queries"]):
        with torch.no_grad():
            want = model(torch.stack(expected_sup), q[None], result["classes"], 2).logits[0, 0]
        torch.testing.assert_close(torch.tensor(entry["logits"]), want, rtol=1e-5, atol=1e-5)
        scores = np.array([entry["scores"][c] for c in result["classes"]])
        assert scores.sum() == pytest.approx(1.0, abs=1e-3)
        assert np.allclose(scores, want.softmax(-1).numpy(), atol=1e-4)
        assert entry["prediction"] == result["classes"][int(want.argmax())]
    # the text output: each query's best class first, then its scores from the highest down
    predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", *queries, "--device", "cpu", "--top", "3"])
    lines = capsys.readouterr().out.splitlines()
    for entry in result["queries"]:
        at = lines.index(f"{entry['query']}: {entry['prediction']} ({entry['score']:.2f})")
        listed = [float(line.split()[0]) for line in lines[at + 1 : at + 4]]
        assert listed == sorted(listed, reverse=True) and listed[0] == pytest.approx(entry["score"], abs=1e-3)


def test_video_files_of_every_codec_decode_and_classify(ckpt, tmp_path, capsys, caplog):
    support = tmp_path / "support"
    layout = {"brush_hair": [("a.mp4", "h264"), ("b.webm", "vp9")], "jump": [("a", None), ("b.webm", "vp9")],
              "PlayGuitar": [("a.avi", "mpeg4"), ("b.mp4", "h264")]}
    for c, (name, clips) in enumerate(layout.items()):
        for v, (fname, codec) in enumerate(clips):
            frames = _clip(c, v)
            if codec is None:
                _frame_folder(support / name / fname, frames)
            else:
                write_video(support / name / fname, frames, codec=codec)
    query_frames = _clip(1, 9)
    query = write_video(tmp_path / "query.mp4", query_frames, codec="h264")
    decoded = predict.load_clips([query], 4, 32, "pyav")[0]
    assert decoded.shape == (4, 3, 32, 32)
    # the TSN centre frames (1, 4, 8, 11 of 13) were decoded, not their neighbours: near-lossless H.264
    # keeps far less error than the per-frame pixel noise of the renderer (measured 0.11 vs 0.18)
    idx = tsn_indices(N_FRAMES, 4, False)
    err = lambda frames: (decoded - eval_transform(torch.from_numpy(frames).permute(0, 3, 1, 2), 32)).abs().mean()  # noqa: E731
    assert err(query_frames[idx]) < 0.75 * min(err(query_frames[idx + 1]), err(query_frames[idx - 1]))

    caplog.clear()
    with caplog.at_level("INFO", logger="hr2g"):
        result = predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", str(query), "--device", "cpu"])
    assert caplog.text.count("decoding with") == 1, "support and query clips go through one loader"
    out = capsys.readouterr().out
    assert out.startswith("3-way 2-shot, 1 episode(s) per query") and f"{query}: {result['queries'][0]['prediction']}" in out
    assert sum(result["queries"][0]["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_unequal_classes_stop_or_are_subsampled(ckpt, tmp_path):
    support = tmp_path / "support"
    for c, name in enumerate(FOLDERS):
        for v in range(3 if name == "jump" else 2):
            _frame_folder(support / name / f"clip{v}", _clip(c, v))
    query = str(_frame_folder(tmp_path / "q", _clip(0, 5)))
    with pytest.raises(SystemExit, match=r"different numbers of clips \{'brush_hair': 2, 'jump': 3, 'PlayGuitar': 2\}.*"
                                         r"--unequal subsample"):
        predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", query, "--device", "cpu"])
    args = ["--checkpoint", ckpt, "--support", str(support), "--query", query, "--device", "cpu", "--unequal", "subsample"]
    r = predict.main(args + ["--draws", "4"])
    assert r["k_shot"] == 2 and r["draws"] == 4
    assert sum(r["queries"][0]["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    # each draw is a seeded 2-of-3 subset of "jump": the same seed gives the same scores, draws average them
    assert predict.main(args + ["--draws", "4"])["queries"][0]["scores"] == r["queries"][0]["scores"]


class _RecordingHead:
    """A stand-in model for ``classify``: the logit of class n is the mean of the ids its supports
    carry (feature value = clip id), and every episode's supports are recorded."""

    def __init__(self):
        self.episodes = []

    def eval(self):
        return self

    def text_features(self, names):
        return torch.zeros(len(names), 4)

    def head(self, sup, query, text, k):
        from types import SimpleNamespace

        self.episodes.append(sup[0, :, 0, 0].tolist())
        return SimpleNamespace(logits=sup[:, :, 0, 0].view(len(sup), 1, -1, k).mean(-1))


def test_subsampled_draws_pick_distinct_clips_and_average_every_draw():
    """Class 0 has 5 clips, class 1 two: each of 6 draws takes 2 different clips of class 0 (not
    with replacement), and the scores are the mean over the draws (not the last draw's)."""
    support = [torch.arange(5.0).view(5, 1, 1).expand(5, 3, 4), torch.full((2, 3, 4), 10.0)]
    head = _RecordingHead()
    probs, logits = predict.classify(head, support, torch.zeros(1, 3, 4), ["a", "b"], amp=False, draws=6, seed=0)
    assert len(head.episodes) == 6
    picks = [tuple(e[:2]) for e in head.episodes]
    assert all(a < b for a, b in picks), picks  # distinct, in clip order
    assert len(set(picks)) > 1  # the draws differ
    want = torch.tensor([[sum(a + b for a, b in picks) / 12, 10.0]])
    torch.testing.assert_close(torch.from_numpy(logits), want)
    draw_probs = torch.stack([torch.tensor([(a + b) / 2, 10.0]).softmax(-1) for a, b in picks]).mean(0)
    torch.testing.assert_close(torch.from_numpy(probs)[0], draw_probs)


@pytest.mark.parametrize("flag", ["--draws", "--top"])
def test_draws_and_top_below_one_name_the_flag(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        predict.parse_args(["--checkpoint", "x.pt", "--support", "s", "--query", "q", flag, "0"])
    assert exc.value.code == 2 and f"{flag} expects an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag, want", [([], "auto"), (["--decoder", "pyav"], "pyav")])
def test_the_decoder_is_the_flag_or_else_the_checkpoints(ckpt, tmp_path, monkeypatch, flag, want):
    class Decoded(Exception):
        pass

    def record(paths, frames, size, decoder, device):
        raise Decoded(decoder)

    for name in ("a", "b"):
        (tmp_path / "support" / name / "clip0").mkdir(parents=True)
    monkeypatch.setattr(predict, "_decode", record)
    with pytest.raises(Decoded) as got:
        predict.main(["--checkpoint", ckpt, "--support", str(tmp_path / "support"), "--query", str(tmp_path),
                      "--device", "cpu"] + flag)
    assert str(got.value) == want


@pytest.mark.parametrize("make, argv_tail, message", [
    (lambda s: None, [], r"--support: .* is not a folder"),
    (lambda s: (s / "only_one" / "c").mkdir(parents=True), [], r"--support: .* has 1 class folder\(s\)"),
    (lambda s: [(s / n).mkdir(parents=True) for n in ("a", "b")], [], r"--support: class folder .*a holds no video file"),
    (lambda s: [(s / n / "clip0").mkdir(parents=True) for n in ("brush_hair", "BrushHair")], [],
     r"--support: .*class folders with the same name once read as words: \['brush hair'\]"),
])
def test_bad_support_folders_name_the_flag(ckpt, tmp_path, make, argv_tail, message):
    support = tmp_path / "support"
    make(support)
    with pytest.raises(SystemExit, match=message):
        predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", str(tmp_path)] + argv_tail)


def test_missing_query_and_unreadable_clips_name_the_flag(ckpt, tmp_path):
    support = tmp_path / "support"
    for c, name in enumerate(FOLDERS[:2]):
        _frame_folder(support / name / "clip0", _clip(c, 0))
    with pytest.raises(SystemExit, match=r"--query: not found: .*nope.mp4"):
        predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", str(tmp_path / "nope.mp4")])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit, match=r"--query: unreadable clip\(s\): .*broken.mp4: not a readable video container"):
        predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", str(broken), "--device", "cpu"])
    # a folder of videos, given as one query: says what it holds and what to pass
    with pytest.raises(SystemExit, match=r"--query: unreadable clip\(s\): .*: frame folder holds no .* images, but 1 video "
                                         r"file\(s\) \(broken.mp4\): a folder of videos is not a clip, pass the video files"):
        predict.main(["--checkpoint", ckpt, "--support", str(support), "--query", str(tmp_path), "--device", "cpu"])


def test_a_diverged_checkpoint_is_refused_not_a_first_class_prediction(ckpt, tmp_path):
    bad = checkpoint.load(ckpt)
    bad["model"]["isc.proj.bias"].fill_(float("nan"))
    checkpoint.save_atomic(bad, tmp_path / "nan.pt")
    support = tmp_path / "support"
    for c, name in enumerate(FOLDERS[:2]):
        _frame_folder(support / name / "clip0", _clip(c, 0))
    query = _frame_folder(tmp_path / "query", _clip(1, 5))
    with pytest.raises(SystemExit, match=r"^error: --checkpoint: the model gives non-finite logits in 1 of 1 episodes"):
        predict.main(["--checkpoint", str(tmp_path / "nan.pt"), "--support", str(support), "--query", str(query),
                      "--device", "cpu"])


def test_support_classes_and_clips_are_in_case_insensitive_name_order(tmp_path):
    """The docstring's order (the clips were sorted case-sensitively: B.mp4 before a.mp4)."""
    for cls, clips in (("beta", ("B.mp4", "a.mp4", "c.mp4")), ("Alpha", ("x.mp4",))):
        (tmp_path / cls).mkdir()
        for c in clips:
            (tmp_path / cls / c).write_bytes(b"")
    s = predict.scan_support(tmp_path)
    assert s.folders == ["Alpha", "beta"]
    assert [p.name for p in s.clips[1]] == ["a.mp4", "B.mp4", "c.mp4"]
