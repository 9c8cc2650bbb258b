#!/usr/bin/env bash
# One command for an NVIDIA GPU machine: build, CUDA tests, compute-sanitizer, GPU benchmarks, report.
#
#   benchmarks/gpu_check.sh [--pack] OUTDIR
#
# Steps, in order of importance (each under `timeout`, all within GPU_CHECK_BUDGET seconds, default
# 470 — about 8 minutes; a step that fails is recorded and the next one runs anyway):
#   info        nvidia-smi, nvcc, torch, compute-sanitizer versions, git commit
#   build       pip install --no-build-isolation --no-deps -e .  for the card's own architecture
#   test-rest   pytest tests -m "not cuda"        (the rest of the suite, on the CPU cores, in the
#               background during the next three steps, which time nothing)
#   test-cuda   pytest tests -m cuda
#   memcheck    compute-sanitizer --tool memcheck   on benchmarks/sanitize_case.py (fwd + bwd)
#   racecheck   compute-sanitizer --tool racecheck  on the same
#   bench-op    pytest benchmarks/test_op.py      (op level, all dtypes / layouts, full sizes; starts
#               once test-rest is over, so that nothing else loads the machine)
#   bench-model pytest benchmarks/test_models.py  (Table I + training step, full sizes)
#   report      python -m benchmarks.report -> OUTDIR/RESULTS.md (section "cuda"), OUTDIR/table1-cuda.png
#
# OUTDIR receives summary.txt (one line per step: name, rc, seconds), the benchmark JSON files,
# RESULTS.md, table1-cuda.png, logs.tar.gz and logs/ (one log per step). --pack removes logs/ after
# packing it into logs.tar.gz, so that OUTDIR holds at most 6 files (for a device tool that returns
# only a few files). Merge the GPU numbers into the repository's RESULTS.md afterwards with
#   python -m benchmarks.report OUTDIR/bench-op-cuda.json OUTDIR/bench-models-cuda.json
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
mkdir -p "$1/logs" || exit 2
OUTDIR=$(cd "$1" && pwd)
LOGS=$OUTDIR/logs
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
  local name=$1 cap=$2 cmd=$3 now left t rc t0
  case ",${GPU_CHECK_SKIP:-}," in
    *",$name,"*) note "$(printf '%-12s rc=skip  %4ss  (GPU_CHECK_SKIP)' "$name" 0)"; return ;;
  esac
  now=$(date +%s)
  left=$((START + BUDGET - now))
  [ "$name" != report ] && left=$((left - RESERVE))
  if [ "$left" -lt 15 ]; then
    note "$(printf '%-12s rc=nobudget %ss  (budget of %ss spent)' "$name" 0 "$BUDGET")"
    return
  fi
  t=$cap
  [ "$left" -lt "$t" ] && t=$left
  echo "== $name (timeout ${t}s): $cmd" >&2
  t0=$(date +%s)
  { echo "\$ $cmd"; echo; } >"$LOGS/$name.log"
  timeout -k 10 "$t" bash -c "$cmd" >>"$LOGS/$name.log" 2>&1
  rc=$?
  local extra=""
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && extra="  (timed out after ${t}s)"
  note "$(printf '%-12s rc=%-4s %4ss%s' "$name" "$rc" "$(($(date +%s) - t0))" "$extra")"
  return 0
}

ARCH=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)}
JOBS=${MAX_JOBS:-$(nproc)}
note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)') budget ${BUDGET}s arch ${ARCH}"

step info 30 "nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv; \
nvcc --version; compute-sanitizer --version | head -3; $PY -m pip --version; \
$PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version()); p = torch.cuda.get_device_properties(0); print(p)'; \
git log -1 --format='%H %s'; git status --short | head -20"

step build 240 "TORCH_CUDA_ARCH_LIST='$ARCH' MAX_JOBS=$JOBS MESRGAN_CUDA=1 MESRGAN_PTXAS_VERBOSE=1 \
$PY -m pip install --no-build-isolation --no-deps -v -e . && \
$PY -c 'import mesrgan, torch; assert mesrgan._ext.WITH_CUDA, \"built without CUDA\"; print(\"mesrgan loaded from\", mesrgan._ext.LIBRARY_PATH, \"WITH_CUDA\", mesrgan._ext.WITH_CUDA)'"

step test-rest 150 "$PY -m pytest tests -m 'not cuda' -q -rfE -p no:cacheprovider" &
REST_PID=$!

step test-cuda 120 "$PY -m pytest tests -m cuda -q -rfEs -p no:cacheprovider"

step memcheck 90 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 30 \
$PY -m benchmarks.sanitize_case"

step racecheck 90 "compute-sanitizer --tool racecheck --error-exitcode 3 --print-limit 30 $PY -m benchmarks.sanitize_case"

wait "$REST_PID"

step bench-op 150 "$PY -m pytest benchmarks/test_op.py --benchmark-only --bench-device=cuda -q -p no:cacheprovider \
--benchmark-max-time=0.03 --benchmark-min-rounds=5 --benchmark-columns=median,iqr,rounds --benchmark-sort=name \
--benchmark-json='$OUTDIR/bench-op-cuda.json'"

step bench-model 150 "$PY -m pytest benchmarks/test_models.py --benchmark-only --bench-device=cuda -q -p no:cacheprovider \
--benchmark-max-time=0.2 --benchmark-min-rounds=5 --benchmark-columns=median,iqr,rounds --benchmark-sort=name \
--benchmark-json='$OUTDIR/bench-models-cuda.json'"

JSONS=""
for f in "$OUTDIR/bench-op-cuda.json" "$OUTDIR/bench-models-cuda.json"; do [ -s "$f" ] && JSONS="$JSONS '$f'"; done
if [ -n "$JSONS" ]; then
  step report 30 "$PY -m benchmarks.report $JSONS --out '$OUTDIR/RESULTS.md' --plot '$OUTDIR/table1-cuda.png'"
else
  note "$(printf '%-12s rc=none %4ss  (no benchmark JSON)' report 0)"
fi

# Sanitizer verdicts and test tallies, for a reader of the summary alone.
for s in memcheck racecheck; do
  [ -f "$LOGS/$s.log" ] && note "$s: $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY\|sanitize_case:' "$LOGS/$s.log" | tr '\n' ' ')"
done
for s in test-cuda test-rest bench-op bench-model; do
  [ -f "$LOGS/$s.log" ] && note "$s: $(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)|(passed|failed|error).* in [0-9.]+s' "$LOGS/$s.log" | tail -1)"
done
FAILED=0
grep -qE '^[a-z-]+ +rc=([1-9]|nobudget|none)' "$SUMMARY" && FAILED=1
note "total $(($(date +%s) - START))s; $([ $FAILED -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED: see logs')"

for s in test-cuda memcheck racecheck; do
  if [ -f "$LOGS/$s.log" ] && ! grep -q "rc=0 " <(grep "^$s " "$SUMMARY"); then
    echo; echo "---- tail of $s.log"; tail -25 "$LOGS/$s.log"
  fi
done

tar czf "$OUTDIR/logs.tar.gz" -C "$OUTDIR" logs 2>/dev/null
[ "$PACK" -eq 1 ] && rm -rf "$LOGS"
exit $FAILED
