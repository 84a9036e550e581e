"""Training, checkpointing, evaluation and CLI behaviour on the tiny config (CPU, seconds)."""
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch

from hr2g import checkpoint, training
from hr2g.data.synthetic import SyntheticActions
from hr2g.evaluation import evaluate_model, load_model
from hr2g.training import train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("train"))
    summary = train(cfg, progress=False)
    return cfg, summary


def test_training_runs_end_to_end_and_fills_the_bank(trained):
    cfg, summary = trained
    ckpt = checkpoint.load(summary["last"])
    assert ckpt["epoch"] == cfg.train.epochs and ckpt["step"] == 0
    filled = int(ckpt["model"]["ikt.bank_filled"])
    # 2 epochs x 3 steps x M=3 prototypes, capped at G
    assert filled == min(cfg.model.ikt_bank_size, 2 * 3 * cfg.model.ikt_prototypes)
    assert ckpt["model"]["ikt.bank"][:filled].abs().sum() > 0
    rows = (open(f"{cfg.train.out_dir}/log.csv").read().strip().splitlines())
    assert rows[0].startswith("epoch,step,loss") and len(rows) == 1 + 2 * 3 + 2
    # milestone 1: epoch 1 trained at lr, epoch 2 at lr * gamma; an epoch row shows its own epoch's LR
    # (it showed the next epoch's: the scheduler had stepped before the row was written)
    lr = [float(r.split(",")[4]) for r in rows[1:]]
    assert lr == pytest.approx([cfg.train.lr] * 4 + [cfg.train.lr * cfg.train.gamma] * 4)
    assert json.loads(open(f"{cfg.train.out_dir}/config.json").read())["model"]["backbone"] == "tiny"


def test_bank_changes_during_training_once_full(tmp_path):
    cfg = tiny_config(tmp_path, ikt_bank_size=4)  # full after 2 steps: the momentum rule takes over
    cfg.train.epochs, cfg.train.val_episodes = 1, 0
    cfg.train.episodes_per_epoch = 2
    train(cfg, progress=False)
    bank_after_2 = checkpoint.load(f"{cfg.train.out_dir}/last.pt")["model"]["ikt.bank"]
    cfg.train.epochs = 2
    train(cfg, resume="auto", progress=False)
    bank_after_4 = checkpoint.load(f"{cfg.train.out_dir}/last.pt")["model"]["ikt.bank"]
    assert not torch.equal(bank_after_2, bank_after_4), "momentum updates left the full bank unchanged"


def test_resume_reproduces_an_uninterrupted_run(tmp_path, trained):
    cfg_full, summary = trained
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    train(cfg, progress=False)
    cfg.train.epochs = 2
    train(cfg, resume="auto", progress=False)
    a = checkpoint.load(summary["last"])["model"]
    b = checkpoint.load(f"{cfg.train.out_dir}/last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"resumed run differs in {k}"


def test_evaluation_leaves_the_bank_bit_identical_and_checkpoints_round_trip(trained):
    cfg, summary = trained
    ckpt = checkpoint.load(summary["last"])
    model, cfg2 = load_model(ckpt, torch.device("cpu"))
    bank = model.ikt.bank.clone()
    filled = int(model.ikt.bank_filled)
    test = SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)
    res = evaluate_model(model, test, cfg2, episodes=20, seed=3, k_shot=1, batch_episodes=7, progress=False)
    assert torch.equal(bank, model.ikt.bank) and int(model.ikt.bank_filled) == filled
    assert 0.0 <= res.accuracy <= 1.0 and res.episodes == 20
    # a second load of the same checkpoint gives exactly the same evaluation
    model2, _ = load_model(checkpoint.load(summary["last"]), torch.device("cpu"))
    res2 = evaluate_model(model2, test, cfg2, episodes=20, seed=3, k_shot=1, batch_episodes=20, progress=False)
    assert res2.per_episode.tolist() == res.per_episode.tolist()


def test_evaluation_refuses_a_head_that_writes_the_bank(trained, monkeypatch):
    """The frozen-bank check is the last line against test classes leaking into the bank (through
    a new metric, a hook, a stray update call): it must fire, not just exist."""
    cfg, summary = trained
    model, cfg2 = load_model(checkpoint.load(summary["last"]), torch.device("cpu"))
    real = model.head

    def leaky_head(*args, **kwargs):
        model.ikt.bank.add_(1e-3)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "head", leaky_head)
    test = SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)
    with pytest.raises(AssertionError, match="evaluation changed the knowledge bank"):
        evaluate_model(model, test, cfg2, episodes=5, seed=3, k_shot=1, batch_episodes=5, progress=False)


