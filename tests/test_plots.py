"""Figures (``python -m hr2g.plots``): the numerical parts always, the drawing when matplotlib is installed."""
import importlib.util
import itertools
import sys

import numpy as np
import pytest

from hr2g import plots
from hr2g.training import train
from tests.helpers import tiny_config

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
LOG_HEADER = "epoch,step,loss,acc,lr,bank_filled,skipped_videos,elapsed_s,val_acc\n"  # a pre-global_step log.csv
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed (pip install matplotlib, or the plots extra)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("plots"))  # 2 epochs x 3 steps, a log row per step, validation
    summary = train(cfg, progress=False)
    return cfg, summary


def _brute_force_path(dist):
    la, lb = dist.shape
    best = (np.inf, None)
    for start in range(la):
        for moves in itertools.product((0, 1), repeat=lb - 1):
            rows = start + np.concatenate([[0], np.cumsum(moves, dtype=np.int64)]).astype(np.int64)
            if rows[-1] < la:
                best = min(best, (dist[rows, np.arange(lb)].sum(), tuple(rows)), key=lambda b: b[0])
    return best


@pytest.mark.parametrize("la, lb", [(1, 5), (5, 1), (4, 6), (7, 5), (6, 6)])
def test_otam_path_is_the_cheapest_monotone_path(la, lb):
    rng = np.random.default_rng(la * 10 + lb)
    for _ in range(5):
        dist = rng.random((la, lb))
        rows, cost = plots.otam_path(dist)
        want_cost, want_rows = _brute_force_path(dist)
        assert np.all(np.diff(rows) >= 0) and np.all(np.diff(rows) <= 1) and 0 <= rows.min() and rows.max() < la
        assert cost == pytest.approx(want_cost, abs=1e-12) and dist[rows, np.arange(lb)].sum() == pytest.approx(cost)
        assert tuple(rows) == want_rows  # random distances: the optimum is unique


def _perplexities(p):
    return np.exp(-np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(1))


def test_tsne_calibrates_perplexity_and_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    centers = 3 * rng.normal(size=(4, 40))
    x = np.concatenate([c + rng.normal(size=(25, 40)) for c in centers])
    labels = np.repeat(np.arange(4), 25)
    sq = (x * x).sum(1)
    p = plots._conditional_p(sq[:, None] + sq[None] - 2 * x @ x.T, 12.0)
    assert np.allclose(p.sum(1), 1) and np.all(np.diag(p) == 0)
    assert np.abs(_perplexities(p) - 12.0).max() < 1e-2  # every row's perplexity is the requested one
    y, kl = plots.tsne(x, perplexity=12, iters=400, seed=1)
    assert y.shape == (100, 2) and np.isfinite(y).all() and 0 < kl < 2
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :5]
    assert (labels[neighbours] == labels[:, None]).mean() == 1.0  # 5 nearest neighbours in 2-D share the class
    with pytest.raises(ValueError, match="limited to 2000 points, got 2001"):
        plots.tsne(np.zeros((2001, 2)))


def test_read_log_separates_step_rows_from_epoch_rows(run, tmp_path):
    cfg, _ = run
    d = plots.read_log(cfg.train.out_dir)
    assert d["steps_per_epoch"] == 3
    assert d["step_x"].tolist() == [1, 2, 3, 4, 5, 6] and d["epoch_x"].tolist() == [3, 6] and d["epoch"].tolist() == [1, 2]
    assert np.isfinite(d["val_acc"]).all() and np.isfinite(d["step_loss"]).all()
    # log_every == steps per epoch: a step row and the epoch row share (epoch, step) values
    path = tmp_path / "log.csv"
    head = LOG_HEADER
    body = ["0,4,1.6,0.2,0.001,3,0,1.0,", "1,4,1.6,0.2,0.001,12,0,1.1,0.30", "1,4,1.5,0.3,0.001,15,0,2.0,",
            "2,4,1.5,0.3,0.0001,24,0,2.1,"]
    path.write_text(head + "\n".join(body) + "\n")
    d = plots.read_log(path)
    assert d["step_x"].tolist() == [4, 8] and d["epoch_x"].tolist() == [4, 8]
    assert d["val_acc"][0] == pytest.approx(0.30) and np.isnan(d["val_acc"][1])
    with pytest.raises(FileNotFoundError, match="no training log"):
        plots.read_log(tmp_path / "nothing")


def test_missing_matplotlib_is_a_clear_error_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match=r"needs matplotlib.*pip install matplotlib"):
        plots.require_matplotlib()


