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
from typing import Any, Callable

from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.errors import DataError
from vmbench.protocols import CV
from vmbench.search_space import CV_MEAN, decode_sample
from vmbench.sweep.context import SweepContext
from vmbench.rundir import RunDir
from vmbench.sweep.folds import Part, combine, fit_in_turn, reached_epoch, trial_costs, trial_parts
from vmbench.sweep.transfer_eval import score_transfer

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


def check_data_on_node(cfg: ExperimentConfig, transfer: tuple[dict[str, Any], ...] = ()) -> None:
    """A DataError naming this node and the folder when ``data.root`` (or a ``transfer`` target's
    root) is missing here.

    The roots were made absolute on the driver (against the search-space file, never a working
    directory), and the driver built every dataset once, so a node without a root lacks the data
    itself, e.g. an unmounted share.
    """
    roots = [(cfg.data.root, f"data.root of {cfg.data.name}"),
             *((t["root"], f"transfer dataset {t['name']}") for t in transfer)]
    for root, what in roots:
        if root and "://" not in root and not Path(root).exists():
            raise DataError(f"node {_node_name()} has no data at {root} ({what}); make that folder available on "
                            "every node (the same path: a shared or mounted file system)")


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
        part.run_dir.checkpoints.mkdir(parents=True)
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as restored:
        for part in parts:
            for kept in (part.run_dir.last, part.run_dir.best):
                saved = Path(restored) / part.name / kept.name
                if saved.exists():
                    shutil.copy2(saved, kept)
    return all(part.run_dir.last.exists() for part in parts)


class _EpochReporter:
    """``fit_all``'s ``on_epoch`` of a search trial (or, folds trained in turn, :meth:`report` called by
    :func:`~vmbench.sweep.folds.fit_in_turn`): each epoch to MLflow (metrics and the cost so far), then
    to Tune with a checkpoint of every part."""

    def __init__(self, run: T.TrialRun, ctx: SweepContext, parts: list[Part], device, work: Path,
                 describe: Callable[[str], str]):
        self.run, self.ctx, self.parts, self.device, self.work = run, ctx, parts, device, work
        self.describe = describe  # outcome -> the run's description
        self.finished = False
        self.static_costs: dict[str, float] | None = None  # parameters, GMACs, latency: measured once
        self.epoch = 0
        self.costs = trial_costs([], ctx.gpu)
        # The epoch of the trial's last report: max_epochs, or max_epochs per fold when trained in turn.
        self.full_budget = ctx.max_epochs * (len(parts) if ctx.folds_in_turn else 1)

    def __call__(self, step) -> None:
        kept = [(part.name, r.last_checkpoint, r.best_checkpoint) for part, r in zip(self.parts, step.results)]
        self.report(step.epoch, combine([r.metrics for r in step.results], self.ctx.metric),
                    [t.history for t in step.trainings], step.trainings[0], kept)

    def report(self, epoch: int, metrics: dict[str, float], histories: list, training, kept: list) -> None:
        """``metrics`` at the trial's ``epoch``; ``histories``: every part's epochs so far (the cost);
        ``training``: the model the cost objectives measure, whose validation split the overlays show;
        ``kept``: (part name, last.pt, best.pt or None) of each part the Tune checkpoint holds."""
        from ray import tune

        from vmbench import profiling

        self.epoch, self.costs = epoch, trial_costs(histories, self.ctx.gpu)
        self.costs["peak_mem_mb"] = profiling.peak_memory_mb(self.device)  # since the trial started
        metrics.update(self._cost_objectives(training))
        # The cost so far, every epoch: the latest values are the trial's cost however it ends
        # (finished, stopped by ASHA, failed, or lost with its node).
        self.run.log_metrics({**metrics, **self.costs}, step=epoch)
        if epoch >= self.full_budget:
            # The scheduler ends a trial at max_epochs as soon as it reports, before fit returns:
            # close the MLflow run first.
            self._finish([best for _, _, best in kept], training)
        snapshot = Path(tempfile.mkdtemp(prefix="report-", dir=self.work))
        for name, *files in kept:
            # The checkpoint holds each part's checkpoint files under its name, as _restore_checkpoint reads them.
            (snapshot / name).mkdir(parents=True, exist_ok=True)
            for path in files:
                if path is not None:
                    _link_or_copy(path, snapshot / name / path.name)
        try:
            tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(snapshot))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _cost_objectives(self, training) -> dict[str, float]:
        """The cost metrics a multi-objective search optimises, on this trial's model and hardware:
        parameters, GMACs and latency at the training size (measured once), peak memory so far."""
        from vmbench import profiling

        wanted = set(self.ctx.objectives) & {"n_params", "gmacs", "latency_ms", "peak_mem_mb"}
        if not wanted:
            return {}
        if self.static_costs is None:
            import vmbench

            in_chans = vmbench.dataset_info(training.cfg.data.name).in_chans
            model, size = training.model, training.img_size
            self.static_costs = {
                "n_params": float(profiling.count_parameters(model)),
                "gmacs": float(profiling.count_gmacs(model, in_chans, size)) if "gmacs" in wanted else 0.0,
                "latency_ms": float(profiling.latency_ms(model, in_chans, size)) if "latency_ms" in wanted else 0.0,
            }
        costs = {**self.static_costs, "peak_mem_mb": self.costs["peak_mem_mb"]}
        return {k: v for k, v in costs.items() if k in wanted}

    def _finish(self, bests: list, training) -> None:
        from vmbench.engine import load_state, model_from_checkpoint
        from vmbench.engine.record import log_overlays

        val_data = training.data.val
        if all(bests):
            states = [load_state(path) for path in bests]
            best = {f"best_{states[0].select_metric}": sum(s.best_value for s in states) / len(states)}
            if len(states) == 1:
                best["best_epoch"] = states[0].best_epoch
            self.run.log_metrics(best)
            scores = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "best_epoch")
            self.run.describe(self.describe(f"completed {self.epoch} epoch{'s' if self.epoch != 1 else ''}; {scores}."))
            if val_data is not None:  # that training's (fold's) validation split, as built for training
                model, _, _ = model_from_checkpoint(training.run_dir.best, self.device)
                log_overlays(self.run, model, val_data, states[0].img_size, self.device)
        self.run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED})
        self.finished = True


