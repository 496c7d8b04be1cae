"""``vmbench sweep``: Ray Tune + Optuna (TPE) + ASHA over every model x dataset of a space file.

For each study (model x dataset) of a :class:`~vmbench.search_space.SweepSpec`:

1. a Ray Tune ``Tuner`` runs ``budget.trials`` trials of :func:`search_trial`, suggested by
   :class:`PruneAwareOptunaSearch` (a seeded TPE study stored in SQLite in the sweep folder),
   ``budget.concurrent`` at a time, stopped early by ASHA on ``epoch``. A trial reports once per
   epoch with a checkpoint and resumes from it when retried (``FailureConfig(max_failures=2)``);
2. the best trial that ran the full budget is retrained once per final-stage seed
   (:func:`final_run`, Ray tasks) and evaluated on the test split: the runs the leaderboard reads.

MLflow: one parent run per sweep, one child run per trial and per final run, created inside the
trial with the explicit tracking URI and the parent's id, found again by tag when a trial is
retried or the sweep resumed, so every trial appears exactly once. Runs that Ray stops (ASHA) or
loses are closed by :class:`RunReconciler` on the driver; none is left RUNNING.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vmbench
from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.errors import PreflightError
from vmbench.search_space import SpaceParam, Study, SweepSpec, decode_sample, optuna_distributions

log = logging.getLogger("vmbench.sweep")

from vmbench.tracking import (  # noqa: E402  (re-exported for callers of the old names)
    COMPLETED,
    FAILED,
    PRUNED,
    TAG_ATTEMPTS,
    TAG_ERROR,
    TAG_FINAL_KEY,
    TAG_GPU_IDS,
    TAG_OUTCOME,
    TAG_RAY_NODE,
    TAG_RESUMED_EPOCH,
    TAG_STUDY,
)


@dataclass
class SweepContext:
    """Everything a trial or final run needs, passed to workers (picklable, small)."""

    sweep: str
    study: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    base: dict[str, Any]
    space: list[SpaceParam]
    metric: str
    mode: str
    max_epochs: int
    cpu: float
    gpu: float
    runs_dir: str
    space_hash: str
    env: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# MLflow runs bound to trials


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_run(client, experiment_id: str, tag: str, value: str):
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=2, order_by=["attributes.start_time ASC"]
    )
    return runs[0] if runs else None


class TrialRun:
    """An MLflow child run for one trial or final run; reattached (not duplicated) on retry."""

    def __init__(self, ctx: SweepContext, key_tag: str, key: str, run_name: str, tags: dict[str, str], params: dict[str, Any]):
        from mlflow.entities import Param

        self.client = _client(ctx.tracking_uri)
        existing = find_run(self.client, ctx.experiment_id, key_tag, key)
        if existing is not None:
            self.run_id = existing.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            attempts = int(existing.data.tags.get(TAG_ATTEMPTS, "1")) + 1
            self.client.set_tag(self.run_id, TAG_ATTEMPTS, str(attempts))
            self.resumed = True
        else:
            tags = {**tags, key_tag: key, T.TAG_PARENT: ctx.parent_run_id, TAG_ATTEMPTS: "1"}
            self.run_id = self.client.create_run(ctx.experiment_id, tags=tags, run_name=run_name).info.run_id
            flat = T.flatten_params(params)
            items = [Param(k, v) for k, v in flat.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])
            self.resumed = False
        for k, v in tags.items():  # node/GPU can change on a retry: keep the latest
            if k in (T.TAG_NODE, T.TAG_GPU, T.TAG_HARDWARE, TAG_GPU_IDS, TAG_RAY_NODE, TAG_RESUMED_EPOCH):
                self.client.set_tag(self.run_id, k, v)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_bytes(self, data: bytes, name: str, artifact_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_file(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)
        self.client.set_terminated(self.run_id, status=status)


def _run_tags(ctx: SweepContext, cfg: ExperimentConfig, stage: str, device) -> dict[str, str]:
    from vmbench.ops import resolve_backend

    tags = {
        T.TAG_KIND: "trial",
        T.TAG_STAGE: stage,
        T.TAG_SWEEP: ctx.sweep,
        TAG_STUDY: ctx.study,
        T.TAG_MODEL: cfg.model.name,
        T.TAG_DATASET: cfg.data.name,
        T.TAG_PROTOCOL: cfg.data.protocol,
        T.TAG_SEED: str(cfg.train.seed),
        T.TAG_SCAN_BACKEND: resolve_backend(None, device),
        T.TAG_VERSION: vmbench.__version__,
        T.TAG_GIT_SHA: T.git_revision(),
        T.TAG_SPACE_HASH: ctx.space_hash,
    }
    tags.update(T.hardware_description(device))
    try:
        import ray

        tags[TAG_GPU_IDS] = ",".join(map(str, ray.get_gpu_ids())) or "none"
        tags[TAG_RAY_NODE] = ray.get_runtime_context().get_node_id()
    except Exception:  # outside a Ray worker (tests calling the functions directly)
        pass
    return tags


def _prepare_worker(ctx: SweepContext) -> None:
    import torch

    os.environ.update(ctx.env)
    torch.set_num_threads(max(1, int(ctx.cpu)))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the engine replaces files atomically, so a hard link is a stable snapshot
    except OSError:
        shutil.copy2(src, dst)


# ------------------------------------------------------------------------------------------------
# The trainable and the final runs


def search_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Ray Tune function trainable: one search trial, reporting once per epoch with a checkpoint."""
    from ray import tune

    from vmbench.engine import fit, load_checkpoint, resolve_device

    _prepare_worker(ctx)
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    sample = decode_sample(ctx.space, {k: config[k] for k in config if k in {p.key for p in ctx.space}})
    cfg = ExperimentConfig.from_dict(ctx.base).with_overrides(sample, source=f"trial {trial_name}")
    work = Path(tempfile.mkdtemp(prefix=f"vmbench-{trial_name}-"))
    cfg.out_dir = str(work)
    (work / "checkpoints").mkdir()
    resume = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            for name in ("last.pt", "best.pt"):
                if (Path(restored) / name).exists():
                    shutil.copy2(Path(restored) / name, work / "checkpoints" / name)
        resume = (work / "checkpoints" / "last.pt").exists()
    device = resolve_device(cfg.train.device)
    params = {**cfg.flat(), **{f"search.{k}": v for k, v in sample.items()}}
    tags = _run_tags(ctx, cfg, "search", device)
    if resume:  # retried (lost node, error) or restored sweep: say from where
        tags[TAG_RESUMED_EPOCH] = str(load_checkpoint(work / "checkpoints" / "last.pt")["epoch"])
    run = TrialRun(ctx, T.TAG_TRIAL_ID, trial_id, trial_name, tags, params)

    finished = False

    def report(result) -> None:
        nonlocal finished
        run.log_metrics(result.metrics, step=result.epoch)
        if result.epoch >= ctx.max_epochs:
            # The scheduler ends a trial at max_epochs as soon as it reports, before fit() returns:
            # close the MLflow run first.
            best = load_checkpoint(result.best_checkpoint) if result.best_checkpoint else None
            if best is not None:
                run.log_metrics({f"best_{best['select_metric']}": best["best_value"], "best_epoch": best["best_epoch"]})
                _log_overlays(run, cfg, result.best_checkpoint, device, split="val")
            run.finish("FINISHED", {TAG_OUTCOME: COMPLETED})
            finished = True
        snapshot = Path(tempfile.mkdtemp(prefix="report-", dir=work))
        _link_or_copy(result.last_checkpoint, snapshot / "last.pt")
        if result.best_checkpoint is not None:
            _link_or_copy(result.best_checkpoint, snapshot / "best.pt")
        try:
            tune.report({**result.metrics, "epoch": result.epoch}, checkpoint=tune.Checkpoint.from_directory(snapshot))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    try:
        fit(cfg, callbacks=[report], resume=resume, evaluate_test=False)
    except Exception as err:
        run.finish("FAILED", {T.TAG_STAGE: "search", TAG_OUTCOME: FAILED, TAG_ERROR: _one_line(err)})
        raise
    else:
        if not finished:  # resumed after its last epoch: nothing was reported this time
            run.finish("FINISHED", {TAG_OUTCOME: COMPLETED})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def final_run(cfg_dict: dict[str, Any], ctx: SweepContext, key: str) -> dict[str, Any]:
    """Retrain the chosen configuration with one seed, evaluate on test, log everything."""
    from vmbench import profiling
    from vmbench.engine import fit, model_from_checkpoint, resolve_device

    _prepare_worker(ctx)
    cfg = ExperimentConfig.from_dict(cfg_dict, source=key)
    device = resolve_device(cfg.train.device)
    seed = cfg.train.seed
    run = TrialRun(ctx, TAG_FINAL_KEY, key, f"{ctx.study}-final-seed{seed}", _run_tags(ctx, cfg, "final", device), cfg.flat())
    resume = (Path(cfg.out_dir) / "checkpoints" / "last.pt").exists()
    try:
        result = fit(cfg, callbacks=[lambda r: run.log_metrics(r.metrics, step=r.epoch)], resume=resume)
        model, _, ckpt = model_from_checkpoint(result.best_checkpoint, device)
        info = vmbench.dataset_info(cfg.data.name)
        img_size = tuple(ckpt["img_size"])
        train_time = sum(h.get("epoch_time_s", 0.0) for h in result.history)
        costs = {
            "n_params": profiling.count_parameters(model),
            "gmacs": profiling.count_gmacs(model, info.in_chans if info.in_chans == 3 else 3, img_size),
            "latency_ms": profiling.latency_ms(model, 3, img_size),
            "train_time_s": train_time,
            "device_hours": train_time / 3600 * (ctx.gpu if ctx.gpu > 0 else 1),
            "peak_mem_mb": profiling.peak_memory_mb(device),
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
        }
        run.log_metrics({**{f"test_{k}": v for k, v in (result.test or {}).items()}, **costs})
        eval_dir = Path(cfg.out_dir) / "eval" / "test"
        run.log_file(eval_dir / "per_case.csv", "eval")
        run.log_file(eval_dir / "summary.json", "eval")
        run.log_file(result.best_checkpoint, "checkpoints")
        _log_overlays(run, cfg, result.best_checkpoint, device, split="test")
        val_is_test = json.loads((eval_dir / "summary.json").read_text()).get("val_is_test", False)
        run.finish("FINISHED", {TAG_OUTCOME: COMPLETED, T.TAG_VAL_IS_TEST: str(bool(val_is_test)).lower()})
        return {"key": key, "status": "FINISHED", "test": result.test}
    except Exception as err:
        run.finish("FAILED", {TAG_OUTCOME: FAILED, TAG_ERROR: _one_line(err)})
        raise