def _png_size(path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as img:
        return img.size


@needs_mpl
def test_heatmap_tsne_curves_and_sweep_figures(run, tmp_path):
    import json

    cfg, summary = run
    ckpt = summary["last"]
    out = plots.main(["heatmap", "--checkpoint", ckpt, "--device", "cpu", "--episode", "2", "--query", "3",
                      "--out", str(tmp_path / "heat.png")])
    w, h = _png_size(out)
    assert w > 600 and h > 400
    view_args = dict(episode=2, seed=cfg.eval.seed, n_way=5, k_shot=1, q_query=1)
    from hr2g import checkpoint
    from hr2g.data.build import build_dataset
    from hr2g.evaluation import evaluate_model, load_model

    model, cfg2 = load_model(checkpoint.load(ckpt), __import__("torch").device("cpu"))
    test = build_dataset(cfg2.data, "test")
    view = plots.episode_view(model, test, cfg2, **view_args)
    assert view.probs.shape == (5, 5) and np.allclose(view.probs.sum(1), 1, atol=1e-5)
    assert view.frame_sim.shape == (5, 5, 4, 4) and np.abs(view.frame_sim).max() <= 1 + 1e-5
    # the drawn episode is the evaluation's episode 2: its accuracy equals evaluate_model's
    res = evaluate_model(model, test, cfg2, episodes=3, seed=cfg.eval.seed, k_shot=1, progress=False)
    assert (view.probs.argmax(1) == view.query_labels).mean() == pytest.approx(res.per_episode[2])

    out = plots.main(["tsne", "--checkpoint", ckpt, "--device", "cpu", "--classes", "4", "--per-class", "5",
                      "--iters", "150", "--out", str(tmp_path / "tsne.png")])
    assert _png_size(out)[0] > 400
    out = plots.main(["curves", "--run", cfg.train.out_dir, "--out", str(tmp_path / "curves.png")])
    assert _png_size(out)[0] > 600
    table = tmp_path / "sweep.json"
    table.write_text(json.dumps([{"n_way": n, "k_shot": k, "accuracy": 50.0 - n + k, "ci95": 1.0}
                                 for n in (5, 10) for k in (1, 5)]))
    out = plots.main(["sweep", "--table", str(table)])
    assert out == tmp_path / "sweep.png" and _png_size(out)[0] > 600


@needs_mpl
@pytest.mark.parametrize("argv, message", [
    (["tsne", "--classes", "40"], "--classes 40: the test split has 32 classes"),
    (["tsne", "--classes", "33"], "--classes 33: the test split has 32 classes"),
    (["heatmap", "--query", "9"], r"--query 9: the episode has 5 queries \(0..4\)"),
    (["heatmap", "--query", "5"], r"--query 5: the episode has 5 queries \(0..4\)"),  # one past the last
    (["curves", "--run", "/nonexistent"], "--run: no training log at /nonexistent/log.csv"),
    (["curves", "--run", "HEADER_ONLY"], r"--run: .*log.csv has no rows yet"),
    (["sweep", "--table", "/nonexistent.json"], r"--table: /nonexistent.json does not exist"),
    (["curves", "--run", "/nonexistent", "--out", "/proc/x.png"], r"--out: cannot write '/proc/x.png'"),
])
def test_bad_arguments_name_the_flag(run, argv, message, tmp_path):
    _, summary = run
    if "HEADER_ONLY" in argv:
        (tmp_path / "log.csv").write_text(LOG_HEADER)
        argv = [str(tmp_path) if a == "HEADER_ONLY" else a for a in argv]
    if argv[0] not in ("curves", "sweep"):
        argv = argv + ["--checkpoint", summary["last"], "--device", "cpu"]
    with pytest.raises(SystemExit, match=message):
        plots.main(argv)


def test_read_log_takes_the_epoch_length_from_the_run_and_leaves_out_cut_rows(tmp_path, caplog):
    """A run stopped in its first epoch logged steps 1-3 of 4: the largest step is not the epoch's
    length (the figure read "3 per epoch"); a crash can cut the last row short."""
    import json

    head = LOG_HEADER
    rows = ["0,1,1.6,0.2,0.001,3,0,1.0,", "0,2,1.6,0.2,0.001,6,0,1.1,", "0,3,1.5,0.3,0.001,9,0,2.0,"]
    (tmp_path / "config.json").write_text(json.dumps({"train": {"episodes_per_epoch": 4}}))
    (tmp_path / "log.csv").write_text(head + "\n".join(rows + ["0,4,1.5"]) + "\n")
    d = plots.read_log(tmp_path)
    assert d["steps_per_epoch"] == 4 and d["step_x"].tolist() == [1, 2, 3] and d["epoch_x"].tolist() == []
    assert "1 incomplete rows left out" in caplog.text
    (tmp_path / "log.csv").write_text(head + "0,\n")
    with pytest.raises(ValueError, match="has no complete row"):
        plots.read_log(tmp_path)


def _model_and_split(tmp_path, **model):
    import torch

    from hr2g.data.synthetic import SyntheticActions
    from hr2g.model.model import HR2G

    cfg = tiny_config(tmp_path, **model)
    torch.manual_seed(0)
    m = HR2G(cfg.model, cfg.data.frames)
    return m, SyntheticActions("test", videos_per_class=6, frames=4, image_size=32), cfg


def _view(tmp_path, k_shot=2, q_query=1, **model):
    m, test, cfg = _model_and_split(tmp_path, **model)
    return plots.episode_view(m, test, cfg, episode=0, seed=0, n_way=3, k_shot=k_shot, q_query=q_query)


@needs_mpl
def test_heatmap_panels_follow_the_models_aggregation_and_metric(tmp_path, monkeypatch):
    """mean_before gives one averaged support per class (the panels indexed every K-th of them:
    IndexError); Bi-MHM aligns nothing, so no OTAM path is drawn for it."""
    per_video = _view(tmp_path)
    assert (per_video.support_stride, per_video.support_what) == (2, "first support") and per_video.frame_sim.shape[1] == 6
    averaged = _view(tmp_path, support_aggregation="mean_before")
    assert (averaged.support_stride, averaged.support_what) == (1, "mean of the 2 supports")
    assert averaged.frame_sim.shape[1] == 3
    plots.plot_heatmap(averaged, 2, tmp_path / "mean.png", "mean_before")
    assert _png_size(tmp_path / "mean.png")[0] > 600
    bimhm = _view(tmp_path, metric="bimhm")
    monkeypatch.setattr(plots, "otam_path", lambda d: pytest.fail("an OTAM path drawn for a Bi-MHM model"))
    plots.plot_heatmap(bimhm, 0, tmp_path / "bimhm.png", "bimhm")
    assert bimhm.metric == "bimhm" and _png_size(tmp_path / "bimhm.png")[0] > 600


@needs_mpl
def test_sweep_figure_skips_points_without_episodes_and_refuses_other_tables(tmp_path):
    import json

    table = tmp_path / "sweep.json"
    points = [{"n_way": 5, "k_shot": k, "accuracy": a, "ci95": c} for k, a, c in ((1, 60.0, 1.0), (3, None, None))]
    table.write_text(json.dumps(points))  # as hr2g.sweep writes a point with no episode left
    assert _png_size(plots.main(["sweep", "--table", str(table)]))[0] > 600
    assert plots.main(["sweep", "--table", str(tmp_path)]) == tmp_path / "sweep.png"  # sweep's --out folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^error: --table: .*empty/sweep.json does not exist"):
        plots.main(["sweep", "--table", str(tmp_path / "empty")])
    table.write_text(json.dumps([dict(p, accuracy=None, ci95=None) for p in points]))
    with pytest.raises(SystemExit, match="no grid point of .* has an accuracy"):
        plots.main(["sweep", "--table", str(table)])
    for bad in ({"n_way": 5}, [1, 2], [{"n_way": "5", "k_shot": 1, "accuracy": 1.0, "ci95": 0.1}]):
        table.write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match=r"^error: --table: .* is not a sweep.json"):
            plots.main(["sweep", "--table", str(table)])


