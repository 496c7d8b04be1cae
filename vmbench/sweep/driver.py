"""The sweep driver: checks before anything runs, Ray, one Tuner per study, the best trial, the finals.

Ray Tune and Optuna are imported when a sweep runs, not with this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from vmbench import tracking as T
from vmbench.errors import Interrupted, PreflightError, raise_if_stopped, request_stop, stop_requested
from vmbench.io import atomic_write
from vmbench.tracking.store import prepare_store
from vmbench.protocols import CV
from vmbench.search_space import Study, SweepSpec, decode_sample, optuna_distributions
from vmbench.sweep.context import StudyOutcome, SweepContext, SweepResult
from vmbench.sweep.trainable import final_run, search_trial
from vmbench.sweep.transfer_eval import check_transfer_data

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
    """Build every study's train and test split (and its transfer targets' test splits) once on the
    driver: missing data fails here, and
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
        check_transfer_data(cfg, tuple(t.as_dict() for t in spec.transfer if t.name != study.dataset))
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
        _check_address(address)
        # A job submitted with its own runtime env may not be given another one here (Ray refuses
        # conflicting keys); trials get their environment from the SweepContext instead.
        kwargs["address"] = address
    else:
        # "local": always a fresh instance here, never an unrelated cluster that `ray start` left
        # recorded as the current cluster (ray_current_cluster in its temp folder).
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
                      runtime_env={"env_vars": env})
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(**kwargs)
    if callable(previous):
        # ray.init installs a SIGTERM handler that exits at once (status 1), leaving the sweep's runs
        # RUNNING; the command line's handler stops the sweep and marks them KILLED instead.
        signal.signal(signal.SIGTERM, previous)


RAY_CONNECT_TIMEOUT_S = 5.0


def _check_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """A HOST:PORT (or ray://HOST:PORT) where nothing listens fails in ``timeout`` seconds, in one
    line; ``ray.init`` would retry for minutes. ``auto`` (the cluster recorded by ``ray start``) is Ray's."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as err:
        raise PreflightError(f"--address {address}: no Ray cluster answered within {timeout:g} s "
                             f"({err.strerror or type(err).__name__}); start it (ray start --head) or fix the address") from None


@contextlib.contextmanager
def _tune_stops_on_signals():
    """SIGINT or SIGTERM during ``Tuner.fit`` stop the search the way Ray Tune stops itself: its
    SIGUSR1 handler ends the run and saves the experiment state (what ``--resume`` restores), and
    ``fit`` returns. Tune's own SIGINT handler is disabled (``TUNE_DISABLE_SIGINT_HANDLER``): it
    swallows the signal, so the sweep went on to the final stage, and outlives ``fit``, so Ctrl-C was
    ignored there. The signal is recorded (:func:`vmbench.errors.request_stop`) for the caller to
    raise once ``fit`` returns; a second one raises at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        if stop_requested() is not None:
            raise Interrupted(signum)
        request_stop(signum)
        log.warning("%s: stopping the search (Ray Tune saves its state for --resume); again to stop at once",
                    signal.Signals(signum).name)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            raise Interrupted(signum)  # Tune's handler is not installed yet (or any more): nothing to stop gracefully
        os.kill(os.getpid(), signal.SIGUSR1)

    saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env


def _kill_open_children(client, experiment_id: str, parent: str, reason: str) -> int:
    """Mark every child run of ``parent`` still RUNNING (search trials, final runs) KILLED."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' "
                              "and attributes.status = 'RUNNING'", max_results=10000)
    for run in runs:
        client.set_tag(run.info.run_id, T.TAG_OUTCOME, T.FAILED)
        client.set_tag(run.info.run_id, T.TAG_ERROR, reason)
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


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
    from ray.tune.search import ConcurrencyLimiter

    from vmbench.sweep.adapters import PruneAwareOptunaSearch, RunReconciler, make_sampler, make_scheduler
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
    # Nothing to sample (budget.trials 1, no space): Tune's own generator runs the fixed recipe once.
    searcher = None if not study.space else PruneAwareOptunaSearch(
        space=optuna_distributions(study.space),
        sampler=make_sampler(spec),
        storage=optuna_storage(sweep_dir),  # only this process (the driver) writes it
        study_name=run_name,
        points_to_evaluate=[_encode_point(study)] if study.start_point else None,
        # Several objectives: Optuna's multi-objective study (TPE, or the sampler chosen), one direction each.
        metric=list(spec.objectives) if spec.multi_objective else spec.metric,
        mode=list(spec.modes) if spec.multi_objective else spec.mode,
        max_epochs=spec.search_steps,  # a trial's full budget: its epochs, of every fold when trained in turn
    )
    return tune.Tuner(
        trainable,
        # metric/mode live on the searcher and the scheduler: OptunaSearch with its own space
        # ignores TuneConfig's, and Ray refuses them in two places.
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.concurrent) if searcher else None,
            scheduler=make_scheduler(spec),
            num_samples=spec.budget.trials,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[RunReconciler(ctx.tracking_uri, ctx.experiment_id, spec.search_steps)],
            verbose=1,
        ),
    )


def pareto_front(points: list[tuple[float, ...]], modes: tuple[str, ...]) -> list[int]:
    """Indices of the points no other point dominates (at least as good in every objective, better in
    one), ``modes`` saying which way each objective is better."""
    signs = [1 if mode == "max" else -1 for mode in modes]
    scored = [tuple(sign * value for sign, value in zip(signs, point)) for point in points]

    def dominates(a, b) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(scored) if not any(dominates(q, p) for j, q in enumerate(scored) if j != i)]


def pick_best(result_grid, study: Study, spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sampled values of the best trial that ran the full budget (else the best trial). With
    several objectives: among the Pareto-optimal trials, the best on the first objective; ``info``
    then names every Pareto-optimal trial (``pareto``: Ray trial ids)."""
    objectives = spec.objectives or (spec.metric,)
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        if result.error is not None or any(m not in metrics for m in objectives):
            continue
        # Full budget: every epoch (of every fold when trained in turn): the last metric of a trial the
        # Wilcoxon pruner stopped is one fold's score, not the mean over the folds.
        rows.append((int(metrics.get("epoch", 0)) >= spec.search_steps, metrics[spec.metric], result))
    if not rows:
        raise RuntimeError(f"study {study.key}: no trial reported {spec.metric!r}; nothing to retrain (see the errors above)")
    candidates = [r for r in rows if r[0]] or rows
    pareto: list[str] = []
    if spec.multi_objective:
        front = pareto_front([tuple(float(r[2].metrics[m]) for m in objectives) for r in candidates], spec.modes)
        candidates = [candidates[i] for i in front]
        pareto = [str(r[2].metrics.get("trial_id")) for r in candidates]
    sign = 1 if spec.mode == "max" else -1
    _, value, best = max(candidates, key=lambda r: sign * r[1])
    keys = {p.key for p in study.space}
    sample = decode_sample(study.space, {k: v for k, v in best.config.items() if k in keys})
    return sample, {"value": value, "trial_path": str(best.path), "full_budget": any(r[0] for r in rows),
                    "pareto": pareto}


