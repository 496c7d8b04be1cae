"""The models one search trial trains, in step: one, or under ``cv_search: mean`` one per fold; with
``budget.scheduler: wilcoxon`` the folds one after another instead (:func:`fit_in_turn`).

Under protocol ``cv`` with ``cv_search: mean`` a trial's score is the mean over the folds, per
epoch, so that ASHA compares trials on the cross-validated estimate at every rung: every fold's
model trains and validates epoch ``e`` (the engine's :func:`vmbench.engine.fit_all` trains them in
step), then the trial reports once. Each fold follows exactly the trajectory it would follow alone (every
epoch reseeds from the seed and the epoch). Otherwise the trial trains one model, as ``fit`` would.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from vmbench.config import ExperimentConfig
from vmbench.rundir import RunDir
from vmbench.search_space import CV_MEAN

__all__ = ["FOLD_EPOCH_KEY", "FOLD_KEY", "Part", "combine", "device_hours", "fit_in_turn", "fold_score_key",
           "fold_scores", "reached_epoch", "trial_costs", "trial_parts"]

# What a trial training its folds in turn reports beside its metrics: the fold it trains, and its epoch in it.
FOLD_KEY, FOLD_EPOCH_KEY = "fold", "fold_epoch"


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
            combined[fold_score_key(metric, fold)] = metrics[metric]
    return combined


def fold_score_key(metric: str, fold: int) -> str:
    """``<metric>_fold<k>``: fold k's value of the trial's metric (at its last epoch when trained in turn)."""
    return f"{metric}_fold{fold}"


def fold_scores(result: dict[str, Any], metric: str, folds: int) -> dict[int, float]:
    """Fold -> score of the folds a result reports (:func:`fold_score_key`)."""
    return {k: float(result[fold_score_key(metric, k)]) for k in range(folds) if fold_score_key(metric, k) in result}


def reached_epoch(parts: list[Part], in_turn: bool) -> int:
    """The ``epoch`` a resumed trial had reached: its folds' epochs added up when trained in turn, else
    the first part's (the parts in step are at the same epoch)."""
    from vmbench.engine import load_state

    if not in_turn:
        return load_state(parts[0].run_dir.last).epoch
    return sum(load_state(p.run_dir.last).epoch for p in parts if p.run_dir.last.exists())


def fit_in_turn(parts: list[Part], report: Callable[..., None], metric: str) -> None:
    """Train the folds one after another (``budget.scheduler: wilcoxon``): every epoch of fold 0, then of fold 1, ...

    ``report(epoch, metrics, histories, training, kept)`` gets each epoch: ``epoch`` counts the epochs
    of every fold so far (fold k's epoch e is k x E + e, so the trial's full budget is folds x E);
    ``metrics`` are the fold's own with ``fold`` and ``fold_epoch`` and the score of every fold
    finished (``<metric>_fold<k>``: its metric at its last epoch, the value the scheduler tests).
    The last epoch of the last fold reports what an in-step trial reports at its end: the folds'
    last epochs combined (:func:`combine`: the trial's metric is their mean). ``histories``: every
    fold's epochs so far (the cost); ``kept``: (name, last.pt, best.pt or None) of every fold begun
    (the Tune checkpoint). A fold whose ``last.pt`` is at its last epoch (a resumed trial) is not
    trained again, and one with an earlier ``last.pt`` resumes from it.
    """
    from vmbench.engine import fit_all, load_state

    histories: list[list[dict[str, Any]]] = []
    finals: list[dict[str, float]] = []  # each finished fold's metrics at its last epoch
    for k, part in enumerate(parts):
        epochs = part.cfg.train.epochs
        state = load_state(part.run_dir.last) if part.run_dir.last.exists() else None
        if state is not None and state.epoch >= epochs:
            history = state.history
        else:
            def on_epoch(step, k=k, epochs=epochs) -> None:
                result, training = step.results[0], step.trainings[0]
                last = step.epoch >= epochs
                metrics = combine([*finals, result.metrics], metric) if last and k == len(parts) - 1 else dict(result.metrics)
                done = [*finals, result.metrics] if last else finals
                metrics.update({fold_score_key(metric, j): m[metric] for j, m in enumerate(done) if metric in m})
                metrics.update({FOLD_KEY: k, FOLD_EPOCH_KEY: step.epoch})
                kept = [(p.name, p.run_dir.last, p.run_dir.best if p.run_dir.best.exists() else None)
                        for p in parts[:k + 1]]
                report(k * epochs + step.epoch, metrics, [*histories, training.history], training, kept)

            history = fit_all([(part.cfg, part.run_dir)], on_epoch, resume=state is not None, evaluate_test=False)[0].history
        histories.append(history)
        finals.append({key: value for key, value in history[-1].items() if key != "epoch"})


def device_hours(train_time_s: float, gpu: float) -> float:
    """Device-hours of ``train_time_s`` seconds holding ``gpu`` GPUs (a CPU run counts as one device)."""
    return train_time_s / 3600 * (gpu if gpu > 0 else 1)


def trial_costs(histories: list[list[dict[str, Any]]], gpu: float) -> dict[str, float]:
    """What a trial's training cost so far: ``train_time_s`` (sum of its epoch times over every
    model), ``device_hours`` and ``epochs`` (epochs trained, summed over the models)."""
    train_time = sum(h.get("epoch_time_s", 0.0) for history in histories for h in history)
    return {"train_time_s": train_time, "device_hours": device_hours(train_time, gpu),
            "epochs": sum(len(history) for history in histories)}