def _log_overlays(run: TrialRun, cfg: ExperimentConfig, checkpoint: Path, device, split: str, count: int = 4) -> None:
    from vmbench.data import build_dataset
    from vmbench.engine import model_from_checkpoint
    from vmbench.visualize import overlays_for

    model, _, ckpt = model_from_checkpoint(checkpoint, device)
    img_size = tuple(ckpt["img_size"])
    try:
        data = build_dataset(cfg.data.name, root=cfg.data.root, split=split, protocol=cfg.data.protocol,
                             img_size=img_size, seed=cfg.train.seed, **cfg.data.options)
    except ValueError as err:  # e.g. no validation split under the paper protocol
        log.info("no %s overlays: %s", split, err)
        return
    for name, png in overlays_for(model, data, device, img_size, count):
        run.log_bytes(png, name, f"overlays/{split}")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:500]


# ------------------------------------------------------------------------------------------------
# Optuna with ASHA: stopped trials are PRUNED, not COMPLETE with a partial score


def _searcher_class():
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class PruneAwareOptunaSearch(OptunaSearch):
        """OptunaSearch that tells Optuna the truth about early-stopped and failed trials.

        Stock OptunaSearch marks a trial that ASHA stopped after 2 of 6 epochs COMPLETE with its
        2-epoch value, so TPE treats low-fidelity scores as final. Here a trial that ended before
        ``max_epochs`` is PRUNED (Optuna then ranks it by its last intermediate value) and an
        errored trial is FAIL even when it reported values before failing.
        """

        def __init__(self, *args, max_epochs: int, **kwargs):
            super().__init__(*args, **kwargs)
            self._max_epochs = max_epochs

        @staticmethod
        def _step(result: dict) -> int:
            # Intermediate values go against the epoch, which survives retries.
            return int(result.get("epoch", result.get("training_iteration", 0)))

        def _reported_steps(self, trial_id: str) -> set[int]:
            number = self._ot_trials[trial_id].number
            trial = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number)
            return set(trial.intermediate_values)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self._completed_trials or self.metric not in result:
                return
            self._ot_trials[trial_id].report(result[self.metric], self._step(result))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return super().on_trial_complete(trial_id, result, error)
            epoch = int((result or {}).get("epoch", 0))
            state = None
            if error:
                state = TrialState.FAIL
            elif result is None or epoch < self._max_epochs or result.get(self.metric) is None:
                state = TrialState.PRUNED
            if (
                state == TrialState.PRUNED
                and (result or {}).get(self.metric) is not None
                and self._step(result) not in self._reported_steps(trial_id)  # Optuna warns on a repeat
            ):
                # Ray gives the result that made ASHA stop the trial to on_trial_complete only
                # (never to on_trial_result): report it, or Optuna ranks the pruned trial by an
                # older epoch, or as worst when it had reported nothing before.
                self._ot_trials[trial_id].report(result[self.metric], self._step(result))
            if state is None:
                return super().on_trial_complete(trial_id, result, error)
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
            self._completed_trials.add(trial_id)

    return PruneAwareOptunaSearch


