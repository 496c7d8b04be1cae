"""``vmbench sweep``: Ray Tune + Optuna (TPE) + ASHA over every model x dataset of a space file.

For each study (model x dataset) of a :class:`~vmbench.search_space.SweepSpec`:

1. a Ray Tune ``Tuner`` runs ``budget.trials`` trials of :func:`search_trial`, suggested by
   :class:`~vmbench.sweep.adapters.PruneAwareOptunaSearch` (a seeded TPE study in the sweep folder,
   :mod:`~vmbench.sweep.storage`), ``budget.concurrent`` at a time, stopped early by ASHA on
   ``epoch``. A trial reports once per epoch with a checkpoint and resumes from it when retried
   (``FailureConfig(max_failures=2)``). Under protocol cv it trains fold 0, or with
   ``cv_search: mean`` every fold in step (:mod:`~vmbench.sweep.folds`), or one fold after another
   under ``budget.scheduler: wilcoxon``, where Optuna's WilcoxonPruner stops a trial whose fold
   scores are worse than the best trial's (:mod:`~vmbench.sweep.wilcoxon`);
2. the best trial that ran the full budget is retrained once per final-stage seed, on every fold
   under protocol cv (:func:`final_run`, Ray tasks), and evaluated on the test split: the runs the
   leaderboard reads. Under cv the sweep folder and the parent run hold ``splits.json``.

MLflow (:mod:`vmbench.tracking`): one parent run per sweep, one child run per trial and per final
run, created inside the trial with the explicit tracking URI and the parent's id, found again by
tag when a trial is retried or the sweep resumed, so every trial appears exactly once. Runs that
Ray stops (ASHA) or loses are closed by :class:`~vmbench.sweep.adapters.RunReconciler` on the
driver; none is left RUNNING.

Modules: :mod:`~vmbench.sweep.trainable` (what runs on the workers), :mod:`~vmbench.sweep.folds`
(a trial's models trained in step, or its folds in turn), :mod:`~vmbench.sweep.adapters` (the Optuna
searcher, the schedulers and the Tune callback; imports Ray and Optuna, so it is imported only when a
sweep runs), :mod:`~vmbench.sweep.wilcoxon` (the scheduler asking Optuna's WilcoxonPruner),
:mod:`~vmbench.sweep.storage` (where the Optuna study lives), :mod:`~vmbench.sweep.driver`
(checks, Ray, the Tuner, best trial, final runs).
Importing this package imports neither Ray, Optuna, MLflow nor torch.
"""

from __future__ import annotations

from vmbench.errors import PreflightError
from vmbench.sweep.context import StudyOutcome, SweepContext, SweepResult
from vmbench.sweep.driver import (
    build_tuner,
    check_data,
    final_key,
    init_ray,
    pick_best,
    preflight,
    run_finals,
    run_study,
    run_sweep,
)
from vmbench.sweep.trainable import check_data_on_node, final_run, search_trial

__all__ = [
    "PreflightError",
    "StudyOutcome",
    "SweepContext",
    "SweepResult",
    "build_tuner",
    "check_data",
    "check_data_on_node",
    "final_key",
    "final_run",
    "init_ray",
    "pick_best",
    "preflight",
    "run_finals",
    "run_study",
    "run_sweep",
    "search_trial",
]
