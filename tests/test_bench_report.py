"""benchmarks/report.py: speedups and issue targets from a pytest-benchmark JSON."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_report", Path(__file__).parents[1] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_spec)
sys.modules["bench_report"] = report  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(report)


def _bench(test, params, median, smoke=False, **extra):
    name = f"{test}[{'-'.join(params.values())}]"
    return dict(name=name, params=params, extra_info=dict(device="NVIDIA H100", torch="2.11", smoke=smoke, **extra),
                stats=dict(median=median, iqr=median / 10, rounds=50))


def _write(tmp_path, benches, dirty=False):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(dict(benchmarks=benches, datetime="2026-11-25T10:00:00",
                                    commit_info=dict(id="0123456789abcdef", dirty=dirty))))
    return path


def _otam(workload, provider, median, **kw):
    return _bench("test_bench_otam", dict(workload=workload, provider=provider), median, **kw)


def _attn(workload, mode, dtype, provider, median):
    return _bench("test_bench_sample_attention", dict(workload=workload, mode=mode, dtype=dtype, provider=provider), median)


def test_speedups_are_grouped_by_every_other_parameter(tmp_path):
    _, rows = report.load(_write(tmp_path, [
        _attn("train_5w1s", "fwd", "f32", "fused", 10e-6), _attn("train_5w1s", "fwd", "f32", "sdpa_mask", 35e-6),
        _attn("train_5w1s", "fwd", "bf16", "fused", 20e-6), _attn("train_5w1s", "fwd", "bf16", "sdpa_mask", 30e-6),
        _bench("test_bench_isc_variants", dict(variant="isc"), 1e-3),
    ]))
    ups = {(r.label, r.provider): x for r, x in report.speedups(rows).items()}
    assert ups[("train_5w1s fwd f32", "sdpa_mask")] == pytest.approx(3.5)
    assert ups[("train_5w1s fwd bf16", "sdpa_mask")] == pytest.approx(1.5)
    assert ups[("train_5w1s fwd f32", "fused")] is None  # not compared with itself
    assert ups[("isc", "-")] is None  # no fused provider in that group


def test_targets_met_missed_and_unmeasured(tmp_path):
    benches = [_otam("train_5w1s", "triton", 40e-6), _otam("train_5w1s", "torch", 4e-3),  # 100x: met
               _otam("eval_10k_episodes", "triton", 6e-3), _otam("eval_10k_episodes", "pysdtw", 3e-3)]  # both missed
    benches += [_attn("train_5w1s", "fwd", "f32", "fused", 10e-6), _attn("train_5w1s", "fwd", "f32", "sdpa_mask", 19e-6)]
    _, rows = report.load(_write(tmp_path, benches))
    got = {t.what: t for t in report.targets(rows)}
    assert got["OTAM fwd+bwd, train episode: Triton vs reference loop"].ok is True
    assert got["OTAM eval_10k_episodes: Triton vs pysdtw (soft-DTW CUDA)"].ok is False
    assert got["OTAM, 10,000 test episodes at once"].ok is False
    assert got["sample attention train_5w1s fwd f32: fused vs SDPA with mask"].ok is False  # 1.9x < 2x
    unmeasured = got["OTAM train_5w1s: Triton vs pysdtw (soft-DTW CUDA)"]
    assert unmeasured.ok is None and "pysdtw not timed" in unmeasured.value


def test_smoke_rows_claim_nothing(tmp_path, capsys):
    path = _write(tmp_path, [_otam("train_5w1s", "triton", 1e-6, smoke=True), _otam("train_5w1s", "torch", 1.0, smoke=True),
                             _otam("eval_10k_episodes", "triton", 1e-6, smoke=True),
                             _bench("test_bench_bank", dict(workload="update", provider="ext"), 1e-4),
                             _bench("test_bench_bank", dict(workload="update", provider="torch"), 3e-4)], dirty=True)
    out = tmp_path / "r.md"
    assert report.main([str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "3 of 5 rows ran in smoke mode" in text and "commit 0123456789+dirty" in text and "date 2026-11-25" in text
    assert "| met |" not in text and "MISSED" not in text and "1e+06x" not in text
    assert "| train_5w1s | torch | untimed | | | | | |" in text
    assert "| update | torch | 300 µs | 30 µs | 50 | 3.00x |  |" in text  # timed rows of the same file still compare


def test_bad_file_names_itself(tmp_path):
    bad = tmp_path / "nope.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="nope.json: not a pytest-benchmark JSON"):
        report.main([str(bad)])


def test_partial_records_of_a_stopped_run_report_like_the_json(tmp_path):
    """HR2G_BENCH_PARTIAL's JSON lines (one per finished benchmark; a killed run may leave the last
    line cut) give the same rows and targets as the session's JSON would."""
    benches = [_otam("train_5w1s", "triton", 40e-6), _otam("train_5w1s", "torch", 4e-3)]
    lines = [json.dumps(dict(b, datetime="2026-11-25T10:00:00+00:00")) for b in benches]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n" + lines[0][:37])  # the line being written at the kill
    data, rows = report.load(path)
    assert [(r.provider, r.median) for r in rows] == [("triton", 40e-6), ("torch", 4e-3)]
    assert report.metadata(data, rows)["date"] == "2026-11-25"
    got = {t.what: t for t in report.targets(rows)}
    assert got["OTAM fwd+bwd, train episode: Triton vs reference loop"].ok is True


