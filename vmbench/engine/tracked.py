"""``vmbench train`` and ``vmbench evaluate`` with MLflow: a single run tracked like a sweep's final run.

The run (``vmbench.stage = single``) gets the same tags, params, per-epoch metrics, ``test_*``
metrics, costs and artifacts as a final run (:mod:`vmbench.engine.record`), in experiment
``vmbench-train`` by default, so that ``vmbench leaderboard`` and the MLflow UI show it. The run
folder's ``mlflow_run.json`` names the run: ``--resume`` continues it, and ``vmbench evaluate``
attaches its results to it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.engine.builders import resolve_device
from vmbench.engine.record import read_run_pointer, record_test_results, run_tags, write_run_pointer
from vmbench.rundir import RunDir
from vmbench.engine.training import FitResult, fit
from vmbench.errors import ConfigError
from vmbench.tracking.store import prepare_store

log = logging.getLogger("vmbench.engine")

DEFAULT_EXPERIMENT = "vmbench-train"
__all__ = ["DEFAULT_EXPERIMENT", "TrackedRun", "attach_evaluation", "open_tracked_run",
           "train_tracked"]


@dataclass
class TrackedRun:
    run: T.TrialRun
    tracking_uri: str
    experiment_id: str
    experiment: str


def open_tracked_run(cfg: ExperimentConfig, run_dir: RunDir, device, *, tracking_uri: str | None, experiment: str,
                     runs_dir: str | Path, resume: bool) -> TrackedRun:
    """The MLflow run of the training in ``run_dir``: the folder's own on ``--resume``, else a new one."""
    run_dir = RunDir(run_dir.root.resolve())
    pointer = read_run_pointer(run_dir) if resume else None
    uri = T.default_tracking_uri(runs_dir, tracking_uri)
    if pointer is not None and pointer["tracking_uri"] != uri:
        raise ConfigError(
            f"{run_dir.pointer}: this run is tracked in {pointer['tracking_uri']}, not {uri}; "
            f"pass --tracking-uri {pointer['tracking_uri']} to resume it there (or --no-track)"
        )
    prepare_store(uri)  # a new store is created and migrated by one process at a time
    client = T.client(uri)
    if pointer is not None:
        experiment_id, key = pointer["experiment_id"], pointer["key"]
        experiment = client.get_experiment(experiment_id).name
    else:
        experiment_id = T.get_or_create_experiment(client, experiment, T.default_artifact_location(uri, runs_dir))
        key = f"{run_dir}#{uuid.uuid4().hex[:12]}"
    tags = {**run_tags(cfg, T.STAGE_SINGLE, device), T.TAG_RUN_DIR: str(run_dir)}
    run_name = f"{cfg.model.name}-{cfg.data.name}-seed{cfg.train.seed}"
    run = T.TrialRun(uri, experiment_id, None, key_tag=T.TAG_RUN_KEY, key=key, run_name=run_name, tags=tags,
                     params=cfg.flat())
    write_run_pointer(run_dir, uri, experiment_id, run.run_id, key)
    return TrackedRun(run, uri, experiment_id, experiment)


def train_tracked(cfg: ExperimentConfig, run_dir: RunDir, *, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                  runs_dir: str | Path = T.DEFAULT_RUNS_DIR, resume: bool = False) -> tuple[FitResult, TrackedRun]:
    """``fit(cfg)`` with every epoch, the test results and the costs logged to MLflow."""
    device = resolve_device(cfg.train.device)
    tracked = open_tracked_run(cfg, run_dir, device, tracking_uri=tracking_uri, experiment=experiment, runs_dir=runs_dir,
                               resume=resume)
    run = tracked.run
    try:
        result = fit(cfg, run_dir, callbacks=[lambda r: run.log_metrics(r.metrics, step=r.epoch)], resume=resume)
        finish_tags = record_test_results(run, cfg, result, device, gpu=1.0 if device.type == "cuda" else 0.0)
    except KeyboardInterrupt:
        run.finish("KILLED", {T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: "interrupted"})
        raise
    except BaseException as err:  # recorded on the run, then raised with its traceback or message
        run.finish("FAILED", {T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
        raise
    # NaN headline metrics (record_test_results' outcome) end the run FAILED: it ranks nothing.
    run.finish("FAILED" if finish_tags.get(T.TAG_OUTCOME) == T.FAILED else "FINISHED", finish_tags)
    return result, tracked


def attach_evaluation(run_dir: RunDir, name: str, summary: dict[str, Any], eval_dir: str | Path,
                      transfer: bool = False) -> dict[str, str] | None:
    """Log an evaluation (``vmbench evaluate``) to the run of ``run_dir``, if it was tracked.

    Metrics are ``eval_<name>_<metric>`` (``name``: the split, or dataset-split for another
    dataset), so they never mix with the training's per-epoch ``val_*`` curves; the per-case table
    and summary go to the artifacts ``eval/<name>/``. ``transfer`` (another dataset than the run
    trained on): the run is tagged :func:`vmbench.tracking.transfer_tag` ``= true``. Returns the run pointer, or None.
    """
    pointer = read_run_pointer(run_dir)
    if pointer is None:
        return None
    from mlflow.entities import Metric, RunTag
    import time

    client = T.client(pointer["tracking_uri"])
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval_{name}_{k}", float(v), now, 0) for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    tags = [RunTag(T.transfer_tag(name), "true")] if transfer else []
    if metrics or tags:
        client.log_batch(pointer["run_id"], metrics=metrics, tags=tags)
    for file in ("per_case.csv", "summary.json"):
        client.log_artifact(pointer["run_id"], str(Path(eval_dir) / file), f"eval/{name}")
    return pointer
