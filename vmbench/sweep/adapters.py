"""Ray Tune adapters of the sweep: Optuna told the truth about ASHA's stops, MLflow runs closed.

This module imports Ray and Optuna; the driver imports it when a sweep runs, so that
``import vmbench.sweep`` (the command line, the dry run) stays light.

Why :class:`PruneAwareOptunaSearch`: under Ray, Optuna's own pruning is off and ASHA stops
trials. When it does, Ray calls the searcher's ``on_trial_complete`` with the trial's last
result, and stock ``OptunaSearch`` then tells the study the trial is COMPLETE with that early,
low-fidelity value (ray PR #15283 only handled the case without a value, as PRUNED), so TPE
takes a 2-epoch score for a final one. Optuna refuses a value with ``TrialState.PRUNED`` and
ranks a pruned trial by its last intermediate value (optuna #1015, #1647).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from vmbench import tracking as T
from vmbench.errors import PreflightError
from vmbench.search_space import SweepSpec
from vmbench.sweep.wilcoxon import WilcoxonScheduler


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about early-stopped and failed trials.

    A trial that ended before ``max_epochs`` is PRUNED (Optuna then ranks it by its last
    intermediate value) and an errored trial is FAIL even when it reported values before failing.
    """

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    @staticmethod
    def _step(result: dict) -> int:
        # Intermediate values go against the epoch, which survives retries.
        return int(result.get("epoch", result.get("training_iteration", 0)))

    def _reported_steps(self, trial_id: str) -> set[int]:
        number = self._ot_trials[trial_id].number
        trial = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number)
        return set(trial.intermediate_values)

    @property
    def _multi_objective(self) -> bool:
        return isinstance(self.metric, list)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna keeps no intermediate values for several objectives (no pruning without one metric).
        if self._multi_objective or trial_id in self._completed_trials or self.metric not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], self._step(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if self._multi_objective:
            return self._complete_multi(trial_id, result, error)
        state = self._final_state(result, error)
        if (
            state == TrialState.PRUNED
            and (result or {}).get(self.metric) is not None
            and self._step(result) not in self._reported_steps(trial_id)  # Optuna warns on a repeat
        ):
            # Ray gives the result that made ASHA stop the trial to on_trial_complete only
            # (never to on_trial_result): report it, or Optuna ranks the pruned trial by an
            # older epoch, or as worst when it had reported nothing before.
            self._ot_trials[trial_id].report(result[self.metric], self._step(result))
        if state is None:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)

    def _complete_multi(self, trial_id: str, result: dict | None, error: bool) -> None:
        """Several objectives: COMPLETE with every value when the trial ran its budget, else FAIL
        (errored) or PRUNED (a study of several objectives cannot rank a partial trial)."""
        values = [(result or {}).get(metric) for metric in self.metric]
        if error:
            state = TrialState.FAIL
        elif result is None or int(result.get("epoch", 0)) < self._max_epochs or None in values:
            state = TrialState.PRUNED
        else:
            self._ot_study.tell(self._ot_trials[trial_id], values)
            self._completed_trials.add(trial_id)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)

    def _final_state(self, result: dict | None, error: bool) -> TrialState | None:
        """FAIL, PRUNED, or None for a trial that ran the full budget (OptunaSearch completes it)."""
        if error:
            return TrialState.FAIL
        if result is None or int(result.get("epoch", 0)) < self._max_epochs or result.get(self.metric) is None:
            return TrialState.PRUNED
        return None


class RunReconciler(Callback):
    """Closes the MLflow runs of trials that Ray ended from outside (ASHA stop, errors)."""

    def __init__(self, tracking_uri: str, experiment_id: str, max_epochs: int):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.max_epochs = max_epochs

    def _close(self, trial, status: str, outcome: str) -> None:
        T.close_trial_run(T.client(self.tracking_uri), self.experiment_id, trial.trial_id, status, outcome,
                          errored=bool(trial.error_file))

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = int((trial.last_result or {}).get("epoch", 0))
        self._close(trial, "FINISHED", T.COMPLETED if epoch >= self.max_epochs else T.PRUNED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", T.FAILED)


def make_scheduler(spec: SweepSpec):
    """ASHA on ``epoch``; Optuna's WilcoxonPruner on the fold scores (folds trained in turn); or FIFO,
    where every trial runs its whole budget."""
    if spec.scheduler == "asha":
        return ASHAScheduler(metric=spec.metric, mode=spec.mode, time_attr="epoch", max_t=spec.budget.max_epochs,
                             grace_period=spec.budget.grace_period, reduction_factor=spec.budget.reduction_factor)
    if spec.scheduler == "wilcoxon":
        return WilcoxonScheduler(spec.metric, spec.mode, spec.folds, spec.budget.p_threshold)
    return FIFOScheduler()


def make_sampler(spec: SweepSpec):
    """The Optuna sampler, with its optional dependencies checked now (not at trial 10)."""
    name, seed = spec.sampler.name, spec.sampler.seed
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        for module in ("torch", "scipy"):
            try:
                __import__(module)
            except ImportError as err:
                raise PreflightError(f"{spec.source}: sampler.name gp needs {module}: {err}") from None
        return optuna.samplers.GPSampler(seed=seed)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise PreflightError(f"{spec.source}: sampler.name cmaes needs the 'cmaes' package (pip install cmaes)") from None
    return optuna.samplers.CmaEsSampler(seed=seed)
