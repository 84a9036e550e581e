"""Turn ``pytest benchmarks --benchmark-json B.json`` into the README's results tables.

    python benchmarks/report.py B.json                 # tables + target checks on stdout
    python benchmarks/report.py B.json --out R.md      # also write them to R.md
    python benchmarks/report.py B.jsonl                # the records HR2G_BENCH_PARTIAL=B.jsonl wrote
                                                       # one by one (a run stopped before its end)
    python benchmarks/report.py B.json --commit 1a2b3c4  # a run without .git (a device machine)

Rows are grouped by benchmark and every parameter except the provider (``provider`` or
``backend``); in each group the fused provider (``triton``, ``fused``, ``ext`` or ``auto``) is the
one compared: "fused speedup" is the other provider's median over the fused one's; "back to back"
is the time per call of 20 calls queued without a synchronize between them (CUDA only).  The speed
targets of issue #3 are checked on the medians, those of the benchmarks the file holds; the Table 5
FLOP ratios (counts, not times) on any ``test_bench_isc_variants`` row.  Rows run in smoke mode (no
CUDA: one untimed round on tiny shapes) are listed as "untimed" and claim nothing: no speedup, and
a speed target resting on one reads "n/a".  (``HR2G_BENCH_CPU=1`` makes the CPU-meaningful
benchmarks timed rows on a CPU.)  A row whose test failed after it was timed (a check on the
result; benchmarks/conftest.py marks it ``failed``) is listed as such and claims nothing either.
Where the file holds any kernel benchmark, every kernel target is listed, "n/a" for those whose
test has no rows (a run stopped at its time budget, say), so none silently drops out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

FUSED = ("triton", "fused", "ext", "auto")
PROVIDER_KEYS = ("provider", "backend")


@dataclass(frozen=True)
class Row:
    test: str  # the test function, e.g. "test_bench_otam"
    group: tuple[tuple[str, str], ...]  # every parameter but the provider
    provider: str
    median: float  # seconds
    iqr: float
    rounds: int
    extra: dict = field(hash=False, compare=False)

    @property
    def label(self) -> str:
        return " ".join(v for _, v in self.group) or "-"

    @property
    def fused(self) -> bool:
        return self.provider in FUSED

    @property
    def smoke(self) -> bool:
        return bool(self.extra.get("smoke"))

    @property
    def failed(self) -> bool:
        """The test failed after it was timed (a check on the result): its time claims nothing."""
        return bool(self.extra.get("failed"))


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    value: str
    ok: bool | None  # None: not measured (smoke mode, the provider skipped or failed, the test not run)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "n/a"}[self.ok]


def _read(path: Path) -> dict:
    """A pytest-benchmark JSON, or benchmarks/conftest.py's JSON-lines records as one."""
    text = path.read_text()
    if path.suffix != ".jsonl":
        return json.loads(text)
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the line being written when the run was killed
            continue
    return dict(benchmarks=records, datetime=records[0]["datetime"] if records else "?")


def load(path: str | Path) -> tuple[dict, list[Row]]:
    """(run metadata, rows) of a pytest-benchmark JSON file (or a .jsonl of partial records)."""
    try:
        data = _read(Path(path))
        benches = data["benchmarks"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not a pytest-benchmark JSON file ({e}); write one with "
                         "`pytest benchmarks --benchmark-json FILE`")
    rows = []
    for b in benches:
        params = {k: str(v) for k, v in (b.get("params") or {}).items()}
        key = next((k for k in PROVIDER_KEYS if k in params), None)
        provider = params.pop(key) if key else "-"
        stats = b["stats"]
        rows.append(Row(b["name"].split("[")[0], tuple(params.items()), provider, stats["median"],
                        stats["iqr"], stats["rounds"], b.get("extra_info", {})))
    return data, rows


def metadata(data: dict, rows: list[Row], commit: str | None = None) -> dict:
    """``commit``: the commit to name when the run's folder had no .git (pytest-benchmark then
    records the id "unversioned", read here as "?")."""
    timed = [r for r in rows if not r.smoke]
    extra = (timed or rows)[0].extra if rows else {}
    info = data.get("commit_info", {})
    recorded = info.get("id") if info.get("id") not in (None, "", "unversioned") else None
    name = commit or (recorded[:10] + ("+dirty" if info.get("dirty") else "") if recorded else "?")
    return dict(device=extra.get("device", "?"), torch=extra.get("torch", "?"), triton=extra.get("triton", "-"),
                date=str(data.get("datetime", "?"))[:10], commit=name, untimed=len(rows) - len(timed))


def speedups(rows: list[Row]) -> dict[Row, float | None]:
    """Each row's median over its group's fused median (None without a timed fused row, for the
    fused row itself, and for untimed rows)."""
    fused = {(r.test, r.group): r for r in rows if r.fused and not r.smoke and not r.failed}
    out = {}
    for r in rows:
        f = fused.get((r.test, r.group))
        out[r] = None if f is None or f is r or r.smoke or r.failed or f.median <= 0 else r.median / f.median
    return out


