"""``vmbench sweep``: Ray Tune + Optuna (TPE) + ASHA over every model x dataset of a space file.

For each study (model x dataset) of a :class:`~vmbench.search_space.SweepSpec`:

1. a Ray Tune ``Tuner`` runs ``budget.trials`` trials of :func:`search_trial`, suggested by
   :class:`~vmbench.sweep.adapters.PruneAwareOptunaSearch` (a seeded TPE study stored in SQLite
   in the sweep folder), ``budget.concurrent`` at a time, stopped early by ASHA on ``epoch``. A
   trial reports once per epoch with a checkpoint and resumes from it when retried
   (``FailureConfig(max_failures=2)``);
2. the best trial that ran the full budget is retrained once per final-stage seed
   (:func:`final_run`, Ray tasks) and evaluated on the test split: the runs the leaderboard reads.

MLflow (:mod:`vmbench.tracking`): one parent run per sweep, one child run per trial and per final
run, created inside the trial with the explicit tracking URI and the parent's id, found again by
tag when a trial is retried or the sweep resumed, so every trial appears exactly once. Runs that
Ray stops (ASHA) or loses are closed by :class:`~vmbench.sweep.adapters.RunReconciler` on the
driver; none is left RUNNING.

Modules: :mod:`~vmbench.sweep.trainable` (what runs on the workers), :mod:`~vmbench.sweep.adapters`
(the Optuna searcher and the Tune callback; imports Ray and Optuna, so it is imported only when a
sweep runs), :mod:`~vmbench.sweep.driver` (checks, Ray, the Tuner, best trial, final runs).
Importing this package imports neither Ray, Optuna, MLflow nor torch.
"""

from __future__ import annotations

from vmbench.errors import PreflightError
from vmbench.sweep.context import StudyOutcome, SweepContext
from vmbench.sweep.driver import build_tuner, init_ray, pick_best, preflight, run_finals, run_study, run_sweep
from vmbench.sweep.trainable import final_run, search_trial

__all__ = [
    "PreflightError",
    "StudyOutcome",
    "SweepContext",
    "build_tuner",
    "final_run",
    "init_ray",
    "pick_best",
    "preflight",
    "run_finals",
    "run_study",
    "run_sweep",
    "search_trial",
]
