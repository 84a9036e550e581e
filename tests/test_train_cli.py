"""``python -m hr2g.train`` / ``hr2g.evaluate`` as a user meets them: what --resume continues, run
folders that are not clobbered, and mistakes reported before any work is done."""
import csv
import json
import os
import signal

import pytest
import torch

from hr2g import checkpoint
from hr2g import evaluate as evaluate_cli
from hr2g import train as train_cli

TINY = ["--no-progress", "--episodes-per-epoch", "2", "--set", "data.frames=4", "--set", "data.synthetic_videos_per_class=6",
        "--set", "train.val_episodes=2"]


def _config(run) -> dict:
    return json.loads((run / "config.json").read_text())


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A finished 1-epoch fused run in tmp_path/run; the working directory is tmp_path, where the
    preset's default folder (runs/tiny) must never appear."""
    monkeypatch.chdir(tmp_path)
    train_cli.main(TINY + ["--fused", "--epochs", "1", "--out", "run"])
    return tmp_path / "run"


def test_resume_from_a_path_continues_in_that_folder_with_its_settings(run, tmp_path):
    # the command a stopped run prints: no --out, no --fused
    summary = train_cli.main(["--no-progress", "--resume", str(run / "last.pt"), "--epochs", "2"])
    assert summary["last"] == str(run / "last.pt") and not (tmp_path / "runs").exists()
    cfg = _config(run)
    assert cfg["model"]["backend"] == "auto" and cfg["train"]["epochs"] == 2 and cfg["data"]["frames"] == 4
    assert checkpoint.load(run / "last.pt")["epoch"] == 2


def test_resume_into_another_folder_carries_the_log_and_never_replaces_a_run_there(run, tmp_path):
    """--resume A/last.pt --out B replaced B's checkpoints without --overwrite, and B's log.csv got
    A's rows after its own; into an empty B the log started at the checkpoint."""
    a_log, a_last = (run / "log.csv").read_text(), (run / "last.pt").read_bytes()
    train_cli.main(["--no-progress", "--resume", str(run / "last.pt"), "--out", str(tmp_path / "copy"), "--epochs", "2"])
    rows = (tmp_path / "copy" / "log.csv").read_text().splitlines()
    assert rows[: len(a_log.splitlines())] == a_log.splitlines() and len(rows) > len(a_log.splitlines())
    assert checkpoint.load(tmp_path / "copy" / "last.pt")["epoch"] == 2
    assert (run / "log.csv").read_text() == a_log and (run / "last.pt").read_bytes() == a_last  # A untouched
    b_last = (tmp_path / "copy" / "last.pt").read_bytes()
    with pytest.raises(SystemExit, match=r"^error: --resume .*run/last.pt --out .*copy: .*copy already holds another "
                                         r"run \(.*copy/last.pt\): continue that one with --resume"):
        train_cli.main(["--no-progress", "--resume", str(run / "last.pt"), "--out", str(tmp_path / "copy"), "--epochs", "3"])
    assert (tmp_path / "copy" / "last.pt").read_bytes() == b_last


def test_a_config_or_preset_given_with_resume_is_said_to_be_not_applied(run, tmp_path, caplog):
    """--resume auto --config e5.json (epochs: 5) said "nothing to train" and nothing else."""
    cfg = _config(run)
    cfg["train"]["epochs"] = 5
    (tmp_path / "e5.json").write_text(json.dumps(cfg))
    train_cli.main(["--no-progress", "--resume", "auto", "--out", str(run), "--config", str(tmp_path / "e5.json")])
    assert "--config " in caplog.text and "not applied, a resumed run keeps its checkpoint's settings" in caplog.text
    assert "train.epochs: 5 -> 1" in caplog.text and _config(run)["train"]["epochs"] == 1
    caplog.clear()  # the same settings again (start-or-continue in a job script): nothing to say
    cfg["train"]["epochs"] = 1
    (tmp_path / "same.json").write_text(json.dumps(cfg))
    train_cli.main(["--no-progress", "--resume", "auto", "--out", str(run), "--config", str(tmp_path / "same.json")])
    assert "not applied" not in caplog.text
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"^error: --config .*list.json: expected a JSON object of sections .*got list$"):
        train_cli.main(["--no-progress", "--config", str(tmp_path / "list.json"), "--out", str(tmp_path / "new")])


