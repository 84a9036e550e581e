"""benchmarks/gpu_session.sh, the runbook a session with a lent GPU follows: its stages parse, and the
DALI parts (carried one per device call) are stowed, checked against their manifest and unpacked
only when all are there and intact.  Run on a copy of the script in a scratch tree, so the real
.dali/ and /tmp/site are never touched."""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="needs bash and sha256sum")


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "gpu_session.sh")
    return tmp_path


def run(tree: Path, *stages: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tree / "out"),
           "HR2G_SITE": str(tree / "site"), "HR2G_DALI_PARTS": str(tree / "parts"), **(env or {})}
    return subprocess.run(["bash", str(tree / "benchmarks" / "gpu_session.sh"), *stages], env=env,
                          capture_output=True, text=True, timeout=60)


def fake_pack(n_parts: int) -> tuple[list[bytes], str]:
    """A tar.xz holding nvidia/dali/__init__.py, cut into ``n_parts`` parts, and their manifest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        data = b"__version__ = '0.0-test'\n" + b"# padding\n" * 2000
        info = tarfile.TarInfo("./nvidia/dali/__init__.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    step = -(-len(blob) // n_parts)
    parts = [blob[i:i + step] for i in range(0, len(blob), step)]
    assert len(parts) == n_parts
    manifest = "".join(f"{hashlib.sha256(p).hexdigest()}  dali.tar.xz.{i:02d}\n" for i, p in enumerate(parts))
    return parts, manifest


def carry(tree: Path, parts: list[bytes], manifest: str, *indices: int) -> None:
    """What one device call's carry puts in the tree: some parts, and the manifest."""
    shutil.rmtree(tree / ".dali", ignore_errors=True)
    (tree / ".dali").mkdir()
    (tree / ".dali" / "MANIFEST").write_text(manifest)
    for i in indices:
        (tree / ".dali" / f"dali.tar.xz.{i:02d}").write_bytes(parts[i])


def test_script_parses_and_names_its_stages(tree):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    proc = run(tree, "no_such_stage")
    assert proc.returncode == 2
    assert "unknown stage 'no_such_stage'" in proc.stdout
    for stage in ("dali_part", "kernel_tests", "other_tests", "pack", "dali_tests", "bench_loader"):
        assert stage in proc.stdout


def test_dali_parts_unpack_only_when_all_are_there(tree):
    parts, manifest = fake_pack(3)
    init = tree / "site" / "nvidia" / "dali" / "__init__.py"
    carry(tree, parts, manifest, 0)
    assert "parts held: dali.tar.xz.00" in run(tree, "dali_part").stdout
    carry(tree, parts, manifest, 1)
    proc = run(tree, "dali")  # part 02 never came: refuse, unpack nothing
    assert "DALI parts missing or corrupt" in proc.stdout and not init.exists()
    carry(tree, parts, manifest, 2)
    proc = run(tree, "dali")
    assert "parts held: dali.tar.xz.00 dali.tar.xz.01 dali.tar.xz.02" in proc.stdout
    assert init.read_text().startswith("__version__ = '0.0-test'")
    assert (tree / "site" / ".hr2g-dali").read_text() == manifest
    init.unlink()  # unpacked once: a later call (the machine still warm) does not unpack again
    run(tree, "dali")
    assert not init.exists()


def test_dali_rejects_a_corrupt_part(tree):
    parts, manifest = fake_pack(2)
    carry(tree, parts, manifest, 0)
    run(tree, "dali_part")
    carry(tree, [parts[0], parts[1][:-1] + bytes([parts[1][-1] ^ 1])], manifest, 1)
    proc = run(tree, "dali")
    assert "DALI parts missing or corrupt" in proc.stdout
    assert not (tree / "site" / "nvidia").exists()


