"""What runs on the Ray workers: the search trial (a Tune function trainable) and the final runs.

Both rebuild the experiment config from the picklable :class:`SweepContext`, check that this node
has the data, log to their own MLflow child run (:class:`vmbench.tracking.TrialRun`, reattached
when retried, each metric step logged once) and close it whatever happens. Ray, the engine and the
data are imported when a trial runs, not with the module.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.errors import DataError
from vmbench.protocols import CV
from vmbench.search_space import CV_MEAN, decode_sample
from vmbench.sweep.context import SweepContext
from vmbench.sweep.folds import Part, combine, fit_in_step, trial_costs, trial_parts

log = logging.getLogger("vmbench.sweep")


# ------------------------------------------------------------------------------------------------
# Worker set-up and run bookkeeping


def _prepare_worker(ctx: SweepContext) -> None:
    import torch

    os.environ.update(ctx.env)
    torch.set_num_threads(max(1, int(ctx.cpu)))


def _node_name() -> str:
    import ray

    if ray.is_initialized():
        return f"{platform.node()} ({ray.util.get_node_ip_address()})"
    return platform.node()


def check_data_on_node(cfg: ExperimentConfig) -> None:
    """A DataError naming this node and the folder when ``data.root`` is missing here.

    The root was made absolute on the driver (against the search-space file, never a working
    directory), so a node without it lacks the data itself, e.g. an unmounted share.
    """
    root = cfg.data.root
    if root and "://" not in root and not Path(root).exists():
        raise DataError(f"node {_node_name()} has no data at {root} (data.root of {cfg.data.name}); make that folder "
                        "available on every node (the same path: a shared or mounted file system)")


def _open_run(ctx: SweepContext, key_tag: str, key: str, run_name: str, tags: dict[str, str],
              params: dict[str, Any]) -> T.TrialRun:
    return T.TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, key_tag=key_tag, key=key,
                      run_name=run_name, tags=tags, params=params)


def _run_tags(ctx: SweepContext, cfg: ExperimentConfig, stage: str, device) -> dict[str, str]:
    import ray

    from vmbench.engine.record import run_tags

    tags = {**run_tags(cfg, stage, device), T.TAG_SWEEP: ctx.sweep, T.TAG_STUDY: ctx.study,
            T.TAG_SPACE_HASH: ctx.space_hash}
    if cfg.data.protocol == CV and stage == T.STAGE_SEARCH:
        tags[T.TAG_CV_SEARCH] = str(ctx.cv_search)
        if ctx.cv_search == CV_MEAN:  # scored on every fold: no one fold to name
            tags.pop(T.TAG_FOLD, None)
    if ray.is_initialized():  # not when tests call the functions directly
        tags[T.TAG_GPU_IDS] = ",".join(map(str, ray.get_gpu_ids())) or "none"
        tags[T.TAG_RAY_NODE] = ray.get_runtime_context().get_node_id()
    return tags


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the engine replaces files atomically, so a hard link is a stable snapshot
    except OSError:
        shutil.copy2(src, dst)


# ------------------------------------------------------------------------------------------------
# Search trials


def _restore_checkpoint(checkpoint, parts: list[Part]) -> bool:
    """Copy a retried or restored trial's Tune checkpoint into each part's folder; True if every part
    can resume. The checkpoint holds ``<part>/last.pt`` and ``<part>/best.pt`` (part "" = the top)."""
    for part in parts:
        part.checkpoints.mkdir(parents=True)
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as restored:
        for part in parts:
            for name in ("last.pt", "best.pt"):
                if (Path(restored) / part.name / name).exists():
                    shutil.copy2(Path(restored) / part.name / name, part.checkpoints / name)
    return all((part.checkpoints / "last.pt").exists() for part in parts)


class _EpochReporter:
    """``fit_in_step`` callback of a search trial: each epoch to MLflow (metrics and the cost so far),
    then to Tune with a checkpoint of every part."""

    def __init__(self, run: T.TrialRun, ctx: SweepContext, parts: list[Part], device, work: Path):
        self.run, self.ctx, self.parts, self.device, self.work = run, ctx, parts, device, work
        self.finished = False
        self.epoch = 0
        self.costs = trial_costs([], ctx.gpu)

    def __call__(self, epoch: int, trials: list, results: list) -> None:
        from ray import tune

        metrics = combine([r.metrics for r in results], self.ctx.metric)
        self.epoch, self.costs = epoch, trial_costs([t.history for t in trials], self.ctx.gpu)
        # The cost so far, every epoch: the latest values are the trial's cost however it ends
        # (finished, stopped by ASHA, failed, or lost with its node).
        self.run.log_metrics({**metrics, **self.costs}, step=epoch)
        if epoch >= self.ctx.max_epochs:
            # The scheduler ends a trial at max_epochs as soon as it reports, before fit returns:
            # close the MLflow run first.
            self._finish(results)
        snapshot = Path(tempfile.mkdtemp(prefix="report-", dir=self.work))
        for part, result in zip(self.parts, results):
            (snapshot / part.name).mkdir(parents=True, exist_ok=True)
            _link_or_copy(result.last_checkpoint, snapshot / part.name / "last.pt")
            if result.best_checkpoint is not None:
                _link_or_copy(result.best_checkpoint, snapshot / part.name / "best.pt")
        try:
            tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(snapshot))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _finish(self, results: list) -> None:
        from vmbench.engine import load_state, model_from_checkpoint
        from vmbench.engine.record import log_overlays

        bests = [r.best_checkpoint for r in results]
        if all(bests):
            states = [load_state(path) for path in bests]
            best = {f"best_{states[0].select_metric}": sum(s.best_value for s in states) / len(states)}
            if len(states) == 1:
                best["best_epoch"] = states[0].best_epoch
            self.run.log_metrics(best)
            model, _, _ = model_from_checkpoint(bests[0], self.device)
            log_overlays(self.run, self.parts[0].cfg, model, states[0].img_size, self.device, split="val")
        self.run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED})
        self.finished = True


def search_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Ray Tune function trainable: one search trial, reporting once per epoch with a checkpoint."""
    from ray import tune

    from vmbench.engine import load_state, resolve_device

    _prepare_worker(ctx)
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    keys = {p.key for p in ctx.space}
    sample = decode_sample(ctx.space, {k: v for k, v in config.items() if k in keys})
    cfg = ExperimentConfig.from_dict(ctx.base).with_overrides(sample, source=f"trial {trial_name}")
    work = Path(tempfile.mkdtemp(prefix=f"vmbench-{trial_name}-"))
    parts = trial_parts(cfg, ctx.cv_search, work)
    try:
        resume = _restore_checkpoint(tune.get_checkpoint(), parts)
        device = resolve_device(cfg.train.device)
        tags = _run_tags(ctx, cfg, T.STAGE_SEARCH, device)
        if resume:  # retried (lost node, error) or restored sweep: say from where
            tags[T.TAG_RESUMED_EPOCH] = str(load_state(parts[0].checkpoints / "last.pt").epoch)
        params = {**cfg.flat(), **{f"search.{k}": v for k, v in sample.items()}}
        run = _open_run(ctx, T.TAG_TRIAL_ID, trial_id, trial_name, tags, params)
        reporter = _EpochReporter(run, ctx, parts, device, work)
        try:
            check_data_on_node(cfg)
            fit_in_step(parts, reporter, resume=resume)
        except Exception as err:  # recorded on the run, then raised for Tune to retry or mark
            run.log_metrics(reporter.costs, step=reporter.epoch)  # a no-op when that epoch logged them
            run.finish("FAILED", {T.TAG_STAGE: T.STAGE_SEARCH, T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
            raise
        if not reporter.finished:  # resumed after its last epoch: nothing was reported this time
            run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Final runs


def _record_fold_validation(run: T.TrialRun, cfg: ExperimentConfig, best_checkpoint: Path, device) -> None:
    """Protocol cv: ``best.pt`` on its fold's validation split, per case (``eval/val/per_case.csv``)
    and as ``best_val_*`` (the per-epoch ``val_*`` history keeps its own steps)."""
    from vmbench.engine import evaluate_checkpoint

    out_dir = Path(cfg.out_dir) / "eval" / "val"
    result = evaluate_checkpoint(best_checkpoint, split="val", out_dir=out_dir, device=device)
    run.log_metrics({f"best_val_{k}": v for k, v in result.summary.items() if k not in ("n_images", "n_cases")})
    artifact_dir = str(Path(T.PER_CASE_VAL_ARTIFACT).parent)
    run.log_file(out_dir / Path(T.PER_CASE_VAL_ARTIFACT).name, artifact_dir)
    run.log_file(out_dir / "summary.json", artifact_dir)


def final_run(cfg_dict: dict[str, Any], ctx: SweepContext, key: str) -> dict[str, Any]:
    """Retrain the chosen configuration with one seed (on one fold under cv), evaluate on test, log everything."""
    from vmbench import profiling
    from vmbench.engine import fit, resolve_device
    from vmbench.engine.record import record_test_results

    _prepare_worker(ctx)
    cfg = ExperimentConfig.from_dict(cfg_dict, source=key)
    device = resolve_device(cfg.train.device)
    tags = _run_tags(ctx, cfg, T.STAGE_FINAL, device)
    fold = "" if cfg.data.fold is None else f"-fold{cfg.data.fold}"
    run = _open_run(ctx, T.TAG_FINAL_KEY, key, f"{ctx.study}-final{fold}-seed{cfg.train.seed}", tags, cfg.flat())
    resume = (Path(cfg.out_dir) / "checkpoints" / "last.pt").exists()
    try:
        check_data_on_node(cfg)
        profiling.reset_peak_memory(device)  # the peak of this run, not of the worker's earlier ones
        result = fit(cfg, callbacks=[lambda r: run.log_metrics(r.metrics, step=r.epoch)], resume=resume)
        if cfg.data.protocol == CV:
            _record_fold_validation(run, cfg, result.best_checkpoint, device)
        run.finish("FINISHED", record_test_results(run, cfg, result, device, ctx.gpu))
        return {"key": key, "status": "FINISHED", "test": result.test}
    except Exception as err:  # recorded on the run, then raised to the driver
        run.finish("FAILED", {T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
        raise
