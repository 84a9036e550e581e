"""The ablation runner (``python -m hr2g.ablate``): a real Table-4 study on the tiny config (CPU)."""
import csv
import json

import pytest

from hr2g import ablate
from hr2g.configs import get_preset

TINY = ["--preset", "tiny", "--device", "cpu", "--no-progress", "--episodes", "4",
        "--set", "data.frames=4", "--set", "data.synthetic_videos_per_class=6", "--set", "data.q_query=2",
        "--set", "train.epochs=1", "--set", "train.episodes_per_epoch=2", "--set", "train.val_episodes=0",
        "--set", "train.milestones=1"]


@pytest.fixture(scope="module")
def table4(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate")
    rows = ablate.main(["--study", "table4", "--out", str(out)] + TINY)
    return out, rows


def _count_trainings(monkeypatch) -> list:
    import hr2g.training

    calls, real = [], hr2g.training.train
    monkeypatch.setattr(hr2g.training, "train", lambda cfg, **kw: (calls.append(cfg.train.out_dir), real(cfg, **kw))[1])
    return calls


def test_table4_trains_and_evaluates_every_variant_into_one_table(table4):
    out, rows = table4
    table = list(csv.DictReader(open(out / "results.csv")))
    assert [r["variant"] for r in table] == ["baseline", "isc", "ikt", "isc+ikt"] == [r["variant"] for r in rows]
    for r in table:
        assert r["study"] == "table4" and int(r["episodes"]) == 4 and int(r["n_way"]) == 5
        assert 0.0 <= float(r["accuracy"]) <= 100.0 and float(r["ci95"]) >= 0.0
        assert (out / r["checkpoint"]).is_file() and not r["reused_from"]
    # the overrides reached the trained models: switches in each run's config, and the modules'
    # parameters add up (ISC and IKT are independent blocks on top of the baseline)
    for r in table:
        stored = json.loads((out / "table4" / r["variant"] / "run" / "config.json").read_text())["model"]
        assert (stored["isc"], stored["ikt"]) == {"baseline": (False, False), "isc": (True, False), "ikt": (False, True),
                                                  "isc+ikt": (True, True)}[r["variant"]]
    p = {r["variant"]: int(r["trainable_params"]) for r in table}
    assert p["baseline"] < p["isc"] and p["baseline"] < p["ikt"]
    assert p["isc+ikt"] - p["baseline"] == (p["isc"] - p["baseline"]) + (p["ikt"] - p["baseline"])
    md = (out / "results.md").read_text()
    assert "Table 4: components" in md and md.count("| isc") == 2 and "| baseline |" in md


def test_rerunning_skips_finished_variants_and_identical_configs_are_shared(table4, monkeypatch):
    out, rows = table4
    calls = _count_trainings(monkeypatch)
    again = ablate.main(["--study", "table4", "--out", str(out)] + TINY)
    assert calls == [] and again == rows
    # Table 10's default order is Table 4's full model: reused; only ikt-isc trains
    t10 = ablate.main(["--study", "table10", "--out", str(out)] + TINY)
    assert [r["variant"] for r in t10] == ["isc-ikt", "ikt-isc"] and len(calls) == 1 and "ikt-isc" in calls[0]
    assert t10[0]["reused_from"] == "table4/isc+ikt" and t10[0]["accuracy"] == rows[3]["accuracy"]
    assert json.loads((out / "table10" / "ikt-isc" / "run" / "config.json").read_text())["model"]["order"] == "ikt-isc"
    assert [r["study"] for r in csv.DictReader(open(out / "results.csv"))] == ["table4"] * 4 + ["table10"] * 2


def test_settings_that_do_not_change_results_do_not_stop_a_finished_study(table4, tmp_path, monkeypatch):
    """--set data.num_workers=1 (a run is bit-identical at any worker count) or a new log cadence
    stopped a finished study as "a different configuration"; result.json files written before the
    fingerprint left them out (holding data.num_workers and train.out_dir) still count."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(table4[0], out)
    older = out / "table4" / "baseline" / "result.json"
    doc = json.loads(older.read_text())
    doc["config"]["data"]["num_workers"], doc["config"]["train"]["out_dir"] = 0, "somewhere/run"
    older.write_text(json.dumps(doc))
    calls = _count_trainings(monkeypatch)
    rows = ablate.main(["--study", "table4", "--out", str(out), "--set", "data.num_workers=1",
                        "--set", "train.log_every=2", "--set", "train.checkpoint_every=7"] + TINY)
    assert calls == [] and rows == table4[1]


def test_a_changed_configuration_stops_instead_of_mixing_results(table4):
    out, _ = table4
    with pytest.raises(SystemExit, match=r"different configuration \(train.lr: 0.001 -> 0.002\).*--rerun"):
        ablate.main(["--study", "table4", "--out", str(out), "--set", "train.lr=0.002"] + TINY)


@pytest.mark.parametrize("modules", ["on", "off"])
def test_every_study_variant_is_a_valid_configuration(modules):
    base = get_preset("tiny")
    if modules == "off":  # a run-wide --set model.isc=false --set model.ikt=false: each study turns on what it varies
        base.model.isc = base.model.ikt = False
    for study in ablate.STUDIES.values():
        names = [v.name for v in study.variants]
        assert len(set(names)) == len(names), study.name
        configs = [json.dumps(ablate.variant_config(base, v, study.needs).to_dict(), sort_keys=True) for v in study.variants]
        assert len(set(configs)) == len(configs), f"{study.name}: two variants train the same model"
        for v in study.variants:  # the module whose setting a variant changes is on (else the change is moot)
            cfg = ablate.variant_config(base, v, study.needs).model
            for key in (item.split("=")[0] for item in v.overrides):
                assert cfg.isc or not key.startswith(("model.isc_", "model.order")), f"{study.name}/{v.name}: ISC off"
                assert cfg.ikt or not key.startswith(("model.ikt_", "model.order")), f"{study.name}/{v.name}: IKT off"
    assert set(ablate.STUDIES) == {"table4", "table5", "table6", "table7", "table8", "table9", "table10", "table12"}


def test_unknown_study_names_the_flag_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        ablate.main(["--study", "table11"])
    assert exc.value.code == 2 and "--study: unknown ['table11']; choose from table4" in capsys.readouterr().err


def test_list_prints_the_variants(capsys):
    assert ablate.main(["--study", "table9", "--list"]) == []
    out = capsys.readouterr().out
    assert "mu=0.999" in out and "model.ikt_bank_size=100" in out


def test_a_changed_evaluation_alone_evaluates_again_without_training(table4, tmp_path, monkeypatch):
    """--episodes 6 after a study evaluated on 4 used to stop ("different configuration"), and
    --rerun then threw the trained runs away."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(table4[0], out)
    calls = _count_trainings(monkeypatch)
    more = [a if a != "4" else "6" for a in TINY]  # --episodes 6
    rows = ablate.main(["--study", "table4", "--out", str(out)] + more)
    assert calls == [] and [r["episodes"] for r in rows] == [6] * 4
    assert [r["checkpoint"] for r in rows] == [r["checkpoint"] for r in table4[1]]
    assert [r["train_seconds"] for r in rows] == [r["train_seconds"] for r in table4[1]]  # the training's row kept
    assert ablate.main(["--study", "table4", "--out", str(out)] + more) == rows and calls == []
    with pytest.raises(SystemExit, match=r"different configuration \(train.lr"):  # training settings still stop it
        ablate.main(["--study", "table4", "--out", str(out), "--set", "train.lr=0.002"] + more)


def test_an_interrupted_variant_with_a_relative_data_root_resumes(tmp_path, monkeypatch):
    """train() stores data paths absolute in config.json; ablate compared that with the variant's
    relative --data-root and refused to resume ("a different configuration ... pass --rerun")."""
    import hr2g.training
    from hr2g.stopping import TrainingStopped

    def interrupted(cfg, **kw):  # what train() does before its first step, then a SIGINT
        hr2g.training.absolute_data_paths(cfg)
        run = tmp_path / "out" / "table4" / "baseline" / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(cfg.dumps())
        raise TrainingStopped("SIGINT", str(run / "last.pt"), 0, 3)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hr2g.training, "train", interrupted)
    base = get_preset("tiny")
    base.data.dataset, base.data.data_root = "hmdb51", "data/hmdb51"  # relative to the working folder
    study = ablate.STUDIES["table4"]
    for _ in range(2):  # the second call resumes (here: is interrupted again) instead of refusing
        with pytest.raises(TrainingStopped):
            ablate.run_variant(base, study, study.variants[0], tmp_path / "out", 4, False, set(), False)


