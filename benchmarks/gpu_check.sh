#!/usr/bin/env bash
# One prepared GPU check for the selective-scan backends (run from the repository root):
#
#   benchmarks/gpu_check.sh [OUTPUT_DIR]        # default: $OUT if set, else ./gpu-results
#
# Steps, each with its own time limit inside an overall budget (GPU_CHECK_BUDGET_S, default 480 s,
# so the whole check stays under 8 minutes); a failing or timed-out step is recorded and the next
# one runs. Needs no network: only the repository, a CUDA torch and triton (and Ray and MLflow for
# sweep-share).
#
#   env          nvidia-smi, python/torch/CUDA/triton versions, which scan backends import
#   tests        Triton vs fp64 oracle on CUDA at VM-UNet's shapes (pytest -m cuda)
#   scan-triton  vmbench bench scan --device cuda --batch-size 32 (Triton, and mamba-ssm's kernel
#                if it imports; no mambapy here): fwd and fwd+bwd time, GB/s, % of peak, x floor
#   model        vmbench bench model --device cuda --bf16 both --sizes 256 --batch-size 32 (Triton)
#   sweep-share  vmbench sweep of VM-UNet at 256x256, bf16: 2 search trials (2 epochs) sharing the one
#                GPU through Ray (resources.gpu 0.5), then 2 final runs (1 epoch) the same way; MLflow
#                in OUTPUT_DIR/sweep-share/mlflow.db. Prints each run's training images/s per epoch and
#                its peak GPU memory, read from its MLflow metrics
#   [time left]  tune: vmbench bench tune at stage 1, batch 32: the candidate Triton tile configurations
#                (VMBENCH_TRITON_SCAN_CONFIG), each checked against the torch backend, then timed
#   [time left]  scan-torch, model-torch: the same for the pure-PyTorch backend (the fallback)
#   [time left]  tests-all: the whole Triton test file compiled on CUDA (every feature/layout)
#
# Output: OUTPUT_DIR/gpu_check.txt (everything), OUTPUT_DIR/summary.txt (one line per step) and
# OUTPUT_DIR/sweep-share/ (the search-space file and the MLflow store of that step).
# Environment: PYTHON (default python3, else python), GPU_CHECK_BUDGET_S.
set -u

OUT_DIR="${1:-${OUT:-./gpu-results}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"  # absolute: the script changes folder, and MLflow's SQLite URI needs it
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

BUDGET="${GPU_CHECK_BUDGET_S:-480}"
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