def _time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _match(rows: list[Row], test: str, provider: str, **params: str) -> Row | None:
    for r in rows:
        g = dict(r.group)
        if r.test == test and r.provider == provider and all(g.get(k) == v for k, v in params.items()):
            return r
    return None


def _find(rows: list[Row], test: str, provider: str, **params: str) -> Row | None:
    """The timed row that a target may rest on: not smoke, and not one whose test failed after timing."""
    r = _match(rows, test, provider, **params)
    return None if r is None or r.smoke or r.failed else r


def _unmeasured(rows: list[Row], test: str, provider: str, **params: str) -> str:
    """Why ``provider`` has no timed row for a target: the words after "n/a"."""
    if not any(r.test == test for r in rows):
        return f"{test} did not run"
    r = _match(rows, test, provider, **params)
    return f"{provider} failed its check" if r is not None and r.failed else f"{provider} not timed"


# Table 5 of the paper (MFLOPs at 5-way 1-shot): each variant's ratio to ISC, reproduced when ours
# is within 10 % of it (a count, not a timing: device-independent, so smoke rows carry it too)
PAPER_TABLE5_RATIO = {"dense": 252 / 58, "global": 53 / 58}
TABLE5_TOLERANCE = 0.10


def _ratio_text(x: float, goal: float | None = None, strict: bool = False) -> str:
    """``x`` with 2 decimals (3 significant digits under 1), more where rounding would cross
    ``goal`` or land on it: 49.996 must not read "50.00x ... MISSED", nor 0.9996 "1x ... MISSED"."""
    def passes(v: float) -> bool:
        return v > goal if strict else v >= goal

    for digits in range(2, 8):
        text = f"{x:.{digits}f}" if x >= 1 else f"{x:.{digits + 1}g}"
        if goal is None or (passes(float(text)) == passes(x) and (float(text) != goal or x == goal)):
            return f"{text}x"
    return f"{x!r}x"


# The kernel benchmarks (benchmarks/gpu_session.sh's bench_kernels): where a file holds any of
# them, every target of them all is listed, "n/a (... did not run)" for a test with no rows (a run
# stopped at its budget, a file that failed to collect), so a target never drops out of the table.
KERNEL_TESTS = ("test_bench_otam", "test_bench_sample_attention", "test_bench_isc_variants", "test_bench_bank")
BANK_WORKLOADS = ("retrieve_train_episode", "retrieve_train_64_episodes", "update_episode", "update_ddp_64x3")


def targets(rows: list[Row]) -> list[Target]:
    """Issue #3's targets (and issue #4's bank op vs its reference) for the benchmarks ``rows``
    hold: speed targets from the medians of the timed rows they name ("n/a" when one of those did
    not run, was skipped or failed its check: the log says which), and the Table 5 FLOP ratios."""
    out: list[Target] = []
    tests = {r.test for r in rows}
    kernels = bool(tests & set(KERNEL_TESTS))

    def ratio(what: str, goal: float, test: str, fast: str, slow: str, strict: bool = False, **params: str) -> None:
        if not kernels:
            return
        goal_text = f"> {goal:g}x" if strict else f">= {goal:g}x"
        a, b = _find(rows, test, fast, **params), _find(rows, test, slow, **params)
        if a is None or b is None:
            why = _unmeasured(rows, test, fast if a is None else slow, **params)
            out.append(Target(what, goal_text, f"n/a ({why})", None))
            return
        x = b.median / a.median
        value = f"{_ratio_text(x, goal, strict)} ({_time(a.median)} vs {_time(b.median)})"
        pa, pb = a.extra.get("pipelined_s"), b.extra.get("pipelined_s")
        if pa and pb:  # information only: the verdict is on the per-call medians
            value += f"; back to back {_ratio_text(pb / pa)}"
        out.append(Target(what, goal_text, value, x > goal if strict else x >= goal))

    ratio("OTAM fwd+bwd, train episode: Triton vs reference loop", 50, "test_bench_otam", "triton", "torch",
          workload="train_5w1s")
    for wl in ("train_5w1s", "test_5w5s", "eval_10k_episodes"):
        ratio(f"OTAM {wl}: Triton vs pysdtw (soft-DTW CUDA)", 1, "test_bench_otam", "triton", "pysdtw", strict=True,
              workload=wl)
    for wl in ("train_5w1s", "train_5w5s"):
        for mode in ("fwd", "fwd_bwd"):
            for dtype in ("f32", "bf16"):
                ratio(f"sample attention {wl} {mode} {dtype}: fused vs SDPA with mask", 2,
                      "test_bench_sample_attention", "fused", "sdpa_mask", workload=wl, mode=mode, dtype=dtype)
    for wl in BANK_WORKLOADS:  # issue #4 sets no figure: the fused op is to beat its reference
        ratio(f"bank {wl}: extension vs reference", 1, "test_bench_bank", "ext", "torch", strict=True, workload=wl)
    if kernels:
        what, goal = "OTAM, 10,000 test episodes at once", "< 5 ms"
        r = _find(rows, "test_bench_otam", "triton", workload="eval_10k_episodes")
        if r is None:
            why = _unmeasured(rows, "test_bench_otam", "triton", workload="eval_10k_episodes")
            out.append(Target(what, goal, f"n/a ({why})", None))
        else:
            out.append(Target(what, goal, _time(r.median), r.median < 5e-3))
    variants = {dict(r.group).get("variant"): r.extra for r in rows if r.test == "test_bench_isc_variants"}
    for variant, paper in PAPER_TABLE5_RATIO.items():
        extra = variants.get(variant)
        goal = f"{_ratio_text(paper)} ± {TABLE5_TOLERANCE:.0%} (paper)"
        if extra is None or "ratio_to_isc" not in extra:
            if variants or kernels:
                out.append(Target(f"Table 5: {variant} / ISC MFLOPs", goal, f"n/a ({variant} not run)", None))
            continue
        x = float(extra["ratio_to_isc"])
        out.append(Target(f"Table 5: {variant} / ISC MFLOPs", goal,
                          f"{_ratio_text(x)} ({extra.get('mflops_explicit', float('nan')):.1f} MFLOPs)",
                          abs(x / paper - 1) <= TABLE5_TOLERANCE))
    return out