def make_sampler(spec: SweepSpec):
    """The Optuna sampler, with its optional dependencies checked now (not at trial 10)."""
    import optuna

    name, seed = spec.sampler.name, spec.sampler.seed
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        for module in ("torch", "scipy"):
            try:
                __import__(module)
            except ImportError as err:
                raise PreflightError(f"{spec.source}: sampler.name gp needs {module}: {err}") from None
        return optuna.samplers.GPSampler(seed=seed)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise PreflightError(f"{spec.source}: sampler.name cmaes needs the 'cmaes' package (pip install cmaes)") from None
    return optuna.samplers.CmaEsSampler(seed=seed)


# ------------------------------------------------------------------------------------------------
# Driver side


def _reconciler_class():
    from ray.tune import Callback

    class RunReconciler(Callback):
        """Closes the MLflow runs of trials that Ray ended from outside (ASHA stop, errors)."""

        def __init__(self, ctx: SweepContext):
            self.ctx = ctx

        def _close(self, trial, status: str, outcome: str) -> None:
            client = _client(self.ctx.tracking_uri)
            run = find_run(client, self.ctx.experiment_id, T.TAG_TRIAL_ID, trial.trial_id)
            if run is None or run.info.status != "RUNNING":
                return
            client.set_tag(run.info.run_id, TAG_OUTCOME, outcome)
            if trial.error_file or status == "FAILED":
                client.set_tag(run.info.run_id, TAG_ERROR, "trial errored (see Ray's error file)")
            client.set_terminated(run.info.run_id, status=status)

        def on_trial_complete(self, iteration, trials, trial, **info):
            epoch = int((trial.last_result or {}).get("epoch", 0))
            self._close(trial, "FINISHED", COMPLETED if epoch >= self.ctx.max_epochs else PRUNED)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._close(trial, "FAILED", FAILED)

    return RunReconciler


