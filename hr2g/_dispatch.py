"""Backend selection for the public ops, with a reason for every refusal.

Backends: ``triton`` (hr2g.kernels, CUDA tensors or ``TRITON_INTERPRET=1``), ``ext`` (the compiled
extension hr2g._C, CPU and CUDA; ``cuda`` is accepted as an alias) and ``torch`` (hr2g.reference,
always available).  ``auto`` walks the op's preference list and takes the first backend that does
not refuse.  Optional parts are imported lazily, once, on first use -- never at ``import hr2g``.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import torch

BACKENDS = ("triton", "ext", "torch")
ALIASES = {"cuda": "ext"}

# op -> backends that implement it, in ``auto`` preference order.
# Triton is preferred on CUDA tensors only: under the CPU interpreter it is a test vehicle, far
# slower than the reference, so ``auto`` on CPU skips it (see ``_triton_reason``).
IMPLEMENTED = {
    "otam_distance": ("triton", "torch"),
    "sample_attention": ("triton", "torch"),
    "bank_retrieve": ("ext", "torch"),
    "bank_update_": ("ext", "torch"),
}

# Module that holds each op's non-reference implementation.  Each module exposes the op under
# the same name and ``unsupported_reason(op, *args) -> str | None`` for its own limits.
_MODULES = {
    ("triton", "otam_distance"): "hr2g.kernels.otam",
    ("triton", "sample_attention"): "hr2g.kernels.sample_attention",
    ("ext", "bank_retrieve"): "hr2g._bank_ext",
    ("ext", "bank_update_"): "hr2g._bank_ext",
}


def model_backend(op: str, backend: str) -> str:
    """What a model-wide ``model.backend`` means for ``op``: that backend where ``op`` has it (an
    explicit request: refused loudly if it cannot run), else ``auto``.  ``--backend triton`` asks
    for the Triton kernels, not for the bank ops (which have none) to fail."""
    return backend if ALIASES.get(backend, backend) in IMPLEMENTED[op] or backend == "auto" else "auto"


class BackendUnavailable(RuntimeError):
    """Raised when an explicitly requested backend refuses; the message says why."""


def interpret_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter, read as Triton reads it: 1, true,
    on, yes (any case) in Triton 3.8, not only "1" -- with ``=true`` Triton interpreted while the
    kernels thought they were on a GPU (no fp32 upcast of bf16 tiles: errors of 8e8 on bf16
    attention; 8 autotune configs timed on no GPU: "0 active drivers")."""
    value = os.environ.get("TRITON_INTERPRET")
    if value is None:
        return False
    # every Triton since 3.0 takes these alike; they are read here without asking Triton, since
    # torch.compile traces the dispatch and cannot trace Triton's C++ getenv_bool (a graph break)
    word = value.lower()
    if word in ("1", "true", "on"):
        return True
    if word in ("", "0", "false", "off"):
        return False
    try:  # "yes", "y", ...: 3.8 takes yes and y, older ones do not -- Triton's own reading decides
        from triton import knobs
    except ImportError:  # no triton (nothing to interpret), or one without knobs (< 3.4)
        return False
    return bool(knobs.runtime.interpret)


def triton_interpreting(op: str | None = None) -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set and (given ``op``) ``op``'s kernel module, if already
    imported, was imported under it.  Triton fixes interpretation at import (``triton.jit`` reads
    the variable then): set only afterwards, it used to get CPU tensors approved for kernels
    compiled for a GPU ("0 active drivers").  Both must agree; unset now, the kernels are refused
    on the CPU whatever they were imported as, as the variable's contract says."""
    if not interpret_requested():
        return False
    mod = sys.modules.get(_MODULES.get(("triton", op), "")) if op is not None else None
    return bool(getattr(mod, "_INTERPRET", True))


# name -> (module, None) or (None, reason), filled on first use.  A plain dict and import
# statements rather than functools.cache + importlib.import_module: torch.compile traces the
# dispatch of every public op, and Dynamo refuses importlib.import_module (a graph break, an error
# under fullgraph=True) and ignores functools.cache, while it runs import statements and reads the
# dict.  Without this, compiling ops.otam_distance(backend="triton") or the bank ops failed.
_LOADED: dict[str, tuple] = {}


def _import(name: str):
    if name == "hr2g.kernels.otam":
        import hr2g.kernels.otam as mod
    elif name == "hr2g.kernels.sample_attention":
        import hr2g.kernels.sample_attention as mod
    elif name == "hr2g._bank_ext":
        import hr2g._bank_ext as mod
    else:
        raise ModuleNotFoundError(f"{name} is not one of hr2g's optional backend modules")
    return mod


