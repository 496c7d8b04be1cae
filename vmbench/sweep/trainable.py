"""What runs on the Ray workers: the search trial (a Tune function trainable) and the final runs.

Both rebuild the experiment config from the picklable :class:`SweepContext`, log to their own
MLflow child run (:class:`vmbench.tracking.TrialRun`, reattached when retried) and close it
whatever happens. Ray, the engine and the data are imported when a trial runs, not with the module.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import vmbench
from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.search_space import decode_sample
from vmbench.sweep.context import SweepContext

log = logging.getLogger("vmbench.sweep")


# ------------------------------------------------------------------------------------------------
# Worker set-up and run bookkeeping


def _prepare_worker(ctx: SweepContext) -> None:
    import torch

    os.environ.update(ctx.env)
    torch.set_num_threads(max(1, int(ctx.cpu)))


def _open_run(ctx: SweepContext, key_tag: str, key: str, run_name: str, tags: dict[str, str],
              params: dict[str, Any]) -> T.TrialRun:
    return T.TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, key_tag=key_tag, key=key,
                      run_name=run_name, tags=tags, params=params)


def _run_tags(ctx: SweepContext, cfg: ExperimentConfig, stage: str, device) -> dict[str, str]:
    import ray

    from vmbench.ops import resolve_backend

    tags = {
        T.TAG_KIND: T.KIND_TRIAL,
        T.TAG_STAGE: stage,
        T.TAG_SWEEP: ctx.sweep,
        T.TAG_STUDY: ctx.study,
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
    if ray.is_initialized():  # not when tests call the functions directly
        tags[T.TAG_GPU_IDS] = ",".join(map(str, ray.get_gpu_ids())) or "none"
        tags[T.TAG_RAY_NODE] = ray.get_runtime_context().get_node_id()
    return tags


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the engine replaces files atomically, so a hard link is a stable snapshot
    except OSError:
        shutil.copy2(src, dst)


def _log_overlays(run: T.TrialRun, cfg: ExperimentConfig, model, img_size: tuple[int, int], device, split: str,
                  count: int = 4) -> None:
    from vmbench.data import build_dataset
    from vmbench.visualize import overlays_for

    try:
        data = build_dataset(cfg.data.name, root=cfg.data.root, split=split, protocol=cfg.data.protocol,
                             img_size=img_size, seed=cfg.train.seed, **cfg.data.options)
    except ValueError as err:  # e.g. no validation split under the paper protocol
        log.info("no %s overlays: %s", split, err)
        return
    for name, png in overlays_for(model, data, device, img_size, count):
        run.log_bytes(png, name, f"overlays/{split}")


# ------------------------------------------------------------------------------------------------
# Search trials


def _restore_checkpoint(checkpoint, dest: Path) -> bool:
    """Copy a retried or restored trial's Tune checkpoint into ``dest``; True if it can resume."""
    dest.mkdir(parents=True)
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as restored:
        for name in ("last.pt", "best.pt"):
            if (Path(restored) / name).exists():
                shutil.copy2(Path(restored) / name, dest / name)
    return (dest / "last.pt").exists()


class _EpochReporter:
    """``fit`` callback of a search trial: each epoch to MLflow, then to Tune with a checkpoint."""

    def __init__(self, run: T.TrialRun, cfg: ExperimentConfig, max_epochs: int, device, work: Path):
        self.run, self.cfg, self.max_epochs, self.device, self.work = run, cfg, max_epochs, device, work
        self.finished = False

    def __call__(self, result) -> None:
        from ray import tune

        self.run.log_metrics(result.metrics, step=result.epoch)
        if result.epoch >= self.max_epochs:
            # The scheduler ends a trial at max_epochs as soon as it reports, before fit() returns:
            # close the MLflow run first.
            self._finish(result.best_checkpoint)
        snapshot = Path(tempfile.mkdtemp(prefix="report-", dir=self.work))
        _link_or_copy(result.last_checkpoint, snapshot / "last.pt")
        if result.best_checkpoint is not None:
            _link_or_copy(result.best_checkpoint, snapshot / "best.pt")
        try:
            tune.report({**result.metrics, "epoch": result.epoch}, checkpoint=tune.Checkpoint.from_directory(snapshot))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _finish(self, best_checkpoint: Path | None) -> None:
        from vmbench.engine import load_state, model_from_checkpoint

        if best_checkpoint:
            best = load_state(best_checkpoint)
            self.run.log_metrics({f"best_{best.select_metric}": best.best_value, "best_epoch": best.best_epoch})
            model, _, _ = model_from_checkpoint(best_checkpoint, self.device)
            _log_overlays(self.run, self.cfg, model, best.img_size, self.device, split="val")
        self.run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED})
        self.finished = True


