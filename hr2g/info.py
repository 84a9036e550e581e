"""``python -m hr2g.info``: versions, the device, and which backend runs each op here -- and why not.

Every verdict comes from :mod:`hr2g._dispatch` on small representative tensors (CPU, plus CUDA
when a GPU is visible), so the table says exactly what ``backend="auto"`` will do and repeats a
refusing backend's own reason.  Optional parts are imported here, in ``main``, never at import.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap

import torch

from hr2g import _dispatch

BACKENDS = _dispatch.BACKENDS  # column order: triton, ext, torch


def _version(module: str, attr: str = "__version__") -> str:
    """A module's version, or why it cannot be imported (any failure: missing, ABI, driver)."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return str(getattr(mod, attr, "unknown version"))


def versions() -> list[tuple[str, str]]:
    cuda = torch.version.cuda or "none (CPU-only torch build)"
    return [
        ("python", sys.version.split()[0]),
        ("torch", f"{torch.__version__} (CUDA {cuda})"),
        ("triton", _version("triton")),
        ("open_clip", _version("open_clip")),
        ("DALI", _version("nvidia.dali")),
        ("PyAV", _version("av")),
        ("hr2g._C", _ext_status()),
        ("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")),
    ]


def _ext_status() -> str:
    mod, why = _dispatch.load_module("hr2g._bank_ext")
    if mod is None:
        return why
    return "built with CUDA kernels" if mod.WITH_CUDA else "built, CPU kernels only (no CUDA kernels)"


def device_line() -> str:
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(i)
        return f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{major}{minor}), {torch.get_num_threads()} CPU threads"
    return f"cpu only (torch.cuda.is_available() is False), {torch.get_num_threads()} CPU threads"


def example_args(device: torch.device) -> dict[str, tuple]:
    """Small arguments with the model's layout for each op (C=64; IKT's M=3, G=50, top-35)."""
    x = torch.randn(1, 2, 8, 64, device=device)  # [B, H, S, d]
    return {
        "otam_distance": (torch.randn(2, 8, 64, device=device), torch.randn(3, 8, 64, device=device), 0.5),
        "sample_attention": (x, x, x, 5),
        "bank_retrieve": (torch.randn(3, 64, device=device), torch.randn(50, 64, device=device), 50, 35, 1.0),
        "bank_update_": (torch.randn(50, 64, device=device), 50, torch.randn(3, 64, device=device), 0.99),
    }


def backend_table(device: torch.device) -> list[str]:
    """The op x backend table for tensors on ``device``, refusal reasons as numbered notes."""
    rows, notes = [], []
    for op, args in example_args(device).items():
        cells = []
        for backend in BACKENDS:
            why = _dispatch.refusal(op, backend, args, auto=True)
            if why is None:
                cells.append("available")
            else:
                notes.append(f"[{len(notes) + 1}] {op} / {backend}: {why}")
                cells.append(f"refused [{len(notes)}]")
        picked, _ = _dispatch.resolve(op, "auto", *args)
        rows.append([op, *cells, picked])
    header = ["op", *BACKENDS, "auto picks"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"ops on {device.type} tensors:", "  " + fmt.format(*header), "  " + fmt.format(*("-" * w for w in widths))]
    lines += ["  " + fmt.format(*r) for r in rows]
    for note in notes:
        lines += textwrap.wrap(note, width=110, initial_indent="  ", subsequent_indent="      ",
                               break_long_words=False, break_on_hyphens=False)
    return lines


def report() -> str:
    lines = ["hr2g " + _version("hr2g")]
    lines += [f"  {name:<16} {value}" for name, value in versions()]
    lines += [f"  {'device':<16} {device_line()}", ""]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        lines += backend_table(device) + [""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hr2g.info",
        description="Print versions, the device, and for each op which backend runs here (and why the others refuse).")
    parser.parse_args(argv)
    print(report(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
