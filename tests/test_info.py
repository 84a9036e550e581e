"""``python -m hr2g.info``: it runs, names every op and backend, and agrees with the dispatcher."""
from __future__ import annotations

import re
import subprocess
import sys

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