def test_resume_auto_keeps_the_checkpoint_settings_and_applies_the_flags_given(run):
    train_cli.main(["--no-progress", "--out", str(run), "--resume", "auto", "--epochs", "2", "--set", "train.lr=5e-4"])
    cfg = _config(run)
    assert cfg["model"]["backend"] == "auto" and cfg["data"]["frames"] == 4  # from the checkpoint
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["lr"] == 5e-4  # from this command line
    assert cfg["train"]["episodes_per_epoch"] == 2


def test_optimizer_settings_given_with_resume_are_applied(run):
    """--resume --set train.lr=... was logged as a change and written to config.json, while the
    optimizer and scheduler states loaded from the checkpoint kept the old lr, decay and milestones."""
    train_cli.main(["--no-progress", "--out", str(run), "--resume", "auto", "--epochs", "3", "--set", "train.lr=0.05",
                    "--set", "train.weight_decay=0.5", "--set", "train.milestones=2", "--set", "train.gamma=0.5"])
    with open(run / "log.csv") as f:
        lrs = [(int(r["epoch"]), float(r["lr"])) for r in csv.DictReader(f) if r["lr"]]
    assert sorted(set(lrs)) == [(1, 1e-3), (2, 0.05), (3, 0.025)], lrs  # epoch 1 ran before (the tiny preset's lr); 3 is past milestone 2
    state = checkpoint.load(run / "last.pt")
    group, = state["optimizer"]["param_groups"]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (0.025, 0.05, 0.5)
    assert dict(state["scheduler"]["milestones"]) == {2: 1} and state["scheduler"]["gamma"] == 0.5


def test_resume_at_the_end_trains_nothing_and_says_so(run, caplog):
    summary = train_cli.main(["--no-progress", "--resume", str(run / "last.pt")])
    assert summary["val_accuracy"] is None and json.dumps(summary, allow_nan=False)
    assert "nothing to train (pass --epochs N to train longer)" in caplog.text


def test_a_new_run_does_not_clobber_an_existing_one(run):
    log_before = (run / "log.csv").read_text()
    with pytest.raises(SystemExit, match=r"already holds a run .*--resume auto.*--overwrite"):
        train_cli.main(TINY + ["--epochs", "1", "--out", str(run)])
    assert (run / "log.csv").read_text() == log_before and _config(run)["model"]["backend"] == "auto"
    train_cli.main(TINY + ["--epochs", "1", "--out", str(run), "--overwrite"])
    assert _config(run)["model"]["backend"] == "torch"


@pytest.mark.parametrize("argv, message", [
    (["--resume", "nope.pt"], r"--resume: checkpoint 'nope.pt' does not exist"),
    (["--out", "afile"], r"--out: 'afile' is a file, expected a folder"),
    (["--set", "train.lr=nan"], r"train.lr=nan must be finite and > 0"),
    (["--set", "model.ikt_momentum=nan"], r"model.ikt_momentum=nan is outside the allowed range"),
    (["--data-root", "DATA"], r"--data-root DATA needs --dataset"),
    (["--config", "nope.json"], r"^error: --config nope.json: No such file or directory"),
    (["--config", "afile"], r"^error: --config afile: not valid JSON"),
    (["--config", "typo.json"], r"^error: --config typo.json: .*model.backbon"),
    (["--dataset", "hmdb51", "--data-root", "DATA"], r"^error: data root /.*/DATA does not exist or is not a folder"),
    (["--set", "train.device=gpu"], r"train.device='gpu' is not a device; choose auto .* cuda:N"),
    (["--split-dir", "lists"], r"^error: --split-dir lists needs --dataset"),
    (["--set", "model.pretrained=openai"], r"model.pretrained='openai': the tiny backbone .* --set model.pretrained=none"),
])
def test_train_mistakes_stop_before_any_work(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "typo.json").write_text(json.dumps({"model": {"backbon": "tiny"}}))
    with pytest.raises(SystemExit, match=message):
        train_cli.main(TINY + argv)


