"""The models one search trial trains, in step: one, or under ``cv_search: mean`` one per fold.

Under protocol ``cv`` with ``cv_search: mean`` a trial's score is the mean over the folds, per
epoch, so that ASHA compares trials on the cross-validated estimate at every rung: every fold's
model trains and validates epoch ``e`` (the engine's own stages, :func:`vmbench.engine.training.run_epoch`),
then the trial reports once. Each fold follows exactly the trajectory it would follow alone (every
epoch reseeds from the seed and the epoch). Otherwise the trial trains one model, as ``fit`` would.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vmbench.config import ExperimentConfig
from vmbench.search_space import CV_MEAN

__all__ = ["Part", "combine", "device_hours", "fit_in_step", "trial_costs", "trial_parts"]


@dataclass
class Part:
    """One model of a trial: its config and its folder in the trial's Tune checkpoint ("" = the top)."""

    name: str
    cfg: ExperimentConfig

    @property
    def checkpoints(self) -> Path:
        return Path(self.cfg.out_dir) / "checkpoints"


def trial_parts(cfg: ExperimentConfig, cv_search: str | None, work: Path) -> list[Part]:
    """The trial's models: every fold of ``cfg.data.folds`` under cv_search mean, else ``cfg`` alone."""
    if cv_search != CV_MEAN:
        cfg.out_dir = str(work)
        return [Part("", cfg)]
    parts = []
    for fold in range(cfg.data.folds):
        fold_cfg = cfg.with_overrides({"data.fold": fold}, source=f"fold {fold}")
        fold_cfg.out_dir = str(work / f"fold{fold}")
        parts.append(Part(f"fold{fold}", fold_cfg))
    return parts


def combine(per_part: list[dict[str, float]], metric: str) -> dict[str, float]:
    """One epoch's metrics of the trial: each fold's value for one model; over folds the mean of every
    metric all folds report, the epoch time summed (the trial's cost), and ``<metric>_fold<k>``."""
    if len(per_part) == 1:
        return dict(per_part[0])
    common = set.intersection(*(set(m) for m in per_part))
    combined = {k: statistics.fmean(m[k] for m in per_part) for k in sorted(common)}
    if "epoch_time_s" in common:
        combined["epoch_time_s"] = sum(m["epoch_time_s"] for m in per_part)
    for fold, metrics in enumerate(per_part):
        if metric in metrics:
            combined[f"{metric}_fold{fold}"] = metrics[metric]
    return combined


def device_hours(train_time_s: float, gpu: float) -> float:
    """Device-hours of ``train_time_s`` seconds holding ``gpu`` GPUs (a CPU run counts as one device)."""
    return train_time_s / 3600 * (gpu if gpu > 0 else 1)


def trial_costs(histories: list[list[dict[str, Any]]], gpu: float) -> dict[str, float]:
    """What a trial's training cost so far: ``train_time_s`` (sum of its epoch times over every
    model), ``device_hours`` and ``epochs`` (epochs trained, summed over the models)."""
    train_time = sum(h.get("epoch_time_s", 0.0) for history in histories for h in history)
    return {"train_time_s": train_time, "device_hours": device_hours(train_time, gpu),
            "epochs": sum(len(history) for history in histories)}


def fit_in_step(parts: list[Part], on_epoch: Callable[[int, list, list], Any], resume: bool) -> list:
    """Train every part for ``train.epochs`` epochs, epoch by epoch; ``on_epoch(epoch, trials, results)``
    after each (1-based epoch, the engine's Trial and EpochResult of every part). Returns their FitResults."""
    from vmbench.engine.training import finish, resume_from, run_epoch, set_up

    trials = [set_up(part.cfg) for part in parts]
    if resume:
        for trial in trials:
            if trial.last_path.exists():
                resume_from(trial, trial.last_path)
    start = min(trial.epoch for trial in trials)
    for epoch in range(start, parts[0].cfg.train.epochs):
        results = []
        for trial in trials:
            if trial.epoch > epoch:  # cannot happen with checkpoints taken together; never train twice
                raise RuntimeError(f"{trial.out_dir} is at epoch {trial.epoch}, ahead of its trial's epoch {epoch}")
            run_epoch(trial, epoch, [results.append])
        on_epoch(epoch + 1, trials, results)
    return [finish(trial, evaluate_test=False) for trial in trials]
