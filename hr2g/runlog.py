"""The training log: ``<out_dir>/log.csv`` always, TensorBoard scalars with ``train.tensorboard``.

Rows: one every ``log_every`` steps (``epoch`` = the running epoch, 0-based, ``step`` within it,
running means over the last ``log_every`` steps) and one at each epoch's end (``epoch`` = epochs
completed, ``step`` = steps per epoch, means over the epoch, ``val_acc``).  ``global_step`` puts
both on one axis, TensorBoard's step: ``epoch * steps + step`` for a step row, ``epoch * steps``
for an end row (:func:`row_positions`; logs written before that column existed are read by the
epoch/step pattern alone, and a resume rewrites them with it).

A resumed run first drops the rows the interrupted run wrote after its checkpoint's position
(they are about to be written again), and TensorBoard purges those steps, so the log of a resumed
run reads like that of an uninterrupted one.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from hr2g.checkpoint import write_csv_atomic

log = logging.getLogger("hr2g.train")

COLUMNS = ["epoch", "step", "loss", "acc", "lr", "bank_filled", "skipped_videos", "elapsed_s", "val_acc", "global_step"]


def row_positions(rows: list[dict], steps_per_epoch: int) -> list[tuple[int, bool]]:
    """(global step, is an epoch-end row) of each log row, in order.

    A row's ``global_step`` says which it is: ``(e, steps)`` at ``e * steps`` ends epoch e, at
    ``(e + 1) * steps`` is epoch e's last step row.  A row without one (a log from before the
    column) is an end row if its epoch is one more than the previous row's and ``step`` is the
    epoch's length -- a guess for a log's first row: ``(6, steps)`` first in a log that begins
    at epoch 6 was taken for a step row, one epoch late, where it ended epoch 6.
    """
    out, prev_epoch = [], 0
    for r in rows:
        e, s = int(r["epoch"]), int(r["step"])
        g = r.get("global_step")
        if g not in (None, ""):
            g = int(g)
            out.append((g, s == steps_per_epoch and g == e * steps_per_epoch))
        else:
            is_end = s == steps_per_epoch and e == prev_epoch + 1
            out.append((e * steps_per_epoch if is_end else e * steps_per_epoch + s, is_end))
        prev_epoch = e
    return out


def complete_row(row: dict) -> bool:
    try:
        int(row["epoch"]), int(row["step"])
        return row.get("elapsed_s") not in (None, "")
    except (TypeError, ValueError, KeyError):
        return False


def _step_scalars(loss: float, acc: float, lr: float, bank_filled: int, skipped: int) -> dict[str, float]:
    return {"train/loss": loss, "train/acc": acc, "train/lr": lr, "train/bank_filled": bank_filled,
            "train/skipped_videos": skipped}


def require_tensorboard():
    """torch's SummaryWriter, or a one-line error naming the package to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's module imports the tensorboard package
        raise SystemExit(f"error: train.tensorboard=true needs the tensorboard package ({exc}); "
                         "pip install tensorboard, or drop --tensorboard") from None
    return SummaryWriter


def _open_tensorboard(folder: Path, purge_step: int | None):
    return require_tensorboard()(str(folder), purge_step=purge_step)


