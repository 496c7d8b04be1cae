"""The MLflow runs of a sweep: one parent run, one child run per trial or final run, none left RUNNING.

Child runs are created inside the Ray trial with the explicit tracking URI and the parent's id
(not through ``mlflow.start_run``'s process-global active run) and are found again by a key tag
when a trial is retried or a sweep resumed, so every trial has exactly one run. The driver closes
the runs of trials that Ray ended from outside (ASHA stops, lost nodes, Tune errors).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import vmbench
from vmbench.errors import PreflightError
from vmbench.tracking.conventions import (
    FAILED,
    KIND_SWEEP,
    LATEST_ON_RETRY,
    RUNS_VIEW_KEY,
    RUNS_VIEW_METRICS,
    PRUNED,
    TAG_ATTEMPTS,
    EXPERIMENT_KIND_TRAINING,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_SHA,
    TAG_KIND,
    TAG_NOTE,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_SAVED_VIEW_PREFIX,
    TAG_SPACE_HASH,
    TAG_STUDY,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    TAG_VERSION,
    error_summary,
    flatten_params,
    git_revision,
)

log = logging.getLogger("vmbench.tracking")

_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params


def client(tracking_uri: str):
    """An ``MlflowClient`` bound to ``tracking_uri`` (never the process-global URI)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(mlflow_client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created if needed and marked as a model-training experiment (the UI then
    opens its runs table); an experiment already given another kind keeps it."""
    tags = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING, TAG_SAVED_VIEW_PREFIX + RUNS_VIEW_KEY: runs_view()}
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifact_location, tags=tags)
        except Exception:  # another process created it between the two calls
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in tags.items():  # an experiment made by an older vmbench or by hand
        if key not in experiment.tags:
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def runs_view(sweep: str | None = None) -> str:
    """The saved view "vmbench: test metrics" of the runs table: the dataset, the test and selection
    metrics and the costs as columns, best test DSC first (the UI shows only attributes by default);
    with ``sweep``, the same view of that sweep's runs only (a filter in the URL would drop the columns)."""
    metrics = [f"metrics.`{m}`" for m in RUNS_VIEW_METRICS]
    columns = ["attributes.`Dataset`", *metrics, "attributes.`Models`"]
    state = {"selectedColumns": columns, "columnOrder": columns, "orderByKey": "metrics.`test_dsc`",
             "orderByAsc": False}
    if sweep:
        state["searchFilter"] = f"tags.`{TAG_SWEEP}` = '{sweep}'"
    now = int(time.time() * 1000)
    name = f"vmbench: sweep {sweep}" if sweep else "vmbench: test metrics"
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def sweep_view_key(sweep: str) -> str:
    """The key of sweep ``sweep``'s saved runs view (:func:`runs_view`), opened by ``?viewStateShareKey=``."""
    return f"{RUNS_VIEW_KEY}-sweep-{sweep}"


def describe(mlflow_client, run_id: str, text: str) -> None:
    """The run's description (MLflow's note, shown on the run page)."""
    mlflow_client.set_tag(run_id, TAG_NOTE, text)


RUNNING_NOTE = "Outcome: running."  # the last line of a trial's description until it ends


def _conclude_note(mlflow_client, run, outcome: str) -> None:
    """A trial closed from outside (pruned, lost, errored): its description says so instead of running."""
    note = run.data.tags.get(TAG_NOTE, "")
    if note.endswith(RUNNING_NOTE):
        describe(mlflow_client, run.info.run_id, note[: -len(RUNNING_NOTE)] + f"Outcome: {outcome}.")


class SystemSampler:
    """CPU, memory and GPU figures of this process between two calls, as ``system/*`` metrics.

    MLflow's own system-metrics monitor needs psutil (not a vmbench dependency) and an active run
    in this process (trials log to runs they do not hold active), so vmbench samples what it can
    read itself: the process's CPU time over wall time as a share of the machine's cores, its
    resident memory, the machine's used memory (``/proc/meminfo``), and on CUDA the memory torch
    reserved. GPU utilisation needs NVML, which torch does not expose without pynvml: not logged.
    """

    def __init__(self):
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def sample(self) -> dict[str, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        figures = {}
        if wall > self._wall:
            share = (cpu - self._cpu) / (wall - self._wall) / (os.cpu_count() or 1)
            figures["system/cpu_utilization_percentage"] = 100 * share
        self._cpu, self._wall = cpu, wall
        figures.update(_memory_figures())
        torch = sys.modules.get("torch")  # only when the trial already uses torch: no import for it
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            index = torch.cuda.current_device()
            figures[f"system/gpu_{index}_memory_usage_megabytes"] = torch.cuda.memory_reserved(index) / 2**20
        return figures


def _memory_figures() -> dict[str, float]:
    """Resident memory of this process and memory in use on the machine (Linux /proc; else nothing)."""
    figures = {}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        figures["system/process_memory_rss_megabytes"] = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total, free = (int(info[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
        figures["system/system_memory_usage_megabytes"] = (total - free) / 1024
        figures["system/system_memory_usage_percentage"] = 100 * (total - free) / total
    except (OSError, ValueError, KeyError):
        pass
    return figures


def find_run(mlflow_client, experiment_id: str, tag: str, value: str):
    """The oldest run of the experiment with ``tag = value``, or None."""
    runs = mlflow_client.search_runs(
        [experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=2, order_by=["attributes.start_time ASC"]
    )
    return runs[0] if runs else None


class TrialRun:
    """The MLflow child run of one trial or final run, identified by ``key_tag = key`` (a top-level
    run when ``parent_run_id`` is None: ``vmbench train``).

    A retried trial (lost node, error) or a resumed sweep reattaches to its run: status RUNNING
    again, ``vmbench.attempts`` incremented and the node/GPU tags replaced by the new attempt's,
    never a second run. A retry resumes from its last checkpoint, which may be older than the last
    epoch it logged: :meth:`log_metrics` skips every (metric, step) the run already has, so each
    step stays in the history once (MLflow keeps every value logged; the first attempt's stay).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str | None, *, key_tag: str, key: str,
                 run_name: str, tags: dict[str, str], params: dict[str, Any]):
        self.client = client(tracking_uri)
        existing = find_run(self.client, experiment_id, key_tag, key)
        self.resumed = existing is not None
        self._logged: set[tuple[str, int]] = set()  # (metric, step) already in the run's history
        self._system = SystemSampler()
        if existing is None:
            tags = {**tags, key_tag: key, TAG_ATTEMPTS: "1", **({TAG_PARENT: parent_run_id} if parent_run_id else {})}
            self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
            self._log_params(params)
            return
        self.run_id = existing.info.run_id
        self._logged = {(name, m.step) for name in existing.data.metrics
                        for m in self.client.get_metric_history(self.run_id, name)}
        self.client.update_run(self.run_id, status="RUNNING")
        attempts = int(existing.data.tags.get(TAG_ATTEMPTS, "1")) + 1
        self.client.set_tag(self.run_id, TAG_ATTEMPTS, str(attempts))
        for k, v in tags.items():
            if k in LATEST_ON_RETRY:
                self.client.set_tag(self.run_id, k, v)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the numeric entries of ``metrics`` (others are skipped) at ``step``, except those the
        run already has at that step. A per-epoch call (``step`` given) adds the system figures
        since the previous one (:class:`SystemSampler`)."""
        from mlflow.entities import Metric

        if step is not None:
            metrics = {**metrics, **self._system.sample()}
        now, step = int(time.time() * 1000), step or 0
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (k, step) not in self._logged
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)
            self._logged.update((m.key, step) for m in items)

    def log_bytes(self, data: bytes, name: str, artifact_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)  # a private folder that MLflow copies from: no reader sees it partial
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_file(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def describe(self, text: str) -> None:
        describe(self.client, self.run_id, text)

    def log_dataset(self, name: str, digest: str, source: str, context: str, *, rows: int) -> None:
        """The data the run read as a dataset input (the runs table's Dataset column): ``context`` is
        the split (train, test), ``digest`` a content hash of its files, ``source`` where they lie."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                          profile=json.dumps({"num_rows": rows}))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def log_model(self, name: str, checkpoint: Path, metrics: dict[str, float], params: dict[str, Any],
                  tags: dict[str, str]) -> str:
        """``checkpoint`` as an MLflow logged model of this run (the run page's "Logged models" and the
        experiment's Models tab) with the metrics it was selected and tested on linked to it; its id."""
        from mlflow.entities import LoggedModelOutput, Metric

        # MLflow refuses / : . % " ' in a logged model's name (model.name may be package.module:factory).
        name = re.sub(r"[/:.%\"']", "-", name)
        model = self.client.create_logged_model(
            self.client.get_run(self.run_id).info.experiment_id, name=name, source_run_id=self.run_id,
            params=flatten_params(params), tags=tags, model_type="vmbench-checkpoint")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(checkpoint, Path(tmp) / checkpoint.name)
                self.client.log_model_artifacts(model.model_id, tmp)
            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, 0, model_id=model.model_id) for k, v in metrics.items()]
            self.client.log_batch(self.run_id, metrics=items)
            self._logged.update((m.key, 0) for m in items)
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def finish(self, status: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)
        self.client.set_terminated(self.run_id, status=status)


def open_sweep_run(mlflow_client, experiment_id: str, *, sweep: str, experiment: str, source: str,
                   space_hash: str, resume: bool, tags: dict[str, str], plan: str) -> str:
    """The id of sweep ``sweep``'s parent run: created, or with ``resume`` found again and RUNNING.

    Raises :class:`PreflightError` when the sweep exists and ``resume`` is false, or when its
    search space (``space_hash``) changed since it started.
    """
    existing = mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = '{KIND_SWEEP}' and tags.`{TAG_SWEEP}` = '{sweep}'",
        max_results=1,
    )
    if existing:
        run = existing[0]
        if not resume:
            raise PreflightError(
                f"sweep {sweep!r} already exists in experiment {experiment!r} (run {run.info.run_id}); "
                "pass --resume to continue it, or set another name (--name)"
            )
        if run.data.tags.get(TAG_SPACE_HASH) != space_hash:
            raise PreflightError(
                f"{source} changed since sweep {sweep!r} started (search-space hash "
                f"{run.data.tags.get(TAG_SPACE_HASH)} -> {space_hash}); Tune cannot resume a different "
                "search: start a new sweep with --name"
            )
        mlflow_client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    if resume:
        log.warning("nothing to resume for sweep %r: starting it", sweep)
    tags = {
        TAG_KIND: KIND_SWEEP,
        TAG_SWEEP: sweep,
        TAG_SPACE_HASH: space_hash,
        TAG_VERSION: vmbench.__version__,
        TAG_GIT_SHA: git_revision(),
        **tags,
    }
    run = mlflow_client.create_run(experiment_id, tags=tags, run_name=sweep)
    mlflow_client.log_dict(run.info.run_id, {"plan": plan}, "sweep_plan.json")
    mlflow_client.set_experiment_tag(experiment_id, TAG_SAVED_VIEW_PREFIX + sweep_view_key(sweep), runs_view(sweep))
    return run.info.run_id


def close_trial_run(mlflow_client, experiment_id: str, trial_id: str, status: str, outcome: str,
                    errored: bool = False) -> bool:
    """Close the run of Ray trial ``trial_id`` if it is still RUNNING; True if it was."""
    run = find_run(mlflow_client, experiment_id, TAG_TRIAL_ID, trial_id)
    if run is None or run.info.status != "RUNNING":
        return False
    mlflow_client.set_tag(run.info.run_id, TAG_OUTCOME, outcome)
    if errored or status == "FAILED":
        mlflow_client.set_tag(run.info.run_id, TAG_ERROR, "trial errored (see Ray's error file)")
    _conclude_note(mlflow_client, run, f"{outcome} (closed by the sweep driver, Ray status {status})")
    mlflow_client.set_terminated(run.info.run_id, status=status)
    return True


def close_orphans(tracking_uri: str, experiment_id: str, *, sweep: str, study: str,
                  trial_states: dict[str, str], error: BaseException | None = None) -> int:
    """After a study: close every child run of ``sweep``/``study`` still RUNNING; returns how many.

    ``trial_states`` maps Ray trial ids to ``"ERROR"`` or ``"TERMINATED"``: errored trials'
    runs become FAILED, the others FINISHED and pruned. With ``error`` (Tune itself raised),
    every such run is FAILED with that error.
    """
    mlflow_client = client(tracking_uri)
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_STUDY}` = '{study}' "
        "and attributes.status = 'RUNNING'",
        max_results=10000,
    )
    for run in runs:
        state = trial_states.get(run.data.tags.get(TAG_TRIAL_ID, ""), "")
        status = "FAILED" if state == "ERROR" or error is not None else "FINISHED"
        mlflow_client.set_tag(run.info.run_id, TAG_OUTCOME, FAILED if status == "FAILED" else PRUNED)
        if error is not None:
            mlflow_client.set_tag(run.info.run_id, TAG_ERROR, f"the sweep stopped: {error_summary(error)}")
        _conclude_note(mlflow_client, run, "failed" if status == "FAILED" else "pruned (stopped early by the scheduler)")
        mlflow_client.set_terminated(run.info.run_id, status=status)
    return len(runs)


__all__ = [
    "TrialRun",
    "client",
    "close_orphans",
    "RUNNING_NOTE",
    "SystemSampler",
    "close_trial_run",
    "describe",
    "find_run",
    "get_or_create_experiment",
    "open_sweep_run",
    "runs_view",
    "sweep_view_key",
]
