#!/usr/bin/env bash
# The prepared GPU check: one command of at most 540 s whose every result lands in one folder.
# From the source tree, no install (PYTHONPATH=.).
#
#   bash benchmarks/gpu_check.sh --out DIR           # CUDA: ≤ 540 s on one H100/H200
#   bash benchmarks/gpu_check.sh --smoke --out DIR   # the same stages on the CPU, tiny (~1.5 min;
#                                                    # .ci/run runs it so the script cannot rot)
#
# DIR receives three files, whatever fails (a remote runner returns one folder):
#   gpu_check.json  rewritten after every stage (benchmarks/gpu_report.py): the environment
#                   (device, torch/CUDA, nvidia-smi), then per stage its status, wall time, time
#                   cap and numbers — the keys are the same on a CPU and a GPU, null where a
#                   stage could not measure
#   junit.xml       the cuda-marked tests (the smoke run: the same DPO-step tests on the CPU)
#   gpu_check.log   everything printed
# Stages, each under its own time cap (seconds), each printing its wall time:
#   tests 110    the cuda-marked tests, JUnit XML
#   step 180     the ~0.5B DPO step benchmark, eager configurations first, compiled last, each
#                caught on its own: tokens/s, MFU, max_memory_allocated/reserved, the plan's
#                memory estimate (benchmarks/gpu_step.py)
#   excess 60    self-excess at ~0.5B in bf16: max |excess|, max |clipped excess|,
#                |first loss − log 2| (gpu_step.py --excess)
#   pipeline 150 a short gpu-small run beside its cost plan: predicted and measured time, disk,
#                memory (benchmarks/gpu_pipeline.py)
# PYTHON=... picks the interpreter (default: python3).  Exit status 0 when every stage is ok.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
SMOKE=0
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) SMOKE=1; shift ;;
        --out) OUT="${2:-}"; shift 2 ;;
        *) echo "unknown argument $1: use --out DIR [--smoke]" >&2; exit 2 ;;
    esac
done
if [[ -z "$OUT" ]]; then
    echo "give --out DIR: the folder every result is written to" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"  # the pipeline's checkpoints and the stages' JSON before the report
trap 'rm -rf "$WORK"' EXIT
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

report() { "$PY" benchmarks/gpu_report.py "$@"; }

# stage NAME CAP FRAGMENT COMMAND...: run COMMAND under CAP seconds, record it in the report
stage() {
    local name="$1" cap="$2" fragment="$3"
    shift 3
    echo "== $name (cap ${cap} s)"
    local start end rc status seconds
    start=$(date +%s.%N)
    timeout --kill-after=10 "$cap" "$@"
    rc=$?
    end=$(date +%s.%N)
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    report stage "$OUT" "$name" --status "$status" --seconds "$seconds" --cap "$cap" \
        --fragment "$fragment"
    echo "== $name: $status in $seconds s (cap $cap s)"
}

if ! "$PY" -c "import torch, numpy" >/dev/null 2>&1; then
    echo "torch or numpy does not import: nothing to check"
    exit 1
fi
if [[ $SMOKE -eq 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: run with --smoke on a CPU"
    exit 1
fi
smoke=()
[[ $SMOKE -eq 1 ]] && smoke=(--smoke)
report init "$OUT" "${smoke[@]}" || exit 1
"$PY" -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['environment']))" \
    "$OUT/gpu_check.json"

# -o addopts="": the project's addopts name plugins (pytest-benchmark) this machine may lack;
# -p no:cacheprovider: nothing written into the tree.
pytest=("$PY" -m pytest -o addopts="" -p no:cacheprovider -q -rs --junitxml "$OUT/junit.xml")
if [[ $SMOKE -eq 1 ]]; then
    LLM_TEST_DEVICE=cpu stage tests 110 "$OUT/junit.xml" "${pytest[@]}" tests/test_llm_cuda.py
else
    mapfile -t files < <(grep -l "pytest.mark.cuda" tests/test_*.py)
    stage tests 110 "$OUT/junit.xml" "${pytest[@]}" -m cuda "${files[@]}"
fi
stage step 180 "$WORK/step.json" "$PY" benchmarks/gpu_step.py "${smoke[@]}" --out "$WORK/step.json"
stage excess 60 "$WORK/excess.json" \
    "$PY" benchmarks/gpu_step.py --excess "${smoke[@]}" --out "$WORK/excess.json"
stage pipeline 150 "$WORK/pipeline.json" \
    "$PY" benchmarks/gpu_pipeline.py "${smoke[@]}" --work "$WORK/run" --out "$WORK/pipeline.json"

report finish "$OUT"
"$PY" - "$OUT/gpu_check.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for name, stage in report["stages"].items():
    print(f"{name:>9}: {stage['status']:<8} {stage['seconds']:7.1f} s (cap {stage['cap_s']:.0f} s)")
print("status:", report["status"], "->", sys.argv[1])
sys.exit(0 if report["status"] == "ok" else 1)
PY
