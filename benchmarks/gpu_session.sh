#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in as few device calls as possible.  The lease
# (2026-12): 15 minutes of device time per task, an H200, counted from the asking -- a cold start
# takes 1-2 of them, no machine starts with under 4 left, a warm one is handed back after 30 s idle
# (and /tmp with it), one command may run 10 minutes, at most 8 files come back from $OUT.
#
# Here, once (no device time): fetch the Python wheels the GPU image lacks into the ignored .whl/
# and rehearse on this CPU machine with the GPU image's versions (a few minutes):
#   bash benchmarks/gpu_session.sh wheels image
# Then on the device, two calls back to back, most important first -- the kernel tests (Triton
# compiled for real, bf16/fp16, the CUDA bank op) and the figures issues #3 and #4 wait for (every
# benchmark checks its providers against the reference before it times them; the torch.compile
# rows, Inductor's long pole, run last), then the rest of the suite and the model/loader benchmarks:
#   run(command="HR2G_COMMIT=<git rev-parse --short HEAD> HR2G_CALL_BUDGET=420 bash benchmarks/gpu_session.sh setup kernel_tests bench_kernels pack",
#       carry=[".whl"], timeout_s=480)
#   run(command="HR2G_COMMIT=<the same> HR2G_CALL_BUDGET=180 bash benchmarks/gpu_session.sh setup other_tests bench_model pack",
#       carry=[".whl"], timeout_s=220)
#   give_back()
# That is about 13 of the 15 minutes with the start, if call 2 follows within the 30 s a warm
# machine waits (a fresh start costs 1-2 minutes, and none starts under 4 left): read call 1's
# figures after call 2.  Each stage stops at its call's budget and says what it skipped, so a slow
# stage costs what comes after it, not the call; the kernel tests, run first, also warm Triton's
# compile cache with kernels the benchmarks share (the 10k-episode OTAM shape, say).  The tests run under
# pytest-xdist (in the GPU image; HR2G_TEST_WORKERS, default 12 of its 16 cores): the suite's CPU
# half takes ~7 minutes on one process.  `pack` (last in every call) keeps env.txt and the
# benchmarks' .md/.jsonl as files and puts every log, JUnit XML and benchmark JSON into logs.tgz.
# DALI on the GPU needs three more calls carrying its parts (a 15-minute lease has no room; with more
# device time, after the two calls above, back to back):
#   bash benchmarks/gpu_session.sh dali_pack        # here, once: .dali/ (268 MB of wheels, 178 MB packed)
#   run(command="bash benchmarks/gpu_session.sh dali_part", carry=[".dali/dali.tar.xz.00", ".dali/MANIFEST"])
#   ... the same for .01 and .02, then
#   run(command="bash benchmarks/gpu_session.sh dali setup dali_tests bench_loader pack", carry=[".whl"], timeout_s=600)
# Without the dali_part calls, `dali` says which parts are missing and the DALI tests skip.
# `setup` is cheap when the machine is still warm (the build is kept, and rebuilt only when csrc/,
# setup.py or torch changed), so every call names it.
# Stages: wheels | image | dali_pack | dali_part | dali | setup | kernel_tests | other_tests | tests
# (= kernel_tests other_tests) | dali_tests | bench_kernels | bench_model | bench_loader | bench
# (kernels + model) | pack | all (= setup tests bench pack).  Results land in $OUT as
# <stage>.log/.xml/.json/.jsonl/.md; the last lines printed are the results table
# (benchmarks/report.py) or the failing tests: copy figures into README "Results" with the device,
# date and commit (the device gets no .git: the report names HR2G_COMMIT, or "?" without it).
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