def _bank_benchmarks(partial: Path, *args: str) -> subprocess.CompletedProcess:
    """``pytest benchmarks/test_bench_bank.py::test_bench_bank`` with HR2G_BENCH_PARTIAL=partial."""
    # a child of an xdist worker would see PYTEST_XDIST_WORKER and disable pytest-benchmark
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["HR2G_BENCH_PARTIAL"] = str(partial)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "benchmarks/test_bench_bank.py::test_bench_bank", *args], cwd=Path(__file__).parents[1],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc


def test_disabled_benchmarks_run_once_and_record_nothing(tmp_path):
    """--benchmark-disable (pytest-benchmark's own switch, also forced inside xdist workers) runs
    each provider once with its checks; with HR2G_BENCH_PARTIAL set it used to crash reading the
    stats that a disabled benchmark never has."""
    out = tmp_path / "partial.jsonl"
    proc = _bank_benchmarks(out, "--benchmark-disable", "-k", "update_episode")
    assert " passed" in proc.stdout and not out.exists()


def test_benchmarks_append_partial_records_as_they_finish(tmp_path):
    out = tmp_path / "partial.jsonl"
    proc = _bank_benchmarks(out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    n_passed = int(proc.stdout.split(" passed")[0].split()[-1])
    assert len(records) == n_passed > 0
    first = records[0]
    assert first["name"].startswith("test_bench_bank[") and {"workload", "provider"} <= set(first["params"])
    assert first["stats"]["rounds"] >= 1 and "device" in first["extra_info"]
    _, rows = report.load(out)
    assert len(rows) == len(records)


def _isc(variant, ratio, smoke=True):
    return _bench("test_bench_isc_variants", dict(variant=variant), 1e-3, smoke=smoke, mflops_explicit=58 * ratio,
                  mflops_projection=1.0, mflops_attention=0.5, ratio_to_isc=ratio, mflops_paper=58,
                  paper_ratio_to_isc=1.0)


def test_table5_ratios_are_checked_from_counts_even_in_smoke_mode(tmp_path, capsys):
    # ours as measured (dense 1.03x, global 0.125x ISC) vs the paper's 4.34x and 0.91x: not reproduced
    path = _write(tmp_path, [_isc("isc", 1.0), _isc("dense", 174.33 / 168.59), _isc("global", 21.07 / 168.59)])
    got = {t.what: t for t in report.targets(report.load(path)[1])}
    assert got["Table 5: dense / ISC MFLOPs"].ok is False and "1.03x" in got["Table 5: dense / ISC MFLOPs"].value
    assert got["Table 5: global / ISC MFLOPs"].ok is False
    # the other kernel benchmarks' targets are listed too, as not run (a run stopped at its budget)
    assert got["OTAM, 10,000 test episodes at once"].ok is None
    assert got["sample attention train_5w1s fwd f32: fused vs SDPA with mask"].value == \
        "n/a (test_bench_sample_attention did not run)"
    report.main([str(path)])
    text = capsys.readouterr().out
    assert "### Table 5 FLOPs" in text and "| dense | 60.0 |" in text and "0.125x (7.2 MFLOPs) | MISSED" in text
    path = _write(tmp_path, [_isc("isc", 1.0), _isc("dense", 4.2), _isc("global", 0.95)])  # within 10 %
    assert all(t.ok for t in report.targets(report.load(path)[1]) if t.what.startswith("Table 5"))


def test_a_file_of_kernel_benchmarks_lists_every_kernel_target(tmp_path):
    """A file of the model benchmarks lists no kernel target (it used to list them all as "n/a");
    one with any kernel benchmark lists them all, those whose test did not run as "n/a", so a run
    stopped at its time budget cannot drop a target from the table unnoticed."""
    path = _write(tmp_path, [_bench("test_bench_episode", dict(workload="5w1s", provider="auto"), 1e-2)])
    assert report.targets(report.load(path)[1]) == []
    path = _write(tmp_path, [_otam("train_5w1s", "triton", 40e-6)])
    got = {t.what: t for t in report.targets(report.load(path)[1])}
    assert got["OTAM, 10,000 test episodes at once"].value == "n/a (triton not timed)"
    for what, test in (("sample attention train_5w5s fwd_bwd bf16: fused vs SDPA with mask", "test_bench_sample_attention"),
                       ("bank retrieve_train_episode: extension vs reference", "test_bench_bank"),
                       ("Table 5: dense / ISC MFLOPs", None)):
        assert got[what].ok is None and (test is None or got[what].value == f"n/a ({test} did not run)")


def test_the_bank_op_must_beat_its_reference_and_a_tie_is_not_faster(tmp_path):
    bank = [_bench("test_bench_bank", dict(workload=w, provider=p), t) for w, p, t in (
        ("retrieve_train_episode", "ext", 10e-6), ("retrieve_train_episode", "torch", 80e-6),
        ("update_episode", "ext", 50e-6), ("update_episode", "torch", 50e-6))]
    got = {t.what: t for t in report.targets(report.load(_write(tmp_path, bank + [
        _otam("test_5w5s", "triton", 2e-5), _otam("test_5w5s", "pysdtw", 2e-5)]))[1])}
    assert got["bank retrieve_train_episode: extension vs reference"].ok is True
    assert got["bank update_episode: extension vs reference"].ok is False  # equal: not faster
    assert got["bank update_episode: extension vs reference"].goal == "> 1x"
    assert got["OTAM test_5w5s: Triton vs pysdtw (soft-DTW CUDA)"].ok is False
    assert got["bank update_ddp_64x3: extension vs reference"].value == "n/a (ext not timed)"


def test_a_row_that_failed_its_check_claims_nothing(tmp_path):
    path = _write(tmp_path, [_otam("train_5w1s", "triton", 1e-6, failed=True), _otam("train_5w1s", "torch", 4e-3),
                             _otam("eval_10k_episodes", "triton", 1e-3, failed=True)])
    data, rows = report.load(path)
    got = {t.what: t for t in report.targets(rows)}
    assert got["OTAM fwd+bwd, train episode: Triton vs reference loop"].value == "n/a (triton failed its check)"
    assert got["OTAM, 10,000 test episodes at once"].value == "n/a (triton failed its check)"
    text = report.render(data, rows)
    assert "| train_5w1s | triton | failed its check (1 µs) |" in text and "4e+03x" not in text and "| met |" not in text


def test_a_ratio_just_under_its_goal_does_not_print_as_the_goal(tmp_path):
    path = _write(tmp_path, [_otam("train_5w1s", "triton", 1e-4), _otam("train_5w1s", "torch", 49.96e-4)])
    t = {t.what: t for t in report.targets(report.load(path)[1])}["OTAM fwd+bwd, train episode: Triton vs reference loop"]
    assert t.ok is False and t.value.startswith("49.96x")
    # two decimals would read 50.00x / 1.00x, and three significant digits 1x, beside the verdict
    assert report._ratio_text(49.996, 50) == "49.996x" and report._ratio_text(50.0, 50) == "50.00x"
    assert report._ratio_text(1.0004, 1, strict=True) == "1.0004x" and report._ratio_text(0.9996, 1, strict=True) == "0.9996x"
    assert report._ratio_text(0.125) == "0.125x" and report._ratio_text(3.2, 1, strict=True) == "3.20x"


def test_a_run_without_git_names_the_commit_given_or_none(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(dict(benchmarks=[_otam("train_5w1s", "triton", 1e-4)], datetime="2026-12-01T10:00:00",
                                    commit_info=dict(id="unversioned", dirty=False))))  # pytest-benchmark without .git
    report.main([str(path)])
    assert "commit ?." in capsys.readouterr().out
    report.main([str(path), "--commit", "a3358b2"])
    assert "commit a3358b2." in capsys.readouterr().out


def test_the_kernel_sdpa_picked_is_named(tmp_path):
    path = _write(tmp_path, [_bench("test_bench_sample_attention", dict(workload="w", provider="sdpa_mask"), 1e-5,
                                    sdpa_backend="EFFICIENT_ATTENTION")])
    assert "| w | sdpa_mask (EFFICIENT_ATTENTION) | 10 µs |" in report.render(*report.load(path))


def test_back_to_back_times_are_shown_beside_the_per_call_verdict(tmp_path):
    path = _write(tmp_path, [_otam("train_5w1s", "triton", 1e-4, pipelined_s=2e-5),
                             _otam("train_5w1s", "torch", 4e-3, pipelined_s=3e-3)])
    data, rows = report.load(path)
    t = {t.what: t for t in report.targets(rows)}["OTAM fwd+bwd, train episode: Triton vs reference loop"]
    assert t.ok is False and t.value == "40.00x (100 µs vs 4 ms); back to back 150.00x"  # the verdict: per call
    assert "| train_5w1s | torch | 4 ms | 400 µs | 50 | 40.00x | 3 ms |" in report.render(data, rows)


def test_a_benchmark_that_fails_after_timing_is_recorded_as_failed(tmp_path):
    """pytest-benchmark saves a benchmark's stats whatever the test's outcome: benchmarks/conftest.py
    marks the record of a test whose checks after the timing failed, in both outputs."""
    shutil.copy(Path(__file__).parents[1] / "benchmarks" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_fails_late.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('provider', ['triton', 'torch'])\n"
        "def test_bench_otam(run_bench, provider):\n"
        "    out = run_bench(lambda: float('nan') if provider == 'triton' else 1.0, workload='w', provider=provider)\n"
        "    assert out == out, 'not finite'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["HR2G_BENCH_PARTIAL"] = str(tmp_path / "partial.jsonl")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fails_late.py",
                           f"--benchmark-json={tmp_path / 'b.json'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-2000:]
    for path in (tmp_path / "b.json", tmp_path / "partial.jsonl"):
        _, rows = report.load(path)
        assert {r.provider: r.failed for r in rows} == {"triton": True, "torch": False}, path