def search_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Ray Tune function trainable: one search trial, reporting once per epoch with a checkpoint."""
    from ray import tune

    from vmbench.engine import fit, load_state, resolve_device

    _prepare_worker(ctx)
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    keys = {p.key for p in ctx.space}
    sample = decode_sample(ctx.space, {k: v for k, v in config.items() if k in keys})
    cfg = ExperimentConfig.from_dict(ctx.base).with_overrides(sample, source=f"trial {trial_name}")
    work = Path(tempfile.mkdtemp(prefix=f"vmbench-{trial_name}-"))
    cfg.out_dir = str(work)
    try:
        resume = _restore_checkpoint(tune.get_checkpoint(), work / "checkpoints")
        device = resolve_device(cfg.train.device)
        tags = _run_tags(ctx, cfg, T.STAGE_SEARCH, device)
        if resume:  # retried (lost node, error) or restored sweep: say from where
            tags[T.TAG_RESUMED_EPOCH] = str(load_state(work / "checkpoints" / "last.pt").epoch)
        params = {**cfg.flat(), **{f"search.{k}": v for k, v in sample.items()}}
        run = _open_run(ctx, T.TAG_TRIAL_ID, trial_id, trial_name, tags, params)
        reporter = _EpochReporter(run, cfg, ctx.max_epochs, device, work)
        try:
            fit(cfg, callbacks=[reporter], resume=resume, evaluate_test=False)
        except Exception as err:  # recorded on the run, then raised for Tune to retry or mark
            run.finish("FAILED", {T.TAG_STAGE: T.STAGE_SEARCH, T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
            raise
        if not reporter.finished:  # resumed after its last epoch: nothing was reported this time
            run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Final runs


def _final_costs(model, cfg: ExperimentConfig, img_size: tuple[int, int], result, gpu: float, device) -> dict[str, float]:
    """Cost metrics of a final run, measured on the input the model is fed in training and test.

    That is the dataset's channel count: Synapse CT slices have 1 channel (the models, built
    with 3 input channels, repeat it themselves), ISIC images 3.
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


def final_run(cfg_dict: dict[str, Any], ctx: SweepContext, key: str) -> dict[str, Any]:
    """Retrain the chosen configuration with one seed, evaluate on test, log everything."""
    from vmbench.engine import fit, load_state, model_from_checkpoint, resolve_device

    _prepare_worker(ctx)
    cfg = ExperimentConfig.from_dict(cfg_dict, source=key)
    device = resolve_device(cfg.train.device)
    tags = _run_tags(ctx, cfg, T.STAGE_FINAL, device)
    run = _open_run(ctx, T.TAG_FINAL_KEY, key, f"{ctx.study}-final-seed{cfg.train.seed}", tags, cfg.flat())
    resume = (Path(cfg.out_dir) / "checkpoints" / "last.pt").exists()
    try:
        result = fit(cfg, callbacks=[lambda r: run.log_metrics(r.metrics, step=r.epoch)], resume=resume)
        model, _, _ = model_from_checkpoint(result.best_checkpoint, device)
        img_size = load_state(result.best_checkpoint).img_size
        costs = _final_costs(model, cfg, img_size, result, ctx.gpu, device)
        run.log_metrics({**{f"test_{k}": v for k, v in (result.test or {}).items()}, **costs})
        eval_dir = Path(cfg.out_dir) / "eval" / "test"
        artifact_dir = str(Path(T.PER_CASE_ARTIFACT).parent)
        run.log_file(eval_dir / Path(T.PER_CASE_ARTIFACT).name, artifact_dir)
        run.log_file(eval_dir / "summary.json", artifact_dir)
        run.log_file(result.best_checkpoint, "checkpoints")
        _log_overlays(run, cfg, model, img_size, device, split="test")
        val_is_test = json.loads((eval_dir / "summary.json").read_text()).get("val_is_test", False)
        run.finish("FINISHED", {T.TAG_OUTCOME: T.COMPLETED, T.TAG_VAL_IS_TEST: str(bool(val_is_test)).lower()})
        return {"key": key, "status": "FINISHED", "test": result.test}
    except Exception as err:  # recorded on the run, then raised to the driver
        run.finish("FAILED", {T.TAG_OUTCOME: T.FAILED, T.TAG_ERROR: T.error_summary(err)})
        raise
