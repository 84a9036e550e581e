"""Benchmark harness shared by ``benchmarks/test_bench_*.py``.

Without CUDA the suite runs in *smoke mode*: every provider is executed once on a small shape so
CI proves the benchmarks still run and agree, but no timing means anything (CPU, interpreter).
With CUDA each measurement is synchronised and repeated; pytest-benchmark reports median and
spread, and ``extra_info`` records device, versions and FLOP/s or GB/s from explicit counts.
"""
import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

SMOKE = not torch.cuda.is_available()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke mode)"


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def run_bench(benchmark):
    """``run_bench(fn, flops=None, bytes=None, **info)``: time ``fn()`` (synchronised on CUDA).

    Returns fn's last result so callers can check providers agree.  A provider that raises makes
    the benchmark fail (never swallowed as NaN).
    """

    def _run(fn, flops: float | None = None, nbytes: float | None = None, rounds: int = 50, **info):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        out = {}

        def call():
            out["r"] = fn()
            sync()

        benchmark.extra_info.update(device=device_name(), torch=torch.__version__, smoke=SMOKE, **info)
        try:
            import triton

            benchmark.extra_info["triton"] = triton.__version__
        except ImportError:
            pass
        if SMOKE:
            benchmark.pedantic(call, rounds=1, iterations=1, warmup_rounds=0)
        else:
            benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=3)
            med = benchmark.stats.stats.median
            if flops:
                benchmark.extra_info["TFLOP/s"] = flops / med / 1e12
            if nbytes:
                benchmark.extra_info["GB/s"] = nbytes / med / 1e9
        return out["r"]

    return _run