def test_ctrl_c_stops_with_one_line_and_the_signal_exit_code(tmp_path, monkeypatch, capsys):
    import hr2g.training
    from hr2g.stopping import TrainingStopped

    def stopped(cfg, **kw):
        raise TrainingStopped("SIGTERM", f"{cfg.train.out_dir}/last.pt", 0, 5)

    monkeypatch.setattr(hr2g.training, "train", stopped)
    with pytest.raises(SystemExit) as exc:
        ablate.main(["--study", "table4", "--out", str(tmp_path)] + TINY)
    err = capsys.readouterr().err
    assert exc.value.code == 143 and "Traceback" not in err
    assert "hr2g.ablate: table4/baseline: SIGTERM: stopped after step 5 of epoch 1" in err
    assert "the same command continues it" in err and (tmp_path / "results.csv").exists()


def test_what_train_reports_in_one_line_ablate_does_too(tmp_path):
    """A data root that is not there came out of ablate as a FileNotFoundError traceback; hr2g.train
    says it in one line."""
    with pytest.raises(SystemExit, match=r"^error: table10/[\w-]+: data root .*nonexistent does not exist or is not a folder"):
        ablate.main(["--study", "table10", "--out", str(tmp_path / "abl"), "--dataset", "hmdb51", "--data-root",
                     str(tmp_path / "nonexistent")] + TINY)


