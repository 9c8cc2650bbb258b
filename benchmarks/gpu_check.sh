#!/usr/bin/env bash
# One command for an NVIDIA GPU machine: build, CUDA tests, compute-sanitizer, GPU benchmarks, report.
#
#   benchmarks/gpu_check.sh [--pack] OUTDIR
#
# Steps, most important first; each runs under `timeout`, all within GPU_CHECK_BUDGET seconds
# (default 470, about 8 minutes); a step that fails is recorded and the next one runs anyway; a step
# the budget no longer allows is recorded as rc=nobudget.
#   info            nvidia-smi, nvcc, torch, compute-sanitizer versions
#   build           pip install --no-build-isolation --no-deps -e .  for the card's own architecture
#   test-rest       pytest tests -m "not cuda": the rest of the suite, on the CPU cores, in the
#                   background during the next three steps (which time nothing)
#   test-cuda       pytest tests -m "cuda and not triton"
#   test-triton     pytest tests/test_triton_bottleneck.py: the Triton fused block (impl="triton") on
#                   CUDA, compiled (its first GPU run: it has passed only Triton's interpreter before)
#   memcheck        compute-sanitizer --tool memcheck  on benchmarks/sanitize_case.py (fwd + bwd)
#   racecheck       compute-sanitizer --tool racecheck on the same
#   memcheck-triton, racecheck-triton   the same on `sanitize_case triton` (the Triton block)
#   bench-op-fp32   benchmarks/test_op.py, float32        (starts once test-rest is over, so that
#   bench-tab1-128  benchmarks/test_models.py, Table I     nothing else loads the machine; one
#                   at LR 128 (the paper's setting)        pytest run and JSON file per step, so
#   bench-op-bf16   test_op.py, bfloat16                   that a timeout loses one part only)
#   bench-op-fp16   test_op.py, float16
#   bench-tab1-32   test_models.py, Table I at LR 32
#   bench-train     test_models.py, training step
#   train-quick     python -m mesrgan.train --quick on CUDA twice (bf16 + channels_last; fp16 + EMA)
#   bench-triton    benchmarks/test_triton.py: impl="triton" vs "auto" vs ESRGAN-paper, fp32 / bf16
#                   (JSON in json/triton/, which the report does not read yet)
#   report          python -m benchmarks.report -> OUTDIR/RESULTS.md (a section named after the GPU), OUTDIR/table1-cuda.png
#
# OUTDIR receives summary.txt (one line per step: name, rc, seconds; then the sanitizer verdicts
# and test tallies), RESULTS.md, table1-cuda.png, build.tar.gz (the built extension), json/ (the benchmark JSON files), logs/ (one log
# per step) and gpu_check.tar.gz (json/ and logs/). --pack removes json/ and logs/ after packing,
# leaving 4 files (for a device tool that returns only a few). Add the GPU numbers to the
# repository's benchmarks/RESULTS.md afterwards with
#   python -m benchmarks.report --update OUTDIR/json/*.json
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds, default 470), MAX_JOBS (default
# nproc), TORCH_CUDA_ARCH_LIST (default: the visible GPU's compute capability, e.g. 9.0),
# GPU_CHECK_SKIP (comma-separated step names to leave out, e.g. "build,test-rest" on a rerun).
# Exit status: 0 when every step passed, else 1.
set -u

PACK=0
if [ "${1:-}" = "--pack" ]; then PACK=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--pack] OUTDIR" >&2
  exit 2
fi
mkdir -p "$1/logs" "$1/json" || exit 2
OUTDIR=$(cd "$1" && pwd)
LOGS=$OUTDIR/logs
JSON=$OUTDIR/json
cd "$(dirname "$0")/.." || exit 2   # the repository root
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-470}
START=$(date +%s)
SUMMARY=$OUTDIR/summary.txt
export PYTHONUNBUFFERED=1
: >"$SUMMARY"

note() { echo "$*" >>"$SUMMARY"; echo "$*" >&2; }

