"""The names, places and provenance every vmbench MLflow run shares (no MLflow import here).

Tag keys and outcome values are what the leaderboard filters on; the default store is an
absolute SQLite file so that Ray trials, which run in other folders, log to the same place.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETED",
    "DEFAULT_RUNS_DIR",
    "FAILED",
    "KIND_SWEEP",
    "KIND_TRIAL",
    "LATEST_ON_RETRY",
    "OUTCOMES",
    "PER_CASE_ARTIFACT",
    "PER_CASE_VAL_ARTIFACT",
    "SPLITS_ARTIFACT",
    "PRUNED",
    "STAGE_FINAL",
    "STAGE_SEARCH",
    "STAGE_SINGLE",
    "TAG_RUN_DIR",
    "TAG_RUN_KEY",
    "TAG_ATTEMPTS",
    "TAG_DATASET",
    "TAG_DATASETS",
    "TAG_ERROR",
    "TAG_FINAL_KEY",
    "TAG_FOLD",
    "TAG_FOLDS",
    "TAG_CV_SEARCH",
    "TAG_GIT_SHA",
    "TAG_GPU",
    "TAG_GPU_IDS",
    "TAG_HARDWARE",
    "TAG_KIND",
    "TAG_MODEL",
    "TAG_MODELS",
    "TAG_NODE",
    "TAG_OUTCOME",
    "TAG_PARENT",
    "TAG_PROTOCOL",
    "TAG_RAY_NODE",
    "TAG_RESUMED_EPOCH",
    "TAG_SCAN_BACKEND",
    "TAG_SEED",
    "TAG_SOURCE",
    "TAG_OBJECTIVES",
    "TAG_SPACE_HASH",
    "TAG_STAGE",
    "TAG_STUDY",
    "TAG_SWEEP",
    "TAG_TRIAL_ID",
    "TAG_PARETO",
    "TAG_TRANSFER_PREFIX",
    "TAG_VAL_IS_TEST",
    "TAG_VERSION",
    "EXPERIMENT_KIND_TRAINING",
    "TAG_EXPERIMENT_KIND",
    "TAG_NOTE",
    "TAG_SAVED_VIEW_PREFIX",
    "RUNS_VIEW_KEY",
    "RUNS_VIEW_METRICS",
    "default_artifact_location",
    "default_tracking_uri",
    "error_summary",
    "flatten_params",
    "git_revision",
    "hardware_description",
    "objectives_tag",
    "parse_objectives_tag",
    "resolve_tracking_uri",
    "transfer_tag",
]

# Tag keys of every run.
TAG_KIND = "vmbench.kind"  # sweep | trial
TAG_STAGE = "vmbench.stage"  # search | final
TAG_SWEEP = "vmbench.sweep"
TAG_STUDY = "vmbench.study"  # dataset__model of the sweep
TAG_TRIAL_ID = "vmbench.trial_id"  # Ray Tune's trial id (search runs)
TAG_PARETO = "vmbench.pareto"  # "true" on the search runs of a multi-objective study's Pareto-optimal trials
# ``vmbench.transfer.<dataset>-<split> = true`` on a run scored on a dataset it was not trained on
# (U-Bench's zero-shot axis): its eval_<dataset>-<split>_* metrics are transfer results, not the
# run's own test results ("failed: ..." when that evaluation failed).
TAG_TRANSFER_PREFIX = "vmbench.transfer."
TAG_FINAL_KEY = "vmbench.final_key"  # sweep/study/seedN (final runs)
TAG_MODEL = "vmbench.model"
TAG_DATASET = "vmbench.dataset"
TAG_PROTOCOL = "vmbench.protocol"
TAG_SEED = "vmbench.seed"
TAG_RUN_DIR = "vmbench.run_dir"  # `vmbench train`: the run folder (absolute)
TAG_RUN_KEY = "vmbench.run_key"  # `vmbench train`: the run's key (its folder's mlflow_run.json), found again on --resume
TAG_FOLD = "vmbench.fold"  # protocol cv: the fold a run trained (0 .. folds-1); absent otherwise
TAG_FOLDS = "vmbench.folds"  # protocol cv: the number of folds
TAG_CV_SEARCH = "vmbench.cv_search"  # protocol cv: what search trials scored (one-fold | mean)
TAG_SCAN_BACKEND = "vmbench.scan_backend"
TAG_HARDWARE = "vmbench.hardware"
TAG_NODE = "vmbench.node"
TAG_GPU = "vmbench.gpu"
TAG_GPU_IDS = "vmbench.gpu_ids"
TAG_RAY_NODE = "vmbench.ray_node_id"
TAG_VERSION = "vmbench.version"
TAG_GIT_SHA = "vmbench.git_sha"
TAG_SPACE_HASH = "vmbench.search_space_hash"
TAG_VAL_IS_TEST = "vmbench.val_is_test"
TAG_OUTCOME = "vmbench.outcome"  # one of OUTCOMES
TAG_ERROR = "vmbench.error"
TAG_RESUMED_EPOCH = "vmbench.resumed_from_epoch"
TAG_ATTEMPTS = "vmbench.attempts"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
# Tags of the parent (sweep) run only.
TAG_MODELS = "vmbench.models"
TAG_DATASETS = "vmbench.datasets"
TAG_SOURCE = "vmbench.source"
# The search's objectives and their directions, "val_dsc:max,latency_ms:min" (objectives_tag).
TAG_OBJECTIVES = "vmbench.objectives"

# MLflow's own tags: an experiment's kind picks the UI's view (model training: the runs table, not
# the GenAI traces view; the UI reads the value custom_model_development), a run's note is the
# description shown on its page.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
TAG_NOTE = "mlflow.note.content"
# A saved view of the runs table (the UI's "Views" menu, opened by ?viewStateShareKey=KEY): an experiment
# tag whose value is the UI's envelope {name, createdAt, updatedAt, state: JSON of the table's settings}.
TAG_SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "vmbench"
RUNS_VIEW_METRICS = ("test_dsc", "test_miou", "test_hd95", "best_val_dsc", "val_dsc", "n_params", "gmacs",
                     "device_hours")

# Kinds and stages (values of TAG_KIND and TAG_STAGE).
KIND_SWEEP, KIND_TRIAL = "sweep", "trial"
STAGE_SEARCH, STAGE_FINAL = "search", "final"
STAGE_SINGLE = "single"  # one `vmbench train` run, evaluated on the test split like a final run

# Values of TAG_OUTCOME.
PRUNED, COMPLETED, FAILED = "pruned", "completed", "failed"
OUTCOMES = (COMPLETED, PRUNED, FAILED)

# Tags a retried trial overwrites: it may run on another node or GPU, from a later epoch.
LATEST_ON_RETRY = (TAG_NODE, TAG_GPU, TAG_HARDWARE, TAG_GPU_IDS, TAG_RAY_NODE, TAG_RESUMED_EPOCH)

PER_CASE_ARTIFACT = "eval/per_case.csv"
PER_CASE_VAL_ARTIFACT = "eval/val/per_case.csv"  # protocol cv: the fold's validation cases
SPLITS_ARTIFACT = "splits.json"  # protocol cv: every fold's train/val ids, on the sweep's parent run
DEFAULT_RUNS_DIR = "vmbench-runs"


def resolve_tracking_uri(uri: str | None = None, runs_dir: str | Path | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``<runs_dir>/mlflow.db``; for readers: creates nothing."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(runs_dir or DEFAULT_RUNS_DIR).resolve() / 'mlflow.db'}"


def default_tracking_uri(runs_dir: str | Path = DEFAULT_RUNS_DIR, uri: str | None = None) -> str:
    """As :func:`resolve_tracking_uri`, for writers: the folder of the default SQLite file is created."""
    resolved = resolve_tracking_uri(uri, runs_dir)
    if not uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        Path(runs_dir).resolve().mkdir(parents=True, exist_ok=True)
    return resolved


def default_artifact_location(tracking_uri: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str | None:
    """Local stores keep artifacts beside the database (``mlartifacts/`` in the database's folder, which
    is ``runs_dir`` for the default store); servers decide for themselves."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            return (Path(path).resolve().parent / "mlartifacts").as_uri()
    if tracking_uri.startswith("sqlite:"):
        return (Path(runs_dir).resolve() / "mlartifacts").as_uri()
    return None


def git_revision() -> str:
    """The repository's commit (with '+dirty' for local changes), or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[2]
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


def error_summary(err: BaseException) -> str:
    """The value of :data:`TAG_ERROR`: the exception's type and the last line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:500]


def transfer_tag(name: str) -> str:
    """The tag marking evaluation ``name`` (``<dataset>-<split>``) of a run as a transfer evaluation."""
    return f"{TAG_TRANSFER_PREFIX}{name}"


def objectives_tag(objectives, modes) -> str:
    """The value of :data:`TAG_OBJECTIVES`: each objective with its direction (``val_dsc:max,latency_ms:min``)."""
    return ",".join(f"{metric}:{mode}" for metric, mode in zip(objectives, modes))


def parse_objectives_tag(text: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(objectives, modes) of a :data:`TAG_OBJECTIVES` value; ((), ()) when absent or malformed."""
    pairs = [item.rpartition(":") for item in (text or "").split(",") if item]
    if not pairs or any(not metric or mode not in ("min", "max") for metric, _, mode in pairs):
        return (), ()
    return tuple(p[0] for p in pairs), tuple(p[2] for p in pairs)
