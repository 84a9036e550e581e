"""Stopping and resuming training: a SIGINT/SIGTERM stops after the running step with a checkpoint
at the exact position, a crash loses only the steps since the last checkpoint, and either way the
resumed run's weights, bank and log (CSV and TensorBoard) equal an uninterrupted run's."""
import csv
import logging
import os
import signal

import pytest
import torch

from hr2g import checkpoint, stopping, training
from hr2g.runlog import row_positions
from hr2g.stopping import TrainingStopped
from tests.helpers import tiny_config

STEPS, EPOCHS = 3, 2  # tiny_config: 3 steps per epoch, 2 epochs, a log row per step


def _read_log(run_dir):
    with open(f"{run_dir}/log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # wall time differs


def _cfg(path, tensorboard=False):
    cfg = tiny_config(path)
    cfg.train.tensorboard = tensorboard
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("whole"), tensorboard=_has_tensorboard())
    summary = training.train(cfg, progress=False)
    return cfg, summary


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _interrupting(monkeypatch, at_call: int, action):
    """Make ``training.train_step`` run ``action`` after (signal) or instead of (crash) call ``at_call``."""
    real, calls = training.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call and action == "crash":
            raise RuntimeError("simulated crash")
        out = real(*args, **kwargs)
        if len(calls) == at_call and action != "crash":
            os.kill(os.getpid(), action)  # delivered now, in the main thread, while the handler is active
        return out

    monkeypatch.setattr(training, "train_step", step)


def _assert_same_run(run_a, run_b):
    a = checkpoint.load(f"{run_a}/last.pt")
    b = checkpoint.load(f"{run_b}/last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, 0)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"resumed run differs in {k}"
    assert _read_log(run_a) == _read_log(run_b)


# call 2: mid-epoch; call 3: every step of epoch 0 done, its end (validation, log row) still to come;
# call 4: the first step of epoch 1
@pytest.mark.parametrize("at_call, position", [(2, (0, 2)), (3, (0, 3)), (4, (1, 1))])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, uninterrupted,
                                                                                 at_call, position, sig, caplog):
    whole_cfg, _ = uninterrupted
    cfg = _cfg(tmp_path)
    _interrupting(monkeypatch, at_call, sig)
    before = signal.getsignal(sig)
    with pytest.raises(TrainingStopped) as stop:
        training.train(cfg, progress=False)
    assert (stop.value.epoch, stop.value.step) == position and stop.value.signal_name == sig.name
    assert signal.getsignal(sig) is before, "the signal handler was not restored"
    ckpt = checkpoint.load(f"{cfg.train.out_dir}/last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == position
    assert len(ckpt["epoch_tally"]["loss"]) == position[1], "the epoch's running losses were not checkpointed"
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="hr2g.train"):
        training.train(cfg, resume="auto", progress=False)
    _assert_same_run(cfg.train.out_dir, whole_cfg.train.out_dir)
    # the stop and the resume name the position alike ("after step 1 of epoch 2"), epochs from 1
    where = stopping.position(*position)
    assert f"stopped {where}," in str(stop.value) and f"last.pt ({where})" in caplog.text


