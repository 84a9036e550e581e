"""N-way x K-shot sweeps (``python -m hr2g.sweep``) on a tiny trained checkpoint (CPU, seconds)."""
import csv
import dataclasses
import json

import pytest
import torch

from hr2g import checkpoint, sweep
from hr2g.data.synthetic import SyntheticActions
from hr2g.evaluation import evaluate_model, load_model
from hr2g.training import train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("sweep"))
    cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes = 1, 2, 0
    return train(cfg, progress=False)["last"]


def _model(ckpt):
    return load_model(checkpoint.load(ckpt), torch.device("cpu"))


def _test_split():
    return SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)


def test_a_grid_point_equals_evaluate_episode_by_episode_and_videos_are_encoded_once(ckpt):
    model, cfg = _model(ckpt)
    data = _test_split()
    encoded = []
    encode = model.encode_videos
    model.encode_videos = lambda x: (encoded.append(x.shape[0]), encode(x))[1]
    points = sweep.sweep(model, data, cfg, ways=[3, 5], shots=[1, 2], episodes=9, seed=4, batch_episodes=4, progress=False)
    model.encode_videos = encode
    assert [(p.n_way, p.k_shot) for p in points] == [(3, 1), (3, 2), (5, 1), (5, 2)]
    # one encoder pass over the union of the grid's videos: never a video twice
    needed = set()
    for n, k in [(3, 1), (3, 2), (5, 1), (5, 2)]:
        from hr2g.data.episodes import EpisodeSampler

        for s in EpisodeSampler(data.labels, n, k, cfg.data.test_q_query).fixed(9, 4):
            needed |= set(s.support.tolist()) | set(s.query.tolist())
    assert sum(encoded) == len(needed)
    for p in points:
        ref = evaluate_model(model, data, cfg, episodes=9, seed=4, k_shot=p.k_shot, n_way=p.n_way, batch_episodes=9,
                             progress=False)
        assert p.per_episode.tolist() == ref.per_episode.tolist(), (p.n_way, p.k_shot)
        assert p.accuracy == round(100 * ref.accuracy, 2) and p.ci95 == round(100 * ref.ci95, 2)
        assert p.chance == round(100 / p.n_way, 2) and p.episodes == 9


def test_sweep_leaves_the_bank_bit_identical(ckpt):
    model, cfg = _model(ckpt)
    bank, filled = model.ikt.bank.clone(), int(model.ikt.bank_filled)
    assert filled > 0
    sweep.sweep(model, _test_split(), cfg, ways=[5], shots=[1, 3], episodes=4, seed=0, progress=False)
    assert torch.equal(bank, model.ikt.bank) and int(model.ikt.bank_filled) == filled


def test_command_writes_csv_json_and_markdown_grid(ckpt, tmp_path, capsys):
    out = tmp_path / "fig8"
    points = sweep.main(["--checkpoint", ckpt, "--ways", "5", "3", "--shots", "1", "2", "--episodes", "6",
                         "--out", str(out), "--no-progress", "--device", "cpu"])
    assert len(points) == 4
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [(int(r["n_way"]), int(r["k_shot"])) for r in rows] == [(3, 1), (3, 2), (5, 1), (5, 2)]
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 100.0 and float(r["ci95"]) >= 0 and int(r["episodes"]) == 6
    js = json.loads((out / "sweep.json").read_text())
    assert [(r["n_way"], r["k_shot"]) for r in js] == [(3, 1), (3, 2), (5, 1), (5, 2)] and "per_episode" not in js[0]
    md = (out / "sweep.md").read_text()
    assert "| 3-way |" in md and "| 5-way |" in md and "2-shot" in md
    assert "| 5-way |" in capsys.readouterr().out