@pytest.mark.gpu
def test_the_tiny_model_trains_and_evaluates_on_a_gpu_with_the_fused_ops(tmp_path, cuda_device):
    """The other whole-model tests run on the CPU (bit-for-bit resumes are a CPU promise).  This one
    trains on the GPU with backend auto (Triton attention and OTAM, the CUDA bank op when built)
    under bf16 autocast, and checks what holds there too: finite losses, the bank filled as on the
    CPU, an evaluation that leaves the bank bit-identical."""
    import math

    cfg = tiny_config(tmp_path)
    cfg.train.device, cfg.model.backend = "cuda", "auto"
    assert cfg.train.amp, "the GPU run is meant to cover bf16 autocast"
    summary = train(cfg, progress=False)
    ckpt = checkpoint.load(summary["last"])
    assert int(ckpt["model"]["ikt.bank_filled"]) == min(cfg.model.ikt_bank_size, 2 * 3 * cfg.model.ikt_prototypes)
    rows = open(f"{cfg.train.out_dir}/log.csv").read().strip().splitlines()[1:]
    assert len(rows) == 2 * 3 + 2 and all(math.isfinite(float(r.split(",")[2])) for r in rows)
    model, cfg2 = load_model(ckpt, cuda_device)
    bank = model.ikt.bank.clone()
    test = SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)
    res = evaluate_model(model, test, cfg2, episodes=20, seed=3, k_shot=1, batch_episodes=7, progress=False)
    assert torch.equal(bank, model.ikt.bank) and res.episodes == 20 and 0.0 <= res.accuracy <= 1.0


