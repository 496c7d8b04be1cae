"""The sweep driver: checks before anything runs, Ray, one Tuner per study, the best trial, the finals.

Ray Tune and Optuna are imported when a sweep runs, not with this module.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vmbench import tracking as T
from vmbench.errors import PreflightError
from vmbench.io import atomic_write
from vmbench.protocols import CV
from vmbench.search_space import Study, SweepSpec, decode_sample, optuna_distributions
from vmbench.sweep.context import StudyOutcome, SweepContext, SweepResult
from vmbench.sweep.trainable import final_run, search_trial

log = logging.getLogger("vmbench.sweep")

# Settings of the launching shell that trials need on every node.
FORWARDED_ENV = ("VMBENCH_CACHE", "VMBENCH_SCAN_BACKEND")


# ------------------------------------------------------------------------------------------------
# Before any trial


def preflight(spec: SweepSpec) -> dict[str, Any]:
    """Fail fast, before any trial starts: resources Ray can never grant, samplers, data.

    Returns the cross-validation splits of every dataset under protocol cv (:func:`check_data`).
    """
    import ray

    from vmbench.sweep.adapters import make_sampler

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
    return check_data(spec)


def check_data(spec: SweepSpec) -> dict[str, Any]:
    """Build every study's train and test split once on the driver: missing data fails here, and
    generated data sets are written once instead of by several trials racing for the cache.

    Under protocol cv, returns per dataset every fold's train/val ids and the test ids (what
    ``splits.json`` records); the models of a sweep must share them, or their folds pair nothing.
    """
    from vmbench.data import dataset_for
    from vmbench.data.splits import CV_SEED

    splits: dict[str, Any] = {}
    for study in spec.studies:
        cfg = study.base
        built = {split: dataset_for(cfg, split) for split in ("train", "test")}
        if cfg.data.protocol != CV:
            continue
        entry = {"folds": [{"fold": k, "train": sorted(part["train"]), "val": sorted(part["val"])}
                           for k, part in enumerate(built["train"].cv_splits)],
                 "test": sorted(built["test"].ids)}
        if splits.get(study.dataset, entry) != entry:
            raise PreflightError(f"{spec.source}: the models' settings give {study.dataset} different cross-validation "
                                 "pools (per_model data settings?); models compared under protocol cv must share folds")
        splits[study.dataset] = entry
    return {"protocol": CV, "folds": spec.folds, "seed": CV_SEED, "datasets": splits} if splits else {}


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


def _worker_env(tracking_uri: str) -> dict[str, str]:
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "RAY_CHDIR_TO_TRIAL_DIR": "0",  # relative paths in configs keep meaning the launch folder
    }
    env.update({key: os.environ[key] for key in FORWARDED_ENV if key in os.environ})
    return env


def _encode_point(study: Study) -> dict[str, Any]:
    """The recipe's values in the encoding Optuna's distributions use (JSON text for list choices)."""
    dists = optuna_distributions(study.space)
    point = {}
    for key, value in study.start_point.items():
        choices = getattr(dists[key], "choices", None)
        point[key] = json.dumps(value) if choices is not None and value not in choices else value
    return point


# ------------------------------------------------------------------------------------------------
# One study: search, pick the best, retrain it per seed


def _sweep_dir(spec: SweepSpec, ctx: SweepContext) -> Path:
    return Path(ctx.runs_dir) / "sweeps" / spec.name


def build_tuner(spec: SweepSpec, study: Study, ctx: SweepContext, storage_path: str, resume: bool):
    """The study's Tuner: restored from ``storage_path`` when resuming, else seeded TPE + ASHA."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from vmbench.sweep.adapters import PruneAwareOptunaSearch, RunReconciler, make_sampler
    from vmbench.sweep.storage import optuna_storage

    trainable = tune.with_resources(
        tune.with_parameters(search_trial, ctx=ctx), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    )
    sweep_dir = _sweep_dir(spec, ctx)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    run_name = f"{spec.name}__{study.key}"
    experiment_path = f"{storage_path.rstrip('/')}/{run_name}"
    if resume and tune.Tuner.can_restore(experiment_path):
        log.info("restoring study %s from %s", study.key, experiment_path)
        return tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
    if Path(experiment_path).exists() and not resume and "://" not in storage_path:
        raise PreflightError(f"{experiment_path} already exists: pass --resume to continue sweep {spec.name!r}")
    searcher = PruneAwareOptunaSearch(
        space=optuna_distributions(study.space),
        sampler=make_sampler(spec),
        storage=optuna_storage(sweep_dir),  # only this process (the driver) writes it
        study_name=run_name,
        points_to_evaluate=[_encode_point(study)] if study.start_point else None,
        metric=spec.metric,
        mode=spec.mode,
        max_epochs=spec.budget.max_epochs,
    )
    scheduler = ASHAScheduler(
        metric=spec.metric, mode=spec.mode, time_attr="epoch", max_t=spec.budget.max_epochs,
        grace_period=spec.budget.grace_period, reduction_factor=spec.budget.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        # metric/mode live on the searcher and the scheduler: OptunaSearch with its own space
        # ignores TuneConfig's, and Ray refuses them in two places.
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.concurrent),
            scheduler=scheduler,
            num_samples=spec.budget.trials,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[RunReconciler(ctx.tracking_uri, ctx.experiment_id, ctx.max_epochs)],
            verbose=1,
        ),
    )


