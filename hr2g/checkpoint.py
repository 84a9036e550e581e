"""Atomic checkpoints: written to a temporary file in the same folder, fsync'd, then renamed over
the target, so a crash mid-write leaves the previous checkpoint intact."""
from __future__ import annotations

import csv
import io
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

_np_core = np._core if hasattr(np, "_core") else np.core  # numpy >= 2 / 1.x
_NUMPY_ARRAY_GLOBALS = [_np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


TMP_SUFFIX = ".tmp"  # of the half-written files below (a killed run's are removed at the next start)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, say); the previous one at its path is intact."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL with a unique name, like mkstemp, but mode 0666 & ~umask like any new file (mkstemp: 0600)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)  # the rename itself, or a power cut can bring the old name back
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except (OSError, RuntimeError) as exc:
        # a full disk shows as torch's "[enforce fail at inline_container.cc] unexpected pos", raised
        # while handling the OSError that says what happened: name that one
        cause = next((e for e in (exc, exc.__context__, exc.__cause__) if isinstance(e, OSError)), None)
        if cause is None:  # not the file system's (an object that does not pickle): as it is
            raise
        why = cause.strerror or str(cause)
        err = CheckpointWriteError(f"cannot write checkpoint {path}: {why} (the previous one there, if any, is intact)")
        err.errno = getattr(cause, "errno", None)  # one-argument OSError: str() without "[Errno n]"
        raise err from exc


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open folders: nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never a part (logs, result tables), also
    after a power cut (the file and the rename are synced)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_csv_atomic(path: str | os.PathLike, fieldnames, rows, **writer_options) -> None:
    """``rows`` (dicts) as a CSV table with a header, written as :func:`write_text_atomic` does."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fieldnames, **writer_options)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete half-written checkpoints (``.<name>.pt.<pid>.<hex>.tmp``) a killed run left in
    ``folder`` -- each as large as a checkpoint.  Call with the folder's :class:`RunLock` held."""
    for tmp in Path(folder).glob(f".*.pt.*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
        except OSError:
            pass


# The lock files this process holds.  A forked child (a DataLoader's decoding worker) inherits
# their descriptors, and an flock lasts while any copy is open: after a kill -9 the orphaned
# workers held the folder for the ~5 s they take to notice, and a --resume at once was refused.
# Every fork closes the child's copies (os.register_at_fork), so the lock goes with the run.
_HELD: set = set()


def _close_held_in_child() -> None:
    for f in list(_HELD):
        try:
            f.close()  # the child's descriptor only: the parent's still holds the lock
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` while a run writes there: two runs into one
    folder interleaved their checkpoints and one's log.csv rows went to a deleted file.  The lock
    goes with the process (a killed run leaves none behind, its forked workers hold none); a file
    system without flock (some network mounts) runs unlocked, with a warning."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._file = None

    def __enter__(self) -> "RunLock":
        import fcntl
        import logging

        from hr2g.errors import SetupError

        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise SetupError(f"{self.folder} is in use by another training run (PID {pid}): wait for it to finish, "
                             "or pass another --out") from None
        except OSError as exc:
            logging.getLogger("hr2g.train").warning("%s: cannot lock the run folder (%s); running unlocked", self.folder, exc)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        _HELD.add(f)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            _HELD.discard(self._file)
            self._file.close()  # releases the lock
            self._file = None


def _check_crcs(path: Path) -> None:
    """torch.load does not check the archive's CRCs: 2,000 bytes flipped inside a tensor loaded
    silently (weights off by 1e5) and were evaluated.  Checking them reads the file once more,
    0.17 s for 400 MB here (page cache warm), beside torch.load's 0.41 s."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # a damaged directory or header
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {first})") from exc
    if bad is not None:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: its entry {bad!r} fails its CRC check (a damaged copy "
                         "or disk); use another checkpoint of the run (its best.pt or last.pt)")


def load(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """The checkpoint at ``path``; ``mmap=True`` maps its tensors instead of reading them (for a
    quick look at the config of a multi-GB checkpoint)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is a folder; pass a .pt file in it (last.pt, best.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:  # torch's message for it is about mmap and zip archives
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): not written by hr2g.train, which renames a "
                         "complete file into place; an interrupted copy?")
    if not zipfile.is_zipfile(path):  # torch's messages for it advise weights_only=False or mmap options
        raise ValueError(f"checkpoint {str(path)!r} is not a PyTorch checkpoint (not a zip archive): corrupt, "
                         "truncated, or not written by hr2g.train")
    if not mmap:  # (a mapped load reads only what it touches: the config; the full load checks)
        _check_crcs(path)
    try:
        # weights_only: unpickling runs no code from the file, so a downloaded checkpoint is safe to
        # load; numpy arrays are allowed for checkpoints written before the RNG state became lists
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run on for lines
        raise ValueError(f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {first})") from exc
    for key in ("config", "model"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {str(path)!r} has no {key!r} entry: not an hr2g checkpoint")
    return ckpt


def config_of(ckpt: dict, path) -> "Config":  # noqa: F821
    """The checkpoint's Config; ValueError naming the file if this version of hr2g cannot read it."""
    from hr2g.config import Config

    try:
        cfg = Config.from_dict(ckpt["config"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"checkpoint {str(path)!r}: its config does not load in this version of hr2g ({exc})") from None
    if cfg.data.dataset == "synthetic":  # runs from before 2026-12-02 may name one, which never ran: not an error
        cfg.data.decoder = "auto"
    return cfg


def load_weights(model: torch.nn.Module, state: dict, path, built_from: str = "its config builds") -> None:
    """``model.load_state_dict(state)``, or a ValueError that names the file and says in one line
    which entries are missing, unexpected or of another shape (torch's message lists them all)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for what, v in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if v]
    if parts:
        raise ValueError(f"checkpoint {str(path)!r}: its weights do not fit the model {built_from}: "
                         f"{'; '.join(parts)}")
    model.load_state_dict(state)