def test_resume_and_overwrite_together_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--resume", "auto", "--overwrite", "--out", "run"])
    assert exc.value.code == 2 and "--resume continues a run and --overwrite starts afresh" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_split_list_that_breaks_its_format_is_one_error_line_naming_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train_few_shot.txt").write_text("train0//videos/brush_hair/a.avi\ngarbage\n")
    with pytest.raises(SystemExit, match=r"^error: .*train_few_shot.txt:2: 'garbage' .*\(check --data-root / --split-dir\)$"):
        train_cli.main(TINY + ["--dataset", "hmdb51", "--data-root", "data", "--split-dir", "lists", "--out", "run"])


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_second_ctrl_c_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys, checkpointed):
    """The first Ctrl-C finishes the step and saves (tests/test_stop_resume.py); a second one
    interrupts at once: exit 130 with what was lost and the command to continue."""
    from hr2g import training

    monkeypatch.chdir(tmp_path)
    if checkpointed:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "last.pt").write_bytes(b"")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--out", "run"])
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "stopped at once (Ctrl-C twice): the steps since the last checkpoint are lost" in err
    assert ("--resume run/last.pt" in err) == checkpointed and ("no checkpoint was written yet" in err) != checkpointed


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_setup_ends_the_run_with_one_line_and_leaves_the_folder_usable(tmp_path, monkeypatch, capsys,
                                                                                      sig, code):
    """A SIGTERM before the first step (building the datasets: minutes on a benchmark) killed the
    process without a word; now it is one line, the shell's exit status, and the run folder's lock
    is released so the same command can start again."""
    from hr2g import training

    monkeypatch.chdir(tmp_path)
    real = training.build_dataset

    def signalled(cfg, split, device):
        if split == "val":
            os.kill(os.getpid(), sig)  # delivered now, in the main thread
        return real(cfg, split, device)

    monkeypatch.setattr(training, "build_dataset", signalled)
    before = signal.getsignal(sig)
    with pytest.raises(SystemExit) as exc:
        train_cli.main(TINY + ["--epochs", "1", "--out", "run"])
    err = capsys.readouterr().err
    name = signal.Signals(sig).name
    assert exc.value.code == code and f"hr2g.train: {name} received outside the training steps" in err
    assert "no checkpoint was written yet" in err and "Traceback" not in err
    assert signal.getsignal(sig) is before  # the CLI's handler is gone
    monkeypatch.setattr(training, "build_dataset", real)
    assert train_cli.main(TINY + ["--epochs", "1", "--out", "run"])["test_accuracy"] is not None


def test_overwrite_removes_the_previous_runs_files(run):
    """--overwrite used to leave the old best.pt (and its summary path), unreadable_videos.json and
    TensorBoard events in place, for the new run's evaluation to pick up."""
    (run / "unreadable_videos.json").write_text("{}")
    (run / "tb").mkdir(exist_ok=True)
    (run / "tb" / "events.out.tfevents.1.old").write_text("x")
    assert (run / "best.pt").exists()
    summary = train_cli.main(TINY + ["--epochs", "1", "--out", str(run), "--overwrite", "--set", "train.val_episodes=0"])
    assert summary["best"] is None and not (run / "best.pt").exists()
    assert not (run / "unreadable_videos.json").exists() and not list((run / "tb").iterdir())
    assert len((run / "log.csv").read_text().splitlines()) == 2  # the header and this run's one epoch row