@pytest.mark.parametrize("during", ["last validation", "final test"])
def test_a_signal_after_the_last_step_skips_or_cuts_the_final_test_and_says_so(tmp_path, monkeypatch, uninterrupted,
                                                                               during):
    """A signal in the last epoch's validation was taken for a stop, then ignored: the whole final
    test ran and the run exited 0.  One in the final test ended the process (SIGTERM) or was
    reported as a second Ctrl-C."""
    from hr2g import evaluation

    cfg = _cfg(tmp_path)
    cfg.train.test_episodes = 40
    real, calls = evaluation.evaluate_model, []

    def evaluate(*args, split, **kwargs):  # the last validation is call EPOCHS; the final test the next
        calls.append(split)
        if (during == "last validation" and len(calls) == EPOCHS) or (during == "final test" and split == "test"):
            os.kill(os.getpid(), signal.SIGTERM)  # in the middle of it, as far as the caller can tell
        return real(*args, split=split, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_model", evaluate)  # train() imports it at call time
    with pytest.raises(stopping.FinalTestSkipped, match=r"^SIGTERM: training finished and saved; the final test was "
                       rf"{'skipped' if during == 'last validation' else 'cut short'}: run it with python -m hr2g.evaluate "
                       r"--checkpoint .*best.pt$"):
        training.train(cfg, progress=False)
    assert calls == ["val"] * EPOCHS + ([] if during == "last validation" else ["test"])
    _assert_same_run(uninterrupted[0].train.out_dir, cfg.train.out_dir)  # the training itself is whole


def test_a_crash_loses_only_the_steps_since_the_last_checkpoint_and_the_log_is_rewound(tmp_path, monkeypatch, uninterrupted):
    whole_cfg, _ = uninterrupted
    cfg = _cfg(tmp_path, tensorboard=_has_tensorboard())
    cfg.train.checkpoint_every = 2
    # call 3 = step 3 of epoch 0, after the step-2 checkpoint and the step-2 log row; the resumed
    # run then crashes in epoch 1's step 3, after that epoch's step-2 rows and checkpoint
    _interrupting(monkeypatch, 3, "crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(cfg, progress=False)
    ckpt = checkpoint.load(f"{cfg.train.out_dir}/last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)
    monkeypatch.undo()
    _interrupting(monkeypatch, 4, "crash")  # calls count again from the resumed step 3: call 4 = epoch 1, step 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(cfg, resume="auto", progress=False)
    assert (checkpoint.load(f"{cfg.train.out_dir}/last.pt")["step"]) == 2
    monkeypatch.undo()
    # a row the crashed run wrote after its checkpoint, as a run killed between logging and
    # checkpointing leaves it: it must not appear twice
    with open(f"{cfg.train.out_dir}/log.csv", "a", newline="") as f:
        csv.writer(f).writerow([1, 3, "9.99999", "0.0000", "0.001", 0, 0, "0.0", ""])
    training.train(cfg, resume="auto", progress=False)
    _assert_same_run(cfg.train.out_dir, whole_cfg.train.out_dir)
    if _has_tensorboard():
        assert _tensorboard_scalars(cfg.train.out_dir) == _tensorboard_scalars(whole_cfg.train.out_dir)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fsync's file through /proc")
def test_the_log_is_on_disk_before_each_checkpoint(tmp_path, monkeypatch):
    """log.csv is flushed per row, which a process crash keeps but a machine crash may not; a resume
    keeps every row up to its checkpoint, so those rows are fsynced before the checkpoint is written."""
    events, real_fsync, real_save = [], os.fsync, training.save_checkpoint

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def save(path, *args, **kwargs):
        with open(os.path.join(os.path.dirname(path), "log.csv"), newline="") as f:
            events.append(("save", os.path.basename(path), len(f.readlines())))
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(training, "save_checkpoint", save)
    cfg = _cfg(tmp_path)
    cfg.train.checkpoint_every = 2
    training.train(cfg, progress=False)
    saves = [i for i, e in enumerate(events) if e[0] == "save"]
    assert [events[i][1] for i in saves].count("last.pt") == 2 * EPOCHS  # one in each epoch (every 2 steps), one at its end
    for before, i in zip([-1] + saves, saves):
        assert ("fsync", "log.csv") in events[before + 1:i], events


@pytest.mark.parametrize("at_call", [2, 3], ids=["mid-epoch", "epoch-last-step"])
def test_tensorboard_after_a_stop_and_a_resume_killed_before_its_next_checkpoint(tmp_path, monkeypatch, uninterrupted,
                                                                                 at_call):
    """Stopped at (0, 2) or (0, 3), resumed, killed before the resumed run's next last.pt (its step
    rows, and at (0, 3) the epoch's end scalars, are in tb/), resumed again: TensorBoard shows each
    scalar once at each step, as in an uninterrupted run.  The end scalars at the checkpoint's own
    step used to stay and appear twice."""
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed (pip install tensorboard)")
    whole_cfg, _ = uninterrupted
    cfg = _cfg(tmp_path, tensorboard=True)
    _interrupting(monkeypatch, at_call, signal.SIGINT)
    with pytest.raises(TrainingStopped):
        training.train(cfg, progress=False)
    monkeypatch.undo()
    real = training.save_checkpoint

    def killed_at_last_pt(path, *args, **kwargs):
        if path.name == "last.pt":
            raise RuntimeError("killed")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", killed_at_last_pt)
    with pytest.raises(RuntimeError, match="killed"):
        training.train(cfg, resume="auto", progress=False)
    monkeypatch.undo()
    assert checkpoint.load(f"{cfg.train.out_dir}/last.pt")["step"] == at_call
    training.train(cfg, resume="auto", progress=False)
    _assert_same_run(cfg.train.out_dir, whole_cfg.train.out_dir)
    assert _tensorboard_scalars(cfg.train.out_dir) == _tensorboard_scalars(whole_cfg.train.out_dir)


def _tensorboard_scalars(run_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(f"{run_dir}/tb")  # purges events after a restart's purge_step, as TensorBoard does
    acc.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_mirror_the_csv_log(uninterrupted):
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed (pip install tensorboard)")
    cfg, _ = uninterrupted
    scalars = _tensorboard_scalars(cfg.train.out_dir)
    rows = _read_log(cfg.train.out_dir)
    positions = row_positions(rows, STEPS)
    assert [int(r["global_step"]) for r in rows] == [x for x, _ in positions]
    # the column and the epoch/step pattern agree on a whole log (an older log has only the pattern)
    assert row_positions([{k: v for k, v in r.items() if k != "global_step"} for r in rows], STEPS) == positions
    steps = [(x, float(r["loss"])) for r, (x, end) in zip(rows, positions) if not end]
    ends = [(x, float(r["val_acc"])) for r, (x, end) in zip(rows, positions) if end]
    assert [(x, pytest.approx(v, abs=1e-5)) for x, v in scalars["train/loss"]] == steps
    assert [(x, pytest.approx(v, abs=1e-4)) for x, v in scalars["val/acc"]] == ends
    assert [x for x, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [x for x, _ in scalars["epoch/loss"]] == [3, 6]


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    cfg = _cfg(tmp_path, tensorboard=True)
    with pytest.raises(SystemExit, match=r"train.tensorboard=true needs the tensorboard package"):
        training.train(cfg, progress=False)


def test_a_resumed_run_keeps_the_best_validation_it_resumed_from(tmp_path, monkeypatch):
    """Epoch 1 validates at 0.9, the resumed epoch 2 at 0.5: best.pt must stay epoch 1's.  A
    resume that forgot best_val took 0.5 for a new best and overwrote it."""
    import numpy as np

    from hr2g import evaluation

    scores = iter([0.9, 0.5])
    monkeypatch.setattr(evaluation, "evaluate_model",  # train imports it at each call
                        lambda *a, **k: evaluation.EvalResult(next(scores), 0.0, 4, np.zeros(4)))
    cfg = _cfg(tmp_path)
    cfg.train.epochs = 1
    training.train(cfg, progress=False)
    cfg.train.epochs = 2
    summary = training.train(cfg, resume="auto", progress=False)
    best = checkpoint.load(f"{cfg.train.out_dir}/best.pt")
    assert (best["epoch"], best["best_val"]) == (1, 0.9)
    assert summary["best_val"] == 0.9 and summary["val_accuracy"] == 0.5
    assert checkpoint.load(f"{cfg.train.out_dir}/last.pt")["best_val"] == 0.9


def test_row_positions_put_step_and_epoch_rows_on_one_axis():
    rows = [{"epoch": e, "step": s} for e, s in [(0, 2), (0, 3), (1, 3), (1, 1), (1, 3), (2, 3), (3, 3)]]
    assert row_positions(rows, 3) == [(2, False), (3, False), (3, True), (4, False), (6, False), (6, True), (9, True)]
    # a log that begins mid-run (deleted, then the run resumed): its first row (6, 3) can end epoch 6
    # or be epoch 6's last step row; the pattern guesses the step row, global_step tells
    assert row_positions([{"epoch": 6, "step": 3}], 3) == [(21, False)]
    assert row_positions([{"epoch": 6, "step": 3, "global_step": "18"}, {"epoch": 7, "step": 3, "global_step": "21"}],
                         3) == [(18, True), (21, True)]
    assert row_positions([{"epoch": 6, "step": 3, "global_step": "21"}], 3) == [(21, False)]


def test_a_log_started_mid_run_puts_its_rows_at_their_steps(tmp_path):
    """log.csv deleted, the run resumed at the end of epoch 6 with no step rows (log_every past the
    epoch's 3 steps): the first row it writes ends epoch 7 and sits at step 21, not 24."""
    from hr2g.runlog import RunLog

    run = RunLog(tmp_path, 3, resume_at=18)
    run.epoch_row(7, 1.0, 0.5, 1e-3, 3, 0, 1.0, float("nan"))
    run.step_row(7, 3, 1.0, 0.5, 1e-3, 3, 0, 2.0)
    run.epoch_row(8, 1.0, 0.5, 1e-3, 3, 0, 3.0, 0.4)
    run.close()
    assert row_positions(_read_log(tmp_path), 3) == [(21, True), (24, False), (24, True)]


def test_resuming_an_older_log_adds_the_global_step_column(tmp_path):
    """A log from before ``global_step``: the resume rewrites it with the column, so the rows it
    appends line up with the header."""
    from hr2g.runlog import COLUMNS, RunLog

    old = ["epoch,step,loss,acc,lr,bank_filled,skipped_videos,elapsed_s,val_acc"]
    old += [f"0,{s},1.0,0.5,0.001,3,0,1.0," for s in (1, 2, 3)] + ["1,3,1.0,0.5,0.001,3,0,1.5,0.4"]
    (tmp_path / "log.csv").write_text("\n".join(old) + "\n")
    run = RunLog(tmp_path, 3, resume_at=3)
    run.step_row(1, 1, 1.0, 0.5, 1e-3, 3, 0, 2.0)
    run.close()
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["1", "2", "3", "3", "4"]
    assert lines[1:5] == [f"{line},{g}" for line, g in zip(old[1:], (1, 2, 3, 3))], "the old rows' values kept as written"


def test_resuming_drops_an_end_row_still_to_come_and_a_row_cut_short(tmp_path):
    """A stop at an epoch's last step checkpoints (epoch 0, step 3); the resumed run wrote the
    epoch's end row and was killed before its next checkpoint: resumed again from (0, 3), that end
    row (position 3, like the checkpoint) used to stay and be written a second time.  A row a full
    disk cut short stopped --resume with a ValueError."""
    from hr2g.runlog import COLUMNS, RunLog

    def write(rows, tail=""):
        (tmp_path / "log.csv").write_text(",".join(COLUMNS) + "\n" + "".join(r + "\n" for r in rows) + tail)

    step = [f"0,{s},1.0,0.5,0.001,3,0,1.0,,{s}" for s in (1, 2, 3)]
    end = "1,3,1.0,0.5,0.001,3,0,1.5,0.4,3"
    for mid_epoch, kept in ((True, step), (False, step + [end])):
        write(step + [end], tail="1,1,1.")
        RunLog(tmp_path, 3, resume_at=3, mid_epoch=mid_epoch).close()
        assert (tmp_path / "log.csv").read_text().splitlines()[1:] == kept, mid_epoch


def test_a_forked_decoding_worker_ignores_the_signal_its_parent_handles(capfd):
    """Ctrl-C reaches the whole process group: each forked DataLoader worker inherited the handler
    and printed "SIGINT received" again (three messages for one Ctrl-C with 2 workers)."""
    import time

    with stopping.StopSignals() as stop:
        pid = os.fork()
        if pid == 0:  # the worker: the signal must neither print, nor record, nor end it
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                os._exit(0 if stop.received is None else 3)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0 and stop.received is None
        assert "received" not in capfd.readouterr().err
        os.kill(os.getpid(), signal.SIGINT)  # the owner still records it, once
        assert stop.received == "SIGINT" and capfd.readouterr().err.count("SIGINT received") == 1


def test_a_sigterm_after_a_sigint_waits_and_a_second_sigint_stops_at_once(capfd):
    """The first signal names the stop; a scheduler's SIGTERM after a Ctrl-C still lets the step
    finish (only a second Ctrl-C means "now"), and the stop keeps the first signal's name."""
    with stopping.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert capfd.readouterr().err.count("received: finishing this step") == 2


def test_interrupt_on_signal_leaves_a_forked_workers_signal_to_its_parent():
    with stopping.InterruptOnSignal() as handler:
        handler._owner = os.getpid() + 1  # as a forked worker sees the handler it inherited
        handler._handle(signal.SIGTERM, None)  # returns: the parent decides
        handler._owner = os.getpid()
        with pytest.raises(stopping.SignalInterrupt, match="SIGTERM"):
            handler._handle(signal.SIGTERM, None)


def test_positions_count_epochs_from_one():
    assert stopping.position(2, 0) == "before epoch 3" and stopping.position(0, 5) == "after step 5 of epoch 1"


def test_an_epoch_without_validation_sends_no_val_scalar(tmp_path, monkeypatch):
    """NaN val/acc points (validation off) drew a broken line in TensorBoard."""
    from hr2g import runlog

    tags = []

    class Writer:
        def add_scalar(self, tag, value, step):
            tags.append((tag, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(runlog, "_open_tensorboard", lambda folder, purge: Writer())
    log = runlog.RunLog(tmp_path, 3, tensorboard=True)
    log.epoch_row(1, 1.0, 0.5, 1e-3, 3, 0, 1.0, float("nan"))
    log.epoch_row(2, 1.0, 0.5, 1e-3, 3, 0, 2.0, 0.5)
    log.close()
    assert [s for t, s in tags if t == "val/acc"] == [6] and ("epoch/loss", 3) in tags