build_stamp() {  # what hr2g._C is built from: its sources, setup.py, and this machine's torch
  { cat setup.py csrc/*.cpp csrc/*.h csrc/cuda/*; "$PY" -c "import torch; print(torch.__version__, torch.version.cuda)"; } \
    | sha256sum | cut -d' ' -f1
}

setup() {
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { echo "gpu_session: installing .whl/ failed"; exit 1; }
  fi
  [ -d "$SITE" ] && use_site
  # Build hr2g._C against *this* machine's torch (never carry a build made elsewhere), once per
  # warm machine: a rebuild costs ~80 s of a call's budget (the .cu alone).  The stamp (under the
  # ignored build/, kept between calls while the machine is warm) names the sources and torch the
  # build came from, so sources edited between calls are rebuilt.  CUDA_HOME: as set, else
  # /usr/local/cuda when it holds nvcc, else torch's guess (the folder above `nvcc` on PATH: on a
  # machine whose nvcc is a wrapper script in /usr/local/bin that is /usr/local, without CUDA's
  # headers, and the build falls back to a CPU-only _C -- the warning below says so).
  local stamp cuda_home=${CUDA_HOME:-}
  [ -z "$cuda_home" ] && [ -x /usr/local/cuda/bin/nvcc ] && cuda_home=/usr/local/cuda
  stamp=$(build_stamp)
  if [ "$(cat build/hr2g_C.stamp 2>/dev/null)" != "$stamp" ] || ! "$PY" -c "import torch, hr2g._C" 2>/dev/null; then
    # -v: setup.py's own warnings (why the CUDA part was not built) reach build.log
    ${cuda_home:+env CUDA_HOME=$cuda_home} MAX_JOBS=16 "$PY" -m pip install -v --no-build-isolation --no-deps \
      --no-index -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
    grep "hr2g setup: WARNING" "$OUT/build.log" | tail -5
    mkdir -p build && echo "$stamp" > build/hr2g_C.stamp
  else
    echo "gpu_session: hr2g._C already built from these sources"
  fi
  if command -v nvidia-smi > /dev/null && ! "$PY" -c "import sys, torch, hr2g._C as c; sys.exit(not c.WITH_CUDA)" 2>/dev/null; then
    echo "gpu_session: WARNING: hr2g._C was built without CUDA on a GPU machine (see $OUT/build.log; set CUDA_HOME)"
  fi
  {
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    "$PY" -m hr2g.info
  } 2>&1 | tee "$OUT/env.txt"
}

# A hung test (a deadlocked DataLoader worker, say) must cost one test, not the 10-minute call:
# pytest-timeout is in the GPU image; limits far above any test's time on 2 CPU cores (12 s at most), leaving
# room for Inductor compiling on first use.
timeout_opt() { "$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$1"; }

# Seconds a stage may still run in this device call (see run_bench), 0 for no limit; fails (and
# says so) when under 30 s are left.  $1: the stage, for the message; $2 (optional): the stage's
# own cap in seconds, so that one stage leaves the rest of the budget to those after it.
# HR2G_CALL_BUDGET=0: 0 (no limit, no caps).
call_left() {
  local budget=${HR2G_CALL_BUDGET:-570} cap=${2:-0}
  local left=$(( budget - SECONDS ))
  if [ "$budget" -le 0 ]; then left=0  # no budget, no caps: `timeout 0` never fires
  elif [ "$left" -lt 30 ]; then echo "gpu_session: $1 skipped: ${left} s left of this call's budget" >&2; return 1
  elif [ "$cap" -gt 0 ] && [ "$cap" -lt "$left" ]; then left=$cap
  fi
  echo "$left"
}

# pytest-xdist's options when it is importable and HR2G_TEST_WORKERS > 1 (the GPU image has it):
# the suite is mostly CPU work and the machine has 16 cores; each worker holds its own CUDA context.
# Under xdist each worker that compiles would start Inductor's pool of one compile process per
# core (12 pools on 16 cores): one compile thread per worker instead, as PyTorch's own CI does.
xdist_opt() {
  local n=${HR2G_TEST_WORKERS:-12}
  [ "$n" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null && echo "-n $n"
}

# pytest on the GPU -> $OUT/<name>.log and .xml; stops with SIGINT at this call's budget or at
# the stage's cap (pytest still prints the summary of what ran).  $1: name, $2: lines to echo,
# $3: the stage's cap in seconds (0: none), rest: pytest's arguments.
run_tests() {
  local name=$1 lines=$2 cap=$3 left; shift 3
  left=$(call_left "$name" "$cap") || return 0
  local xdist; xdist=$(xdist_opt)
  # shellcheck disable=SC2046,SC2086
  ${xdist:+env TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1}} \
  timeout -s INT -k 20 "$left" "$PY" -m pytest -q -p no:cacheprovider -rsfE $(timeout_opt 300) $xdist \
    --durations=10 --junitxml="$OUT/$name.xml" "$@" 2>&1 | tee "$OUT/$name.log" | tail -"$lines"
}

# the kernels' own tests (Triton compiled for real, GPU-marked bf16/fp16 and large shapes, the
# CUDA bank op, its emulator twin), then everything else: together, the whole suite on the GPU
KERNEL_TESTS="tests/test_otam.py tests/test_sample_attention.py tests/test_bank.py tests/test_bank_simt.py tests/test_compile_ops.py tests/test_double_backward.py"
# shellcheck disable=SC2086
kernel_tests() { run_tests kernel_tests 30 "${HR2G_KERNEL_TESTS_CAP:-180}" $KERNEL_TESTS; }
other_tests() {
  local ignore=() f
  for f in $KERNEL_TESTS; do ignore+=("--ignore=$f"); done
  run_tests other_tests 40 "${HR2G_OTHER_TESTS_CAP:-120}" tests "${ignore[@]}"
}
dali_tests() { run_tests dali_tests 30 0 tests/test_dali.py; }  # after `dali`: DALI's GPU pipelines vs PyAV / PIL

# At most 8 files come back from a device call: keep env.txt and the benchmarks' tables and
# records as files, and put everything else this call wrote into logs.tgz (with what an earlier
# pack put there).
pack() {
  (
    cd "$OUT" || exit 1
    local f rest=()
    for f in *; do
      case "$f" in env.txt|*.md|*.jsonl|logs.tgz|"*") ;; *) rest+=("$f") ;; esac
    done
    [ ${#rest[@]} -gt 0 ] || exit 0
    rm -rf .pack && mkdir .pack || exit 1
    if [ -f logs.tgz ]; then tar -xzf logs.tgz -C .pack || exit 1; fi
    mv "${rest[@]}" .pack/ && tar -czf logs.tgz.new -C .pack . && mv logs.tgz.new logs.tgz && rm -rf .pack
    echo "gpu_session: logs.tgz holds $(tar -tzf logs.tgz | grep -v '/$' | sed 's|^\./||' | tr '\n' ' ')"
  )
}

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
  # -rsfE: skip reasons and the failures' names (a bare -rs would replace pytest's default -rfE)
  # shellcheck disable=SC2046
  HR2G_BENCH_PARTIAL="$OUT/$name.jsonl" timeout -s INT -k 20 "$left" "$PY" -m pytest -q -p no:cacheprovider -rsfE "$@" \
    --benchmark-json="$OUT/$name.json" $(timeout_opt 400) --benchmark-columns=median,iqr,rounds > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "gpu_session: $name stopped at this call's budget (${left} s); reporting what finished"
  grep -E "passed|failed|error" "$OUT/$name.log" | tail -3
  # why a provider has no row (pysdtw or the extension's CUDA part missing, say): one line per reason
  grep -E "^SKIPPED" "$OUT/$name.log" | sed -E 's/^SKIPPED \[[0-9]+\] [^ ]+ //' | sort | uniq -c | head -8
  [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/$name.log" | head -20
  local records="$OUT/$name.json"
  [ -s "$records" ] || records="$OUT/$name.jsonl"  # pytest-benchmark leaves its JSON empty when stopped
  [ -s "$records" ] && "$PY" benchmarks/report.py "$records" --out "$OUT/$name.md" ${HR2G_COMMIT:+--commit "$HR2G_COMMIT"}
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
    pytest-benchmark pytest-xdist pytest-timeout tqdm regex huggingface_hub safetensors timm numba setuptools wheel \
    .whl/*.whl || exit 1
  rm -rf "$dir/src" && git clone -q . "$dir/src" || exit 1
  (
    cd "$dir/src" || exit 1
    CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 "$dir/venv/bin/pip" install -q --no-build-isolation \
      --no-deps -e . > "$OUT/image_build.log" 2>&1 || { tail -30 "$OUT/image_build.log"; exit 1; }
    "$dir/venv/bin/python" -m hr2g.info | head -12
    # the device's test stages as the device runs them (the clone's own script, under xdist), then
    # the benchmarks in smoke mode
    OUT="$OUT" PYTHON="$dir/venv/bin/python" HR2G_CALL_BUDGET=0 HR2G_TEST_WORKERS=${HR2G_TEST_WORKERS:-$(nproc)} \
      bash benchmarks/gpu_session.sh kernel_tests other_tests > /dev/null
    "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider benchmarks > "$OUT/image_bench.log" 2>&1
    local log
    for log in kernel_tests other_tests image_bench; do
      echo "gpu_session image, $log:"
      grep -E "^(FAILED|ERROR) | passed| failed" "$OUT/$log.log" | tail -15
    done
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
    other_tests) other_tests ;;
    tests) kernel_tests; other_tests ;;
    pack) pack ;;
    dali_tests) dali_tests ;;
    bench_loader) bench_loader ;;
    bench_kernels) bench_kernels ;;
    bench_model) bench_model ;;
    bench) bench_kernels; bench_model ;;
    all) setup; kernel_tests; other_tests; bench_kernels; bench_model; pack ;;
    image) image ;;
    dali_pack) dali_pack ;;
    dali_part) dali_part ;;
    dali) dali ;;
    *) echo "gpu_session: unknown stage '$stage' (wheels, image, dali_pack, dali_part, dali, setup, kernel_tests, other_tests, tests, dali_tests, bench_kernels, bench_model, bench_loader, bench, pack, all)"; exit 2 ;;
  esac
done