@needs_mpl
def test_out_needs_a_picture_suffix_and_a_failed_write_is_one_line(run, tmp_path, monkeypatch, capsys):
    import errno
    import os

    cfg, _ = run
    for name in ("curves.txt", "curves"):
        with pytest.raises(SystemExit, match=rf"^error: --out: .*{name}' needs a picture suffix"):
            plots.main(["curves", "--run", cfg.train.out_dir, "--out", str(tmp_path / name)])
    assert plots.main(["curves", "--run", cfg.train.out_dir, "--out", str(tmp_path / "c.svg")]).read_bytes()[:5] in (b"<?xml", b"<svg ")
    (tmp_path / "c.png").write_bytes(b"old")

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(SystemExit, match=r"^error: --out: cannot write .*c.png' \(No space left on device\)"):
        plots.main(["curves", "--run", cfg.train.out_dir, "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes() == b"old" and [p.name for p in tmp_path.glob(".c.tmp-*")] == []


def test_perplexity_must_be_a_finite_number_above_one(capsys):
    with pytest.raises(SystemExit) as exc:
        plots.parse_args(["tsne", "--checkpoint", "x.pt", "--perplexity", "nan"])
    assert exc.value.code == 2 and "--perplexity expects a number > 1, got nan" in capsys.readouterr().err


def test_conditional_p_reaches_precisions_far_above_one():
    """Points 1e-3 apart need a precision of about 1e5 for perplexity 5: the bisection's upper
    bound must grow geometrically from 1 to get there within its 200 steps."""
    xl = np.arange(30.0)[:, None] * 1e-3
    p = plots._conditional_p((xl - xl.T) ** 2, 5.0)
    assert np.abs(_perplexities(p) - 5.0).max() < 1e-3


def test_tsne_caps_the_perplexity_and_reports_the_kl_of_symmetrised_affinities():
    rng = np.random.default_rng(0)
    x = np.concatenate([c + rng.normal(size=(12, 10)) for c in 3 * rng.normal(size=(3, 10))])
    # 10 points: perplexity 30 is impossible to calibrate and is taken as (10 - 1) / 3 = 3
    capped, asked = plots.tsne(x[:10], perplexity=30, iters=60, seed=0), plots.tsne(x[:10], perplexity=3, iters=60, seed=0)
    assert np.array_equal(capped[0], asked[0]) and capped[1] == asked[1]
    y, kl = plots.tsne(x, perplexity=8, iters=600, seed=1)
    # the documented objective, recomputed from the returned embedding: P = (P(j|i) + P(i|j)) / 2n
    z = x - x.mean(0)
    z = z / np.abs(z).max()
    sq = (z * z).sum(1)
    pc = plots._conditional_p(np.maximum(sq[:, None] + sq[None] - 2 * z @ z.T, 0), 8.0)
    off = ~np.eye(len(x), dtype=bool)
    p = np.maximum((pc + pc.T) / (2 * len(x)), 1e-12)[off]
    sy = (y * y).sum(1)
    num = (1 / (1 + np.maximum(sy[:, None] + sy[None] - 2 * y @ y.T, 0)))[off]
    q = np.maximum(num / num.sum(), 1e-12)
    # the last step moves y after KL's Q was taken: 1e-6 apart here, against 0.3% for P(j|i)/n
    assert kl == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-4)
    with pytest.raises(ValueError, match="needs at least 4 points, got 3"):
        plots.tsne(x[:3])


def test_read_log_keeps_each_column_in_its_array(tmp_path):
    head = LOG_HEADER
    body = ["0,1,1.6,0.2,0.003,3,0,1.0,", "0,2,1.5,0.25,0.002,6,0,1.1,", "1,2,1.4,0.3,0.001,6,0,1.2,0.35"]
    (tmp_path / "log.csv").write_text(head + "\n".join(body) + "\n")
    (tmp_path / "config.json").write_text('{"train": {"episodes_per_epoch": 2}}')
    d = plots.read_log(tmp_path)
    assert d["step_loss"].tolist() == [1.6, 1.5] and d["step_acc"].tolist() == [0.2, 0.25]
    assert d["step_lr"].tolist() == [0.003, 0.002]
    assert (d["epoch_loss"].tolist(), d["epoch_acc"].tolist(), d["epoch_lr"].tolist()) == ([1.4], [0.3], [0.001])
    assert d["val_acc"].tolist() == [0.35]


def test_episode_view_labels_queries_in_the_samplers_order(tmp_path):
    from hr2g.data.episodes import EpisodeSampler

    view = _view(tmp_path, k_shot=1, q_query=2)
    _, test, _ = _model_and_split(tmp_path)
    spec = EpisodeSampler.for_dataset(test, 3, 1, 2, split="evaluation").fixed_at(0, 0)
    local = {int(c): k for k, c in enumerate(spec.classes)}
    assert view.query_labels.tolist() == [local[int(test.labels[i])] for i in spec.query]
    assert view.support_what == "support" and view.probs.shape == (6, 3)


@needs_mpl
def test_heatmap_panels_show_each_classs_first_support_and_align_its_distance(tmp_path, monkeypatch):
    view = _view(tmp_path)  # 3-way 2-shot: support rows 0, 2, 4 are the classes' first supports
    seen = []
    real = plots.otam_path
    monkeypatch.setattr(plots, "otam_path", lambda d: seen.append(d.copy()) or real(d))
    plots.plot_heatmap(view, 1, tmp_path / "h.png", "per video")
    assert len(seen) == 3
    for c, d in enumerate(seen):  # the path is the cheapest under the distance 1 - cosine similarity
        np.testing.assert_array_equal(d, 1.0 - view.frame_sim[1, 2 * c])


def test_sweep_rows_and_picture_suffixes_are_checked_exactly():
    with pytest.raises(ValueError, match="not a grid point"):
        plots.sweep_rows([{"n_way": 5, "k_shot": 1, "accuracy": True, "ci95": 0.1}])  # a bool is not a number
    assert plots.sweep_rows([{"n_way": 5, "k_shot": 1, "accuracy": 61, "ci95": None}])[0]["accuracy"] == 61
    if HAVE_MPL:
        assert plots.figure_path("--out", "fig.PNG").name == "fig.PNG"  # the suffix's case does not matter


@pytest.mark.parametrize("argv, message", [
    (["heatmap", "--query", "-1"], "--query expects an integer >= 0, got -1"),
    (["heatmap", "--ways", "1"], "--ways expects an integer >= 2, got 1"),
    (["tsne", "--perplexity", "1"], "--perplexity expects a number > 1, got 1.0"),
    (["tsne", "--classes", "0"], "--classes expects an integer >= 1, got 0"),
])
def test_option_ranges_are_checked_at_their_boundaries(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        plots.parse_args(argv + ["--checkpoint", "x.pt"])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    ok = {"-1": "0", "1": "2" if "--ways" in argv else "1.5", "0": "1"}
    plots.parse_args([ok.get(a, a) for a in argv] + ["--checkpoint", "x.pt"])  # the boundary itself is accepted


def test_video_features_average_the_chosen_stage_and_leave_out_unreadable_videos(tmp_path, monkeypatch, caplog):
    import torch

    from hr2g import evaluation

    m, test, cfg = _model_and_split(tmp_path)
    real, asked = evaluation.encode_dataset, []

    def one_unreadable(model, dataset, ids, device, amp):
        asked.append(list(ids))
        rows, feats, failed = real(model, dataset, ids[1:], device, amp)  # the first video fails to decode
        return rows, feats, {dataset.key(ids[0]): "corrupt", **failed}

    monkeypatch.setattr(evaluation, "encode_dataset", one_unreadable)
    enc, labels, failed = plots.video_features(m, test, cfg, [0, 2], 3, "encoder", seed=0)
    ids = asked[0]
    assert len(ids) == 6 and len(failed) == 1 and enc.shape == (5, m.dim)
    assert labels.tolist() == [int(test.labels[i]) for i in ids[1:]] and sorted(set(labels.tolist())) == [0, 2]
    _, feats, _ = real(m, test, ids[1:], torch.device("cpu"), False)  # [5, T, C]
    np.testing.assert_allclose(enc, feats.mean(1).numpy(), rtol=1e-5, atol=1e-6)  # mean over frames
    temporal, _, _ = plots.video_features(m, test, cfg, [0, 2], 3, "temporal", seed=0)
    with torch.no_grad():
        want = m.temporal(feats).mean(1).numpy()
    np.testing.assert_allclose(temporal, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(temporal, enc)


@needs_mpl
def test_tsne_defaults_to_every_class_of_a_small_split_and_refuses_too_many_points(run, tmp_path, monkeypatch):
    from hr2g import inference
    from hr2g.data.synthetic import SyntheticActions

    _, summary = run

    def five_classes(cfg, args, device=None):  # a custom test split with fewer classes than the default 10
        ds = SyntheticActions("test", videos_per_class=4, frames=cfg.data.frames, image_size=cfg.data.image_size)
        ds._classes, ds.class_names, ds.labels = ds._classes[:5], ds.class_names[:5], ds.labels[:20]
        return ds

    monkeypatch.setattr(inference, "dataset_from_args", five_classes)
    base = ["tsne", "--checkpoint", summary["last"], "--device", "cpu", "--iters", "20"]
    assert _png_size(plots.main(base + ["--per-class", "2", "--out", str(tmp_path / "t.png")]))[0] > 400
    monkeypatch.setattr(plots, "MAX_TSNE_POINTS", 9)
    with pytest.raises(SystemExit, match=r"--classes x --per-class gives 10 videos; exact t-SNE takes at most 9: lower"):
        plots.main(base + ["--per-class", "2"])
