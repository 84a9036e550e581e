#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in as few device calls as possible (30 minutes of
# device time per session; a warm machine keeps what a call installed for about 30 s only).
#
# Here, once (no device time): fetch the Python wheels the GPU image lacks into the ignored .whl/,
# then rehearse on this CPU machine with the GPU image's versions (a few minutes):
#   bash benchmarks/gpu_session.sh wheels image
# Then on the device, back to back (each stage writes its log and results under $OUT):
#   run(command="bash benchmarks/gpu_session.sh setup tests", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_session.sh setup bench_kernels", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_session.sh setup bench_model", carry=[".whl"], timeout_s=600)
# `setup` is cheap when the machine is still warm (the build is kept), so every call names it.
# Stages: wheels | image | setup | tests | bench_kernels | bench_model | bench (both) | all (= setup tests
# bench).  Results land in $OUT as <stage>.json/.md/.log (at most 8 files come back: keep to
# these).  The last lines printed are the
# results table (benchmarks/report.py) or the failing tests; copy figures into README "Results"
# with the device, date and commit that the report prints.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

wheels() {  # what the GPU image (python 3.12, torch 2.11) lacks: open_clip and its two deps, PyAV, pysdtw
  grep -qx '/.whl/' .gitignore .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  local plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
    -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 av==19.0.2 pysdtw==0.0.5 && du -sh .whl
}

setup() {
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_session: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # Build hr2g._C against *this* machine's torch (never carry a build made elsewhere).
  if ! "$PY" -c "import hr2g._C" 2>/dev/null; then
    CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=16 "$PY" -m pip install -q --no-build-isolation --no-deps \
      --no-index -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
    grep -i "warning: " "$OUT/build.log" | grep -i hr2g | tail -5
  fi
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  "$PY" -m hr2g.info | tee "$OUT/info.txt"
}

tests() {  # the whole suite on the GPU: kernels for real (no interpreter), GPU-marked tests included
  "$PY" -m pytest -q -p no:cacheprovider tests -rs --durations=15 --junitxml="$OUT/tests.xml" 2>&1 \
    | tee "$OUT/tests.log" | tail -60
}

run_bench() {  # $1: name, then the benchmark files; medians of synchronised rounds -> $OUT/<name>.json, .md
  local name=$1; shift
  "$PY" -m pytest -q -p no:cacheprovider "$@" --benchmark-json="$OUT/$name.json" \
    --benchmark-columns=median,iqr,rounds > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "passed|failed|error" "$OUT/$name.log" | tail -3
  [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/$name.log" | head -20
  [ -s "$OUT/$name.json" ] && "$PY" benchmarks/report.py "$OUT/$name.json" --out "$OUT/$name.md"
}

# Two halves, so that each fits one 10-minute call (Inductor compiling the OTAM reference for the
# torch_compile provider takes the longest; never measured on this GPU yet).
bench_kernels() { run_bench bench_kernels benchmarks/test_bench_otam.py benchmarks/test_bench_sample_attention.py benchmarks/test_bench_bank.py; }
bench_model() { run_bench bench_model benchmarks/test_bench_episode.py benchmarks/test_bench_loader.py; }

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
  rm -rf "$dir/src" && git clone -q . "$dir/src" && cd "$dir/src" || exit 1
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 "$dir/venv/bin/pip" install -q --no-build-isolation \
    --no-deps -e . > "$OUT/image_build.log" 2>&1 || { tail -30 "$OUT/image_build.log"; exit 1; }
  "$dir/venv/bin/python" -m hr2g.info | head -12
  "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider > "$OUT/image_tests.log" 2>&1
  grep -E "^(FAILED|ERROR) | passed| failed" "$OUT/image_tests.log" | tail -25
}

[ $# -gt 0 ] || set -- all
for stage in "$@"; do
  case "$stage" in
    wheels) wheels ;;
    setup) setup ;;
    tests) tests ;;
    bench_kernels) bench_kernels ;;
    bench_model) bench_model ;;
    bench) bench_kernels; bench_model ;;
    all) setup; tests; bench_kernels; bench_model ;;
    image) image ;;
    *) echo "gpu_session: unknown stage '$stage' (wheels, image, setup, tests, bench_kernels, bench_model, bench, all)"; exit 2 ;;
  esac
done
