"""Turn ``pytest benchmarks --benchmark-json B.json`` into the README's results tables.

    python benchmarks/report.py B.json                 # tables + target checks on stdout
    python benchmarks/report.py B.json --out R.md      # also write them to R.md
    python benchmarks/report.py B.jsonl                # the records HR2G_BENCH_PARTIAL=B.jsonl wrote
                                                       # one by one (a run stopped before its end)

Rows are grouped by benchmark and every parameter except the provider (``provider`` or
``backend``); in each group the fused provider (``triton``, ``fused``, ``ext`` or ``auto``) is the
one compared: "fused speedup" is the other provider's median over the fused one's.  The targets
of issue #3 are checked on the medians.  Rows run in smoke mode (no CUDA: one untimed round on
tiny shapes) are listed as "untimed" and claim nothing: no speedup, and a target resting on one
reads "n/a".  (``HR2G_BENCH_CPU=1`` makes the CPU-meaningful benchmarks timed rows on a CPU.)
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


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    value: str
    ok: bool | None  # None: not measured (smoke mode, or the provider skipped)

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


def metadata(data: dict, rows: list[Row]) -> dict:
    timed = [r for r in rows if not r.smoke]
    extra = (timed or rows)[0].extra if rows else {}
    commit = data.get("commit_info", {})
    return dict(device=extra.get("device", "?"), torch=extra.get("torch", "?"), triton=extra.get("triton", "-"),
                date=str(data.get("datetime", "?"))[:10],
                commit=(commit.get("id") or "?")[:10] + ("+dirty" if commit.get("dirty") else ""),
                untimed=len(rows) - len(timed))


def speedups(rows: list[Row]) -> dict[Row, float | None]:
    """Each row's median over its group's fused median (None without a timed fused row, for the
    fused row itself, and for untimed rows)."""
    fused = {(r.test, r.group): r for r in rows if r.fused and not r.smoke}
    out = {}
    for r in rows:
        f = fused.get((r.test, r.group))
        out[r] = None if f is None or f is r or r.smoke or f.median <= 0 else r.median / f.median
    return out


def _time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _find(rows: list[Row], test: str, provider: str, **params: str) -> Row | None:
    for r in rows:
        g = dict(r.group)
        if r.test == test and r.provider == provider and all(g.get(k) == v for k, v in params.items()):
            return None if r.smoke else r
    return None


def targets(rows: list[Row]) -> list[Target]:
    """Issue #3's speed targets, each from the medians of the timed rows it names."""
    out: list[Target] = []

    def ratio(what: str, goal: float, test: str, fast: str, slow: str, **params: str) -> None:
        a, b = _find(rows, test, fast, **params), _find(rows, test, slow, **params)
        if a is None or b is None:
            why = f"{fast if a is None else slow} not timed"
            out.append(Target(what, f">= {goal:g}x", f"n/a ({why})", None))
            return
        x = b.median / a.median
        out.append(Target(what, f">= {goal:g}x", f"{x:.1f}x ({_time(a.median)} vs {_time(b.median)})", x >= goal))

    ratio("OTAM fwd+bwd, train episode: Triton vs reference loop", 50, "test_bench_otam", "triton", "torch",
          workload="train_5w1s")
    for wl in ("train_5w1s", "test_5w5s", "eval_10k_episodes"):
        ratio(f"OTAM {wl}: Triton vs pysdtw (soft-DTW CUDA)", 1, "test_bench_otam", "triton", "pysdtw", workload=wl)
    for wl in ("train_5w1s", "train_5w5s"):
        for mode in ("fwd", "fwd_bwd"):
            for dtype in ("f32", "bf16"):
                ratio(f"sample attention {wl} {mode} {dtype}: fused vs SDPA with mask", 2,
                      "test_bench_sample_attention", "fused", "sdpa_mask", workload=wl, mode=mode, dtype=dtype)
    r = _find(rows, "test_bench_otam", "triton", workload="eval_10k_episodes")
    if r is None:
        out.append(Target("OTAM, 10,000 test episodes at once", "< 5 ms", "n/a (triton not timed)", None))
    else:
        out.append(Target("OTAM, 10,000 test episodes at once", "< 5 ms", _time(r.median), r.median < 5e-3))
    return out


def render(data: dict, rows: list[Row]) -> str:
    meta = metadata(data, rows)
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; "
             f"date {meta['date']}; commit {meta['commit']}."]
    if meta["untimed"]:
        lines.append(f"{meta['untimed']} of {len(rows)} rows ran in smoke mode (one untimed round on tiny shapes): "
                     "their times mean nothing.")
    ups = speedups(rows)
    for test in dict.fromkeys(r.test for r in rows):
        lines += ["", f"### {test}", "", "| case | provider | median | IQR | rounds | fused speedup | throughput |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.test == test):
            up = ups[r]
            tput = next((f"{r.extra[k]:.3g} {k}" for k in ("frames/s", "TFLOP/s", "GB/s") if r.extra.get(k)), "")
            if r.smoke:
                lines.append(f"| {r.label} | {r.provider} | untimed | | | | |")
                continue
            lines.append(f"| {r.label} | {r.provider} | {_time(r.median)} | {_time(r.iqr)} | {r.rounds} | "
                         f"{'' if up is None else f'{up:.2f}x'} | {tput} |")
    lines += ["", "### targets (issue #3)", "", "| target | goal | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {t.what} | {t.goal} | {t.value} | {t.verdict} |" for t in targets(rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a file written by `pytest benchmarks --benchmark-json FILE`, or the .jsonl "
                   "of HR2G_BENCH_PARTIAL")
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args(argv)
    data, rows = load(args.json)
    if not rows:
        raise SystemExit(f"{args.json}: holds no benchmark (were they all skipped?)")
    text = render(data, rows)
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
