"""Graceful stop for training: the first SIGINT (Ctrl-C) or SIGTERM (a scheduler preempting the
job; torchrun forwards it to every worker) lets the running step finish, then the trainer saves
its exact position to ``last.pt`` and raises :class:`TrainingStopped`; ``--resume auto`` continues
as if nothing happened.  A second Ctrl-C interrupts at once (losing the steps since the last
checkpoint).  Under DDP the ranks agree on the step to stop at (:func:`hr2g.distributed.any_rank`).
"""
from __future__ import annotations

import abc
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def position(epoch: int, step: int) -> str:
    """A checkpoint's place in training, as the stop and the resume both say it: ``epoch`` is
    0-based, ``step`` the steps done in it; epochs are counted from 1 in words."""
    return f"after step {step} of epoch {epoch + 1}" if step else f"before epoch {epoch + 1}"


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after checkpointing; ``except Exception`` does not swallow it."""

    def __init__(self, signal_name: str, checkpoint: str, epoch: int, step: int):
        """``epoch`` (0-based) and ``step`` (steps done in it): the position saved in ``checkpoint``."""
        super().__init__(f"{signal_name}: stopped {position(epoch, step)}, saved {checkpoint}")
        self.signal_name, self.checkpoint, self.epoch, self.step = signal_name, checkpoint, epoch, step


class _SignalHandlers(abc.ABC):
    """While active, SIGINT/SIGTERM go to ``_handle``.  Signal handlers can only be installed from
    the main thread; elsewhere nothing is installed and signals keep their usual effect."""

    def __init__(self) -> None:
        self._previous: dict = {}
        self._owner: int | None = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._owner = os.getpid()
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @abc.abstractmethod
    def _handle(self, signum, frame) -> None:
        """What SIGINT / SIGTERM do while active."""


class StopSignals(_SignalHandlers):
    """While active, SIGINT/SIGTERM are recorded in ``received`` (the first one's name) instead of
    ending the process."""

    def __init__(self) -> None:
        super().__init__()
        self.received: str | None = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._owner:
            # a forked decoding worker inherited this handler: a terminal's Ctrl-C reaches the whole
            # process group, and each of data.num_workers=2's workers printed the message again;
            # the trainer stops them itself after its checkpoint
            return
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name
        # os.write, not logging: a handler may run while the logging lock is held
        again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        os.write(2, f"\nhr2g.train: {signal.Signals(signum).name} received: finishing this step, then saving a "
                    f"checkpoint{again}\n".encode())


class FinalTestSkipped(KeyboardInterrupt):
    """A signal during the last epoch's validation or the final test: training is finished and
    saved, the final test was skipped or cut short.  (The first used to be taken for a stop and
    then ignored -- the whole test ran and the run exited 0; the second ended the process.)"""

    def __init__(self, signal_name: str, checkpoint: str, during_test: bool):
        what = "cut short" if during_test else "skipped"
        super().__init__(f"{signal_name}: training finished and saved; the final test was {what}: run it with "
                         f"python -m hr2g.evaluate --checkpoint {checkpoint}")
        self.signal_name, self.checkpoint = signal_name, checkpoint


class SignalInterrupt(KeyboardInterrupt):
    """Raised by :class:`InterruptOnSignal` at the first SIGINT / SIGTERM."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class InterruptOnSignal(_SignalHandlers):
    """While active, the first SIGINT or SIGTERM raises :class:`SignalInterrupt` at once: for work
    with nothing to save midway (the final test).  Main thread only, as :class:`StopSignals`."""

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._owner:  # a forked worker: its parent decides
            return
        raise SignalInterrupt(signal.Signals(signum).name)
