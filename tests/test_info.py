"""``python -m hr2g.info``: it runs, names every op and backend, and agrees with the dispatcher."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from hr2g import _dispatch, info


def test_info_table_covers_every_op(capsys):
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert f"torch            {torch.__version__}" in out
    for name in ("triton", "open_clip", "DALI", "PyAV", "hr2g._C", "device"):
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), f"no {name} line in:\n{out}"
    assert "ops on cpu tensors:" in out
    header = re.search(r"^  op\s+triton\s+ext\s+torch\s+auto picks\s*$", out, re.M)
    assert header, out
    for op, args in info.example_args(torch.device("cpu")).items():
        row = re.search(rf"^  {op}\s+(.*)$", out, re.M)
        assert row, f"no row for {op} in:\n{out}"
        cells = re.split(r"\s{2,}", row.group(1).strip())
        verdicts = {b: _dispatch.refusal(op, b, args, auto=True) for b in _dispatch.BACKENDS}
        for cell, backend in zip(cells[:3], _dispatch.BACKENDS):
            if verdicts[backend] is None:
                assert cell == "available"
            else:  # the numbered note repeats the dispatcher's reason (wrapped, so compare words)
                note = re.search(rf"^  {re.escape(cell.split()[1])} {op} / {backend}: (.*?)(?=^  \[|^\s*$|\Z)", out, re.M | re.S)
                assert note and note.group(1).split() == verdicts[backend].split(), (op, backend, out)
        assert cells[3] == _dispatch.resolve(op, "auto", *args)[0]


def test_info_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "hr2g.info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bank_update_" in done.stdout and "auto picks" in done.stdout


def test_info_says_why_a_part_is_missing_and_what_the_extension_holds(monkeypatch):
    real_import = info.importlib.import_module

    def fake_import(name, *a, **k):
        if name == "av":
            raise ImportError("libavcodec.so.61: cannot open shared object file\nsecond line")
        if name == "triton":
            raise OSError("")
        return real_import(name, *a, **k)

    monkeypatch.setattr(info.importlib, "import_module", fake_import)
    assert info._version("av") == "not importable (ImportError: libavcodec.so.61: cannot open shared object file)"
    assert info._version("triton") == "not importable (OSError: )"
    assert info._version("hr2g.info", "no_such_attr") == "unknown version"

    monkeypatch.setattr(info.torch.version, "cuda", None)
    assert dict(info.versions())["torch"] == f"{torch.__version__} (CUDA none (CPU-only torch build))"
    for with_cuda, text in ((True, "built with CUDA kernels"), (False, "built, CPU kernels only (no CUDA kernels)")):
        ext = type("Ext", (), {"WITH_CUDA": with_cuda})
        monkeypatch.setattr(info._dispatch, "load_module", lambda name, ext=ext: (ext, None))
        assert info._ext_status() == text
    monkeypatch.setattr(info._dispatch, "load_module", lambda name: (None, "hr2g._bank_ext failed to import: boom"))
    assert info._ext_status() == "hr2g._bank_ext failed to import: boom"
    assert dict(info.versions())["hr2g._C"] == "hr2g._bank_ext failed to import: boom"


def test_info_names_the_device_and_refuses_unknown_flags(capsys):
    line = info.device_line()
    if torch.cuda.is_available():
        assert re.match(rf"cuda:\d+ .+ \(sm_\d+\), {torch.get_num_threads()} CPU threads$", line), line
    else:
        assert line == f"cpu only (torch.cuda.is_available() is False), {torch.get_num_threads()} CPU threads"
    assert f"  device           {line}\n" in info.report()
    with pytest.raises(SystemExit) as exc:
        info.main(["--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
