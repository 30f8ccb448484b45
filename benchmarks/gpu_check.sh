#!/usr/bin/env bash
# The prepared GPU check: run it whenever a GPU machine is lent.  From the source tree, no
# install (PYTHONPATH=.); what needs a missing package is skipped with a line saying so.
#
#   bash benchmarks/gpu_check.sh            # CUDA: the cuda-marked tests, the ~0.5B DPO step
#                                           # benchmark (≤ 8 min on one H100/H200), then the
#                                           # tiny pipeline under torchrun with FSDP2 (1 GPU)
#   bash benchmarks/gpu_check.sh --smoke    # the same steps on the CPU at a tiny size (< 2 min;
#                                           # .ci/run runs it so the script cannot rot)
#
# Writes benchmarks/results/gpu_<device>.json (with --smoke: a temporary file, printed).
# PYTHON=... picks the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; fi
status=0

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

echo "== environment"
"$PY" - <<'PY'
import platform, torch
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda available: {cuda}")
if cuda:
    print("device:", torch.cuda.get_device_name(0))
PY
[[ $? -eq 0 ]] || { echo "torch does not import: nothing to check"; exit 1; }

if [[ $SMOKE -eq 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: run with --smoke on a CPU"
    exit 1
fi

echo "== tests marked cuda"
if has pytest && has hypothesis; then
    files=$(grep -l "pytest.mark.cuda" tests/test_*.py 2>/dev/null | tr '\n' ' ')
    if [[ -z "$files" ]]; then
        echo "skip: no test file carries the cuda mark"
    else
        # -o addopts="": the project's addopts name plugins (pytest-benchmark) this machine
        # may lack; -p no:cacheprovider: nothing written into the tree.
        if ! timeout 300 "$PY" -m pytest -o addopts="" -p no:cacheprovider -q -rs -m cuda $files; then
            status=1
        fi
        if [[ $SMOKE -eq 1 ]]; then
            echo "-- the same DPO-step tests on the CPU (LLM_TEST_DEVICE=cpu)"
            LLM_TEST_DEVICE=cpu timeout 300 "$PY" -m pytest -o addopts="" -p no:cacheprovider -q \
                tests/test_llm_cuda.py || status=1
        fi
    fi
else
    echo "skip: the cuda tests need pytest and hypothesis (missing here)"
fi

echo "== DPO step benchmark"
if has numpy; then
    if [[ $SMOKE -eq 1 ]]; then
        out="$(mktemp -d)/gpu_cpu-smoke.json"
        timeout 300 "$PY" benchmarks/gpu_step.py --smoke --out "$out" || status=1
    else
        timeout 420 "$PY" benchmarks/gpu_step.py || status=1
    fi
else
    echo "skip: the benchmark needs numpy (missing here)"
fi

echo "== FSDP2 on one device (torchrun, 1 process; the whole pipeline, sharded)"
fsdp_dir="$(mktemp -d)"
if [[ $SMOKE -eq 1 ]]; then device=cpu; dtype=float32; else device=cuda; dtype=bfloat16; fi
"$PY" - "$fsdp_dir" "$device" "$dtype" <<'PY' || status=1
import sys
from pathlib import Path

from llm.synth import write_suite

folder, device, dtype = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sizes = {"arithmetic": (48, 16), "safety": (24, 16), "format": (96, 16)}
manifest = write_suite(folder / "data", seed=0, sizes=sizes)
(folder / "fsdp.toml").write_text(f"""
[run]
out = "{folder / 'out'}"
seeds = [0]
methods = ["stratified", "ama-r", "ama-s"]
device = "{device}"
dtype = "{dtype}"
parallel = "fsdp"
[data]
manifest = "{manifest}"
max_length = 48
[model]
n_layer = 2
n_head = 2
n_embd = 64
block_size = 64
[sft]
steps = 50
batch_size = 16
[specialist]
steps = 20
batch_size = 8
[generalist]
batch_size = 8
[mix]
examples = 240
[eval]
generate = 4
max_new_tokens = 8
""")
PY
if ! timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
        -m llm run --config "$fsdp_dir/fsdp.toml" | tail -8; then
    echo "FSDP run failed"
    status=1
fi

exit $status