class RunLog:
    """Appends rows to ``log.csv`` (flushed per row) and mirrors them to TensorBoard under ``tb/``.

    ``resume_at``: the global step the run resumes from (None: a fresh run, the log is restarted);
    ``mid_epoch``: the checkpoint was taken inside an epoch (at its last step, say, by a stop), so
    that epoch's end row at ``resume_at`` is still to come and one found there is dropped.
    """

    def __init__(self, out: Path, steps_per_epoch: int, resume_at: int | None = None, tensorboard: bool = False,
                 mid_epoch: bool = False):
        self.steps_per_epoch = steps_per_epoch
        # purge_step hides the events an interrupted run logged after the checkpoint (steps > resume_at),
        # or, for a fresh run (--overwrite), every event of the run it replaces; opened
        # first, so a missing tensorboard package leaves log.csv untouched.  Mid-epoch it hides
        # resume_at too: the end scalars an interrupted resume wrote there come again, and purging
        # is by step for every tag, so the step row at resume_at goes with them (restore_step_row)
        purge = 0 if resume_at is None else resume_at + (0 if mid_epoch else 1)
        self._tb = _open_tensorboard(out / "tb", purge) if tensorboard else None
        path = out / "log.csv"
        fresh = resume_at is None or not path.exists()
        if not fresh:
            self._truncate(path, resume_at, mid_epoch)
        self._file = open(path, "w" if fresh else "a", newline="")
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(COLUMNS)
            self._file.flush()

    def _truncate(self, path: Path, resume_at: int, mid_epoch: bool) -> None:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames
        whole = [r for r in rows if complete_row(r)]  # a crash (a full disk) can leave a last row cut short
        if len(whole) < len(rows):
            log.warning("log.csv: dropped %d incomplete rows", len(rows) - len(whole))
        keep = []
        for r, (x, end) in zip(whole, row_positions(whole, self.steps_per_epoch)):
            if x < resume_at or (x == resume_at and not (end and mid_epoch)):
                keep.append(r | {"global_step": x})  # an older log's rows get the column (the same for newer ones)
        if len(keep) == len(rows) and header == COLUMNS:
            return
        write_csv_atomic(path, COLUMNS, keep, extrasaction="ignore")
        if len(keep) < len(whole):
            log.info("log.csv: dropped %d rows written after the checkpoint (step %d)", len(whole) - len(keep), resume_at)

    def step_row(self, epoch: int, step: int, loss: float, acc: float, lr: float, bank_filled: int, skipped: int,
                 elapsed: float) -> None:
        """Running means after ``step`` steps of ``epoch`` (0-based)."""
        self._write([epoch, step, loss, acc, lr, bank_filled, skipped, elapsed, float("nan")], epoch * self.steps_per_epoch + step,
                    _step_scalars(loss, acc, lr, bank_filled, skipped))

    def restore_step_row(self, epoch: int, step: int, loss: float, acc: float, lr: float, bank_filled: int,
                         skipped: int) -> None:
        """TensorBoard only: the step row at a mid-epoch checkpoint's position, which log.csv keeps
        but the purge hid (the values come from the checkpoint, unrounded, as first logged)."""
        if self._tb is not None:
            self._scalars(epoch * self.steps_per_epoch + step, _step_scalars(loss, acc, lr, bank_filled, skipped))

    def epoch_row(self, epochs_done: int, loss: float, acc: float, lr: float, bank_filled: int, skipped: int,
                  elapsed: float, val_acc: float) -> None:
        """Means over the epoch that just ended (``val_acc`` NaN: no validation)."""
        scalars = {"epoch/loss": loss, "epoch/acc": acc, "epoch/lr": lr}
        if val_acc == val_acc:
            scalars["val/acc"] = val_acc
        self._write([epochs_done, self.steps_per_epoch, loss, acc, lr, bank_filled, skipped, elapsed, val_acc],
                    epochs_done * self.steps_per_epoch, scalars)

    def _write(self, v: list, x: int, scalars: dict[str, float]) -> None:
        self._csv.writerow([v[0], v[1], f"{v[2]:.5f}", f"{v[3]:.4f}", f"{v[4]:.3g}", v[5], v[6], f"{v[7]:.1f}",
                            "" if v[8] != v[8] else f"{v[8]:.4f}", x])
        self._file.flush()
        if self._tb is not None:
            self._scalars(x, scalars)

    def _scalars(self, x: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, x)
        self._tb.flush()

    def sync(self) -> None:
        """Put the rows so far on disk (called before each checkpoint): flushed rows survive a crash
        of the process but not of the machine, and a resume keeps every row up to its checkpoint."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