def close_orphans(ctx: SweepContext, trial_states: dict[str, str], error: BaseException | None = None) -> int:
    """After a study: any child run still RUNNING belongs to a trial that is over; close it.

    With ``error`` (Tune itself raised), every such run is FAILED with that error.
    """
    client = _client(ctx.tracking_uri)
    runs = client.search_runs(
        [ctx.experiment_id],
        filter_string=f"tags.`{T.TAG_SWEEP}` = '{ctx.sweep}' and tags.`{TAG_STUDY}` = '{ctx.study}' "
        "and attributes.status = 'RUNNING'",
        max_results=10000,
    )
    for run in runs:
        state = trial_states.get(run.data.tags.get(T.TAG_TRIAL_ID, ""), "")
        status = "FAILED" if state == "ERROR" or error is not None else "FINISHED"
        client.set_tag(run.info.run_id, TAG_OUTCOME, FAILED if status == "FAILED" else PRUNED)
        if error is not None:
            client.set_tag(run.info.run_id, TAG_ERROR, f"the sweep stopped: {_one_line(error)}")
        client.set_terminated(run.info.run_id, status=status)
    return len(runs)


def preflight(spec: SweepSpec) -> None:
    """Fail fast, before any trial starts: resources Ray can never grant, samplers, data."""
    import ray

    from vmbench.data import build_dataset

    make_sampler(spec)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = [n["Resources"].get("GPU", 0) for n in nodes]
    cpus = [n["Resources"].get("CPU", 0) for n in nodes]
    if spec.resources.gpu > 0 and not any(gpus):
        raise PreflightError(
            f"{spec.source}: resources.gpu is {spec.resources.gpu:g} but the Ray cluster has no GPUs "
            "(trials would wait forever); set resources.gpu: 0 or add GPU nodes"
        )
    if spec.resources.gpu > max(gpus, default=0):
        raise PreflightError(f"{spec.source}: resources.gpu {spec.resources.gpu:g} exceeds the largest node ({max(gpus):g} GPUs)")
    if spec.resources.cpu > max(cpus, default=0):
        raise PreflightError(f"{spec.source}: resources.cpu {spec.resources.cpu:g} exceeds the largest node ({max(cpus):g} CPUs)")
    # Builds every split once on the driver: missing data fails here, and generated data sets are
    # written once instead of by several trials racing for the cache.
    for study in spec.studies:
        cfg = study.base
        for split in ("train", "test"):
            build_dataset(cfg.data.name, root=cfg.data.root, split=split, protocol=cfg.data.protocol,
                          img_size=cfg.data.img_size, seed=cfg.train.seed, **cfg.data.options)


