"""The public soft-DTW baseline of ``benchmarks/test_bench_otam.py`` (pysdtw's numba CUDA kernels,
launched by ``benchmarks/pysdtw_kernels.py``) runs here without a GPU, under numba's CUDA
simulator, and must equal the fp64 soft-DTW loop forward and backward.

Why: on a GPU session the benchmark checks pysdtw against that loop before timing it, and a
wrong launch (grid, lengths, the backward's boundary set-up that replaces pysdtw's per-pair loop)
would turn the "faster than the public soft-DTW kernel" target into "n/a" after the session's few
minutes were spent.  The simulator runs each GPU thread as a Python thread with
``cuda.syncthreads`` as a real barrier, so a launch that only works by luck of thread order fails.
The run is a subprocess: ``NUMBA_ENABLE_CUDASIM`` must be set before numba is first imported.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pysdtw") is None or importlib.util.find_spec("numba") is None,
    reason="pysdtw / numba not installed (pip install -e '.[test]' installs them)")

SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import pysdtw_kernels as pk
import pysdtw.sdtw_cuda as sc

# the simulator takes host arrays (a CPU tensor's numpy view shares its memory, so the kernels'
# writes land in the tensor) and cannot call a @cuda.jit function from a kernel, which numba on a
# GPU compiles as a device function: give the kernels its Python body
pk._as_array = lambda t: t.numpy()
sc.sakoe_chiba_condition = sc.sakoe_chiba_condition.py_func

torch.manual_seed(0)
worst = 0.0
# one frame, even, odd, the episode's T + 1; both of OTAM's lambdas (each GPU thread is a Python
# thread here, so the sizes stay small: 4 cases, ~10 s)
for t, gamma in ((1, 0.5), (2, 0.1), (5, 0.5), (9, 0.1)):
    d = torch.rand(2, 2, t, t) * 2         # cosine distances lie in [0, 2]
    d32 = d.clone().requires_grad_()
    d64 = d.double().requires_grad_()
    out = pk.soft_dtw_both_directions(d32, gamma)
    ref = pk.soft_dtw_both_directions_ref(d64, gamma)
    assert out.shape == ref.shape == (2, 2), out.shape
    g = torch.randn(2, 2)
    out.backward(g, retain_graph=True)
    first = d32.grad.clone()
    d32.grad = None
    out.backward(g)                        # a second backward must not see the first's writes
    ref.backward(g.double())
    fwd = ((out.double() - ref).abs() / (1 + ref.abs())).max().item()
    bwd = ((d32.grad.double() - d64.grad).abs().max() / (1 + d64.grad.abs().max())).item()
    assert torch.equal(first, d32.grad), "the second backward differs from the first"
    assert fwd < 1e-5 and bwd < 1e-5, (t, gamma, fwd, bwd)
    worst = max(worst, fwd, bwd)
print("worst relative error", worst)
"""


def test_pysdtw_kernels_match_the_soft_dtw_loop_under_numbas_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "benchmarks")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worst relative error" in proc.stdout
