"""Benchmark harness shared by ``benchmarks/test_bench_*.py``.

Without CUDA the suite runs in *smoke mode*: every provider is executed once on a small shape so
CI proves the benchmarks still run and agree, but no timing means anything (CPU, interpreter).
With CUDA each measurement is synchronised and repeated; pytest-benchmark reports median and
spread, and ``extra_info`` records device, versions and FLOP/s or GB/s from explicit counts.
A round is one call and a synchronize, timed on the host: the latency of one call, launch and
Python overhead included (what the verdicts use).  ``extra_info["pipelined_s"]`` adds the time per
call of up to 20 calls queued back to back (CUDA events, one synchronize), as in a training loop where
launches overlap the previous call's kernels: at episode shapes, where a kernel takes microseconds,
the two differ most.

``HR2G_BENCH_PARTIAL=FILE`` appends each benchmark's record to FILE (JSON lines, the
``--benchmark-json`` entry's fields) as soon as its test ends (``failed`` in its extra_info when a
check after the timing failed): pytest-benchmark writes its JSON only
when the session ends, so a run killed by a time limit would otherwise lose every figure.
``python benchmarks/report.py FILE`` reads either.

``HR2G_BENCH_CPU=1`` times, on a machine without CUDA, the benchmarks whose CPU timing means
something (they pass ``cpu_timing=True``: the C++ bank op vs its reference, PyAV / DALI-CPU
decoding, the tiny model's episode) at their full shapes; everything else stays in smoke mode.
Each record's ``extra_info["smoke"]`` says which it was.
"""
import json
import os
import time
from datetime import datetime, timezone

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

SMOKE = not torch.cuda.is_available()
CPU_TIMING = SMOKE and os.environ.get("HR2G_BENCH_CPU", "0") == "1"


# Providers whose first call compiles for long (Inductor building the OTAM reference's unrolled
# DP: ~11 s per shape on the CPU, never measured on a GPU) run after every other benchmark, so a
# run stopped at a time limit (benchmarks/gpu_session.sh) has all the other figures.
LAST_PROVIDERS = ("torch_compile",)


def pytest_collection_modifyitems(config, items):
    def last(item) -> bool:
        callspec = getattr(item, "callspec", None)
        return callspec is not None and callspec.params.get("provider") in LAST_PROVIDERS

    items.sort(key=last)  # stable: the order is otherwise unchanged


def cpu_name() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def device_name(timed_on_cpu: bool = False) -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu: {cpu_name()}" if timed_on_cpu else "cpu (smoke mode)"


