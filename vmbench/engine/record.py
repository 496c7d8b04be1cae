"""What an evaluated training run records in MLflow: one set of tags, costs, metrics and artifacts.

A sweep's final runs and a single ``vmbench train`` run are recorded the same way, so that the
leaderboard and the MLflow UI read both alike: the tags of :mod:`vmbench.tracking`, the flattened
config as params, per-epoch metrics, ``test_*`` metrics of the test split (fractions; HD95 in
voxels), the cost metrics (parameters, GMACs, latency, training time, device-hours, peak memory,
epochs) and the artifacts ``eval/per_case.csv``, ``eval/summary.json``, the selected checkpoint and
a few prediction overlays.

A run folder records which MLflow run it belongs to (:attr:`RunDir.pointer`), so that ``--resume``
and ``vmbench evaluate`` find the run again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import vmbench
from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.rundir import RunDir
from vmbench.errors import DataError
from vmbench.io import atomic_write

log = logging.getLogger("vmbench.engine")

__all__ = ["log_overlays", "read_run_pointer", "record_test_results", "run_costs", "run_tags",
           "write_run_pointer"]


def run_tags(cfg: ExperimentConfig, stage: str, device) -> dict[str, str]:
    """The tags every trained run carries (the sweep adds its own: sweep, study, node ids)."""
    from vmbench.ops import resolve_backend

    tags = {
        T.TAG_KIND: T.KIND_TRIAL,
        T.TAG_STAGE: stage,
        T.TAG_MODEL: cfg.model.name,
        T.TAG_DATASET: cfg.data.name,
        T.TAG_PROTOCOL: cfg.data.protocol,
        T.TAG_SEED: str(cfg.train.seed),
        T.TAG_SCAN_BACKEND: resolve_backend(None, device),
        T.TAG_VERSION: vmbench.__version__,
        T.TAG_GIT_SHA: T.git_revision(),
    }
    fold = getattr(cfg.data, "fold", None)
    if fold is not None:
        tags.update({T.TAG_FOLD: str(fold), T.TAG_FOLDS: str(cfg.data.folds)})
    tags.update(T.hardware_description(device))
    return tags


def run_costs(model, cfg: ExperimentConfig, img_size: tuple[int, int], result, gpu: float, device) -> dict[str, float]:
    """Cost metrics of a trained run, measured on the input the model is fed in training and test.

    That is the dataset's channel count: Synapse CT slices have 1 channel (the models, built
    with 3 input channels, repeat it themselves), ISIC images 3. Device-hours count the GPUs a
    run held (a CPU run counts as one device).
    """
    from vmbench import profiling

    in_chans = vmbench.dataset_info(cfg.data.name).in_chans
    train_time = sum(h.get("epoch_time_s", 0.0) for h in result.history)
    return {
        "n_params": profiling.count_parameters(model),
        "gmacs": profiling.count_gmacs(model, in_chans, img_size),
        "latency_ms": profiling.latency_ms(model, in_chans, img_size),
        "train_time_s": train_time,
        "device_hours": train_time / 3600 * (gpu if gpu > 0 else 1),
        "peak_mem_mb": profiling.peak_memory_mb(device),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
    }


def log_overlays(run: T.TrialRun, model, dataset, img_size: tuple[int, int], device, count: int = 4) -> None:
    """A few images of ``dataset`` with the ground truth and the prediction drawn over them."""
    from vmbench.visualize import overlays_for

    for name, png in overlays_for(model, dataset, device, img_size, count):
        run.log_bytes(png, name, f"overlays/{dataset.split}")


def record_test_results(run: T.TrialRun, cfg: ExperimentConfig, result, device, gpu: float = 0.0) -> dict[str, str]:
    """Log a finished ``fit``'s test metrics, costs and artifacts (from what ``fit`` kept in memory:
    the selected model, its test split and evaluation); returns the tags to finish the run with."""
    if result.model is None:
        raise ValueError("record_test_results needs a fit run with evaluate_test=True")
    costs = run_costs(result.model, cfg, result.img_size, result, gpu, device)
    run.log_metrics({**{f"test_{k}": v for k, v in result.test.items()}, **costs})
    eval_dir = result.run_dir.eval_dir("test")
    artifact_dir = str(Path(T.PER_CASE_ARTIFACT).parent)
    run.log_file(eval_dir / Path(T.PER_CASE_ARTIFACT).name, artifact_dir)
    run.log_file(eval_dir / "summary.json", artifact_dir)
    run.log_file(result.best_checkpoint, "checkpoints")
    log_overlays(run, result.model, result.test_data, result.img_size, device)
    return {T.TAG_OUTCOME: T.COMPLETED, T.TAG_VAL_IS_TEST: str(result.val_is_test).lower()}


def write_run_pointer(run_dir: RunDir, tracking_uri: str, experiment_id: str, run_id: str, key: str) -> Path:
    """The run folder's ``mlflow_run.json``: the MLflow run this folder's training belongs to."""
    payload = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "run_id": run_id, "key": key}
    return atomic_write(run_dir.pointer, json.dumps(payload, indent=2) + "\n")


def read_run_pointer(run_dir: RunDir) -> dict[str, str] | None:
    """The folder's ``mlflow_run.json``, or None when the training was not tracked."""
    path = run_dir.pointer
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable run pointer ({err}); delete it to track a new run") from None
    if not isinstance(payload, dict) or not {"tracking_uri", "experiment_id", "run_id", "key"} <= set(payload):
        raise DataError(f"{path}: expected keys tracking_uri, experiment_id, run_id and key; delete it to track a new run")
    return payload