def pick_best(result_grid, study: Study, spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
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


def final_key(spec: SweepSpec, study: Study, fold: int | None, seed: int) -> str:
    """The final run's key (its ``vmbench.final_key`` tag): sweep/study[/foldK]/seedN."""
    return "/".join([spec.name, study.key, *([f"fold{fold}"] if fold is not None else []), f"seed{seed}"])


def run_finals(spec: SweepSpec, study: Study, ctx: SweepContext, best: dict[str, Any]) -> list[dict[str, Any]]:
    """Retrain ``best`` once per final-stage seed, on every fold under protocol cv (Ray tasks, each in
    a fresh worker process: ``max_calls=1``); a run already FINISHED is skipped."""
    import ray

    final_epochs = spec.final.epochs or spec.budget.max_epochs
    client = T.client(ctx.tracking_uri)
    futures, finals = {}, []
    remote = ray.remote(max_calls=1)(final_run).options(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu,
                                                        max_retries=2)
    for fold in spec.final_folds:
        for seed in spec.final.seeds:
            key = final_key(spec, study, fold, seed)
            done = T.find_run(client, ctx.experiment_id, T.TAG_FINAL_KEY, key)
            if done is not None and done.info.status == "FINISHED":
                finals.append({"key": key, "status": "FINISHED", "resumed": True})
                continue
            overrides = {**best, "train.seed": seed, "train.epochs": final_epochs}
            if fold is not None:
                overrides["data.fold"] = fold
            cfg = study.base.with_overrides(overrides, source=key)
            folder = _sweep_dir(spec, ctx) / "final" / study.key
            run_dir = (folder / f"fold{fold}" if fold is not None else folder) / f"seed{seed}"
            futures[key] = remote.remote(cfg.to_dict(), ctx, key, str(run_dir))
    for key, future in futures.items():
        try:
            finals.append(ray.get(future))
        except Exception as err:  # a failed final run is recorded (FAILED in MLflow); the others go on
            log.error("final run %s failed: %s", key, T.error_summary(err))
            finals.append({"key": key, "status": "FAILED", "error": T.error_summary(err)})
    return finals


def _trial_states(grid) -> dict[str, str]:
    """Ray trial id -> ERROR or TERMINATED; each failed trial's reason logged in one line."""
    states = {}
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if result.error is not None:
            log.error("trial %s failed: %s", trial_id or result.path, T.error_summary(result.error))
        if trial_id:
            states[trial_id] = "ERROR" if result.error is not None else "TERMINATED"
    return states


def run_study(spec: SweepSpec, study: Study, ctx: SweepContext, storage_path: str, resume: bool) -> StudyOutcome:
    """Search, pick the best trial, retrain it. A study none of whose trials reported the metric
    is recorded as failed (its final stage too) and the sweep goes on with the next study."""
    tuner = build_tuner(spec, study, ctx, storage_path, resume)
    orphans = dict(tracking_uri=ctx.tracking_uri, experiment_id=ctx.experiment_id, sweep=ctx.sweep, study=ctx.study)
    try:
        grid = tuner.fit()
    except Exception as err:
        # Tune aborted the study (e.g. a driver-side TuneError): its trials will not close their runs.
        T.close_orphans(**orphans, trial_states={}, error=err)
        raise
    T.close_orphans(**orphans, trial_states=_trial_states(grid))
    counts = {"total": len(grid), "errors": grid.num_errors}
    if not any(r.error is None and spec.metric in (r.metrics or {}) for r in grid):
        reason = f"no trial of study {study.key} reported {spec.metric} ({counts['errors']} of {counts['total']} failed)"
        log.error("%s: nothing to retrain", reason)
        return StudyOutcome(study.key, {}, float("nan"), counts,
                            [{"key": f"{spec.name}/{study.key}", "status": "FAILED", "error": reason}])
    best, info = pick_best(grid, study, spec)
    log.info("study %s: best %s = %.4f with %s", study.key, spec.metric, info["value"], best)
    return StudyOutcome(study.key, best, info["value"], counts, run_finals(spec, study, ctx, best))


# ------------------------------------------------------------------------------------------------
# The sweep


def _open_parent_run(client, experiment_id: str, spec: SweepSpec, resume: bool) -> str:
    tags = {
        T.TAG_PROTOCOL: spec.protocol,
        T.TAG_MODELS: ",".join(spec.models),
        T.TAG_DATASETS: ",".join(spec.datasets),
        T.TAG_SOURCE: spec.source,
    }
    if spec.protocol == CV:
        tags.update({T.TAG_FOLDS: str(spec.folds), T.TAG_CV_SEARCH: str(spec.cv_search)})
    return T.open_sweep_run(client, experiment_id, sweep=spec.name, experiment=spec.experiment, source=spec.source,
                            space_hash=spec.content_hash(), resume=resume, tags=tags, plan=spec.plan())


def _record_splits(client, parent: str, sweep_dir: Path, splits: dict[str, Any]) -> None:
    """Protocol cv: every fold's train/val ids and the test ids, in the sweep folder and on the parent run."""
    if not splits:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = atomic_write(sweep_dir / T.SPLITS_ARTIFACT, json.dumps(splits, indent=1) + "\n")
    client.log_artifact(parent, str(path))  # at the artifact root, as SPLITS_ARTIFACT names it


def _run_studies(spec: SweepSpec, contexts: list[SweepContext], client, parent: str, storage_path: str,
                 resume: bool) -> list[StudyOutcome]:
    """Every study in turn; the parent run ends FINISHED, FAILED (a final run failed) or KILLED."""
    outcomes = []
    try:
        for study, ctx in zip(spec.studies, contexts):
            outcome = run_study(spec, study, ctx, storage_path, resume)
            outcomes.append(outcome)
            client.log_metric(parent, f"best_{spec.metric}__{study.key}", float(outcome.best_value))
            client.log_dict(parent, {"best": outcome.best, "trials": outcome.trials, "final": outcome.final},
                            f"studies/{study.key}.json")
    except KeyboardInterrupt:
        client.set_terminated(parent, status="KILLED")
        raise
    except Exception:  # marks the parent, then raises on
        client.set_terminated(parent, status="FAILED")
        raise
    failed = [f for o in outcomes for f in o.final if f["status"] != "FINISHED"]
    client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    return outcomes


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
) -> SweepResult:
    """Run (or resume) every study of ``spec``; returns where it was recorded (the parent MLflow run
    and the sweep folder) and each study's best configuration and final-run results."""
    import ray

    runs_dir = Path(runs_dir).resolve()
    tracking_uri = T.default_tracking_uri(runs_dir, tracking_uri)
    storage_path = storage_path or spec.storage_path or str(runs_dir / "ray")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())
    env = _worker_env(tracking_uri)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    started_ray = not ray.is_initialized()
    init_ray(address, num_cpus, num_gpus, env)
    try:
        splits = preflight(spec)
        client = T.client(tracking_uri)
        experiment_id = T.get_or_create_experiment(client, spec.experiment, T.default_artifact_location(tracking_uri, runs_dir))
        parent = _open_parent_run(client, experiment_id, spec, resume)
        _record_splits(client, parent, runs_dir / "sweeps" / spec.name, splits)
        contexts = [
            SweepContext(
                sweep=spec.name, study=study.key, experiment_id=experiment_id, parent_run_id=parent,
                tracking_uri=tracking_uri, base=study.base.to_dict(), space=study.space, metric=spec.metric,
                mode=spec.mode, max_epochs=spec.budget.max_epochs, cpu=spec.resources.cpu, gpu=spec.resources.gpu,
                runs_dir=str(runs_dir), space_hash=spec.content_hash(), env=env, folds=spec.folds,
                cv_search=spec.cv_search,
            )
            for study in spec.studies
        ]
        outcomes = _run_studies(spec, contexts, client, parent, storage_path, resume)
        return SweepResult(parent, experiment_id, tracking_uri, runs_dir / "sweeps" / spec.name, outcomes)
    finally:
        if started_ray and not address:
            ray.shutdown()