def test_pack_keeps_the_tables_and_archives_every_other_file(tree):
    """A device call returns at most 8 files: env.txt, the .md tables and .jsonl records stay
    files; logs, JUnit XML and benchmark JSON go into logs.tgz, a second pack adding to it."""
    out = tree / "out"
    out.mkdir()
    for name in ("env.txt", "bench_kernels.md", "bench_kernels.jsonl", "build.log", "kernel_tests.xml", "bench_kernels.json"):
        (out / name).write_text(f"contents of {name}\n")
    assert run(tree, "pack").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench_kernels.jsonl", "bench_kernels.md", "env.txt", "logs.tgz"]
    (out / "other_tests.log").write_text("contents of other_tests.log\n")
    proc = run(tree, "pack")
    assert "logs.tgz holds" in proc.stdout
    with tarfile.open(out / "logs.tgz") as tar:
        got = {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    assert got == {n: f"contents of {n}\n" for n in ("build.log", "kernel_tests.xml", "bench_kernels.json", "other_tests.log")}
    assert sorted(p.name for p in out.iterdir()) == ["bench_kernels.jsonl", "bench_kernels.md", "env.txt", "logs.tgz"]


def test_a_stage_without_enough_budget_is_skipped_and_says_so(tree):
    proc = run(tree, "kernel_tests", env={"HR2G_CALL_BUDGET": "20"})
    assert "kernel_tests skipped: " in proc.stderr and "left of this call's budget" in proc.stderr
    assert not (tree / "out" / "kernel_tests.log").exists()


@pytest.fixture
def fake_python(tree):
    """A stand-in interpreter: every `-c` probe succeeds (xdist and pytest-timeout "importable"),
    any other call prints its arguments and hangs, as a stuck test run would."""
    path = tree / "fake_python"
    path.write_text('#!/bin/bash\n[ "$1" = -c ] && exit 0\necho "ARGS: $*"\nexec sleep 120\n')
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("stage, must_have", [
    ("kernel_tests", ["tests/test_otam.py", "tests/test_bank_simt.py"]),
    ("other_tests", ["tests --ignore=tests/test_otam.py", "--ignore=tests/test_bank_simt.py"]),
])
def test_test_stages_run_under_xdist_and_stop_at_their_cap(tree, fake_python, stage, must_have):
    cap = "HR2G_KERNEL_TESTS_CAP" if stage == "kernel_tests" else "HR2G_OTHER_TESTS_CAP"
    # the fake hangs for 120 s: only the stage's 1-second cap (SIGINT, then SIGKILL 20 s later)
    # returns it within run()'s 60-second limit
    proc = run(tree, stage, env={"PYTHON": fake_python, cap: "1", "HR2G_TEST_WORKERS": "5"})
    args = next(line for line in proc.stdout.splitlines() if line.startswith("ARGS: "))
    assert "-m pytest" in args and "-rsfE" in args and "-n 5" in args and "--timeout=300" in args, args
    assert f"--junitxml={tree / 'out' / stage}.xml" in args
    for part in must_have:
        assert part in args, args
    assert (tree / "out" / f"{stage}.log").read_text().startswith("ARGS: ")


@pytest.fixture
def logging_python(tree):
    """A stand-in interpreter that succeeds at everything and logs each call's arguments."""
    path = tree / "logging_python"
    path.write_text(f'#!/bin/bash\necho "$*" >> {tree / "calls.log"}\nexit 0\n')
    path.chmod(0o755)
    for name, text in (("setup.py", "# setup\n"), ("csrc/bank.cpp", "// cpu\n"), ("csrc/bank.h", "// h\n"),
                       ("csrc/cuda/bank.cu", "// cuda\n")):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    return str(path)


def test_setup_builds_once_per_machine_and_again_when_the_sources_change(tree, logging_python):
    """A rebuild costs ~80 s of a device call: a warm machine's second call must reuse the build
    (the check once imported hr2g._C without torch, which always fails, so every call rebuilt),
    and a changed csrc/ file must not leave a stale build."""
    def builds() -> int:
        proc = run(tree, "setup", env={"PYTHON": logging_python})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        calls = (tree / "calls.log").read_text().splitlines()
        (tree / "calls.log").unlink()
        n = sum(c.startswith("-m pip install") and "--no-build-isolation" in c for c in calls)
        # a kept build is also checked to load, with torch imported first (libc10.so)
        assert n or "-c import torch, hr2g._C" in calls, calls
        return n

    assert builds() == 1
    assert (tree / "build" / "hr2g_C.stamp").exists()
    assert builds() == 0
    (tree / "csrc" / "cuda" / "bank.cu").write_text("// cuda, edited\n")
    assert builds() == 1
    assert builds() == 0
