#!/usr/bin/env bash
# One prepared GPU check for the selective-scan backends (run from the repository root):
#
#   benchmarks/gpu_check.sh [OUTPUT_DIR]        # default: $OUT if set, else ./gpu-results
#
# Steps, each with its own time limit inside an overall budget (GPU_CHECK_BUDGET_S, default 285 s,
# so the whole check stays under 5 minutes); a failing or timed-out step is recorded and the next
# one runs. Needs no network: only the repository, a CUDA torch and triton.
#
#   env          nvidia-smi, python/torch/CUDA/triton versions, which scan backends import
#   tests        Triton vs fp64 oracle on CUDA at VM-UNet's shapes (pytest -m cuda)
#   scan-triton  vmbench bench scan --device cuda --batch-size 32 (Triton, and mamba-ssm's kernel
#                if it imports; no mambapy here): fwd and fwd+bwd time, GB/s, % of peak, x floor
#   model        vmbench bench model --device cuda --bf16 both --sizes 256 --batch-size 32 (Triton)
#   [time left]  tune: vmbench bench tune at stage 1, batch 32: the candidate Triton tile configurations
#                (VMBENCH_TRITON_SCAN_CONFIG), each checked against the torch backend, then timed
#   [time left]  scan-torch, model-torch: the same for the pure-PyTorch backend (the fallback)
#   [time left]  tests-all: the whole Triton test file compiled on CUDA (every feature/layout)
#
# Output: OUTPUT_DIR/gpu_check.txt (everything) and OUTPUT_DIR/summary.txt (one line per step).
# Environment: PYTHON (default python3, else python), GPU_CHECK_BUDGET_S.
set -u

OUT_DIR="${1:-${OUT:-./gpu-results}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.txt"
SUMMARY="$OUT_DIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PY
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # works whether or not vmbench is pip-installed
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET VMBENCH_SCAN_BACKEND  # compiled kernels, automatic backend choice
vmbench() { "$PY" -m vmbench.cli "$@"; }

BUDGET="${GPU_CHECK_BUDGET_S:-285}"
START=$(date +%s)
remaining() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME LIMIT_S MIN_S COMMAND...: run with min(LIMIT, time left) seconds unless fewer than MIN
# are left; record the exit status (124 = timed out) and go on.
step() {
    local name="$1" limit="$2" min="$3"
    shift 3
    local left
    left=$(remaining)
    if [ "$left" -lt "$min" ]; then
        echo "== $name: skipped ($left s of the ${BUDGET} s budget left, needs $min)" | tee -a "$LOG"
        printf '%-12s skipped (budget)\n' "$name" >>"$SUMMARY"
        return 0
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local t0
    t0=$(date +%s)
    # A child bash runs the step, so that steps may be the exported shell functions of this script.
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >>"$LOG" 2>&1
    local rc=$?
    local took
    took=$(($(date +%s) - t0))
    local what="ok"
    [ "$rc" -ne 0 ] && what="FAILED"
    [ "$rc" -eq 124 ] && what="TIMED OUT"
    echo "== $name: exit $rc ($what) after ${took} s" | tee -a "$LOG"
    printf '%-12s exit %-3s %-9s %4s s\n' "$name" "$rc" "$what" "$took" >>"$SUMMARY"
}

env_report() {
    date -u
    nvidia-smi || echo "nvidia-smi not found"
    "$PY" - <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.platform())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
try:
    import triton
    print("triton", triton.__version__)
except Exception as err:
    print("triton does not import:", type(err).__name__, err)
import importlib
d = importlib.import_module("vmbench.ops.selective_scan")  # vmbench.ops re-exports a function of that name
print("available scan backends on cuda:", d.available_backends("cuda"))
for name in ("cuda", "triton"):
    print(f"  {name}:", d._unavailable_reason(name, torch.device("cuda")) or "available")
print("automatic choice on cuda:", d._automatic(torch.device("cuda")))
EOF
}

# Backends for the Triton scan table: Triton, plus mamba-ssm's kernel where it imports.
SCAN_BACKENDS=(--backend triton)
if "$PY" -c "import selective_scan_cuda" >/dev/null 2>&1; then
    SCAN_BACKENDS+=(--backend cuda)
fi

export -f vmbench env_report
step env 30 5 env_report
step tests 90 30 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests/test_selective_scan_triton.py
step scan-triton 75 30 vmbench bench scan --device cuda --batch-size 32 --repeats 5 --no-mambapy "${SCAN_BACKENDS[@]}"
step model 80 40 vmbench bench model --device cuda --bf16 both --sizes 256 --batch-size 32 --backend triton
step tune 110 40 vmbench bench tune --device cuda --batch-size 32 --shapes 768:4096 --repeats 3
step scan-torch 60 30 vmbench bench scan --device cuda --batch-size 32 --repeats 2 --backend torch --no-mambapy
step model-torch 90 45 vmbench bench model --device cuda --bf16 off --sizes 256 --batch-size 32 --steps 2 --backend torch
step tests-all 120 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_selective_scan_triton.py
echo "== total $(($(date +%s) - START)) s; results in $LOG" | tee -a "$LOG"
cat "$SUMMARY" | tee -a "$LOG"