def full_shapes() -> bool:
    """Whether benchmarks that also time on the CPU should use their real shapes."""
    return not SMOKE or CPU_TIMING


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# A test timed by run_bench: its benchmark, so that the outcome of the checks after the timing
# (a non-finite result, say) reaches the record before anything is written or reported
_TIMED = pytest.StashKey[object]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed after it was timed marks its record ``failed`` (report.py then claims
    nothing from it: pytest-benchmark saves its stats whatever the outcome).  The record goes to
    HR2G_BENCH_PARTIAL only now, with that mark."""
    report = (yield).get_result()
    benchmark = item.stash.get(_TIMED, None)
    if report.when != "call" or benchmark is None:
        return
    if report.failed:
        benchmark.extra_info["failed"] = True
    if os.environ.get("HR2G_BENCH_PARTIAL"):
        _append_partial(os.environ["HR2G_BENCH_PARTIAL"], item, benchmark)


def _append_partial(path: str, item, benchmark) -> None:
    """One finished benchmark as a line of ``path`` (fields as in pytest-benchmark's JSON)."""
    stats = benchmark.stats.stats
    callspec = getattr(item, "callspec", None)
    record = dict(name=item.name, params=dict(callspec.params) if callspec else {},
                  stats=dict(median=stats.median, iqr=stats.iqr, rounds=stats.rounds),
                  extra_info=dict(benchmark.extra_info), datetime=datetime.now(timezone.utc).isoformat())
    with open(path, "a") as f:  # one write per line: a kill leaves at most a truncated last line
        f.write(json.dumps(record, default=str) + "\n")


# Warm-up before the timed rounds: at least 2 calls (the first compiles, autotunes, allocates) and
# at least this long, so the GPU's clocks have left idle -- a call at episode shapes takes ~10-100
# µs, and 3 of them (pytest-benchmark's warmup_rounds) is well under a millisecond of GPU work
# after the seconds of CPU work (inputs, reference checks) that precede every benchmark.
WARMUP_S = 0.1


def _warm_up(call) -> int:
    start, n = time.perf_counter(), 0
    while n < 2 or (time.perf_counter() - start < WARMUP_S and n < 10_000):
        call()
        n += 1
    return n


def _pipelined(fn, median: float) -> dict:
    """Seconds per call of up to 20 calls queued back to back on the GPU (CUDA events); fewer
    (at least 3) for slow providers, so this costs a benchmark at most ~0.25 s more."""
    calls = max(3, min(20, int(0.25 / max(median, 1e-9))))
    try:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return {"pipelined_s": start.elapsed_time(end) / 1e3 / calls}
    except Exception as exc:  # an extra figure: its failure must not cost the median
        return {"pipelined_error": f"{type(exc).__name__}: {exc}"[:200]}


@pytest.fixture
def run_bench(benchmark, request):
    """``run_bench(fn, flops=None, nbytes=None, rounds=50, cpu_timing=False, per_second=None, **info)``:
    time ``fn()`` (synchronised on CUDA; on the CPU only with ``cpu_timing`` and ``HR2G_BENCH_CPU=1``).
    ``per_second={"frames/s": n}`` records ``n / median`` in ``extra_info`` as flops and nbytes do.

    Returns fn's last result so callers can check providers agree.  A provider that raises makes
    the benchmark fail (never swallowed as NaN).
    """

    def _run(fn, flops: float | None = None, nbytes: float | None = None, rounds: int = 50, cpu_timing: bool = False,
             per_second: dict[str, float] | None = None, **info):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        smoke = SMOKE and not (cpu_timing and CPU_TIMING)
        out = {}

        def call():
            out["r"] = fn()
            sync()

        benchmark.extra_info.update(device=device_name(timed_on_cpu=not smoke), torch=torch.__version__, smoke=smoke, **info)
        try:
            import triton

            benchmark.extra_info["triton"] = triton.__version__
        except ImportError:
            pass
        if smoke:
            benchmark.pedantic(call, rounds=1, iterations=1, warmup_rounds=0)
        else:
            benchmark.extra_info["warmup_calls"] = _warm_up(call)
            benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
        if benchmark.stats is None:
            # pytest-benchmark disabled (--benchmark-disable, or inside an xdist worker): fn ran
            # once and nothing was measured, so no record and no rate
            benchmark.extra_info["smoke"] = True
            return out["r"]
        if not smoke:
            med = benchmark.stats.stats.median
            if torch.cuda.is_available():
                benchmark.extra_info.update(_pipelined(fn, med))
            if flops:
                benchmark.extra_info["TFLOP/s"] = flops / med / 1e12
            if nbytes:
                benchmark.extra_info["GB/s"] = nbytes / med / 1e9
            for unit, count in (per_second or {}).items():
                benchmark.extra_info[unit] = count / med
        request.node.stash[_TIMED] = benchmark  # recorded once the test's outcome is known
        return out["r"]

    return _run


@pytest.fixture(scope="session")
def bench_full_shapes() -> bool:
    """True on CUDA, or on the CPU under ``HR2G_BENCH_CPU=1``: benchmarks with ``cpu_timing`` use
    their real shapes then (and their smoke shapes otherwise)."""
    return full_shapes()