def test_batched_evaluation_equals_one_episode_at_a_time(trained):
    cfg, summary = trained
    model, cfg2 = load_model(checkpoint.load(summary["last"]), torch.device("cpu"))
    test = SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)
    batched = evaluate_model(model, test, cfg2, episodes=12, seed=5, k_shot=2, batch_episodes=12, progress=False)
    single = evaluate_model(model, test, cfg2, episodes=12, seed=5, k_shot=2, batch_episodes=1, progress=False)
    assert batched.per_episode.tolist() == single.per_episode.tolist()


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"config": {}, "model": {"x": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_atomic({"config": {}, "model": Boom()}, path)
    assert torch.equal(checkpoint.load(path)["model"]["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "temporary file left behind"


def test_train_and_evaluate_commands(tmp_path, capsys):
    from hr2g import evaluate as evaluate_cli
    from hr2g import train as train_cli

    out = tmp_path / "cli"
    summary = train_cli.main(["--fused", "--no-progress", "--out", str(out), "--epochs", "1", "--episodes-per-epoch", "2",
                              "--set", "data.frames=4", "--set", "data.synthetic_videos_per_class=6",
                              "--set", "train.val_episodes=2", "--set", "train.test_episodes=3"])
    assert 0 <= summary["test_accuracy"] <= 1
    rows = evaluate_cli.main(["--checkpoint", str(out / "last.pt"), "--episodes", "5", "--shots", "1", "2", "--no-progress"])
    assert [r["k_shot"] for r in rows] == [1, 2] and all(r["episodes"] == 5 for r in rows)
    assert '"k_shot": 2' in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.ikt_kappa=1.5"], r"model.ikt_kappa=1.5 is outside the allowed range \(0, 1\]"),
    (["--set", "model.ikt_kappa=0"], r"model.ikt_kappa=0.0 is outside the allowed range \(0, 1\]"),
    (["--set", "model.metric=euclid"], r"model.metric='euclid' is not allowed; choose one of \['otam', 'trx', 'bimhm'\]"),
    (["--set", "model.isc_mask=diagonal"], r"model.isc_mask='diagonal' is not allowed"),
    (["--ways", "1"], r"data.n_way=1 is outside the allowed range \[2, inf\]"),
    (["--set", "model.nope=1"], r"unknown config field 'model.nope'"),
    (["--set", "data.frames=abc"], r"data.frames='abc': cannot convert"),
    (["--set", "model.metric=trx", "--set", "model.trx_cardinalities="], r"model.trx_cardinalities=\(\) must name at least one"),
    (["--set", "train.milestones=0,3"], r"train.milestones\[\]=0 is outside the allowed range \[1, inf\]"),
    (["--set", "model.metric=trx", "--set", "model.trx_cardinalities=2,4", "--set", "data.frames=3"],
     r"model.trx_cardinalities=\(2, 4\): TRX tuples .* longer than data.frames=3"),
    # values that used to pass validation and fail later, as a traceback (or silently do nothing)
    (["--set", "model.isc_heads=0"], r"model.isc_heads=0 is outside the allowed range \[1, 64\]"),
    (["--set", "model.ikt_heads=3"], r"model.ikt_heads=3 does not divide the tiny feature width 64 \(e.g. 1, 2, 4, 8, 16\)"),
    (["--set", "model.temporal_heads=-1"], r"model.temporal_heads=-1 is outside the allowed range"),
    (["--set", "train.weight_decay=-1"], r"train.weight_decay=-1.0 must be finite and >= 0"),
    (["--set", "train.lr=inf"], r"train.lr=inf must be finite and > 0"),
    (["--set", "model.aux_text_weight=inf"], r"model.aux_text_weight=inf must be finite and >= 0"),
    (["--set", "train.grad_clip=nan"], r"train.grad_clip=nan must be >= 0 \(0: no clipping\)"),
    (["--set", "train.seed=-1"], r"train.seed=-1 is outside the allowed range \[0, inf\]"),
    (["--set", "eval.seed=-2"], r"eval.seed=-2 is outside the allowed range \[0, inf\]"),
    (["--set", "data.synthetic_videos_per_class=0"], r"data.synthetic_videos_per_class=0 is outside the allowed range"),
    (["--set", "data.frames=17"], r"data.frames=17: the synthetic dataset renders 16 frames per clip"),
    (["--set", "data.image_size=64"], r"data.image_size=64: the tiny encoder takes 32x32 frames \(--set data.image_size=32\)"),
    (["--set", "data.data_root=/x"], r"data.data_root='/x': the synthetic dataset is generated, not read"),
    (["--set", "data.decoder=dali"], r"data.decoder='dali': the synthetic dataset is generated, not decoded"),
    (["--set", "train.out_dir="], r"train.out_dir='': name the run's folder"),
    (["--set", "model.trx_cardinalities=1,,2"], r"model.trx_cardinalities='1,,2': .*empty item"),
    (["--set", "model.trx_cardinalities=3,3"], r"model.trx_cardinalities=\(3, 3\) names a tuple size twice"),
    (["--set", "train.milestones=3,3"], r"train.milestones=\(3, 3\) names an epoch twice"),
])
def test_bad_config_values_stop_with_a_message_naming_value_and_range(argv, message, capsys):
    from hr2g import train as train_cli

    with pytest.raises(SystemExit) as exc:
        train_cli.main(argv + ["--no-progress"])
    assert pytest.importorskip("re").search(message, str(exc.value)), str(exc.value)


def test_milestones_past_the_last_epoch_are_warned_about(tmp_path, caplog):
    cfg = tiny_config(tmp_path)
    cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes, cfg.train.milestones = 1, 1, 0, (1, 3)
    with caplog.at_level("WARNING", logger="hr2g.train"):
        train(cfg, progress=False)
    assert "train.milestones (1, 3): (1, 3) at or after the last epoch (train.epochs=1)" in caplog.text


def test_k_larger_than_a_class_stops_with_the_allowed_range(tmp_path):
    from hr2g import train as train_cli

    with pytest.raises(SystemExit, match=r"^error: val: .*k_shot \+ q_query <= 6"):
        train_cli.main(["--shots", "6", "--no-progress", "--out", str(tmp_path), "--set", "data.synthetic_videos_per_class=6"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from hr2g import evaluate as evaluate_cli

    with pytest.raises(SystemExit, match="does not exist"):
        evaluate_cli.main(["--checkpoint", str(tmp_path / "nope.pt")])


def test_config_round_trips_optional_string_fields():
    from hr2g.config import Config
    from hr2g.configs import get_preset

    cfg = get_preset("hmdb51", shots=5)
    cfg.data.data_root, cfg.data.split_dir = "/data/hmdb51", "/data/splits"
    back = Config.from_dict(cfg.to_dict())
    assert back.model.pretrained == "openai" and back.data.data_root == "/data/hmdb51" and back.data.k_shot == 5
    assert back.to_dict() == cfg.to_dict()


def test_checkpoints_load_without_running_code_from_the_file(trained, tmp_path):
    cfg, summary = trained
    ckpt = torch.load(summary["last"], weights_only=True)  # plain data and tensors only, RNG state included
    assert ckpt["epoch"] == cfg.train.epochs

    class Payload:  # what a malicious checkpoint carries: a call made while unpickling
        def __reduce__(self):
            import os
            return (os.getpid, ())

    bad = tmp_path / "bad.pt"
    torch.save({"config": {}, "model": Payload()}, bad)
    with pytest.raises(ValueError, match=r"could not be read \(UnpicklingError: [^\n]*\)$"):  # torch's first line only
        checkpoint.load(bad)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=r"bad.pt' is empty \(0 bytes\)"):
        checkpoint.load(bad)
    # random bytes, or a checkpoint cut short: torch would advise weights_only=False or mmap options
    for data in (bytes(range(256)) * 4, Path(summary["last"]).read_bytes()[:-100]):
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=r"bad.pt' is not a PyTorch checkpoint \(not a zip archive\): corrupt, truncated"):
            checkpoint.load(bad, mmap=True)
    # bytes flipped inside a tensor: torch.load does not check CRCs and loaded wrong weights
    data = bytearray(Path(summary["last"]).read_bytes())
    with zipfile.ZipFile(summary["last"]) as archive:
        entry = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
    at = entry.header_offset  # the local header: 30 bytes, then its name and (padding) extra field
    start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    data[start + 100:start + 120] = bytes(255 - b for b in data[start + 100:start + 120])
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"bad.pt' is corrupt: its entry '{re.escape(entry.filename)}' fails its CRC check"):
        checkpoint.load(bad)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fsync's file through /proc")