# step NAME CAP_SECONDS COMMAND: runs COMMAND (a bash string) into logs/NAME.log under a timeout of
# min(CAP, what is left of the budget less RESERVE seconds kept for the report).
RESERVE=25
step() {
  local name=$1 cap=$2 cmd=$3 now left t rc t0 extra=""
  case ",${GPU_CHECK_SKIP:-}," in
    *",$name,"*) note "$(printf '%-15s rc=skip  %4ss  (GPU_CHECK_SKIP)' "$name" 0)"; return ;;
  esac
  now=$(date +%s)
  left=$((START + BUDGET - now))
  [ "$name" != report ] && left=$((left - RESERVE))
  if [ "$left" -lt 15 ]; then
    note "$(printf '%-15s rc=nobudget %ss  (budget of %ss spent)' "$name" 0 "$BUDGET")"
    return
  fi
  t=$cap
  [ "$left" -lt "$t" ] && t=$left
  echo "== $name (timeout ${t}s)" >&2
  t0=$(date +%s)
  { echo "\$ $cmd"; echo; } >"$LOGS/$name.log"
  timeout -k 10 "$t" bash -c "$cmd" >>"$LOGS/$name.log" 2>&1
  rc=$?
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && extra="  (timed out after ${t}s)"
  note "$(printf '%-15s rc=%-4s %4ss%s' "$name" "$rc" "$(($(date +%s) - t0))" "$extra")"
  return 0
}

find_tool() {  # the CUDA tools need not be on PATH
  command -v "$1" 2>/dev/null || ls /usr/local/cuda/bin/"$1" /usr/local/cuda/compute-sanitizer/"$1" 2>/dev/null | head -1
}
SANITIZER=$(find_tool compute-sanitizer)
SANITIZER=${SANITIZER:-compute-sanitizer}
NVCC=$(find_tool nvcc)
NVCC=${NVCC:-nvcc}
ARCH=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)}
JOBS=${MAX_JOBS:-$(nproc)}
COMMIT="?"
if command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1; then
  COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
fi
note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $COMMIT budget ${BUDGET}s arch $ARCH jobs $JOBS"

step info 30 "nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv; \
$NVCC --version; $SANITIZER --version | head -3; $PY -m pip --version; nproc; free -g; \
$PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version()); print(torch.cuda.get_device_properties(0))'"

step build 240 "TORCH_CUDA_ARCH_LIST='$ARCH' MAX_JOBS=$JOBS MESRGAN_CUDA=1 MESRGAN_PTXAS_VERBOSE=1 \
$PY -m pip install --no-build-isolation --no-deps -v -e . && \
$PY -c 'import mesrgan; assert mesrgan._ext.WITH_CUDA, \"built without CUDA\"; print(\"mesrgan loaded from\", mesrgan._ext.LIBRARY_PATH)' && \
echo '== the C++ and OpenMP runtimes must be shared libraries (one copy each in the process):' && \
ldd mesrgan/_C*.so | grep -E 'libstdc|libgomp' && \
$PY -c 'import torch, mesrgan; assert torch.ops.mesrgan._cpu_parallel(), \"CPU kernels built without OpenMP\"; \
gomp = {l.split()[-1] for l in open(\"/proc/self/maps\") if \"gomp\" in l}; print(\"libgomp in the process:\", gomp); assert len(gomp) == 1'"

# Nothing below can run without the extension: a failed build ends the check (device time is scarce).
if ! grep -qE "^build +rc=(0|skip) " "$SUMMARY"; then
  note "total $(($(date +%s) - START))s; SOME STEPS FAILED: the build, so nothing else ran"
  echo; echo "---- errors in logs/build.log"; grep -E -B2 -A6 "error|FAILED" "$LOGS/build.log" | head -60
  tar czf "$OUTDIR/gpu_check.tar.gz" -C "$OUTDIR" logs json 2>/dev/null
  exit 1
fi

# The built extension, so that a rerun that changes no C++/CUDA source can skip the build:
#   tar xzf build.tar.gz && GPU_CHECK_SKIP=build benchmarks/gpu_check.sh OUTDIR
tar czf "$OUTDIR/build.tar.gz" mesrgan/_C*.so mesrgan/_build_info.py 2>/dev/null || rm -f "$OUTDIR/build.tar.gz"

# Spread over 6 pytest-xdist workers of 2 threads each where xdist is installed (the H100 image has
# it): in one process beside the CUDA tests it had reached only 56% after 132 s.
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 6"
step test-rest 200 "OMP_NUM_THREADS=2 $PY -m pytest tests -m 'not cuda' -q -rfE -p no:cacheprovider $XDIST" &
REST_PID=$!

step test-cuda 180 "$PY -m pytest tests -m 'cuda and not triton' -q -rfEs -p no:cacheprovider"

# Its first compile of each kernel variant takes seconds (Triton's cache is empty on a fresh machine).
step test-triton 150 "$PY -m pytest tests/test_triton_bottleneck.py -q -rfEs -p no:cacheprovider"

