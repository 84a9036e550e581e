#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in as few device calls as possible (30 minutes of
# device time per session; a warm machine keeps what a call installed for about 30 s only).
#
# Here, once (no device time): fetch the Python wheels the GPU image lacks into the ignored .whl/,
# rehearse on this CPU machine with the GPU image's versions (a few minutes), pack DALI in parts:
#   bash benchmarks/gpu_session.sh wheels image dali_pack
# Then on the device, back to back (a machine idle for 30 s is handed back, and /tmp with it; each
# stage writes its log and results under $OUT), most important first -- the figures the open
# kernel issues wait for (every benchmark checks its providers against the reference before it
# times them), then the whole suite, then the model/loader benchmarks, then DALI (its three
# part-carrying calls are the likeliest to lose the warm machine between them):
#   run(command="bash benchmarks/gpu_session.sh setup bench_kernels", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_session.sh setup tests", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_session.sh setup bench_model", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_session.sh dali_part", carry=[".dali/dali.tar.xz.00", ".dali/MANIFEST"])
#   run(command="bash benchmarks/gpu_session.sh dali_part", carry=[".dali/dali.tar.xz.01", ".dali/MANIFEST"])
#   run(command="bash benchmarks/gpu_session.sh dali_part", carry=[".dali/dali.tar.xz.02", ".dali/MANIFEST"])
#   run(command="bash benchmarks/gpu_session.sh dali setup dali_tests bench_loader", carry=[".whl"], timeout_s=600)
# Without the dali_part calls, `dali` says which parts are missing and the DALI tests skip.
# `setup` is cheap when the machine is still warm (the build is kept), so every call names it.
# Stages: wheels | image | dali_pack | dali_part | dali | setup | kernel_tests | tests | dali_tests |
# bench_kernels | bench_model | bench_loader | bench (kernels + model) | all (= setup tests bench).
# Results land in $OUT as <stage>.json/.jsonl/.md/.log (at most 8 files come back: the first call
# above writes 7 -- build.log, gpu.txt, info.txt, bench_kernels.json/.jsonl/.md/.log).  The last
# lines printed are the results table (benchmarks/report.py) or the failing tests; copy figures
# into README "Results" with the device, date and commit that the report prints.
# On a GPU machine of your own (no 10-minute limit): HR2G_CALL_BUDGET=0 bash benchmarks/gpu_session.sh all
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=${HR2G_SITE:-/tmp/site}  # carried packages, first on PYTHONPATH
PART_DIR=${HR2G_DALI_PARTS:-/tmp/hr2g-dali-parts}
# pip, fetching or unpacking wheels for the GPU image's CPython 3.12 from this machine's Python
PIP312="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

use_site() {  # put $SITE first on PYTHONPATH, once
  case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} ;; esac
}

wheels() {  # what the GPU image (python 3.12, torch 2.11) lacks: open_clip and its two deps, PyAV, pysdtw
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps $PIP312 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 av==19.0.2 pysdtw==0.0.5 && du -sh .whl
}

setup() {
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { echo "gpu_session: installing .whl/ failed"; exit 1; }
  fi
  [ -d "$SITE" ] && use_site
  # Build hr2g._C against *this* machine's torch (never carry a build made elsewhere).
  if ! "$PY" -c "import hr2g._C" 2>/dev/null; then
    CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=16 "$PY" -m pip install -q --no-build-isolation --no-deps \
      --no-index -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
    grep -i "warning: " "$OUT/build.log" | grep -i hr2g | tail -5
  fi
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  "$PY" -m hr2g.info | tee "$OUT/info.txt"
}

# A hung test (a deadlocked DataLoader worker, say) must cost one test, not the 10-minute call:
# pytest-timeout is in the GPU image; limits far above any test's time on 2 CPU cores (12 s at most), leaving
# room for Inductor compiling on first use.
timeout_opt() { "$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$1"; }

# Seconds a stage may still run in this device call (see run_bench), 0 for no limit; fails (and
# says so) when under 30 s are left.  $1: the stage, for the message.
call_left() {
  local budget=${HR2G_CALL_BUDGET:-570}
  [ "$budget" -gt 0 ] || { echo 0; return 0; }
  local left=$(( budget - SECONDS ))
  if [ "$left" -lt 30 ]; then echo "gpu_session: $1 skipped: ${left} s left of this call's budget" >&2; return 1; fi
  echo "$left"
}