def test_atomic_save_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Without the first fsync a power cut after the rename can leave c.pt empty (ext4's delayed
    allocation); without the second, the old c.pt can come back."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", "folder" if os.path.isdir(target) else "tmp" if target.endswith(checkpoint.TMP_SUFFIX) else target))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint.save_atomic({"config": {}, "model": {"x": torch.ones(2)}}, tmp_path / "c.pt")
    assert events == [("fsync", "tmp"), ("replace", "c.pt"), ("fsync", "folder")]


def test_load_refuses_a_folder_and_a_file_that_is_no_hr2g_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is a folder; pass a .pt file in it"):
        checkpoint.load(tmp_path)
    for entries, missing in (({"config": {}}, "model"), ({"model": {}}, "config")):
        checkpoint.save_atomic(entries, tmp_path / "other.pt")
        with pytest.raises(ValueError, match=rf"has no '{missing}' entry: not an hr2g checkpoint"):
            checkpoint.load(tmp_path / "other.pt")


def test_the_run_lock_holds_exactly_its_own_pid(tmp_path):
    """The lock file is reused across runs: a longer PID left by an earlier run must not show
    through a shorter one (the message of a refused second run quotes it)."""
    (tmp_path / ".lock").write_text("9999999999\n")
    with checkpoint.RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_checkpoints_get_the_permissions_of_any_new_file(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        checkpoint.save_atomic({"config": {}, "model": {}}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "c.pt").st_mode & 0o777) == oct(0o644)  # not mkstemp's 0600


def test_a_split_pass_that_encodes_nothing_gives_an_empty_cache_shaped_like_the_features():
    """encode_for_episodes concatenates a second pass (the rest of the split, encoded when a video
    failed) onto the first; when that pass encodes nothing, its features must still be [0, T, C]
    on the model's device (a CPU ``zeros(0)`` made every GPU evaluation with an unreadable video
    crash in that cat)."""
    from hr2g.evaluation import encode_dataset, encode_for_episodes
    from hr2g.model.model import HR2G
    from tests.test_episodes import FlakyDataset

    cfg = tiny_config()
    model = HR2G(cfg.model, cfg.data.frames)
    ds = FlakyDataset(bad=set(range(20)))
    rows, feats, failed = encode_dataset(model, ds, [0, 5], torch.device("cpu"), amp=False)
    assert rows == {} and feats.shape == (0, cfg.data.frames, model.dim) and feats.dtype == torch.float32
    assert failed == {"v0.mp4": "moov atom not found", "v5.mp4": "moov atom not found"}
    rows, feats, failed, missing = encode_for_episodes(model, ds, [0, 5], torch.device("cpu"), amp=False)
    assert feats.shape == (0, cfg.data.frames, model.dim) and len(failed) == 20 and missing == set(range(20))