# No caching allocator under memcheck: each tensor its own cudaMalloc, so a read past a tensor's
# end is caught instead of landing in a pooled block.
step memcheck 90 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SANITIZER --tool memcheck --error-exitcode 3 --print-limit 30 \
$PY -m benchmarks.sanitize_case"

step racecheck 90 "$SANITIZER --tool racecheck --error-exitcode 3 --print-limit 30 $PY -m benchmarks.sanitize_case"

step memcheck-triton 90 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SANITIZER --tool memcheck --error-exitcode 3 --print-limit 30 \
$PY -m benchmarks.sanitize_case triton"

step racecheck-triton 90 "$SANITIZER --tool racecheck --error-exitcode 3 --print-limit 30 $PY -m benchmarks.sanitize_case triton"

wait "$REST_PID"

BENCH="$PY -m pytest --benchmark-only --bench-device=cuda -q -p no:cacheprovider --benchmark-min-rounds=5 \
--benchmark-columns=median,iqr,rounds --benchmark-sort=name"
OP="$BENCH benchmarks/test_op.py --benchmark-max-time=0.03"
TAB="$BENCH benchmarks/test_models.py --benchmark-max-time=0.2"
step bench-op-fp32 70 "$OP -k float32 --benchmark-json='$JSON/op-fp32.json'"
step bench-tab1-128 100 "$TAB -k 'model-fwd and lr128' --benchmark-json='$JSON/table1-lr128.json'"
step bench-op-bf16 60 "$OP -k bfloat16 --benchmark-json='$JSON/op-bf16.json'"
step bench-op-fp16 60 "$OP -k 'float16 and not bfloat16' --benchmark-json='$JSON/op-fp16.json'"
step bench-tab1-32 60 "$TAB -k 'model-fwd and lr32' --benchmark-json='$JSON/table1-lr32.json'"
step bench-train 45 "$TAB -k model-train --benchmark-json='$JSON/train.json'"
# The training program's CUDA paths (autocast, channels_last, EMA, pinned memory): two short runs.
step train-quick 60 "$PY -m mesrgan.train --model mesrgan --quick --device cuda --amp bf16 --channels-last --workers 2 \
--no-tensorboard --overwrite --out /tmp/mesrgan-q1 && $PY -m mesrgan.train --model esrgan --quick --device cuda --amp fp16 --ema 0.999 \
--workers 2 --no-tensorboard --overwrite --out /tmp/mesrgan-q2"
# In a folder of its own: benchmarks.report does not tabulate these rows yet.
step bench-triton 150 "mkdir -p '$JSON/triton' && $BENCH benchmarks/test_triton.py --benchmark-max-time=0.1 \
--benchmark-json='$JSON/triton/triton.json'"

JSONS=$(ls "$JSON"/*.json 2>/dev/null | sed "s/.*/'&'/" | tr '\n' ' ')
if [ -n "$JSONS" ]; then
  step report 30 "$PY -m benchmarks.report $JSONS --out '$OUTDIR/RESULTS.md' --plot '$OUTDIR/table1-cuda.png'"
else
  note "$(printf '%-15s rc=none %4ss  (no benchmark JSON)' report 0)"
fi

# Sanitizer verdicts and test tallies, for a reader of the summary alone.
for s in memcheck racecheck memcheck-triton racecheck-triton; do
  [ -f "$LOGS/$s.log" ] && note "$s: $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY\|sanitize_case:' "$LOGS/$s.log" | tr '\n' ' ')"
done
for f in "$LOGS"/test-*.log "$LOGS"/bench-*.log; do
  [ -f "$f" ] && note "$(basename "$f" .log): $(grep -E '(passed|failed|error|skipped|deselected).* in [0-9.]+s' "$f" | tail -1)"
done
FAILED=0
grep -qE '^[a-z0-9-]+ +rc=([1-9]|nobudget|none)' "$SUMMARY" && FAILED=1
note "total $(($(date +%s) - START))s; $([ $FAILED -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED: see logs')"

for s in build test-cuda test-rest test-triton memcheck racecheck memcheck-triton racecheck-triton; do
  if [ -f "$LOGS/$s.log" ] && ! grep -qE "^$s +rc=0 " "$SUMMARY"; then
    echo; echo "---- tail of logs/$s.log"; tail -25 "$LOGS/$s.log"
  fi
done

tar czf "$OUTDIR/gpu_check.tar.gz" -C "$OUTDIR" logs json 2>/dev/null
[ "$PACK" -eq 1 ] && rm -rf "$LOGS" "$JSON"
exit $FAILED