# pytest on the GPU -> $OUT/<name>.log (+ any extra pytest options); stops with SIGINT at this
# call's budget (pytest still prints the summary of what ran).  $1: name, $2: lines to echo, rest: args.
run_tests() {
  local name=$1 lines=$2 left; shift 2
  left=$(call_left "$name") || return 0
  # shellcheck disable=SC2046
  timeout -s INT -k 20 "$left" "$PY" -m pytest -q -p no:cacheprovider -rs $(timeout_opt 300) "$@" 2>&1 \
    | tee "$OUT/$name.log" | tail -"$lines"
}

# the whole suite on the GPU: kernels for real (no interpreter), GPU-marked tests included
tests() { run_tests tests 60 tests --durations=15 --junitxml="$OUT/tests.xml"; }
# the kernels' own tests (Triton for real, the CUDA bank op, its emulator twin): for a call that
# has no time for the whole suite
kernel_tests() {
  run_tests kernel_tests 30 tests/test_otam.py tests/test_sample_attention.py tests/test_bank.py tests/test_bank_simt.py
}
dali_tests() { run_tests dali_tests 30 tests/test_dali.py; }  # after `dali`: DALI's GPU pipelines vs PyAV / PIL

# A device call is killed at 600 s.  Benchmarks stop (SIGINT: pytest ends the session cleanly)
# once this call has run HR2G_CALL_BUDGET seconds (default 570: build included, report time left;
# 0: no limit -- `timeout 0` never fires), and every finished benchmark is already in
# $OUT/<name>.jsonl (HR2G_BENCH_PARTIAL), so a long pole (Inductor compiling the OTAM reference,
# say) costs the figures after it, not all of them.
run_bench() {  # $1: name, then the benchmark files; medians of synchronised rounds -> $OUT/<name>.json(l), .md
  local name=$1; shift
  local left
  left=$(call_left "$name") || return 0
  rm -f "$OUT/$name.json" "$OUT/$name.jsonl"
  # shellcheck disable=SC2046
  HR2G_BENCH_PARTIAL="$OUT/$name.jsonl" timeout -s INT -k 20 "$left" "$PY" -m pytest -q -p no:cacheprovider "$@" \
    --benchmark-json="$OUT/$name.json" $(timeout_opt 400) --benchmark-columns=median,iqr,rounds > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "gpu_session: $name stopped at this call's budget (${left} s); reporting what finished"
  grep -E "passed|failed|error" "$OUT/$name.log" | tail -3
  [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/$name.log" | head -20
  local records="$OUT/$name.json"
  [ -s "$records" ] || records="$OUT/$name.jsonl"  # pytest-benchmark leaves its JSON empty when stopped
  [ -s "$records" ] && "$PY" benchmarks/report.py "$records" --out "$OUT/$name.md"
}

# Two halves, so that each fits one 10-minute call (Inductor compiling the OTAM reference for the
# torch_compile provider takes the longest; never measured on this GPU yet).
bench_kernels() { run_bench bench_kernels benchmarks/test_bench_otam.py benchmarks/test_bench_sample_attention.py benchmarks/test_bench_bank.py; }
bench_model() { run_bench bench_model benchmarks/test_bench_episode.py benchmarks/test_bench_loader.py; }
bench_loader() { run_bench bench_loader benchmarks/test_bench_loader.py; }

image() {  # here, no device time: the GPU image's versions (python 3.12, torch 2.11, triton 3.6, the
  # carried wheels: PyAV 19, open_clip 3.3) on this CPU machine, on a clean clone of HEAD: builds
  # hr2g._C against torch 2.11 and runs the suite with the kernels interpreted and compiled to sm_90
  # cubin by Triton 3.6.  Caught before any device call: PyAV 19 hanging forked DataLoader workers,
  # Triton 3.6 spilling registers at tiles 3.8 does not.  numpy < 2.4: 3.6's interpreter fails with
  # newer (the dispatcher says so); the GPU image's numpy 2.5 only matters to the interpreter.
  local dir=${IMAGE_DIR:-/tmp/hr2g-image} py312
  for py312 in python3.12 /root/.pyenv/versions/3.12*/bin/python ""; do
    [ -n "$py312" ] && "$py312" -c "" 2>/dev/null && break  # (pyenv's shim exists but may refuse)
  done
  [ -n "$py312" ] || { echo "gpu_session image: no working python3.12 here"; exit 1; }
  compgen -G ".whl/*.whl" > /dev/null || wheels
  [ -x "$dir/venv/bin/python" ] || "$py312" -m venv "$dir/venv" || exit 1
  "$dir/venv/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 triton==3.6.0 "numpy<2.4" einops pytest \
    pytest-benchmark tqdm regex huggingface_hub safetensors timm numba setuptools wheel .whl/*.whl || exit 1
  rm -rf "$dir/src" && git clone -q . "$dir/src" || exit 1
  (
    cd "$dir/src" || exit 1
    CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 "$dir/venv/bin/pip" install -q --no-build-isolation \
      --no-deps -e . > "$OUT/image_build.log" 2>&1 || { tail -30 "$OUT/image_build.log"; exit 1; }
    "$dir/venv/bin/python" -m hr2g.info | head -12
    "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider > "$OUT/image_tests.log" 2>&1
    grep -E "^(FAILED|ERROR) | passed| failed" "$OUT/image_tests.log" | tail -25
  )
}

# DALI and the packages it needs beyond the GPU image (nvimgcodec, nvjpeg, nvcomp, ...) are 268 MB
# of wheels, over the 64 MiB a device call may carry: here they are unpacked, xz-compressed
# (178 MB) and cut into 60 MiB parts under the ignored .dali/; each device call carries one part
# (plus the small .dali/MANIFEST) and `dali_part` stows it in /tmp, which lasts while the machine
# stays warm (30 s idle); `dali` checks the parts against the manifest and unpacks them into
# $SITE, which `setup` puts on PYTHONPATH.
DALI_PKGS="nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13 nvidia-nvjpeg nvidia-nvjpeg2k-cu13
  nvidia-nvtiff-cu13 libcst nvtx optree astunparse gast makefun six"

dali_pack() {  # here: .dali/dali.tar.xz.NN + .dali/MANIFEST (sha256 of every part)
  local tmp; tmp=$(mktemp -d)
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps $PIP312 -d "$tmp/whl" $DALI_PKGS || exit 1
  # shellcheck disable=SC2086
  python3 -m pip install -q --no-deps --no-index --no-compile $PIP312 --target "$tmp/site" "$tmp"/whl/*.whl || exit 1
  # an nvidia/__init__.py first on PYTHONPATH would hide the image's nvidia.* namespace (torch's CUDA libs)
  rm -rf "$tmp/site/nvidia/__init__.py" "$tmp/site/bin"
  rm -rf .dali && mkdir -p .dali
  tar -C "$tmp/site" -cf - . | xz -T0 -9 | split -b 60M -d - .dali/dali.tar.xz.
  (cd .dali && sha256sum dali.tar.xz.* > MANIFEST) && rm -rf "$tmp" && ls -la .dali
}

dali_part() {  # device: stow the part(s) this call carried
  mkdir -p "$PART_DIR" && cp .dali/dali.tar.xz.* .dali/MANIFEST "$PART_DIR"/ 2>/dev/null
  echo "gpu_session: parts held: $(cd "$PART_DIR" && ls dali.tar.xz.* 2>/dev/null | tr '\n' ' ')"
}

dali() {  # device: unpack DALI into $SITE once every part is there
  if [ ! -f "$SITE/.hr2g-dali" ]; then
    dali_part
    (cd "$PART_DIR" && sha256sum -c --quiet MANIFEST) || { echo "gpu_session: DALI parts missing or corrupt (carry each .dali/dali.tar.xz.NN once, with .dali/MANIFEST)"; return 1; }
    mkdir -p "$SITE" && cat "$PART_DIR"/dali.tar.xz.* | "$PY" -c "
import sys, tarfile
with tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz') as tar:
    tar.extractall(sys.argv[1], **({'filter': 'tar'} if hasattr(tarfile, 'tar_filter') else {}))" "$SITE" || return 1
    cp "$PART_DIR/MANIFEST" "$SITE/.hr2g-dali"  # unpacked whole: later calls skip this
  fi
  use_site
  "$PY" -c "import nvidia.dali as d; print('gpu_session: DALI', d.__version__, 'from', d.__file__)"
}

[ $# -gt 0 ] || set -- all
for stage in "$@"; do
  case "$stage" in
    wheels) wheels ;;
    setup) setup ;;
    kernel_tests) kernel_tests ;;
    tests) tests ;;
    dali_tests) dali_tests ;;
    bench_loader) bench_loader ;;
    bench_kernels) bench_kernels ;;
    bench_model) bench_model ;;
    bench) bench_kernels; bench_model ;;
    all) setup; tests; bench_kernels; bench_model ;;
    image) image ;;
    dali_pack) dali_pack ;;
    dali_part) dali_part ;;
    dali) dali ;;
    *) echo "gpu_session: unknown stage '$stage' (wheels, image, dali_pack, dali_part, dali, setup, kernel_tests, tests, dali_tests, bench_kernels, bench_model, bench_loader, bench, all)"; exit 2 ;;
  esac
done