def _best_overrides(result_grid, study: Study, spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sampled values of the best trial that ran the full budget (else the best trial)."""
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        if result.error is not None or spec.metric not in metrics:
            continue
        rows.append((int(metrics.get("epoch", 0)) >= spec.budget.max_epochs, metrics[spec.metric], result))
    if not rows:
        raise RuntimeError(f"study {study.key}: no trial reported {spec.metric!r}; nothing to retrain (see the errors above)")
    full_budget = [r for r in rows if r[0]]
    sign = 1 if spec.mode == "max" else -1
    _, value, best = max(full_budget or rows, key=lambda r: sign * r[1])
    keys = {p.key for p in study.space}
    sample = decode_sample(study.space, {k: v for k, v in best.config.items() if k in keys})
    return sample, {"value": value, "trial_path": str(best.path), "full_budget": bool(full_budget)}


def _parent_run(client, experiment_id: str, spec: SweepSpec, resume: bool) -> str:
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{T.TAG_KIND}` = 'sweep' and tags.`{T.TAG_SWEEP}` = '{spec.name}'",
        max_results=1,
    )
    if existing:
        run = existing[0]
        if not resume:
            raise PreflightError(
                f"sweep {spec.name!r} already exists in experiment {spec.experiment!r} (run {run.info.run_id}); "
                "pass --resume to continue it, or set another name (--name)"
            )
        if run.data.tags.get(T.TAG_SPACE_HASH) != spec.content_hash():
            raise PreflightError(
                f"{spec.source} changed since sweep {spec.name!r} started (search-space hash "
                f"{run.data.tags.get(T.TAG_SPACE_HASH)} -> {spec.content_hash()}); Tune cannot resume a different "
                "search: start a new sweep with --name"
            )
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    if resume:
        log.warning("nothing to resume for sweep %r: starting it", spec.name)
    tags = {
        T.TAG_KIND: "sweep",
        T.TAG_SWEEP: spec.name,
        T.TAG_SPACE_HASH: spec.content_hash(),
        T.TAG_PROTOCOL: spec.protocol,
        T.TAG_VERSION: vmbench.__version__,
        T.TAG_GIT_SHA: T.git_revision(),
        "vmbench.models": ",".join(spec.models),
        "vmbench.datasets": ",".join(spec.datasets),
        "vmbench.source": spec.source,
    }
    run = client.create_run(experiment_id, tags=tags, run_name=spec.name)
    client.log_dict(run.info.run_id, {"plan": spec.plan()}, "sweep_plan.json")
    return run.info.run_id


@dataclass
class StudyOutcome:
    study: str
    best: dict[str, Any]
    best_value: float
    trials: dict[str, int]
    final: list[dict[str, Any]]


def run_study(spec: SweepSpec, study: Study, ctx: SweepContext, storage_path: str, resume: bool) -> StudyOutcome:
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    sweep_dir = Path(ctx.runs_dir) / "sweeps" / spec.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(search_trial, ctx=ctx), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    )
    run_name = f"{spec.name}__{study.key}"
    experiment_path = f"{storage_path.rstrip('/')}/{run_name}"
    if resume and tune.Tuner.can_restore(experiment_path):
        log.info("restoring study %s from %s", study.key, experiment_path)
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
    else:
        if Path(experiment_path).exists() and not resume and "://" not in storage_path:
            raise PreflightError(f"{experiment_path} already exists: pass --resume to continue sweep {spec.name!r}")
        storage = optuna.storages.RDBStorage(f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}")
        searcher = _searcher_class()(
            space=optuna_distributions(study.space),
            sampler=make_sampler(spec),
            storage=storage,
            study_name=run_name,
            points_to_evaluate=[_encode_point(study)] if study.start_point else None,
            metric=spec.metric,
            mode=spec.mode,
            max_epochs=spec.budget.max_epochs,
        )
        tuner = tune.Tuner(
            trainable,
            # metric/mode live on the searcher and the scheduler: OptunaSearch with its own space
            # ignores TuneConfig's, and Ray refuses them in two places.
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.concurrent),
                scheduler=ASHAScheduler(
                    metric=spec.metric,
                    mode=spec.mode,
                    time_attr="epoch",
                    max_t=spec.budget.max_epochs,
                    grace_period=spec.budget.grace_period,
                    reduction_factor=spec.budget.reduction_factor,
                ),
                num_samples=spec.budget.trials,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=run_name,
                storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[_reconciler_class()(ctx)],
                verbose=1,
            ),
        )
    try:
        grid = tuner.fit()
    except Exception as err:
        # Tune aborted the study (e.g. a driver-side TuneError): its trials will not close their runs.
        close_orphans(ctx, {}, error=err)
        raise
    states = {}
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id:
            states[trial_id] = "ERROR" if result.error is not None else "TERMINATED"
    close_orphans(ctx, states)
    counts = {"total": len(grid), "errors": grid.num_errors}
    best, info = _best_overrides(grid, study, spec)
    log.info("study %s: best %s = %.4f with %s", study.key, spec.metric, info["value"], best)

    final_epochs = spec.final.epochs or spec.budget.max_epochs
    client = _client(ctx.tracking_uri)
    futures, finals = {}, []
    remote = ray.remote(final_run).options(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_retries=2)
    for seed in spec.final.seeds:
        key = f"{spec.name}/{study.key}/seed{seed}"
        done = find_run(client, ctx.experiment_id, TAG_FINAL_KEY, key)
        if done is not None and done.info.status == "FINISHED":
            finals.append({"key": key, "status": "FINISHED", "resumed": True})
            continue
        cfg = study.base.with_overrides({**best, "train.seed": seed, "train.epochs": final_epochs}, source=key)
        cfg.out_dir = str(sweep_dir / "final" / study.key / f"seed{seed}")
        futures[key] = remote.remote(cfg.to_dict(), ctx, key)
    for key, future in futures.items():
        try:
            finals.append(ray.get(future))
        except Exception as err:  # a failed final run is recorded (FAILED in MLflow); the others go on
            log.error("final run %s failed: %s", key, _one_line(err))
            finals.append({"key": key, "status": "FAILED", "error": _one_line(err)})
    return StudyOutcome(study.key, best, info["value"], counts, finals)


def _absolute_data_root(study: Study) -> None:
    """Trials run in other folders (and on other nodes): a relative data root means the launch folder."""
    root = study.base.data.root
    if root and "://" not in root and not Path(root).is_absolute():
        study.base.data.root = str(Path(root).resolve())


def _encode_point(study: Study) -> dict[str, Any]:
    """The recipe's values in the encoding Optuna's distributions use (JSON text for list choices)."""
    dists = optuna_distributions(study.space)
    point = {}
    for key, value in study.start_point.items():
        choices = getattr(dists[key], "choices", None)
        point[key] = json.dumps(value) if choices is not None and value not in choices else value
    return point


def init_ray(address: str | None, num_cpus: int | None, num_gpus: float | None, env: dict[str, str]) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if address:
        # A job submitted with its own runtime env may not be given another one here (Ray refuses
        # conflicting keys); trials get their environment from the SweepContext instead.
        kwargs["address"] = address
    else:
        # "local": always a fresh instance here, never an unrelated cluster that `ray start` left
        # recorded as the current cluster (ray_current_cluster in its temp folder).
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
                      runtime_env={"env_vars": env})
    ray.init(**kwargs)


def run_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str | None = None,
    runs_dir: str | Path = T.DEFAULT_RUNS_DIR,
    storage_path: str | None = None,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
) -> list[StudyOutcome]:
    """Run (or resume) every study of ``spec``; returns the best configs and final-run results."""
    import ray

    runs_dir = Path(runs_dir).resolve()
    tracking_uri = tracking_uri or T.default_tracking_uri(runs_dir)
    storage_path = storage_path or spec.storage_path or str(runs_dir / "ray")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "RAY_CHDIR_TO_TRIAL_DIR": "0",  # relative paths in configs keep meaning the launch folder
    }
    for key in ("VMBENCH_CACHE", "VMBENCH_SCAN_BACKEND"):
        if key in os.environ:
            env[key] = os.environ[key]
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    started_ray = not ray.is_initialized()
    init_ray(address, num_cpus, num_gpus, env)
    try:
        for study in spec.studies:
            _absolute_data_root(study)
        preflight(spec)
        client = _client(tracking_uri)
        experiment_id = T.get_or_create_experiment(client, spec.experiment, T.default_artifact_location(tracking_uri, runs_dir))
        parent = _parent_run(client, experiment_id, spec, resume)
        outcomes = []
        try:
            for study in spec.studies:
                ctx = SweepContext(
                    sweep=spec.name, study=study.key, experiment_id=experiment_id, parent_run_id=parent,
                    tracking_uri=tracking_uri, base=study.base.to_dict(), space=study.space, metric=spec.metric,
                    mode=spec.mode, max_epochs=spec.budget.max_epochs, cpu=spec.resources.cpu, gpu=spec.resources.gpu,
                    runs_dir=str(runs_dir), space_hash=spec.content_hash(), env=env,
                )
                outcome = run_study(spec, study, ctx, storage_path, resume)
                outcomes.append(outcome)
                client.log_metric(parent, f"best_{spec.metric}__{study.key}", float(outcome.best_value))
                client.log_dict(parent, {"best": outcome.best, "trials": outcome.trials, "final": outcome.final},
                                f"studies/{study.key}.json")
        except KeyboardInterrupt:
            client.set_terminated(parent, status="KILLED")
            raise
        except Exception:
            client.set_terminated(parent, status="FAILED")
            raise
        failed = [f for o in outcomes for f in o.final if f["status"] != "FINISHED"]
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
        return outcomes
    finally:
        if started_ray and not address:
            ray.shutdown()


__all__ = ["PreflightError", "StudyOutcome", "SweepContext", "final_run", "run_sweep", "search_trial"]