def search_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Ray Tune function trainable: one search trial, reporting once per epoch with a checkpoint."""
    from ray import tune

    from vmbench import profiling
    from vmbench.engine import fit_all, resolve_device
    from vmbench.engine.record import describe_run

    _prepare_worker(ctx)
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    keys = {p.key for p in ctx.space}
    sample = decode_sample(ctx.space, {k: v for k, v in config.items() if k in keys})
    cfg = ExperimentConfig.from_dict(ctx.base).with_overrides(sample, source=f"trial {trial_name}")
    work = Path(tempfile.mkdtemp(prefix=f"vmbench-{trial_name}-"))
    parts = trial_parts(cfg, ctx.cv_search, RunDir(work))
    try:
        resume = _restore_checkpoint(tune.get_checkpoint(), parts)
        # Folds in turn: the checkpoint holds the folds begun, each resumed from where it is.
        resume = resume or (ctx.folds_in_turn and parts[0].run_dir.last.exists())
        device = resolve_device(cfg.train.device)
        tags = _run_tags(ctx, cfg, T.STAGE_SEARCH, device)
        if resume:  # retried (lost node, error) or restored sweep: say from where
            tags[T.TAG_RESUMED_EPOCH] = str(reached_epoch(parts, ctx.folds_in_turn))
        params = {**cfg.flat(), **{f"search.{k}": v for k, v in sample.items()}}
        run = _open_run(ctx, T.TAG_TRIAL_ID, trial_id, trial_name, tags, params)
        def describe(outcome: str) -> str:
            return describe_run(cfg, T.STAGE_SEARCH, outcome=outcome, sweep=ctx.sweep, searched=sample)

        run.describe(describe("running."))  # ends in T.RUNNING_NOTE: the driver concludes it if Ray ends the trial
        reporter = _EpochReporter(run, ctx, parts, device, work, describe)
        try:
            check_data_on_node(cfg)
            profiling.reset_peak_memory(device)  # the peak of this trial, not of what ran in the process before
            if ctx.folds_in_turn:  # budget.scheduler wilcoxon: each fold's score reported as it ends
                fit_in_turn(parts, reporter.report, ctx.metric)
            else:
                fit_all([(part.cfg, part.run_dir) for part in parts], reporter, resume=resume, evaluate_test=False)
        except Exception as err:  # recorded on the run, then raised for Tune to retry or mark
            run.log_metrics(reporter.costs, step=reporter.epoch)  # a no-op when that epoch logged them
            run.describe(describe(f"failed after {reporter.epoch} epochs: {T.error_summary(err)}"))
            run.finish("FAILED", {T.TAG_STAGE: T.STAGE_SEARCH, T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
            raise
        if not reporter.finished:  # resumed after its last epoch: nothing was reported this time
            run.describe(describe("completed (resumed after its last epoch)."))
            run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Final runs


def _record_fold_validation(run: T.TrialRun, cfg: ExperimentConfig, result, device) -> None:
    """Protocol cv: the selected model on its fold's validation split, per case
    (``eval/val/per_case.csv``) and as ``best_val_*`` (the per-epoch ``val_*`` history keeps its own steps)."""
    from vmbench.engine import evaluate_into

    evaluation = evaluate_into(result.model, result.val_data, cfg, result.run_dir, "val", result.best_checkpoint,
                               result.best_epoch, result.img_size, device)
    out_dir = result.run_dir.eval_dir("val")
    run.log_metrics({f"best_val_{k}": v for k, v in evaluation.summary.items() if k not in ("n_images", "n_cases")})
    artifact_dir = str(Path(T.PER_CASE_VAL_ARTIFACT).parent)
    run.log_file(out_dir / Path(T.PER_CASE_VAL_ARTIFACT).name, artifact_dir)
    run.log_file(out_dir / "summary.json", artifact_dir)


def final_run(cfg_dict: dict[str, Any], ctx: SweepContext, key: str, run_dir: str) -> dict[str, Any]:
    """Retrain the chosen configuration with one seed (on one fold under cv) into ``run_dir``,
    evaluate on test, log everything."""
    from vmbench import profiling
    from vmbench.engine import fit, resolve_device
    from vmbench.engine.record import record_test_results, write_run_pointer

    _prepare_worker(ctx)
    cfg = ExperimentConfig.from_dict(cfg_dict, source=key)
    run_dir = RunDir(run_dir)
    device = resolve_device(cfg.train.device)
    tags = _run_tags(ctx, cfg, T.STAGE_FINAL, device)
    fold = "" if cfg.data.fold is None else f"-fold{cfg.data.fold}"
    run = _open_run(ctx, T.TAG_FINAL_KEY, key, f"{ctx.study}-final{fold}-seed{cfg.train.seed}", tags, cfg.flat())
    try:
        check_data_on_node(cfg, ctx.transfer)  # before training: a missing target folder fails at once
        profiling.reset_peak_memory(device)  # the peak of this run, not of the worker's earlier ones
        result = fit(cfg, run_dir, callbacks=[lambda r: run.log_metrics(r.metrics, step=r.epoch)],
                     resume=run_dir.last.exists())
        # The folder names its MLflow run, so that `vmbench evaluate` attaches later scores to it.
        write_run_pointer(run_dir, ctx.tracking_uri, ctx.experiment_id, run.run_id, key)
        if cfg.data.protocol == CV:
            _record_fold_validation(run, cfg, result, device)
        flat = cfg.flat()
        searched = {p.key: flat.get(p.key) for p in ctx.space}
        tags = record_test_results(run, cfg, result, device, ctx.gpu, stage=T.STAGE_FINAL, sweep=ctx.sweep,
                                   searched=searched)
        tags.update(score_transfer(run, cfg, result, device, ctx.transfer))
        status = "FAILED" if tags.get(T.TAG_OUTCOME) == T.FAILED else "FINISHED"  # e.g. NaN headline metrics
        run.finish(status, tags)
        return {"key": key, "status": status, "test": result.test}
    except Exception as err:  # recorded on the run, then raised to the driver
        run.finish("FAILED", {T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
        raise