def render(data: dict, rows: list[Row], commit: str | None = None) -> str:
    meta = metadata(data, rows, commit)
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; "
             f"date {meta['date']}; commit {meta['commit']}."]
    if meta["untimed"]:
        lines.append(f"{meta['untimed']} of {len(rows)} rows ran in smoke mode (one untimed round on tiny shapes): "
                     "their times mean nothing.")
    ups = speedups(rows)
    for test in dict.fromkeys(r.test for r in rows):
        lines += ["", f"### {test}", "", "| case | provider | median | IQR | rounds | fused speedup | back to back | "
                  "throughput |", "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.test == test):
            up = ups[r]
            tput = next((f"{r.extra[k]:.3g} {k}" for k in ("frames/s", "TFLOP/s", "GB/s") if r.extra.get(k)), "")
            if r.smoke:
                lines.append(f"| {r.label} | {r.provider} | untimed | | | | | |")
                continue
            if r.failed:  # timed, then a check on its result failed: the time stands for nothing
                lines.append(f"| {r.label} | {r.provider} | failed its check ({_time(r.median)}) | | | | | |")
                continue
            piped = _time(r.extra["pipelined_s"]) if r.extra.get("pipelined_s") else ""
            kernel = f" ({r.extra['sdpa_backend']})" if r.extra.get("sdpa_backend") else ""  # the kernel SDPA picked
            lines.append(f"| {r.label} | {r.provider}{kernel} | {_time(r.median)} | {_time(r.iqr)} | {r.rounds} | "
                         f"{'' if up is None else f'{up:.2f}x'} | {piped} | {tput} |")
    lines += _table5(rows)
    found = targets(rows)
    if found:
        lines += ["", "### targets (issues #3 and #4)", "", "| target | goal | measured | verdict |", "|---|---|---|---|"]
        lines += [f"| {t.what} | {t.goal} | {t.value} | {t.verdict} |" for t in found]
    return "\n".join(lines) + "\n"


def _table5(rows: list[Row]) -> list[str]:
    """The ISC variants' FLOP counts beside the paper's (from any row: counts do not need timing)."""
    got = [(dict(r.group).get("variant", "?"), r.extra) for r in rows
           if r.test == "test_bench_isc_variants" and "mflops_explicit" in r.extra]
    if not got:
        return []
    lines = ["", "### Table 5 FLOPs (5-way 1-shot, explicit counts = torch.utils.flop_counter's)", "",
             "| variant | MFLOPs | projections | attention | ratio to ISC | paper MFLOPs | paper ratio |",
             "|---|---|---|---|---|---|---|"]
    for variant, e in got:
        lines.append(f"| {variant} | {e['mflops_explicit']:.1f} | {e.get('mflops_projection', float('nan')):.1f} | "
                     f"{e.get('mflops_attention', float('nan')):.2f} | {_ratio_text(e.get('ratio_to_isc', float('nan')))} | "
                     f"{e.get('mflops_paper', '?')} | {_ratio_text(e.get('paper_ratio_to_isc', float('nan')))} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a file written by `pytest benchmarks --benchmark-json FILE`, or the .jsonl "
                   "of HR2G_BENCH_PARTIAL")
    p.add_argument("--out", help="also write the markdown here")
    p.add_argument("--commit", help="the commit to name (a run in a folder without .git records none)")
    args = p.parse_args(argv)
    data, rows = load(args.json)
    if not rows:
        raise SystemExit(f"{args.json}: holds no benchmark (were they all skipped?)")
    text = render(data, rows, args.commit)
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