def test_a_refused_overwrite_leaves_the_old_run_in_place(run):
    """--overwrite deleted the old run's checkpoints and log before the new request was checked:
    one with an episode shape the data cannot fill lost the old run and trained nothing."""
    before = {f: (run / f).read_bytes() for f in ("last.pt", "best.pt", "log.csv", "config.json")}
    with pytest.raises(SystemExit, match=r"^error: .*20-way"):
        train_cli.main(TINY + ["--epochs", "1", "--out", str(run), "--overwrite", "--ways", "20"])
    assert {f: (run / f).read_bytes() for f in before} == before


def test_evaluate_refuses_a_backend_that_cannot_run_before_encoding(run, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit, match=r"^error: --backend triton: model.backend=triton cannot run otam_distance on cpu"):
        evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--backend", "triton", "--device", "cpu"])


def test_clip_weights_that_cannot_be_loaded_are_a_setup_error(monkeypatch):
    """Offline, open_clip retries and raises; the train command prints the hint as one error line."""
    import open_clip

    from hr2g.config import ModelConfig
    from hr2g.errors import SetupError
    from hr2g.model import encoder

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(SetupError, match=r"could not load CLIP ViT-B-16 weights 'openai' .*--set model.pretrained=") as err:
        encoder._create_clip(ModelConfig(backbone="ViT-B-16", pretrained="openai"))
    assert isinstance(err.value, RuntimeError)


def test_episodes_per_step_not_divisible_by_the_world_size_stops_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # as under torchrun --nproc_per_node 4
    with pytest.raises(SystemExit, match=r"episodes_per_step=1 must be divisible by the world size 4.*episodes_per_step=4"):
        train_cli.main(TINY + ["--out", str(tmp_path / "r")])