# sweep-share DIR: two VM-UNet trials on one GPU through Ray, then two final runs; DIR gets the
# search-space file and the MLflow store (checkpoints and artifacts go to a temporary folder: they
# are hundreds of MB at 256x256). Fails unless both search trials finished.
sweep_share() {
    local dir="$1" n=400 size=256 experiment=gpu-check
    local uri="sqlite:///$dir/mlflow.db" work out n_train rc
    export MLFLOW_DISABLE_TELEMETRY=true
    mkdir -p "$dir"
    rm -f "$dir/mlflow.db"  # this run's trials only
    work=$(mktemp -d /tmp/vmbench-share.XXXXXX)
    cat >"$dir/space.yaml" <<EOF
# Written by benchmarks/gpu_check.sh (step sweep-share): two trials share the GPU (resources.gpu 0.5,
# 2 at once); grace_period = max_epochs, so ASHA stops neither.
experiment: $experiment
name: gpu-share
model: vmunet
dataset: synthetic-isic
budget: {trials: 2, concurrent: 2, max_epochs: 2, grace_period: 2, reduction_factor: 2}
resources: {cpu: 4, gpu: 0.5}
fixed:
  data: {img_size: $size, num_workers: 3, options: {n: $n}}
  train: {batch_size: 16, amp: bf16, device: cuda}
space:
  optim.lr: {type: loguniform, low: 5.0e-4, high: 2.0e-3}
final: {seeds: [1, 2], epochs: 1}
sampler: {name: random, seed: 0}
EOF
    # The data set generated once here, not by both trials at once; its training split's size is
    # what each epoch trains on.
    out=$("$PY" -c "from vmbench.data import build_dataset as b; print(len(b('synthetic-isic', split='train', n=$n)))") ||
        return 1
    n_train=${out##*$'\n'}  # the last line: the count
    # The experiment made first, with its artifacts (the final runs' checkpoints) in the work folder.
    "$PY" - "$uri" "$experiment" "$work/mlartifacts" <<'EOF' || return 1
import sys
from pathlib import Path
from mlflow.tracking import MlflowClient

MlflowClient(sys.argv[1]).create_experiment(sys.argv[2], artifact_location=Path(sys.argv[3]).as_uri())
EOF
    vmbench sweep --space "$dir/space.yaml" --tracking-uri "$uri" --runs-dir "$work/runs" --num-gpus 1 --no-leaderboard
    rc=$?
    "$PY" - "$uri" "$experiment" "$n_train" <<'EOF' || rc=1
import sys
from mlflow.tracking import MlflowClient

uri, experiment, n_train = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = MlflowClient(uri)
runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
runs = sorted((r for r in runs if r.data.tags.get("vmbench.stage") in ("search", "final")),
              key=lambda r: (r.data.tags["vmbench.stage"] != "search", r.info.start_time))
print("training images/s = train_images_per_s (samples / time of the epoch's training loop, CUDA synchronised; "
      "no validation; the first epoch also compiles); peak GPU memory = peak_mem_mb (torch's allocated peak "
      f"since the run started); {n_train} training images")
for run in runs:
    tags, info = run.data.tags, run.info
    history = sorted(client.get_metric_history(info.run_id, "train_images_per_s"), key=lambda m: m.step)
    rates = ", ".join(f"epoch {m.step} {m.value:.1f}" for m in history) or "no epoch logged"
    peak = run.data.metrics.get("peak_mem_mb")
    print(f"  {tags['vmbench.stage']:6} {info.run_name or '?':36} {info.status:8} "
          f"GPU ids {tags.get('vmbench.gpu_ids', '?'):4} images/s: {rates}; "
          f"peak GPU memory: {'not logged' if peak is None else f'{peak:.0f} MiB'}")
search = [r.info for r in runs if r.data.tags["vmbench.stage"] == "search"]
if len(search) == 2:
    shared = min(s.end_time or 0 for s in search) > max(s.start_time for s in search)
    print("  the two search trials " + ("ran at the same time" if shared else "did NOT run at the same time"))
sys.exit(0 if sum(s.status == "FINISHED" for s in search) == 2 else 1)
EOF
    rm -rf "$work"
    return "$rc"
}

# Backends for the Triton scan table: Triton, plus mamba-ssm's kernel where it imports.
SCAN_BACKENDS=(--backend triton)
if "$PY" -c "import selective_scan_cuda" >/dev/null 2>&1; then
    SCAN_BACKENDS+=(--backend cuda)
fi

export -f vmbench env_report sweep_share
step env 30 5 env_report
step tests 90 30 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests/ops/test_selective_scan_triton.py
step scan-triton 75 30 vmbench bench scan --device cuda --batch-size 32 --repeats 5 --no-mambapy "${SCAN_BACKENDS[@]}"
step model 80 40 vmbench bench model --device cuda --bf16 both --sizes 256 --batch-size 32 --backend triton
step sweep-share 200 120 sweep_share "$OUT_DIR/sweep-share"
step tune 110 40 vmbench bench tune --device cuda --batch-size 32 --shapes 768:4096 --repeats 3
step scan-torch 60 30 vmbench bench scan --device cuda --batch-size 32 --repeats 2 --backend torch --no-mambapy
step model-torch 90 45 vmbench bench model --device cuda --bf16 off --sizes 256 --batch-size 32 --steps 2 --backend torch
step tests-all 120 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/ops/test_selective_scan_triton.py
echo "== total $(($(date +%s) - START)) s; results in $LOG" | tee -a "$LOG"
cat "$SUMMARY" | tee -a "$LOG"
