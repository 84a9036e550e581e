"""Errors the commands report as one ``error:`` line instead of a traceback."""
from __future__ import annotations


class SetupError(ValueError):
    """A run that cannot start as configured -- an episode shape a split cannot fill, a backend that
    cannot run here, CLIP weights that cannot be loaded; the message says what and how to fix it.
    Raised before any training or evaluation work, so nothing is lost."""


class WeightsUnavailable(SetupError, RuntimeError):
    """The CLIP weights named by ``model.pretrained`` cannot be loaded (offline, wrong path)."""