def test_the_header_counts_the_episodes_each_point_scored(ckpt, tmp_path, capsys, monkeypatch):
    """Episodes an unreadable video leaves unrepairable are dropped per point: the header says how
    many were scored, not only how many were asked for."""
    real = sweep.sweep

    def dropping(*args, **kwargs):
        points = real(*args, **kwargs)
        points[0] = dataclasses.replace(points[0], episodes=points[0].episodes - 2)
        return points

    argv = ["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "2", "--episodes", "6", "--out", str(tmp_path),
            "--no-progress", "--device", "cpu"]
    sweep.main(argv)
    assert ", 6 episodes per point," in capsys.readouterr().out
    monkeypatch.setattr(sweep, "sweep", dropping)
    sweep.main(argv)
    assert ", 4-6 episodes per point (of 6 drawn)," in capsys.readouterr().out

    def dropping_everywhere(*args, **kwargs):  # one count at every point, but not the one asked for
        return [dataclasses.replace(p, episodes=p.episodes - 2) for p in real(*args, **kwargs)]

    monkeypatch.setattr(sweep, "sweep", dropping_everywhere)
    sweep.main(argv)
    assert ", 4 episodes per point (of 6 drawn)," in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--ways", "40"], r"--ways / --shots / --queries: grid point 40-way 1-shot cannot be sampled: .*n_way <= 32"),
    (["--shots", "6"], r"grid point 5-way 6-shot cannot be sampled: .*k_shot \+ q_query <= 6"),
    (["--ways", "1"], None),
    (["--episodes", "0"], None),
])
def test_impossible_grids_stop_with_the_flag_and_the_allowed_range(ckpt, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--checkpoint", ckpt, "--no-progress", "--device", "cpu"] + argv)
    if message is None:  # argparse: exit code 2, the flag named on stderr
        assert exc.value.code == 2 and argv[0] in capsys.readouterr().err
    else:
        assert pytest.importorskip("re").search(message, str(exc.value)), str(exc.value)


def test_missing_checkpoint_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint: checkpoint .* does not exist"):
        sweep.main(["--checkpoint", str(tmp_path / "none.pt")])


class _HalfUnreadable(SyntheticActions):
    """The test split with the first 3 of every class's 6 videos unreadable: 1-shot episodes (2
    videos per class with one query) can be repaired, 3-shot ones (4 per class) cannot."""

    def clip(self, index, train, rng):
        from hr2g.data.base import VideoReadError

        if index % 6 < 3:
            raise VideoReadError(f"/data/{self.key(index)}.mp4", "moov atom not found")
        return super().clip(index, train, rng)


def test_a_grid_point_without_episodes_is_reported_and_the_others_still_count(ckpt, tmp_path, capsys, monkeypatch,
                                                                              caplog):
    from hr2g import inference

    monkeypatch.setattr(inference, "dataset_from_args",
                        lambda *a, **k: _HalfUnreadable("test", videos_per_class=6, frames=4, image_size=32))
    argv = ["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "3", "--episodes", "5", "--out", str(tmp_path),
            "--no-progress", "--device", "cpu"]
    points = sweep.main(argv)
    one, three = points
    assert (one.k_shot, one.episodes) == (1, 5) and one.accuracy is not None
    assert (three.k_shot, three.episodes, three.accuracy, three.ci95, three.chance) == (3, 0, None, None, 20.0)
    assert "grid point 5-way 3-shot skipped: test, 5-way 3-shot: every episode has a class with fewer than 4" in caplog.text
    out = capsys.readouterr().out
    assert ", 5 episodes per point, no episode left at 5-way 3-shot (unreadable videos)," in out
    assert "| 5-way | " + f"{one.accuracy:.2f} ± {one.ci95:.2f} | no episode |" in out
    js = json.loads((tmp_path / "sweep.json").read_text())
    assert js[1]["episodes"] == 0 and js[1]["accuracy"] is None
    # the videos are named, not only counted: in the log, the header and a list beside the tables
    listed = json.loads((tmp_path / "unreadable_videos.json").read_text())
    assert len(listed) == 96 and set(listed.values()) == {"moov atom not found"}
    assert all(int(k.rsplit("/", 1)[-1]) < 3 for k in listed)  # the first 3 of each class, by key
    assert "96 unreadable videos replaced by others of their class (unreadable_videos.json)" in out
    assert "96 unreadable videos: " in caplog.text and "; and 91 more" in caplog.text
    with pytest.raises(SystemExit, match=r"^error: no grid point has an episode left after 96 unreadable videos.*"
                                         r"; 96 unreadable videos: .* \(moov atom not found\)"):
        sweep.main(argv[:5] + ["3"] + argv[7:])


def test_sweep_scores_in_eval_mode_and_leaves_the_model_in_its_mode(ckpt):
    """The tiny model has no dropout, so a head run in train mode scores the same: the mode is
    checked where the head runs (a model with dropout, or BatchNorm, would not)."""
    model, cfg = _model(ckpt)
    modes, head = [], model.head
    model.head = lambda *a: (modes.append(model.training), head(*a))[1]
    for training in (True, False):
        model.train(training)
        sweep.sweep(model, _test_split(), cfg, ways=[5], shots=[1], episodes=2, seed=0, progress=False)
        assert model.training is training
    assert modes and not any(modes)


def test_unreadable_videos_are_repaired_as_evaluate_repairs_them(ckpt):
    """The same seeded repair as evaluate_model: a point's episodes, and so its accuracy, are the
    evaluation's at the same seed also when videos are replaced."""
    model, cfg = _model(ckpt)
    data = _HalfUnreadable("test", videos_per_class=6, frames=4, image_size=32)
    (point,) = sweep.sweep(model, data, cfg, ways=[5], shots=[1], episodes=8, seed=2, progress=False)
    ref = evaluate_model(model, data, cfg, episodes=8, seed=2, k_shot=1, n_way=5, progress=False)
    assert ref.skipped_videos and point.per_episode.tolist() == ref.per_episode.tolist()


def test_seed_zero_is_the_seed_asked_for(ckpt, tmp_path, capsys):
    points = sweep.main(["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "--episodes", "2", "--seed", "0",
                         "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    assert [p.seed for p in points] == [0] and ", seed 0," in capsys.readouterr().out


def test_a_clean_sweep_removes_a_stale_list_of_unreadable_videos(ckpt, tmp_path):
    stale = tmp_path / "unreadable_videos.json"
    stale.write_text('{"old.mp4": "from an earlier sweep"}')
    sweep.main(["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "--episodes", "2", "--out", str(tmp_path),
                "--no-progress", "--device", "cpu"])
    assert not stale.exists() and (tmp_path / "sweep.csv").exists()


def test_an_output_folder_that_cannot_be_written_stops_before_the_grid(ckpt, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(sweep, "sweep", lambda *a, **k: pytest.fail("the grid ran before --out was checked"))
    with pytest.raises(SystemExit, match=r"^error: --out: .*file.* is a file, expected a folder"):
        sweep.main(["--checkpoint", ckpt, "--out", str(blocker), "--no-progress", "--device", "cpu"])


def test_listed_videos_missing_on_disk_are_counted_in_evaluate_and_sweep(ckpt, tmp_path, monkeypatch, capsys):
    """They are never drawn (so never 'unreadable'): a split with some gone reported 0 skipped."""
    from hr2g import evaluate as evaluate_cli
    from hr2g import inference

    class Partly(SyntheticActions):
        unavailable = frozenset({0, 7})

    monkeypatch.setattr(inference, "dataset_from_args",
                        lambda *a, **k: Partly("test", videos_per_class=6, frames=4, image_size=32))
    rows = evaluate_cli.main(["--checkpoint", ckpt, "--shots", "1", "--episodes", "3", "--no-progress", "--device", "cpu"])
    assert (rows[0]["missing_videos"], rows[0]["skipped_videos"]) == (2, 0)
    sweep.main(["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "--episodes", "2", "--out", str(tmp_path),
                "--no-progress", "--device", "cpu"])
    assert ", 2 listed videos missing on disk (never drawn)" in capsys.readouterr().out


def test_ctrl_c_before_a_point_is_done_is_one_line_and_writes_nothing(ckpt, tmp_path, monkeypatch, capsys):
    """A Ctrl-C in the grid was a traceback (exit -2)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "sweep", interrupted)
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "--episodes", "2", "--out", str(tmp_path / "sw"),
                    "--no-progress", "--device", "cpu"])
    assert exc.value.code == 130
    assert "hr2g.sweep: interrupted before any grid point was finished; nothing written to" in capsys.readouterr().err
    assert not list((tmp_path / "sw").glob("*"))


def test_ctrl_c_keeps_the_finished_grid_points_and_says_the_grid_is_cut(ckpt, tmp_path, monkeypatch, capsys):
    """The finished points were lost with the rest; now they are written, each what the whole grid
    gives there, under a header that says how much of the grid they are."""
    argv = ["--checkpoint", ckpt, "--ways", "5", "--shots", "1", "2", "3", "--episodes", "3", "--no-progress",
            "--device", "cpu"]
    whole = sweep.main(argv + ["--out", str(tmp_path / "whole")])
    real, calls = sweep.episode_accuracies, []

    def cut_at_the_third_point(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "episode_accuracies", cut_at_the_third_point)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        sweep.main(argv + ["--out", str(tmp_path / "cut")])
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "hr2g.sweep: interrupted; the 2 of 3 grid points finished are written to" in err
    rows = json.loads((tmp_path / "cut" / "sweep.json").read_text())
    assert rows == [p.row() for p in whole[:2]]
    assert (tmp_path / "cut" / "sweep.md").read_text().startswith("INTERRUPTED after 2 of 3 grid points, N-way K-shot")