def test_a_diverged_model_is_refused_instead_of_scoring_chance(trained, tmp_path):
    """NaN logits argmax to class 0, and queries are class-major: a NaN model used to score exactly
    1/N with nothing said.  The model's train/eval mode survives the refusal."""
    from hr2g import evaluate as evaluate_cli

    cfg, summary = trained
    model, cfg2 = load_model(checkpoint.load(summary["last"]), torch.device("cpu"))
    with torch.no_grad():
        model.isc.proj.bias.fill_(float("nan"))
    model.train()
    test = SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)
    with pytest.raises(FloatingPointError, match=r"non-finite logits in 7 of 7 episodes: its weights have diverged"):
        evaluate_model(model, test, cfg2, episodes=9, seed=3, k_shot=1, batch_episodes=7, progress=False)
    assert model.training
    ckpt = checkpoint.load(summary["last"])
    ckpt["model"]["isc.proj.bias"].fill_(float("nan"))
    checkpoint.save_atomic(ckpt, tmp_path / "nan.pt")
    with pytest.raises(SystemExit, match=r"^error: 5-way 1-shot episodes 0-4: the model gives non-finite logits"):
        evaluate_cli.main(["--checkpoint", str(tmp_path / "nan.pt"), "--episodes", "5", "--no-progress"])


def test_an_impossible_shot_stops_evaluate_before_any_episode(trained, capsys):
    from hr2g import evaluate as evaluate_cli

    cfg, summary = trained
    with pytest.raises(SystemExit, match=r"^error: --ways / --shots 6 / --queries: .*k_shot \+ q_query <= 6 at n_way=5"):
        evaluate_cli.main(["--checkpoint", summary["last"], "--episodes", "5", "--shots", "1", "6", "--no-progress"])
    assert '"k_shot"' not in capsys.readouterr().out  # the 1-shot row was not worked out first


def test_an_impossible_shape_leaves_the_model_in_its_mode(trained):
    cfg, summary = trained
    model, cfg2 = load_model(checkpoint.load(summary["last"]), torch.device("cpu"))
    model.train()
    test = SyntheticActions("test", videos_per_class=6, frames=4, image_size=32)
    with pytest.raises(ValueError, match="allowed: "):
        evaluate_model(model, test, cfg2, episodes=5, seed=3, k_shot=6, progress=False)
    assert model.training


def test_videos_known_missing_are_not_reported_unreadable(trained):
    """A failed video makes evaluation encode the rest of the split (for replacements); videos the
    split lists but the disk lacks (dataset.unavailable) are never drawn, so that pass must not
    try them and count each as one more unreadable video."""
    import numpy as np

    from hr2g.data.base import VideoReadError
    from tests.test_episodes import FlakyDataset

    class Partly(FlakyDataset):
        def __init__(self):
            super().__init__(bad={1, 2, 9}, classes=5)
            self.labels = np.repeat(np.arange(5), 6)
            self.unavailable = frozenset({2, 9})  # listed, not on disk

        def clip(self, i, train, rng):
            if i in self.bad:
                raise VideoReadError(f"/data/v{i}.mp4", "missing" if i in self.unavailable else "moov atom not found")
            return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))

    cfg, summary = trained
    model, cfg2 = load_model(checkpoint.load(summary["last"]), torch.device("cpu"))
    ds = Partly()
    res = evaluate_model(model, ds, cfg2, episodes=30, seed=0, k_shot=1, batch_episodes=30, progress=False)
    assert res.skipped_videos == {"v1.mp4": "moov atom not found"} and res.episodes == 30
    assert not {2, 9} & set(ds.reads)