def load_module(name: str):
    """Import an optional module once; returns ``(module, None)`` or ``(None, reason)``."""
    if name not in _LOADED:
        try:
            _LOADED[name] = _import(name), None
        except Exception as exc:  # report any failure (missing dep, ABI mismatch, compile error)
            _LOADED[name] = None, f"{name} failed to import: {type(exc).__name__}: {exc}"
    return _LOADED[name]


def refuse_double_backward(op: str) -> None:
    """Called first in every fused backward.  Autograd runs a backward with grad mode on only for
    ``create_graph=True``; the kernels' gradients are not themselves differentiable, and without
    this a double backward (a gradient penalty) treated them as constants and returned wrong second
    derivatives without a word."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: the fused backward is not differentiable (double backward, create_graph=True); "
                           "use backend='torch' for higher-order gradients")


def _tensors(args) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _device_reason(op: str, backend: str, args, auto: bool) -> str | None:
    ts = _tensors(args)
    devices = {t.device.type for t in ts}
    if len({t.device for t in ts}) > 1:
        return f"tensors are on different devices: {sorted(str(t.device) for t in ts)}"
    if backend == "triton" and "cuda" not in devices:
        if not triton_interpreting(op):
            if triton_interpreting():
                return (f"tensors are on the CPU and {_MODULES[(backend, op)]} was imported before TRITON_INTERPRET=1 "
                        "was set (Triton reads it at import): set it before importing hr2g's kernels")
            return "tensors are on the CPU and TRITON_INTERPRET=1 is not set (Triton needs CUDA tensors)"
        if auto:
            return "CPU tensors: the Triton interpreter is a test vehicle, slower than the reference; request backend='triton' explicitly"
        return interpreter_reason()
    return None


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def interpreter_reason(triton_version: str | None = None, numpy_version: str | None = None) -> str | None:
    """Triton <= 3.6's interpreter turns a loop bound (a 1-element array) into an int with
    ``int(array)``, which numpy >= 2.4 rejects ("only 0-dimensional arrays can be converted"):
    every kernel with a runtime-bounded loop fails.  3.7 squeezes first (seen with 3.6.0 / numpy
    2.4.6 failing, 2.3.5 passing; 3.8.0 / 2.4 passing)."""
    if triton_version is None or numpy_version is None:
        import numpy
        import triton

        triton_version, numpy_version = triton.__version__, numpy.__version__
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 4):
        return (f"the interpreter of triton {triton_version} cannot run these kernels with numpy {numpy_version} "
                f"(needs triton >= 3.7 or numpy < 2.4)")
    return None


def refusal(op: str, backend: str, args, auto: bool = False) -> str | None:
    """Why ``backend`` cannot run ``op`` on these arguments, or ``None`` if it can."""
    backend = ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {('auto',) + BACKENDS + tuple(ALIASES)}"
    if backend not in IMPLEMENTED[op]:
        return f"{op} has no {backend} implementation (available: {IMPLEMENTED[op]})"
    if backend == "torch":
        return None
    why = _device_reason(op, backend, args, auto)
    if why:
        return why
    mod, why = load_module(_MODULES[(backend, op)])
    if mod is None:
        return why
    return mod.unsupported_reason(op, *args)


def reasons(op: str, *args) -> dict[str, str | None]:
    """Every implemented backend's verdict for these arguments (``None`` = usable)."""
    return {b: refusal(op, b, args, auto=True) for b in IMPLEMENTED[op]}


def resolve(op: str, backend: str, *args) -> tuple[str, Callable]:
    """Pick the backend for ``op`` and return ``(name, function)``."""
    if backend == "auto":
        for b in IMPLEMENTED[op]:
            if refusal(op, b, args, auto=True) is None:
                return b, _function(op, b)
        raise AssertionError("the torch backend never refuses")
    name = ALIASES.get(backend, backend)
    why = refusal(op, name, args)
    if why is not None:
        raise BackendUnavailable(f"{op}: backend {backend!r} refused: {why}")
    return name, _function(op, name)


def _function(op: str, backend: str) -> Callable:
    if backend == "torch":
        from hr2g import reference

        return getattr(reference, f"{op.rstrip('_')}_ref_" if op.endswith("_") else f"{op}_ref")
    mod, _ = load_module(_MODULES[(backend, op)])
    return getattr(mod, op)
