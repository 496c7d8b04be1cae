"""MLflow conventions and run management shared by the sweep, the final stage and the leaderboard.

Run layout (one MLflow experiment per sweep file's ``experiment`` name):

* a **parent** run per sweep: tag ``vmbench.kind = sweep`` (:func:`open_sweep_run`);
* a **child** run per trial (``vmbench.kind = trial``, ``vmbench.stage = search``) and per final
  retraining (``vmbench.stage = final``, one per seed, and per fold under protocol cv), nested
  with ``mlflow.parentRunId`` (:class:`TrialRun`).

Every child run carries the tags of :mod:`vmbench.tracking.conventions`, the flattened
experiment config as params (``optim.lr``, ``model.overrides.dims`` ...), per-epoch metrics
(``train_loss``, ``val_dsc`` ... with ``step = epoch``, each step once even when a retry runs an
epoch again) and, for final runs, ``test_*`` metrics (fractions in [0, 1]; HD95 in voxels) plus
cost metrics (``n_params``, ``gmacs``, ``train_time_s``, ``device_hours``, ``latency_ms``,
``peak_mem_mb`` of the run itself, ``epochs``) and the artifact ``eval/per_case.csv``. Search
trials log ``train_time_s``, ``device_hours`` and ``epochs`` with every epoch (their cost so far),
so their latest values are the cost however the trial ended (finished, pruned, failed, lost).

Protocol cv: final runs carry ``vmbench.fold`` / ``vmbench.folds``, their fold's validation cases
as ``eval/val/per_case.csv`` and ``best_val_*`` (``best.pt`` on that fold's validation split);
the parent run carries ``vmbench.folds``, ``vmbench.cv_search`` and ``splits.json`` (every fold's
train/val ids and the test ids, per dataset).

The default store on one machine is ``sqlite:///<abs>/vmbench-runs/mlflow.db`` with artifacts in
``vmbench-runs/mlartifacts``: absolute, so Ray trials (which run in other folders) log to the
same place. ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` select a server instead.

Importing this package does not import MLflow; the functions that talk to a store do. MLflow's
exceptions reach the user as one-line errors through :func:`mlflow_errors`.
"""

from __future__ import annotations

import os

# MLflow's telemetry thread edits os.environ while requests reads it (KeyError
# '_MLFLOW_TELEMETRY_SESSION_ID' in a sweep driver on a machine without internet); vmbench sends none.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from vmbench.tracking import conventions, errors, runs
from vmbench.tracking.conventions import *  # noqa: F403  (the names listed in conventions.__all__)
from vmbench.tracking.errors import *  # noqa: F403
from vmbench.tracking.runs import *  # noqa: F403

__all__ = [*conventions.__all__, *errors.__all__, *runs.__all__]