def test_a_non_finite_loss_stops_training_before_the_step(tmp_path, monkeypatch):
    """The loss is read back once per step, after backward: a NaN there raises before the optimizer
    step and the bank update, and the checkpoint of the step before is what remains."""
    from hr2g import training

    real, calls = training.F.cross_entropy, []

    def cross_entropy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(training.F, "cross_entropy", cross_entropy)
    seen = {}
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (seen.setdefault("steps", []).append(1),
                                                                         real_step(self, *a, **k))[1])
    cfg = tiny_config(tmp_path)
    cfg.train.checkpoint_every = 1
    with pytest.raises(FloatingPointError, match=r"non-finite loss \[nan\] in this step's episodes; lower train.lr"):
        train(cfg, progress=False)
    assert len(seen["steps"]) == 1  # the NaN step never reached the optimizer
    ckpt = checkpoint.load(f"{cfg.train.out_dir}/last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 1) and int(ckpt["model"]["ikt.bank_filled"]) == cfg.model.ikt_prototypes


def test_unreadable_validation_and_test_videos_are_listed_with_the_training_ones(tmp_path, monkeypatch):
    """unreadable_videos.json and the summary's count covered training episodes only; videos that
    validation or the final test skipped were only warned about."""
    from hr2g.data.base import VideoReadError

    real = SyntheticActions.clip

    def clip(self, index, train, rng):
        if self.split in ("val", "test") and index % 6 == 0:  # one video of every class
            raise VideoReadError(f"/x/{self.key(index)}", "corrupt")
        return real(self, index, train, rng)

    monkeypatch.setattr(SyntheticActions, "clip", clip)
    cfg = tiny_config(tmp_path)
    cfg.train.epochs, cfg.train.test_episodes = 1, 4
    summary = train(cfg, progress=False)
    listed = json.loads(open(f"{cfg.train.out_dir}/unreadable_videos.json").read())
    bad = {SyntheticActions(split, videos_per_class=6).key(i): split for split in ("val", "test") for i in range(0, 192, 6)
           if i < 6 * (16 if split == "val" else 32)}
    assert set(listed) <= set(bad) and {bad[k] for k in listed} == {"val", "test"}
    assert summary["skipped_videos"] == len(listed) and set(listed.values()) == {"corrupt"}


def test_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    """config.json / checkpoints kept --data-root as typed: evaluating or resuming from another
    folder then looked for the videos there."""
    from tests.media import make_benchmark

    monkeypatch.chdir(tmp_path)
    make_benchmark(tmp_path / "data/hmdb51", {"train": ["a", "b"], "test": ["c", "d"]}, n_frames=4, size=(32, 32))
    (tmp_path / "data/hmdb51/splits").rename(tmp_path / "lists")
    cfg = tiny_config(tmp_path)
    cfg.data.dataset, cfg.data.data_root, cfg.data.split_dir = "hmdb51", "data/hmdb51", "lists"
    cfg.data.n_way, cfg.data.q_query, cfg.data.frames, cfg.data.decoder = 2, 1, 2, "pyav"
    cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes = 1, 1, 0
    summary = train(cfg.validate(), progress=False)
    stored = checkpoint.load(summary["last"])["config"]["data"]
    assert (stored["data_root"], stored["split_dir"]) == (str(tmp_path / "data/hmdb51"), str(tmp_path / "lists"))
    assert json.loads(open(f"{cfg.train.out_dir}/config.json").read())["data"]["data_root"] == str(tmp_path / "data/hmdb51")


def test_decoding_workers_warn_once_per_unreadable_video_and_never_retry_a_known_one(tmp_path, monkeypatch, caplog):
    """Each DataLoader worker found (and warned about) a bad video on its own, every epoch again,
    with its own "skipped so far" count; the training loop now warns once per video, and later
    epochs' workers start from the videos already known bad."""
    from hr2g.data.base import VideoReadError

    real, attempts = SyntheticActions.clip, tmp_path / "attempts.txt"

    def clip(self, index, train, rng):
        if self.split == "train" and index % 6 == 0:  # one video of every class
            with open(attempts, "a") as f:  # the workers are other processes: count in a file
                f.write(f"{self.key(index)}\n")
            raise VideoReadError(f"/x/{self.key(index)}", "corrupt")
        return real(self, index, train, rng)

    monkeypatch.setattr(SyntheticActions, "clip", clip)
    cfg = tiny_config(tmp_path)
    cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes, cfg.data.num_workers = 2, 6, 0, 2
    lines_at_epoch_start: list[int] = []
    real_stream = training.EpisodeStream

    def stream(*args, known=None, **kwargs):
        tried = attempts.read_text().splitlines() if attempts.exists() else []
        lines_at_epoch_start.append(len(tried))
        assert set(known or {}) == set(tried), "the bad videos found so far are passed to the new epoch's workers"
        return real_stream(*args, known=known, **kwargs)

    monkeypatch.setattr(training, "EpisodeStream", stream)
    with caplog.at_level("WARNING", logger="hr2g.train"):
        summary = train(cfg, progress=False)
    tried = attempts.read_text().splitlines()
    warned = [r.args[0] for r in caplog.records if r.getMessage().startswith("skipping unreadable video")]
    assert summary["skipped_videos"] == len(set(tried)) > 0 and sorted(warned) == sorted(set(tried))
    first, second = tried[: lines_at_epoch_start[1]], tried[lines_at_epoch_start[1] :]
    assert first and not set(first) & set(second), "epoch 2 decoded a video epoch 1 found unreadable"


def test_a_validation_split_without_scorable_episodes_warns_and_training_goes_on(tmp_path, monkeypatch, caplog):
    """Every validation episode dropped (a class of each with too few readable videos) raised out of
    train() after the epoch's steps, before last.pt was written: the epoch was lost."""
    from hr2g.data.base import VideoReadError

    real = SyntheticActions.clip

    def clip(self, index, train, rng):
        if self.split in ("val", "test") and index % 6 < 5:  # one readable video per class: 1-shot needs 2
            raise VideoReadError(f"/x/{self.key(index)}", "corrupt")
        return real(self, index, train, rng)

    monkeypatch.setattr(SyntheticActions, "clip", clip)
    cfg = tiny_config(tmp_path)
    cfg.train.test_episodes = 3
    with caplog.at_level("WARNING", logger="hr2g.train"):
        summary = train(cfg, progress=False)
    assert caplog.text.count("no validation: val, 5-way 1-shot: every episode has a class with fewer than 2") == 2
    assert "no final test: test, 5-way 1-shot" in caplog.text
    assert summary["val_accuracy"] is None and summary["best"] is None and summary["test_accuracy"] is None
    ckpt = checkpoint.load(summary["last"])
    assert (ckpt["epoch"], ckpt["step"]) == (cfg.train.epochs, 0)
    rows = open(f"{cfg.train.out_dir}/log.csv").read().splitlines()
    assert len(rows) == 1 + 2 * 4 and rows[4].split(",")[8] == rows[8].split(",")[8] == ""  # epoch rows: no val_acc
    listed = json.loads(open(f"{cfg.train.out_dir}/unreadable_videos.json").read())
    assert summary["skipped_videos"] == len(listed) and any("/val/" in k for k in listed) and any("/test/" in k for k in listed)


def test_unreadable_videos_do_not_make_the_run_depend_on_workers_or_resuming(tmp_path, monkeypatch):
    """Each decoding worker (and a resumed run) learns which videos are bad on its own; a failed
    decode used to consume the episode's draws where a known-bad skip did not, and a class that ran
    out of videos was retired from one process's sampler only.  The weights now come out the same."""
    from hr2g.data.base import VideoReadError

    real = SyntheticActions.clip

    def clip(self, index, train, rng):
        if self.split == "train" and (index < 6 or index % 6 == 3):  # class 0 all bad, one more per class
            rng.random(3)  # a decode that fails late, after drawing its frames
            raise VideoReadError(f"/x/{self.key(index)}", "corrupt")
        return real(self, index, train, rng)

    monkeypatch.setattr(SyntheticActions, "clip", clip)

    def run(name, workers, epochs, resume=None):
        cfg = tiny_config(tmp_path / name)
        cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes = epochs, 4, 0
        cfg.train.checkpoint_every, cfg.data.num_workers = 0, workers
        return train(cfg, resume=resume, progress=False)

    base = checkpoint.load(run("inline", 0, 2)["last"])["model"]
    for other in (checkpoint.load(run("workers", 2, 2)["last"])["model"],
                  (run("resumed", 2, 1), checkpoint.load(run("resumed", 0, 2, resume="auto")["last"])["model"])[1]):
        for k in base:
            assert torch.equal(base[k], other[k]), k


def test_a_killed_runs_forked_workers_do_not_hold_its_folder(tmp_path):
    """An flock lasts while any copy of its descriptor is open: the decoding workers a run forked
    held its folder after a kill -9 until they noticed (~5 s), and a --resume at once was refused."""
    import signal
    import subprocess
    import sys
    import textwrap

    from hr2g.checkpoint import RunLock

    script = textwrap.dedent(f"""
        import multiprocessing, os, time
        from hr2g.checkpoint import RunLock
        with RunLock({str(tmp_path)!r}):
            worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
            worker.start()
            print(worker.pid, flush=True)
            os.kill(os.getpid(), 9)
    """)
    # Popen and one line read, not run(): the worker inherits the pipe and would keep it open
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    assert proc.wait(timeout=120) == -signal.SIGKILL
    try:
        os.kill(worker, 0)  # the orphaned worker still lives ...
        with RunLock(tmp_path):  # ... and holds no lock
            pass
    finally:
        os.kill(worker, signal.SIGKILL)
        proc.stdout.close()


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    """Two runs into one folder interleaved checkpoints; one's log.csv rows went to a deleted file."""
    from hr2g.checkpoint import RunLock
    from hr2g.errors import SetupError

    cfg = tiny_config(tmp_path)
    cfg.train.epochs, cfg.train.episodes_per_epoch, cfg.train.val_episodes = 1, 1, 0
    with RunLock(cfg.train.out_dir):  # as another process holding it would
        with pytest.raises(SetupError, match=rf"{cfg.train.out_dir} is in use by another training run \(PID \d+\)"):
            train(cfg, progress=False)
    stale = Path(cfg.train.out_dir) / ".last.pt.123.abcd1234.tmp"  # a run killed while saving left it
    stale.write_bytes(b"x" * 100)
    train(cfg, progress=False)  # the lock went with the holder
    assert not stale.exists()


def test_a_checkpoint_that_cannot_be_written_names_the_file_and_why(tmp_path, monkeypatch):
    import errno

    from hr2g.checkpoint import CheckpointWriteError, save_atomic

    def full(obj, f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # torch.save reports a full disk as this, raised while handling the OSError
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    save_atomic({"a": 1}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*last.pt: No space left on device \(the "
                                                  r"previous one there, if any, is intact\)") as exc:
        save_atomic({"a": 2}, tmp_path / "last.pt")
    assert exc.value.errno == errno.ENOSPC and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt") == {"a": 1}


def test_json_integers_are_not_rounded_or_read_from_booleans():
    from hr2g.config import Config

    with pytest.raises(ValueError, match=r"data.k_shot.*expected an integer, got 2.7"):
        Config.from_dict({"data": {"k_shot": 2.7}})
    with pytest.raises(ValueError, match=r"data.k_shot.*expected an integer, got True"):
        Config.from_dict({"data": {"k_shot": True}})
    assert Config.from_dict({"data": {"k_shot": 2.0}}).data.k_shot == 2


def test_the_backbone_tables_match_the_encoders_they_describe():
    """hr2g.config checks heads and image size against BACKBONE_WIDTH / BACKBONE_IMAGE_SIZE
    before anything is built: the tables must be what the encoders are."""
    import open_clip

    from hr2g.config import BACKBONE_IMAGE_SIZE, BACKBONE_WIDTH, ModelConfig
    from hr2g.model.encoder import CLIPEncoder

    tiny = CLIPEncoder(ModelConfig(backbone="tiny", pretrained=None, adapter_dim=4))
    assert (tiny.dim, tiny.image_size) == (BACKBONE_WIDTH["tiny"], (BACKBONE_IMAGE_SIZE["tiny"],) * 2)
    for name in ("ViT-B-16", "ViT-B-32", "RN50"):
        cfg = open_clip.get_model_config(name)
        assert (cfg["embed_dim"], cfg["vision_cfg"]["image_size"]) == (BACKBONE_WIDTH[name], BACKBONE_IMAGE_SIZE[name])


def test_kernel_size_limits_refuse_before_training_at_the_runs_shapes(monkeypatch):
    """The backend check asked the ops at T=8 and head dim 64: a run at T=40 (Triton's OTAM takes
    T <= 32) passed it and failed at its first step."""
    from hr2g import _dispatch
    from hr2g.errors import SetupError
    from hr2g.training import backend_report

    if not _dispatch.triton_interpreting("otam_distance") and not torch.cuda.is_available():
        pytest.skip("the Triton kernels run here only under TRITON_INTERPRET=1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = tiny_config()
    assert any(line.startswith("otam_distance: triton") for line in backend_report("triton", device, cfg))
    cfg.data.frames = 40  # not validated: the synthetic data stops at 16, a benchmark would not
    with pytest.raises(SetupError, match=r"model.backend=triton cannot run otam_distance .*T=40"):
        backend_report("triton", device, cfg)
