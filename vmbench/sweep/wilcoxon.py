"""``budget.scheduler: wilcoxon``: Optuna's ``WilcoxonPruner`` deciding, fold by fold, whether a trial goes on.

Under protocol cv with ``cv_search: mean`` a trial's score is the mean over the folds. With this
scheduler a trial trains its folds one after another (:func:`vmbench.sweep.folds.fit_in_turn`), and
every report carries the score of each fold it has finished (``<metric>_fold<k>``: the fold's metric
at its last epoch). :class:`WilcoxonScheduler` hands them to Optuna's own pruner (made for scores
on a set of problem instances, k-fold cross-validation among them): an in-memory study holds every
trial that scored all its folds (COMPLETE, value the mean, the fold scores as intermediate values at
step = fold) and the running trial with the scores it has; the pruner stops the trial when a
one-sided Wilcoxon signed-rank test on the same folds says it is worse than the best complete trial
(p < ``p_threshold``). The exact test's smallest p-value on n folds is 1/2^n, so with the default
0.1 no trial stops before 4 folds are scored (unless scores tie).

A stopped trial ends as one ASHA stops: before its full budget (``epoch`` below max_epochs x folds),
so the driver closes its run as pruned (:class:`~vmbench.sweep.adapters.RunReconciler`), Optuna's
study records it PRUNED, and ``pick_best`` prefers the trials that scored every fold.

The scheduler keeps no state of its own: the complete trials' fold scores are read from their last
results, which Tune keeps and restores with the experiment, so a resumed sweep decides as before.
Imports Ray and Optuna: imported only when a sweep runs (by :mod:`vmbench.sweep.adapters`).
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings

import optuna
from optuna.trial import TrialState, create_trial
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from vmbench.sweep.folds import fold_scores

log = logging.getLogger("vmbench.sweep")


def wilcoxon_pruner(p_threshold: float):
    """Optuna's WilcoxonPruner (experimental since Optuna 3.6: the warning saying so is not repeated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner(p_threshold=p_threshold)


def should_prune(scores: dict[int, float], complete: list[dict[int, float]], mode: str, pruner) -> bool:
    """Whether ``pruner`` (:func:`wilcoxon_pruner`) stops a trial whose folds so far scored ``scores``
    (fold -> score), given the fold scores of every trial that scored all its folds; ``mode``: max or min."""
    quiet = logging.getLogger("optuna.storages._in_memory")  # "A new study created in memory" at every call
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        quiet.setLevel(level)
    for done in complete:
        value = statistics.fmean(done.values())
        if math.isfinite(value):  # a NaN mean is no trial to beat
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, intermediate_values=done))
    return bool(pruner.prune(study, create_trial(state=TrialState.RUNNING, intermediate_values=scores)))


class WilcoxonScheduler(FIFOScheduler):
    """FIFO order; on every result of a trial with some but not all folds scored, asks
    :func:`should_prune` against the trials that scored every fold, and stops the trial if so."""

    def __init__(self, metric: str, mode: str, folds: int, p_threshold: float = 0.1):
        super().__init__()
        self._metric, self._mode, self.folds, self.p_threshold = metric, mode, folds, p_threshold
        self._pruner = wilcoxon_pruner(p_threshold)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the sweep's metric and mode, given when it was made (TuneConfig has none)

    def complete_scores(self, tune_controller, trial) -> list[dict[int, float]]:
        """The fold scores of the other trials that scored every fold (from their last results)."""
        out = []
        for other in tune_controller.get_trials():
            if other is trial or other.status == Trial.ERROR:
                continue
            scores = fold_scores(other.last_result or {}, self._metric, self.folds)
            if len(scores) == self.folds:
                out.append(scores)
        return out

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        scores = fold_scores(result, self._metric, self.folds)
        if not scores or len(scores) == self.folds:  # nothing to test yet, or nothing left to save
            return TrialScheduler.CONTINUE
        if should_prune(scores, self.complete_scores(tune_controller, trial), self._mode, self._pruner):
            shown = ", ".join(f"{scores[k]:.4f}" for k in sorted(scores))
            log.info("trial %s stopped by the Wilcoxon pruner after %d of %d folds (%s %s; p < %g against the best "
                     "complete trial)", trial.trial_id, len(scores), self.folds, self._metric, shown, self.p_threshold)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Using FIFO order with Optuna's WilcoxonPruner on {self.folds} fold scores (p_threshold {self.p_threshold:g})."