def mark_pareto(ctx: SweepContext, trial_ids: list[str]) -> None:
    """Tag the search runs of the Pareto-optimal trials (``vmbench.pareto = true``) so that the UI
    and the report can show the front."""
    client = T.client(ctx.tracking_uri)
    for trial_id in trial_ids:
        run = T.find_run(client, ctx.experiment_id, T.TAG_TRIAL_ID, trial_id)
        if run is not None:
            client.set_tag(run.info.run_id, T.TAG_PARETO, "true")


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
        with _tune_stops_on_signals():
            grid = tuner.fit()
    except Exception as err:
        # Tune aborted the study (e.g. a driver-side TuneError): its trials will not close their runs.
        T.close_orphans(**orphans, trial_states={}, error=err)
        raise
    # Stopped by a signal: Tune returned normally, with unfinished trials; the caller marks them KILLED.
    raise_if_stopped()
    T.close_orphans(**orphans, trial_states=_trial_states(grid))
    counts = {"total": len(grid), "errors": grid.num_errors}
    if not any(r.error is None and spec.metric in (r.metrics or {}) for r in grid):
        reason = f"no trial of study {study.key} reported {spec.metric} ({counts['errors']} of {counts['total']} failed)"
        log.error("%s: nothing to retrain", reason)
        return StudyOutcome(study.key, {}, float("nan"), counts,
                            [{"key": f"{spec.name}/{study.key}", "status": "FAILED", "error": reason}])
    best, info = pick_best(grid, study, spec)
    mark_pareto(ctx, info["pareto"])
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
        T.TAG_OBJECTIVES: T.objectives_tag(spec.objectives or (spec.metric,), spec.modes or (spec.mode,)),
    }
    if spec.protocol == CV:
        tags.update({T.TAG_FOLDS: str(spec.folds), T.TAG_CV_SEARCH: str(spec.cv_search)})
    parent = T.open_sweep_run(client, experiment_id, sweep=spec.name, experiment=spec.experiment, source=spec.source,
                              space_hash=spec.content_hash(), resume=resume, tags=tags, plan=spec.plan())
    # Until the report replaces it with the verdict (vmbench.report.report_for_sweep).
    T.describe(client, parent, (
        f"Sweep `{spec.name}` ({spec.source}): {', '.join(spec.models)} on {', '.join(spec.datasets)}, protocol "
        f"{spec.protocol}; {spec.budget.trials} search trials of up to {spec.budget.max_epochs} epochs per model and "
        f"dataset, then the best configuration retrained with seeds {list(spec.final.seeds)} and tested.\n\n"
        "Outcome: running (the leaderboard, report and verdict are added when the sweep ends)."))
    return parent


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
            raise_if_stopped()
            outcome = run_study(spec, study, ctx, storage_path, resume)
            outcomes.append(outcome)
            client.log_metric(parent, f"best_{spec.metric}__{study.key}", float(outcome.best_value))
            client.log_dict(parent, {"best": outcome.best, "trials": outcome.trials, "final": outcome.final},
                            f"studies/{study.key}.json")
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM (vmbench.errors.Interrupted)
        reason = f"the sweep was {err}" if isinstance(err, Interrupted) else "the sweep was interrupted"
        if contexts:
            _kill_open_children(client, contexts[0].experiment_id, parent, reason)
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
        prepare_store(tracking_uri)  # created or migrated by one process at a time
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
                cv_search=spec.cv_search, objectives=spec.objectives, folds_in_turn=spec.scheduler == "wilcoxon",
                transfer=tuple(t.as_dict() for t in spec.transfer if t.name != study.dataset),
            )
            for study in spec.studies
        ]
        outcomes = _run_studies(spec, contexts, client, parent, storage_path, resume)
        return SweepResult(parent, experiment_id, tracking_uri, runs_dir / "sweeps" / spec.name, outcomes,
                           spec.reference)
    finally:
        if started_ray and not address:
            ray.shutdown()