def test_an_impossible_evaluation_shape_fails_before_training(tmp_path):
    # the synthetic val split has 16 classes: 17-way validation can never run
    with pytest.raises(SystemExit, match=r"^error: val: 17-way 1-shot .* n_way <= 16"):
        train_cli.main(TINY + ["--ways", "17", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r" / "last.pt").exists()


def test_an_explicit_backend_that_cannot_run_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors and no interpreter: Triton cannot run
    with pytest.raises(SystemExit, match=r"^error: model.backend=triton cannot run otam_distance on cpu: triton refused"):
        train_cli.main(TINY + ["--backend", "triton", "--device", "cpu", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r" / "config.json").exists()


def test_a_model_wide_backend_applies_where_an_op_has_it(tmp_path):
    # --backend ext: the bank ops on the extension, OTAM and attention (no ext kernels) on auto
    from hr2g import _dispatch

    assert _dispatch.model_backend("bank_retrieve", "ext") == "ext"
    assert _dispatch.model_backend("otam_distance", "ext") == "auto"
    assert _dispatch.model_backend("bank_update_", "cuda") == "cuda"
    assert _dispatch.model_backend("sample_attention", "triton") == "triton"
    assert _dispatch.model_backend("bank_retrieve", "torch") == "torch"
    pytest.importorskip("hr2g._C", reason="the extension is not built")
    summary = train_cli.main(TINY + ["--backend", "ext", "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert summary["bank_digest"]  # trained, the bank on the extension


@pytest.mark.parametrize("argv, message", [
    (["--episodes", "0"], r"--episodes: eval.episodes=0 is outside the allowed range \[1, inf\]"),
    (["--batch-episodes", "-1"], r"--batch-episodes: eval.batch_episodes=-1 is outside"),
    (["--queries", "0"], r"--queries: data.test_q_query=0 is outside"),
    (["--ways", "1"], r"--ways: data.n_way=1 is outside"),
    (["--shots", "0", "1"], r"--shots expects integers >= 1, got \[0\]"),
    (["--json", "afile/x.json"], r"--json: cannot write 'afile/x.json'"),
    # the checkpoint itself, by another spelling: it was replaced with the JSON rows
    (["--json", "run/../run/last.pt"], r"^error: --json 'run/../run/last.pt' is the --checkpoint file: it would be overwritten"),
])
def test_evaluate_mistakes_stop_before_any_work(run, tmp_path, argv, message):
    (tmp_path / "afile").write_text("x")
    before = (run / "last.pt").read_bytes()
    with pytest.raises(SystemExit, match=message):
        evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--no-progress"] + argv)
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("command", ["evaluate", "sweep", "plots heatmap", "plots tsne", "predict"])
def test_a_negative_seed_is_an_argument_error_naming_the_flag(command, capsys):
    """numpy takes seeds >= 0: --seed -1 failed deep inside ("expected non-negative integer", no
    flag named), or as a traceback after every clip was encoded (predict)."""
    import importlib

    name, *sub = command.split()
    module = importlib.import_module(f"hr2g.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(sub + ["--checkpoint", "x.pt", "--support", "s", "--query", "q.mp4", "--seed", "-1"]
                    if name == "predict" else sub + ["--checkpoint", "x.pt", "--seed", "-1"])
    assert exc.value.code == 2 and "argument --seed: -1: a seed is an integer >= 0" in capsys.readouterr().err


def test_missing_clip_weights_name_the_file_to_pass():
    from hr2g.config import ModelConfig
    from hr2g.model.encoder import CLIPEncoder

    with pytest.raises(RuntimeError, match=r"--set model.pretrained=/path/to/open_clip_RN50\.pt"):
        CLIPEncoder(ModelConfig(backbone="RN50", pretrained="no_such_tag"))


def test_resume_with_settings_that_change_the_model_is_refused_and_leaves_the_run_as_it_was(run):
    """A traceback, and config.json rewritten to settings last.pt does not hold."""
    before = (run / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"^error: checkpoint .*last.pt'?: its weights do not fit the model these "
                                         r"settings build: \d+ unexpected \(ikt\..*; start a new run"):
        train_cli.main(["--no-progress", "--resume", "auto", "--out", str(run), "--epochs", "2", "--set", "model.ikt=false"])
    with pytest.raises(SystemExit, match=r"of another shape \(.*down.weight \(16, 64\) vs \(3, 64\)"):
        train_cli.main(["--no-progress", "--resume", "auto", "--out", str(run), "--set", "model.adapter_dim=3"])
    # another epoch length moves the checkpoint's (epoch, step) and log.csv's rows: refused too
    log_before = (run / "log.csv").read_text()
    with pytest.raises(SystemExit, match=r"^error: --resume .*last.pt: train.episodes_per_epoch=3 differs from the "
                                         r"checkpoint's 2, .*start a new run"):
        train_cli.main(["--no-progress", "--resume", "auto", "--out", str(run), "--epochs", "3", "--episodes-per-epoch", "3"])
    assert (run / "config.json").read_text() == before and (run / "log.csv").read_text() == log_before


def test_resume_from_a_damaged_checkpoint_is_one_error_line(run):
    """Its CRCs are checked by the full load only, after the quick look at its config: the
    ValueError came out of train() as a traceback (evaluate said it in one line)."""
    import zipfile

    data = bytearray((run / "last.pt").read_bytes())
    with zipfile.ZipFile(run / "last.pt") as archive:
        entry = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
    at = entry.header_offset  # local header: 30 bytes, then its name and extra field
    start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    data[start + 100:start + 120] = bytes(255 - b for b in data[start + 100:start + 120])
    (run / "last.pt").write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"^error: --resume: checkpoint .*last.pt' is corrupt: .* fails its CRC check "
                                         r".*\(its best.pt or last.pt\)$"):
        train_cli.main(["--no-progress", "--resume", "auto", "--out", str(run), "--epochs", "2"])


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["config"]["model"].update(bogus_field=1), r"its config does not load in this version of hr2g \(.*bogus_field"),
    (lambda c: c["model"].pop("ikt.bank_filled"), r"its weights do not fit .*: 1 missing \(ikt.bank_filled\)"),
    (lambda c: c["config"]["model"].update(adapter_dim=5), r"its weights do not fit .*of another shape"),
])
def test_a_checkpoint_this_version_cannot_rebuild_is_one_error_line(run, tmp_path, edit, message):
    ckpt = checkpoint.load(run / "last.pt")
    edit(ckpt)
    checkpoint.save_atomic(ckpt, tmp_path / "edited.pt")
    with pytest.raises(SystemExit, match=r"^error: --checkpoint: checkpoint .*edited.pt'?: " + message):
        evaluate_cli.main(["--checkpoint", str(tmp_path / "edited.pt"), "--episodes", "2", "--no-progress"])
    if "bogus" in message:
        with pytest.raises(SystemExit, match=r"^error: --resume: checkpoint .*" + message):
            train_cli.main(["--no-progress", "--resume", str(tmp_path / "edited.pt")])


def test_a_weights_only_checkpoint_is_not_resumable(run, tmp_path):
    ckpt = checkpoint.load(run / "last.pt")
    checkpoint.save_atomic({"config": ckpt["config"], "model": ckpt["model"]}, tmp_path / "weights.pt")
    with pytest.raises(SystemExit, match=r"has no epoch, step, best_val, optimizer, scheduler: not a training checkpoint"):
        train_cli.main(["--no-progress", "--resume", str(tmp_path / "weights.pt")])


def test_a_data_root_for_a_synthetic_checkpoint_is_refused_not_ignored(run, tmp_path):
    """evaluate / sweep reported synthetic accuracy for --data-root /my/hmdb51."""
    with pytest.raises(SystemExit, match=r"^error: --data-root: the checkpoint was trained on the synthetic dataset"):
        evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--data-root", str(tmp_path), "--no-progress"])


def test_a_decoder_for_a_synthetic_checkpoint_is_refused_and_an_old_one_in_it_is_ignored(run, tmp_path):
    """--decoder dali had no effect on generated clips, and said nothing."""
    with pytest.raises(SystemExit, match=r"^error: --decoder dali: the checkpoint was trained on the synthetic dataset"):
        evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--decoder", "dali", "--no-progress"])
    ckpt = checkpoint.load(run / "last.pt")  # written before data.decoder was checked for synthetic runs
    ckpt["config"]["data"]["decoder"] = "pyav"
    checkpoint.save_atomic(ckpt, tmp_path / "old.pt")
    rows = evaluate_cli.main(["--checkpoint", str(tmp_path / "old.pt"), "--episodes", "2", "--decoder", "auto",
                              "--no-progress"])
    assert [(r["dataset"], r["k_shot"], r["episodes"]) for r in rows] == [("synthetic", 1, 2), ("synthetic", 5, 2)]


def test_a_full_disk_is_one_error_line(tmp_path, monkeypatch):
    import errno

    import torch

    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit, match=r"^error: cannot write checkpoint .*(best|last).pt: No space left on device"):
        train_cli.main(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")])


def test_ctrl_c_in_evaluate_keeps_the_finished_shots(run, tmp_path, monkeypatch, capsys):
    from hr2g import evaluation

    real, calls = evaluation.evaluate_model, []

    def interrupted_second(*args, **kwargs):
        calls.append(kwargs["k_shot"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_model", interrupted_second)
    out = tmp_path / "ev.json"
    with pytest.raises(SystemExit) as exc:
        evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--shots", "1", "2", "--episodes", "3", "--json", str(out),
                           "--no-progress"])
    assert exc.value.code == 130
    assert "interrupted; 1 of 2 shot settings finished, 1 written to" in capsys.readouterr().err
    assert [r["k_shot"] for r in json.loads(out.read_text())] == [1]


def test_evaluate_encodes_each_video_once_for_every_shot_setting(run, monkeypatch):
    """--shots 1 2 used to decode and encode the split once per shot; the results are those of
    one evaluation per shot."""
    from hr2g import evaluation

    real, encoded = evaluation.encode_dataset, []

    def counting(model, dataset, indices, *args, **kwargs):
        encoded.extend(indices)
        return real(model, dataset, indices, *args, **kwargs)

    monkeypatch.setattr(evaluation, "encode_dataset", counting)
    argv = ["--checkpoint", str(run / "last.pt"), "--episodes", "4", "--no-progress"]
    both = evaluate_cli.main(argv + ["--shots", "1", "2"])
    assert len(encoded) == len(set(encoded)) > 0
    alone = [evaluate_cli.main(argv + ["--shots", str(k)])[0] for k in (1, 2)]
    assert both == alone


def test_device_names_a_gpu_by_index_and_one_not_there_is_an_error(monkeypatch, capsys):
    from hr2g.training import resolve_device

    with pytest.raises(SystemExit):
        train_cli.main(TINY + ["--device", "gpu1"])
    assert "argument --device: 'gpu1' is not a device; choose auto" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a CPU machine, also on a GPU one
    with pytest.raises(SystemExit, match=r"^error: --device cuda:1 requested but torch.cuda.is_available\(\) is False"):
        resolve_device("cuda:1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(SystemExit, match=r"^error: --device cuda:2: only 2 CUDA devices are visible"):
        resolve_device("cuda:2")


def test_evaluate_names_the_unreadable_videos_in_the_log_and_the_json(run, tmp_path, monkeypatch, caplog):
    """Skipped videos used to be only a count: the warning names them and --json lists them all."""
    from hr2g import inference
    from tests.test_sweep import _HalfUnreadable

    dataset = _HalfUnreadable("test", videos_per_class=6, frames=4, image_size=32)
    dataset.root = tmp_path / "videos" / ".." / "videos"  # a video dataset's keys are relative to its root
    monkeypatch.setattr(inference, "dataset_from_args", lambda *a, **k: dataset)
    out = tmp_path / "ev.json"
    rows = evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--shots", "1", "--episodes", "3", "--json", str(out),
                              "--no-progress"])
    assert rows[0]["skipped_videos"] == 96 and "unreadable_videos" not in rows[0]  # stdout: one short line
    assert rows[0]["missing_videos"] == 0 and "videos_root" not in rows[0]
    row, = json.loads(out.read_text())
    assert row["videos_root"] == str((tmp_path / "videos").resolve())  # where the relative keys are
    listed = row["unreadable_videos"]
    assert len(listed) == 96 and set(listed.values()) == {"moov atom not found"}
    summary, = [r.getMessage() for r in caplog.records if r.getMessage().startswith("96 unreadable videos: ")]
    assert summary.endswith(f"; and 91 more, replaced by other videos of their class (all of them in {out})")
    assert sum(f"{k} (moov atom not found)" in summary for k in listed) == 5 and list(listed) == sorted(listed)
    with pytest.raises(SystemExit, match=r"^error: test, 5-way 3-shot: every episode has a class with fewer than 4 "
                                         r"readable videos; 96 unreadable videos: .*; and 91 more$"):
        evaluate_cli.main(["--checkpoint", str(run / "last.pt"), "--shots", "3", "--episodes", "3", "--no-progress"])


def test_a_resume_on_other_train_videos_is_warned_about(run, caplog):
    """A split list edited between the stop and the resume changed the episodes without a word
    (the configuration compared equal): the checkpoint holds a digest of the train split."""
    assert checkpoint.load(run / "last.pt")["train_videos"]
    train_cli.main(["--no-progress", "--resume", str(run / "last.pt"), "--epochs", "2"])
    assert "whose videos differ" not in caplog.text
    train_cli.main(["--no-progress", "--resume", str(run / "last.pt"), "--epochs", "3",
                    "--set", "data.synthetic_videos_per_class=7"])
    assert "on a train split whose videos differ from the checkpoint's" in caplog.text
