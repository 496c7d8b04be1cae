"""The models one search trial trains, in step: one, or under ``cv_search: mean`` one per fold.

Under protocol ``cv`` with ``cv_search: mean`` a trial's score is the mean over the folds, per
epoch, so that ASHA compares trials on the cross-validated estimate at every rung: every fold's
model trains and validates epoch ``e`` (the engine's :func:`vmbench.engine.fit_all` trains them in
step), then the trial reports once. Each fold follows exactly the trajectory it would follow alone (every
epoch reseeds from the seed and the epoch). Otherwise the trial trains one model, as ``fit`` would.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from vmbench.config import ExperimentConfig
from vmbench.rundir import RunDir
from vmbench.search_space import CV_MEAN

__all__ = ["Part", "combine", "device_hours", "trial_costs", "trial_parts"]


@dataclass
class Part:
    """One model of a trial: its config and its run folder inside the trial's work folder; ``name``
    is also its folder in the trial's Tune checkpoint ("" = the top)."""

    name: str
    cfg: ExperimentConfig
    run_dir: RunDir


def trial_parts(cfg: ExperimentConfig, cv_search: str | None, work: RunDir) -> list[Part]:
    """The trial's models: every fold of ``cfg.data.folds`` under cv_search mean, else ``cfg`` alone."""
    if cv_search != CV_MEAN:
        return [Part("", cfg, work)]
    return [Part(f"fold{fold}", cfg.with_overrides({"data.fold": fold}, source=f"fold {fold}"), work.child(f"fold{fold}"))
            for fold in range(cfg.data.folds)]


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
