"""MLflow conventions and helpers shared by the sweep, the final stage and the leaderboard.

Run layout (one MLflow experiment per sweep file's ``experiment`` name):

* a **parent** run per sweep: tag ``vmbench.kind = sweep``;
* a **child** run per trial (``vmbench.kind = trial``, ``vmbench.stage = search``) and per final
  retraining (``vmbench.stage = final``, one per seed), nested with ``mlflow.parentRunId``.

Every child run carries the tags below, the flattened experiment config as params
(``optim.lr``, ``model.overrides.dims`` ...), per-epoch metrics (``train_loss``, ``val_dsc`` ...
with ``step = epoch``) and, for final runs, ``test_*`` metrics (fractions in [0, 1]; HD95 in
voxels) plus cost metrics (``n_params``, ``gmacs``, ``train_time_s``, ``device_hours``,
``latency_ms``, ``peak_mem_mb``) and the artifact ``eval/per_case.csv``.

The default store on one machine is ``sqlite:///<abs>/vmbench-runs/mlflow.db`` with artifacts in
``vmbench-runs/mlartifacts``: absolute, so Ray trials (which run in other folders) log to the
same place. ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` select a server instead.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# Tag keys (the leaderboard filters on these).
TAG_KIND = "vmbench.kind"  # sweep | trial
TAG_STAGE = "vmbench.stage"  # search | final
TAG_SWEEP = "vmbench.sweep"
TAG_TRIAL_ID = "vmbench.trial_id"
TAG_MODEL = "vmbench.model"
TAG_DATASET = "vmbench.dataset"
TAG_PROTOCOL = "vmbench.protocol"
TAG_SEED = "vmbench.seed"
TAG_SCAN_BACKEND = "vmbench.scan_backend"
TAG_HARDWARE = "vmbench.hardware"
TAG_NODE = "vmbench.node"
TAG_GPU = "vmbench.gpu"
TAG_VERSION = "vmbench.version"
TAG_GIT_SHA = "vmbench.git_sha"
TAG_SPACE_HASH = "vmbench.search_space_hash"
TAG_VAL_IS_TEST = "vmbench.val_is_test"
TAG_PARENT = "mlflow.parentRunId"
TAG_OUTCOME = "vmbench.outcome"  # completed | pruned | failed
TAG_ERROR = "vmbench.error"
TAG_FINAL_KEY = "vmbench.final_key"
TAG_GPU_IDS = "vmbench.gpu_ids"
TAG_RAY_NODE = "vmbench.ray_node_id"
TAG_STUDY = "vmbench.study"
TAG_RESUMED_EPOCH = "vmbench.resumed_from_epoch"
TAG_ATTEMPTS = "vmbench.attempts"

# Values of TAG_OUTCOME.
PRUNED, COMPLETED, FAILED = "pruned", "completed", "failed"

PER_CASE_ARTIFACT = "eval/per_case.csv"
DEFAULT_RUNS_DIR = "vmbench-runs"


def default_tracking_uri(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite file under ``runs_dir`` (its folder created)."""
    uri = resolve_tracking_uri(None, runs_dir)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        Path(runs_dir).resolve().mkdir(parents=True, exist_ok=True)
    return uri


def resolve_tracking_uri(uri: str | None = None, runs_dir: str | Path | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``<runs_dir>/mlflow.db``; for readers: creates nothing."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(runs_dir or DEFAULT_RUNS_DIR).resolve() / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str | None:
    """Local stores keep artifacts beside the database; servers decide for themselves."""
    if tracking_uri.startswith("sqlite:"):
        return (Path(runs_dir).resolve() / "mlartifacts").as_uri()
    return None


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_revision() -> str:
    """The repository's commit (with '+dirty' for local changes), or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware_description(device: Any = None) -> dict[str, str]:
    """Node name, accelerator and a one-line hardware string for tags."""
    import torch

    node = platform.node()
    gpu = ""
    if device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        index = getattr(device, "index", None) or torch.cuda.current_device()
        gpu = f"{torch.cuda.get_device_name(index)} (cuda:{index})"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            gpu += f" CUDA_VISIBLE_DEVICES={visible}"
    cpu = platform.processor() or platform.machine()
    hardware = gpu or f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return {TAG_NODE: node, TAG_GPU: gpu or "none", TAG_HARDWARE: hardware}


def flatten_params(flat: dict[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters; lists become their repr."""
    return {k: ("None" if v is None else str(v))[:6000] for k, v in flat.items()}