def test_a_row_reports_what_hr2g_evaluate_says_of_its_checkpoint(table4):
    from hr2g import evaluate

    out, rows = table4
    row = rows[3]
    got = evaluate.main(["--checkpoint", str(out / row["checkpoint"]), "--device", "cpu", "--no-progress",
                         "--shots", "1", "--episodes", str(row["episodes"])])
    assert (row["accuracy"], row["ci95"], row["episodes"]) == (got[0]["accuracy"], got[0]["ci95"], got[0]["episodes"])
    assert 0.0 < row["ci95"] < row["accuracy"] < 100.0  # in percent, not fractions


def test_rerun_retrains_and_reuses_only_what_this_run_trained(table4, tmp_path, monkeypatch):
    """--rerun must not skip a result written before it, nor reuse one (table10's isc-ikt equals
    table4's isc+ikt, whose stale result is still on disk); a result this run trained is reused."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(table4[0], out)
    ablate.main(["--study", "table10", "--out", str(out)] + TINY)  # table10 results on disk too
    calls = _count_trainings(monkeypatch)
    t10 = ablate.main(["--study", "table10", "--out", str(out), "--rerun"] + TINY)
    assert len(calls) == 2 and [r["reused_from"] for r in t10] == ["", ""]
    calls.clear()
    both = ablate.main(["--study", "table4", "table10", "--out", str(out), "--rerun"] + TINY)
    assert len(calls) == 5 and both[4]["variant"] == "isc-ikt" and both[4]["reused_from"] == "table4/isc+ikt"


def test_with_validation_a_row_takes_the_best_checkpoint_and_its_accuracy(tmp_path):
    out = tmp_path / "val"
    val = [a if a != "train.val_episodes=0" else "train.val_episodes=2" for a in TINY]
    val += ["--set", "train.epochs=2"]
    rows = ablate.main(["--study", "table10", "--out", str(out)] + val)
    for r in rows:
        run = out / "table10" / r["variant"] / "run"
        assert r["checkpoint"] == str((run / "best.pt").relative_to(out))
        vals = [float(x["val_acc"]) for x in csv.DictReader(open(run / "log.csv")) if x["val_acc"] not in ("", "nan")]
        assert len(vals) == 2 and r["best_val"] == round(100 * max(vals), 2) and 0 < r["best_val"] <= 100
